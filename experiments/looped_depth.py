"""Depth and exit curves of trained looped LMs, one run per seed (Ouro reproduction).

  python -m experiments.looped_depth --out results/ouro/depth \
      --workdirs runs/reproduce/ouro_cpu/looped/s0,runs/reproduce/ouro_cpu/looped/s1,...

For every run (``seedjax.eval.exit_curves`` on its validation batches): the CE of loops
1..``--max_loops`` (past the trained T: extrapolation), Q-exit with the learned gate, static exit
and the hidden-state-difference rule (CE vs mean loops executed). Writes ``depth.json`` (per run),
``depth.md`` (mean ± std over runs; the loop-to-loop CE changes paired over runs with the verdict
rule of experiments/verdict.py) and ``depth.png`` (the two curves).
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("workdirs", None, "Comma-separated run directories (one per seed).")
    flags.DEFINE_list("names", None, "Comma-separated run names (default: the basenames).")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_integer("max_loops", 8, "Loops to evaluate (>= the trained T).")
    flags.DEFINE_integer("batches", 16, "Validation batches per run.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest of each run).")
    flags.mark_flags_as_required(["workdirs", "out"])


def _mean_std(rows: list, key: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray([r[key] for r in rows], np.float64)
    return a.mean(0), (a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:]))


def report(runs: dict, command: str, provenance: list[str]) -> str:
    """depth.md from {name: exit_curves result}."""
    from experiments.verdict import compare
    rows = list(runs.values())
    loops, max_loops = rows[0]["loops"], len(rows[0]["depth_ce"])
    depth = np.asarray([r["depth_ce"] for r in rows])
    mean, std = _mean_std(rows, "depth_ce")
    lines = ["# Looped LM: loss per loop and exit rules\n", f"Command: `{command}`\n",
             *provenance, "",
             f"Runs: {', '.join(runs)} (n = {len(rows)}); trained T = {loops}; validation "
             f"tokens per run: {int(rows[0]['tokens'])}. Verdicts: results/README.md "
             "(paired over runs, 95% t-interval).\n",
             "## Validation CE of each loop\n",
             "| loop | CE (mean ± std) | vs previous loop (paired mean, 95% CI) | verdict |",
             "|---|---|---|---|"]
    for m in range(max_loops):
        cell, verdict = "-", "-"
        if m:
            c = compare(depth[:, m] - depth[:, m - 1])
            ci = "" if c.ci is None else f", [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"
            cell, verdict = f"{c.mean:+.4f}{ci}", c.verdict
        tag = " (trained depth)" if m + 1 == loops else (" (extrapolated)" if m + 1 > loops
                                                         else "")
        lines.append(f"| {m + 1}{tag} | {mean[m]:.4f} ± {std[m]:.4f} | {cell} | {verdict} |")
    lines += ["", "## Exit rules over the trained loops (CE vs mean loops executed)\n",
              "| rule | setting | mean loops | CE (mean ± std) |", "|---|---|---|---|"]
    for name, grid, ce_key, loops_key in (("Q-exit (gate)", "q_grid", "q_ce", "q_loops"),
                                          ("hidden difference", "tau_grid", "diff_ce",
                                           "diff_loops")):
        ce_m, ce_s = _mean_std(rows, ce_key)
        n_m, _ = _mean_std(rows, loops_key)
        for i, v in enumerate(rows[0][grid]):
            setting = f"q = {v:g}" if grid == "q_grid" else f"tau = {v:.3g}"
            lines.append(f"| {name} | {setting} | {n_m[i]:.3f} | {ce_m[i]:.4f} ± {ce_s[i]:.4f} |")
    for k in range(loops):
        lines.append(f"| static | loop {k + 1} | {k + 1} | {mean[k]:.4f} ± {std[k]:.4f} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(runs.values())
    loops = rows[0]["loops"]
    mean, std = _mean_std(rows, "depth_ce")
    x = np.arange(1, len(mean) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.errorbar(x, mean, yerr=std, marker="o", capsize=3)
    a.axvline(loops, color="gray", ls="--", label=f"trained T = {loops}")
    a.set_xlabel("loop"), a.set_ylabel("val CE (nats/token)"), a.legend()
    a.set_title(f"CE per loop (mean ± std, n = {len(rows)})")
    for label, ce_key, n_key, style in (("Q-exit (gate)", "q_ce", "q_loops", "o-"),
                                        ("hidden difference", "diff_ce", "diff_loops", "s-")):
        b.plot(_mean_std(rows, n_key)[0], _mean_std(rows, ce_key)[0], style, label=label)
    b.plot(x[:loops], mean[:loops], "^--", label="static exit")
    b.set_xlabel("mean loops executed"), b.set_ylabel("val CE (nats/token)")
    b.set_title("exit rules"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_looped(workdir: str, step: int | None = None):
    """(model, config, step) of a looped run's checkpoint; ValueError for any other model."""
    from seedjax.train.restore import load_model
    model, config, ckpt_step = load_model(workdir, step)
    if not getattr(model, "looped", False):
        raise ValueError(f"workdir {workdir!r} is not a looped model (model.stack="
                         f"{config.model.stack!r}); allowed: runs with model.stack='looped'")
    return model, config, ckpt_step


def run(workdirs: list[str], names: list[str] | None, out: str, max_loops: int = 8,
        batches: int = 16, step: int | None = None, command: str = "") -> dict:
    from experiments.diagnose_connections import check_runs, jsonable, val_batches
    from experiments.provenance import analysis_provenance
    from seedjax.eval.exit_curves import exit_curves
    names = check_runs(workdirs, names, batches)
    if max_loops < 1:
        raise ValueError(f"--max_loops must be >= 1, got {max_loops}")
    runs = {}
    for w, name in zip(workdirs, names):
        model, config, ckpt_step = load_looped(w, step)
        if max_loops < model.layers.config.loops:
            raise ValueError(f"--max_loops={max_loops} is below the trained loops "
                             f"{model.layers.config.loops} of {w!r}")
        res = exit_curves(model, val_batches(config, batches), max_loops=max_loops)
        runs[name] = {**jsonable(res), "workdir": w, "step": ckpt_step}
        print(f"{name}: step {ckpt_step}, CE per loop "
              + " ".join(f"{v:.4f}" for v in res["depth_ce"]), flush=True)
    os.makedirs(out, exist_ok=True)
    origin, prov = analysis_provenance(command)
    with open(os.path.join(out, "depth.json"), "w") as f:
        json.dump({"command": command, "provenance": origin, "runs": runs}, f, indent=1)
    with open(os.path.join(out, "depth.md"), "w") as f:
        f.write(report(runs, command, prov))
    plot(runs, os.path.join(out, "depth.png"))
    return runs


def main(argv):
    del argv
    import sys
    absl_logging.set_verbosity(absl_logging.WARNING)
    command = "python -m experiments.looped_depth " + " ".join(sys.argv[1:])
    with cli.expected_errors():  # flags, workdirs, checkpoint step
        run(FLAGS.workdirs, FLAGS.names, FLAGS.out, FLAGS.max_loops, FLAGS.batches, FLAGS.step,
            command)
    print(f"wrote {FLAGS.out}/depth.md, depth.png, depth.json")


if __name__ == "__main__":
    cli.run(main, define_flags)
