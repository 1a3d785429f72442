"""What the KV policies of physical early exit cost in quality (Ouro reproduction, spec B.14).

  python -m experiments.looped_kv --out results/ouro/kv_policies \
      --workdirs runs/reproduce/ouro_cpu/looped_beta005/s0,...

For every trained looped run (one per seed) and every Q-exit threshold q of ``--q``: the
validation text is decoded token by token with teacher forcing
(``seedjax.eval.looped_decode.teacher_forced``: the first ``--prompt_len`` tokens prefilled
through every loop, then one token per step, each scored by the logits that predicted it)
under each KV policy. ``full_per_depth`` runs every loop for every token (the reference: the
same CE as the full forward with the same exit rule); ``last_available`` and
``final_exit_shared`` really skip the loops after a token's exit, so later tokens read K/V
from shallower loops (or one shared cache). Reported: CE and loops per decoded token, and each
skipping policy's CE minus the reference's, paired over seeds with the verdict rule of
results/README.md. Writes ``kv.json`` and ``kv.md``.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS
REFERENCE = "full_per_depth"


def define_flags() -> None:
    flags.DEFINE_list("workdirs", None, "Comma-separated looped run directories (one per seed).")
    flags.DEFINE_list("names", None, "Comma-separated run names (default: the basenames).")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_list("q", ["0.3", "0.5", "0.7"], "Q-exit thresholds in (0, 1].")
    flags.DEFINE_integer("batches", 2, "Validation batches per run.")
    flags.DEFINE_integer("prompt_len", 16, "Tokens prefilled through every loop.")
    flags.mark_flags_as_required(["workdirs", "out"])


def evaluate(model, batches, qs, prompt_len: int) -> dict:
    """{policy: {"ce": [len(qs)], "loops": [len(qs)]}} over the token batches [B, T]."""
    from seedjax.eval.looped_decode import KV_POLICIES, teacher_forced
    out = {}
    for policy in KV_POLICIES:
        ce, loops = [], []
        for q in qs:
            res = [teacher_forced(model, b, prompt_len, exit_threshold=q, kv_policy=policy)
                   for b in batches]
            ce.append(float(np.mean([r["ce"] for r in res])))
            loops.append(float(np.mean([r["mean_loops"] for r in res])))
        out[policy] = {"ce": ce, "loops": loops}
    return out


def report(runs: dict, qs: list[float], command: str, provenance: list[str]) -> str:
    from experiments.verdict import compare
    from seedjax.eval.looped_decode import KV_POLICIES
    rows = list(runs.values())
    lines = ["# Looped LM: KV policies of physical early exit, teacher-forced CE\n",
             f"Command: `{command}`\n", *provenance, "",
             f"Runs: {', '.join(runs)} (n = {len(rows)}). Each token of the validation text is "
             "decoded once with teacher forcing and scored by the logits that predicted it. "
             f"Verdicts: results/README.md (paired over runs against `{REFERENCE}`, 95% "
             "t-interval).\n",
             "| q | policy | loops / token | CE (mean ± std) | vs full_per_depth (paired mean, "
             "95% CI) | verdict |", "|---|---|---|---|---|---|"]
    for i, q in enumerate(qs):
        ref = np.asarray([r[REFERENCE]["ce"][i] for r in rows])
        for policy in KV_POLICIES:
            ce = np.asarray([r[policy]["ce"][i] for r in rows])
            loops = np.mean([r[policy]["loops"][i] for r in rows])
            std = ce.std(ddof=1) if len(ce) > 1 else 0.0
            cell, verdict = "-", "-"
            if policy != REFERENCE:
                c = compare(ce - ref)
                ci = "" if c.ci is None else f", [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"
                cell, verdict = f"{c.mean:+.4f}{ci}", c.verdict
            lines.append(f"| {q:g} | {policy} | {loops:.2f} | {ce.mean():.4f} ± {std:.4f} | "
                         f"{cell} | {verdict} |")
    return "\n".join(lines) + "\n"


def run(workdirs: list[str], names: list[str] | None, out: str, qs: list[float],
        batches: int = 2, prompt_len: int = 16, command: str = "") -> dict:
    from experiments.diagnose_connections import check_runs, val_token_batches
    from experiments.looped_depth import load_looped
    from experiments.provenance import analysis_provenance
    bad = [q for q in qs if not 0 < q <= 1]
    if bad or not qs:
        raise ValueError(f"--q={','.join(map(str, qs))}: thresholds must be in (0, 1]")
    if prompt_len < 1:
        raise ValueError(f"--prompt_len={prompt_len} must be >= 1")
    names = check_runs(workdirs, names, batches)
    runs = {}
    for w, name in zip(workdirs, names):
        model, config, step = load_looped(w)
        runs[name] = {**evaluate(model, val_token_batches(config, batches), qs, prompt_len),
                      "workdir": w, "step": step}
        print(f"{name}: step {step}, " + ", ".join(
            f"{p} CE {v['ce'][0]:.4f} at q={qs[0]:g}" for p, v in runs[name].items()
            if isinstance(v, dict)), flush=True)
    os.makedirs(out, exist_ok=True)
    origin, prov = analysis_provenance(command)
    with open(os.path.join(out, "kv.json"), "w") as f:
        json.dump({"command": command, "provenance": origin, "q": qs, "runs": runs}, f, indent=1)
    with open(os.path.join(out, "kv.md"), "w") as f:
        f.write(report(runs, qs, command, prov))
    return runs


def main(argv):
    del argv
    import sys
    absl_logging.set_verbosity(absl_logging.WARNING)
    command = "python -m experiments.looped_kv " + " ".join(sys.argv[1:])
    with cli.expected_errors():
        try:
            qs = [float(q) for q in FLAGS.q]
        except ValueError:
            raise ValueError(f"--q={','.join(FLAGS.q)}: thresholds must be numbers in (0, 1]")
        run(FLAGS.workdirs, FLAGS.names, FLAGS.out, qs, FLAGS.batches, FLAGS.prompt_len,
            command)
    print(f"wrote {FLAGS.out}/kv.md, kv.json")


if __name__ == "__main__":
    cli.run(main, define_flags)
