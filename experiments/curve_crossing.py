"""The step at which each run's loss curve first reaches a threshold, per row and seed.

For tasks whose loss drops suddenly (a model begins to store the facts of
``results/memory_facts``, or to recall in MQAR), the accuracy at the last step mixes "how fast"
with "how much" and can swing from 0.27 to 0.97 between seeds (dense, facts512). The crossing
step separates the two: a row that crosses later on every seed is slower; a row that never
crosses has not started.

  python -m experiments.curve_crossing --runs results/memory_facts/facts512/runs \
      --threshold 1.5 [--curve train_curve] [--rows dense,moe]

Reads the ``<row>__s<seed>.json`` files ``experiments.reproduce`` writes (their ``train_curve``
/ ``val_curve`` are ``[[step, loss], ...]``) and prints a markdown table.
"""
from __future__ import annotations

from absl import flags

from experiments import cli
from experiments.run_results import load_results
from experiments.seed_stats import mean_std_text, seed_stats
from seedjax.validation import check_choice

CURVES = ("train_curve", "val_curve")


def first_crossing(curve, threshold: float) -> int | None:
    """First logged step whose loss is <= ``threshold`` (``curve`` = ``[[step, loss], ...]``,
    steps increasing); None if the curve never gets there."""
    for step, loss in curve:
        if loss <= threshold:
            return int(step)
    return None


def crossing_table(results: list, threshold: float, curve: str = "train_curve",
                   rows: list | None = None) -> str:
    """Markdown table: per row, each seed's crossing step ('not by N' if it stays above up to
    its last logged step N), the mean ± std over the seeds that crossed, and how many did.
    ``results`` are run dicts with ``row``, ``seed`` and ``curve``; ``rows`` fixes the order
    (default: first appearance)."""
    check_choice("curve", curve, CURVES)
    by_row: dict[str, list] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    order = rows if rows else list(by_row)
    unknown = [name for name in order if name not in by_row]
    if unknown:
        raise ValueError(f"rows {unknown} have no runs; rows with runs: {sorted(by_row)}")
    lines = [f"First step where `{curve}` <= {threshold} (per seed; 'not by N' = still above at "
             "the last logged step N):", "",
             "| row | seeds | crossing step per seed | mean ± std (crossed) | crossed |",
             "|---|---|---|---|---|"]
    for name in order:
        runs = sorted(by_row[name], key=lambda r: r["seed"])
        steps = [first_crossing(r[curve], threshold) for r in runs]
        cells = [str(s) if s is not None else f"not by {r[curve][-1][0]}"
                 for s, r in zip(steps, runs)]
        crossed = [s for s in steps if s is not None]
        m, s, n = seed_stats(crossed)
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in runs)} | {' / '.join(cells)} | "
                     f"{mean_std_text(m, s, n, 0) if n else '-'} | {n}/{len(runs)} |")
    return "\n".join(lines) + "\n"


def load_runs(run_dir: str) -> list:
    """Every run result in ``run_dir`` (sorted by file name); a clear error if there is none."""
    results = load_results(run_dir)
    if not results:
        raise ValueError(f"--runs {run_dir!r} holds no <row>__s<seed>.json files")
    return results


def define_flags() -> None:
    flags.DEFINE_string("runs", None, "Directory of run results, e.g. results/<paper>/runs.")
    flags.DEFINE_float("threshold", None, "Loss level to reach.")
    flags.DEFINE_enum("curve", "train_curve", list(CURVES), "Which logged curve.")
    flags.DEFINE_list("rows", [], "Row order (default: order of the files).")
    flags.mark_flags_as_required(["runs", "threshold"])


def main(argv):
    del argv
    f = flags.FLAGS
    with cli.expected_errors():  # --runs without results, unknown --rows
        table = crossing_table(load_runs(f.runs), f.threshold, f.curve, f.rows or None)
    print(table, end="")


if __name__ == "__main__":
    cli.run(main, define_flags)
