"""Run a paper's sweep (rows x seeds), resumably, and write its table and plots.

  python -m experiments.reproduce --config configs/papers/<paper>.py[:variant] \
      --out results/<paper> [--seeds 0,1,2] [--rows a,b] [--dry_run]

The config file defines ``get_config(variant)`` (the base run) and ``get_sweep(variant)`` -> rows
``{"name", "overrides": {"dotted.path": value}, "paper": reference text/number, "group"}`` and
optionally ``"vs": <row>``, the row it is paired with (experiments/paired_diffs.py). Each
(row, seed) trains in ``--workroot/<paper>[_<variant>]/<row>/s<seed>`` (itself resumable from
checkpoints; each variant of a config file has its own directories) and
writes ``<out>/runs/<row>__s<seed>.json``; rows whose result file exists are skipped, so a sweep
killed at the end of a session continues in the next one. After the runs, ``<out>/table.md`` and
``<out>/val_loss.png`` / ``<out>/curves.png`` summarise mean and spread over seeds; they always
cover every row of the sweep and every finished seed (``--rows`` / ``--seeds`` only choose what
runs, so a partial call never drops finished rows from the table), and table.md also lists each
row minus its reference on the same seed (per seed, mean, on how many seeds it is lower). A
config with a ``task_eval`` block (configs/memory_tasks.py) also gets held-out memory-task
accuracy per run (result key ``tasks``; seedjax.eval.task_scoring), a task-accuracy table and
``tasks.png`` (experiments/task_plot.py). A config with ``get_series(variant)`` also gets
loss-vs-x plots (``<out>/series_<name>.png``) and tables, e.g. loss vs number of slots
(experiments/sweep_series.py).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import time

from absl import app, flags
from absl import logging as absl_logging

from experiments.overrides import apply_overrides
from experiments.paired_diffs import paired_table, validate_references
from experiments.run_results import load_results, result_path
from experiments.seed_stats import mean_std_text, seed_stats
from experiments.sweep_series import validate_series, write_series
from experiments.task_plot import plot_task_accuracy, task_metric

FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a script (tests and tools import ``run_one`` /
    ``write_report`` next to other CLIs' modules; shared names such as --out must not clash)."""
    flags.DEFINE_string("config", None, "Paper config file[:variant].")
    flags.DEFINE_string("out", None, "Results directory, e.g. results/hyper_connections.")
    flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
    flags.DEFINE_string("rows", "", "Only these row names (comma-separated); default all.")
    flags.DEFINE_string("workroot", "runs/reproduce", "Where the runs' checkpoints go.")
    flags.DEFINE_bool("dry_run", False, "List the runs and exit.")
    flags.DEFINE_bool("report_only", False, "Only rebuild the table and plots from finished runs.")


def load_config_module(spec: str):
    path, _, variant = spec.partition(":")
    if not os.path.exists(path):
        raise ValueError(f"--config file {path!r} does not exist")
    mod_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    for fn in ("get_config", "get_sweep"):
        if not hasattr(module, fn):
            raise ValueError(f"{path} must define {fn}(variant)")
    return module, (variant or None)


def workdir_name(spec: str) -> str:
    """``configs/x.py:variant`` -> ``x_variant`` (``x`` without a variant): the directory under
    ``--workroot`` holding that sweep's checkpoints. Variants differ in data and model, so they must
    not resume each other's checkpoints."""
    path, _, variant = spec.partition(":")
    name = os.path.basename(path)[:-3]
    return f"{name}_{variant}" if variant else name


def run_one(base, row: dict, seed: int, workdir: str) -> dict:
    from seedjax.train.loop import NonFiniteLossError, Trainer
    cfg = apply_overrides(base, row.get("overrides", {}))
    cfg.train.seed = seed
    t0 = time.time()
    try:
        trainer = Trainer(cfg, workdir)
        summary = trainer.run()
    except NonFiniteLossError as e:
        return {"row": row["name"], "seed": seed, "status": "diverged", "error": str(e),
                "wall_s": time.time() - t0}
    train = summary["train"] or {}
    from seedjax.train.metrics import read_metrics
    metrics = os.path.join(workdir, "metrics.jsonl")  # absent if preempted before any log
    rows = read_metrics(metrics) if os.path.exists(metrics) else []
    # a resumed run logs the steps after its checkpoint again: keep the last value per step
    curve = lambda split: sorted({r["step"]: r["loss"] for r in rows
                                  if r["split"] == split}.items())
    extra = {}
    if summary["status"] == "completed" and "task_eval" in cfg:  # memory-task accuracy hook
        import jax
        from seedjax.eval.task_scoring import evaluate_config
        model = trainer.mdef.merge(jax.device_get(trainer.state["params"]))
        extra["tasks"] = evaluate_config(model, cfg)
    return {**extra, "row": row["name"], "seed": seed, "status": summary["status"],
            "step": summary["step"], "params": summary["n_params"],
            "val_loss": summary["val"]["loss"], "val_bpb": summary["val"]["bits_per_byte"],
            "train_loss": train.get("loss"), "step_time_s": train.get("step_time_s"),
            "tokens_per_s": train.get("tokens_per_s"), "wall_s": time.time() - t0,
            "val_curve": curve("val"), "train_curve": curve("train")}


def row_flops(base, row: dict) -> float | None:
    """Activated forward FLOPs per token of a row's model (None if no formula applies)."""
    from seedjax.models import LMConfig
    from seedjax.train.flops import lm_forward_flops_per_token
    try:
        cfg = apply_overrides(base, row.get("overrides", {}))
        return sum(lm_forward_flops_per_token(LMConfig.from_dict(cfg.model),
                                              cfg.data.seq_len).values())
    except ValueError:
        return None


def _axis_top(means: list) -> float:
    """Upper y-limit that keeps rows near the best readable: rows above median + 4 x (median -
    best), at least 0.05 nats, are drawn at this limit and labelled with their value."""
    finite = sorted(m for m in means if math.isfinite(m))
    if not finite:
        return math.inf
    med = finite[len(finite) // 2]
    return med + 4 * max(med - finite[0], 0.05)


def write_report(out: str, rows: list, results: list, command: str, seeds: list,
                 base=None, series: list | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seedjax.train.loop import versions
    by_row = {r["name"]: [x for x in results if x["row"] == r["name"]] for r in rows}
    loss = {n: seed_stats([x.get("val_loss") for x in res]) for n, res in by_row.items()}
    base_name = rows[0]["name"]
    base_mean = loss[base_name][0]
    lines = [f"# {os.path.basename(out.rstrip('/'))}: reproduction table", "",
             f"Command: `{command}`", f"Seeds: {seeds}. Generated {time.strftime('%Y-%m-%d %H:%M')}.",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores; versions: "
             + ", ".join(f"{k} {v}" for k, v in versions().items() if k != "platform"), "",
             "| group | row | paper | val loss (mean ± std, n) | Δ vs " + base_name +
             " | val bits/byte | step s | params | fwd MFLOP/token | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = by_row[r["name"]]
        m, s, n = loss[r["name"]]
        bpb = seed_stats([x.get("val_bpb") for x in res])[0]
        st = seed_stats([x.get("step_time_s") for x in res])[0]
        div = sum(x["status"] == "diverged" for x in res)
        params = next((x["params"] for x in res if x.get("params")), 0)
        flops = row_flops(base, r) if base is not None else None
        flops = "" if flops is None else f"{flops / 1e6:.2f}"
        if n == 0 and div == 0:
            lines.append(f"| {r.get('group', '')} | {r['name']} | {r.get('paper', '')} | "
                         f"not run yet | | | | | {flops} | |")
            continue
        lines.append(f"| {r.get('group', '')} | {r['name']} | {r.get('paper', '')} | "
                     f"{mean_std_text(m, s, n, 4)} | {m - base_mean:+.4f} | {bpb:.4f} | "
                     f"{st:.3f} | {params / 1e6:.2f}M | {flops} | {div} |")
    lines += paired_table(rows, by_row, lambda x: x.get("val_loss"),
                          "Paired val-loss differences (row minus its reference on the same "
                          "seed; negative = row lower):")
    task_names = sorted({t for x in results for t in (x.get("tasks") or {})})
    if task_names:  # runs of configs with a task_eval block (see seedjax.eval.task_scoring)
        lines += ["", "Held-out memory-task token accuracy (teacher-forced greedy; mean ± std, "
                  "n):", "", "| row | " + " | ".join(task_names) + " |",
                  "|---" * (len(task_names) + 1) + "|"]
        for r in rows:
            accs = [seed_stats([task_metric(x, t) for x in by_row[r["name"]]])
                    for t in task_names]
            lines.append(f"| {r['name']} | " + " | ".join(
                mean_std_text(m, s, n, 3) if n else "" for m, s, n in accs) + " |")
        for t in task_names:
            lines += paired_table(
                rows, by_row, lambda x, t=t: task_metric(x, t),
                f"Paired {t} token-accuracy differences (row minus its reference on the same "
                "seed; positive = row better, so 'lower on' counts seeds where it is worse):",
                digits=3)
    os.makedirs(out, exist_ok=True)
    if task_names:
        plot_task_accuracy(out, rows, by_row, task_names)
        lines += ["", "Plot: `tasks.png` (every seed of every row, mean ± std, chance)."]
    if series:  # loss against a swept quantity (experiments/sweep_series.py)
        lines += write_series(out, series, loss)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    names = [r["name"] for r in rows]
    stats = [loss[n] for n in names]
    top = _axis_top([s[0] for s in stats if s[2]])
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 4))
    shown = [min(s[0], top) if s[2] else float("nan") for s in stats]
    ax.errorbar(range(len(names)), shown, yerr=[s[1] if s[2] and s[0] <= top else 0
                                                for s in stats], fmt="o", capsize=4)
    for i, (m, _, n) in enumerate(stats):
        if n and m > top:  # off-scale rows (diverged, collapsed) sit at the top edge, labelled
            ax.annotate(f"{m:.2f} ↑", (i, top), textcoords="offset points", xytext=(0, -12),
                        ha="center", fontsize=8, color="C3")
    if stats and stats[0][2]:
        ax.axhline(stats[0][0], color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("final val loss (nats/token)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "val_loss.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve_top = -math.inf
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, n in enumerate(names):
        pts = {}
        for x in by_row[n]:
            for step, loss in x.get("val_curve", []):
                pts.setdefault(step, []).append(loss)
        if pts:
            steps = sorted(pts)
            curve = [sum(pts[s]) / len(pts[s]) for s in steps]
            off = curve[-1] > top
            ax.plot(steps, curve, "-o" if i % 2 == 0 else "--s", ms=3, color=colors(i % 20),
                    label=n + (" (off scale)" if off else ""))
            if not off:
                curve_top = max(curve_top, max(curve))
    if curve_top > -math.inf:
        ax.set_ylim(top=curve_top + 0.02 * abs(curve_top))
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    module, variant = load_config_module(FLAGS.config)
    base = module.get_config(variant)
    rows = all_rows = module.get_sweep(variant)
    series = module.get_series(variant) if hasattr(module, "get_series") else []
    validate_series(series, [r["name"] for r in rows])
    validate_references(rows)
    if FLAGS.rows:
        wanted = FLAGS.rows.split(",")
        unknown = sorted(set(wanted) - {r["name"] for r in rows})
        if unknown:
            raise app.UsageError(f"--rows {unknown} unknown; rows: {[r['name'] for r in rows]}")
        rows = [r for r in rows if r["name"] in wanted]
    seeds = [int(s) for s in FLAGS.seeds.split(",") if s]
    paper = workdir_name(FLAGS.config)
    run_dir = os.path.join(FLAGS.out, "runs")
    os.makedirs(run_dir, exist_ok=True)
    todo = [(r, s) for r in rows for s in seeds
            if not os.path.exists(result_path(run_dir, r["name"], s))]
    print(f"{len(rows) * len(seeds)} runs, {len(todo)} to do")
    if FLAGS.dry_run:
        for r, s in todo:
            print(f"  {r['name']} seed {s}: {r.get('overrides', {})}")
        return
    command = (f"python -m experiments.reproduce --config {FLAGS.config} --out {FLAGS.out} "
               f"--seeds {FLAGS.seeds}")

    def report():  # every row of the sweep and every finished seed, whatever --rows/--seeds ran
        results = load_results(run_dir, [r["name"] for r in all_rows])
        found = sorted({int(x["seed"]) for x in results if "seed" in x}) or seeds
        write_report(FLAGS.out, all_rows, results, command, found, base, series)

    if not FLAGS.report_only:
        for i, (r, s) in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {r['name']} seed {s}", flush=True)
            res = run_one(base, r, s, os.path.join(FLAGS.workroot, paper, r["name"], f"s{s}"))
            if res["status"] == "preempted":  # SIGTERM: the run saved a checkpoint; no result
                print(f"preempted during {r['name']} seed {s}; rerun to resume", flush=True)
                break
            with open(result_path(run_dir, r["name"], s), "w") as f:
                json.dump(res, f, indent=2)
            report()  # the table is current after every run, so a killed sweep leaves one
    report()
    print(open(os.path.join(FLAGS.out, "table.md")).read())


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
