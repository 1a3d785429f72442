"""Parameter counts of every paper-scale config beside the paper's (abstract models only:
``nnx.eval_shape``, nothing allocated; about half a minute on a CPU).

  python -m experiments.paper_params --out results/compile/paper_params.md
  python -m experiments.paper_params --papers ouro,race_dit      # a subset, to stdout

LM papers (``configs/papers/<paper>.py``): every ``PAPER_PARAMS`` entry, counted with
``seedjax.models.param_count`` under the convention the entry names (which parts a paper counts:
all, non-embedding, or body + head; see that module). Ouro: the released checkpoints' exact
counts (all parameters; the looped blocks are shared, so activated = total). Race-DiT:
``seedjax.models.dit.param_counts``' blocks_total / blocks_active (Table 4 counts the
transformer blocks only).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
LM_PAPERS = ("ultramem", "ultramem_v2", "hyper_connections", "frac_connections", "seednorm",
             "over_tokenized")
PAPERS = (*LM_PAPERS, "ouro", "race_dit")
COMMAND = "python -m experiments.paper_params --out results/compile/paper_params.md"


def define_flags() -> None:
    flags.DEFINE_list("papers", list(PAPERS), f"Papers to count (of {', '.join(PAPERS)}).")
    flags.DEFINE_string("out", None, "Write the markdown table here (default: stdout).")


TOLERANCE = 0.01


def _row(paper, variant, convention, ours, theirs, source, embed=None) -> dict:
    """``embed``: (ours, paper's) input-embedding parameters, where the paper gives them."""
    return {"paper": paper, "variant": variant, "convention": convention,
            "ours_total": ours[0], "ours_activated": ours[1], "paper_total": theirs[0],
            "paper_activated": theirs[1], "source": source, "embed": embed}


def off_by_more(row: dict, tolerance: float = TOLERANCE) -> list[str]:
    """The counts ("total", "activated", "embed") of ``row`` more than ``tolerance`` off."""
    pairs = {k: (row[f"ours_{k}"], row[f"paper_{k}"]) for k in ("total", "activated")}
    if row["embed"] is not None:
        pairs["embed"] = row["embed"]
    return [k for k, (ours, theirs) in pairs.items() if abs(ours / theirs - 1) > tolerance]


def lm_rows(paper: str):
    from seedjax.models.param_count import count, param_counts
    mod = importlib.import_module(f"configs.papers.{paper}")
    for variant, entry in mod.PAPER_PARAMS.items():
        counts = param_counts(mod.get_config(variant).model)
        conv = entry["convention"]
        embed = (counts["embed_total"], entry["embed"]) if "embed" in entry else None
        yield _row(paper, variant, conv if isinstance(conv, str) else " / ".join(conv),
                   count(counts, conv), (entry["total"], entry["activated"]), entry["source"],
                   embed)


def ouro_rows():
    from configs.papers import ouro
    from seedjax.models.param_count import param_counts
    for size, n in ouro.PAPER_PARAMS.items():
        total = param_counts(ouro.get_config(size).model)["total"]
        yield _row("ouro", size, "all", (total, total), (n, n), "released checkpoints")


def race_dit_rows():
    from configs.papers import race_dit
    from seedjax.models.dit import DiTConfig, param_counts
    for key, (total, active) in race_dit.PAPER_PARAMS.items():
        c = param_counts(DiTConfig.from_dict(race_dit.get_config(f"paper_{key}").model))
        yield _row("race_dit", f"paper_{key}", "blocks", (c["blocks_total"],
                   c["blocks_active"]), (total, active), "Table 4")


def rows(papers=PAPERS):
    for paper in papers:
        yield from {"ouro": ouro_rows, "race_dit": race_dit_rows}.get(
            paper, lambda p=paper: lm_rows(p))()


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def markdown(table) -> str:
    lines = [
        "# Paper-scale configs: parameter counts, ours vs the paper's", "",
        f"Regenerate: `{COMMAND}`", "",
        "Ours from the abstract model (`nnx.eval_shape`); activated = parameters one token "
        "touches (MoE experts top_k / n_experts, memory values heads x topk rows per table, "
        "n-gram tables one row per slice). Convention = which parts the paper counts "
        "(total / activated when they differ): all; non_embedding (no input embedding, no "
        "untied head); with_head (body + head: what forward FLOPs count); blocks (DiT "
        "transformer blocks). Sources, inferred shapes [I] and the reasons for counts more "
        f"than {TOLERANCE:.0%} off: each config's docstring and tests/configs/"
        "test_paper_scale.py (strict xfails).", "",
        "| paper | variant | convention | ours total | paper total | ratio | ours activated "
        "| paper activated | ratio | > 1% off | source |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    embeds = []
    for r in table:
        lines.append(
            f"| {r['paper']} | {r['variant']} | {r['convention']} | {_fmt(r['ours_total'])} | "
            f"{_fmt(r['paper_total'])} | {r['ours_total'] / r['paper_total']:.4f} | "
            f"{_fmt(r['ours_activated'])} | {_fmt(r['paper_activated'])} | "
            f"{r['ours_activated'] / r['paper_activated']:.4f} | "
            f"{', '.join(off_by_more(r)) or '-'} | {r['source']} |")
        if r["embed"] is not None:
            embeds.append(f"| {r['paper']} | {r['variant']} | {_fmt(r['embed'][0])} | "
                          f"{_fmt(r['embed'][1])} | {r['embed'][0] / r['embed'][1]:.4f} |")
    if embeds:
        lines += ["", "Input-embedding parameters, where the paper gives them:", "",
                  "| paper | variant | ours | paper | ratio |", "|---|---|---|---|---|", *embeds]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    with cli.expected_errors():
        unknown = sorted(set(FLAGS.papers) - set(PAPERS))
        if unknown:
            raise ValueError(f"--papers: {unknown} unknown; allowed: {', '.join(PAPERS)}")
    text = markdown(list(rows(FLAGS.papers)))
    if FLAGS.out:
        Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.out).write_text(text)
        print(f"wrote {FLAGS.out}")
    else:
        print(text, end="")


if __name__ == "__main__":
    cli.run(main, define_flags)
