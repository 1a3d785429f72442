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
``tasks.png`` (experiments/task_plot.py); generation-scored tasks (``cfg_generation``,
configs/papers/over_tokenized_cfg.py) get a generation-accuracy table of their own. A config
with ``get_series(variant)`` also gets loss-vs-x plots (``<out>/series_<name>.png``) and tables,
e.g. loss vs number of slots (experiments/sweep_series.py).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from typing import Callable

from absl import flags
from absl import logging as absl_logging

from experiments import cli, provenance
from experiments.overrides import apply_overrides
from experiments.paired_diffs import paired_table, validate_references
from experiments.run_results import load_results, result_path
from experiments.seed_stats import mean_std_text, seed_stats
from experiments.sweep_series import validate_series, write_series
from experiments.task_plot import plot_task_accuracy, task_kind, task_metric

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
    flags.mark_flags_as_required(["config", "out"])


def load_config_module(spec: str):
    path, _, variant = spec.partition(":")
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError(f"no config file {path!r}; expected a Python file[:variant] with "
                         "get_config and get_sweep, e.g. configs/papers/seednorm.py:cpu")
    mod_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except (SyntaxError, ImportError) as e:
        raise ValueError(f"cannot load {path}: {e}") from e
    for fn in ("get_config", "get_sweep"):
        if not hasattr(module, fn):
            raise ValueError(f"{path} must define {fn}(variant)")
    return module, (variant or None)


def paper_scale_of(module, variant) -> dict | None:
    """A config's paper scale: ``get_paper_scale(variant)`` or the constant ``PAPER_SCALE``."""
    if hasattr(module, "get_paper_scale"):
        return module.get_paper_scale(variant)
    return getattr(module, "PAPER_SCALE", None)


def workdir_name(spec: str) -> str:
    """``configs/x.py:variant`` -> ``x_variant`` (``x`` without a variant): the directory under
    ``--workroot`` holding that sweep's checkpoints. Variants differ in data and model, so they must
    not resume each other's checkpoints."""
    path, _, variant = spec.partition(":")
    name = os.path.basename(path)[:-3]
    return f"{name}_{variant}" if variant else name


def run_one(base, row: dict, seed: int, workdir: str, origin: dict | None = None) -> dict:
    """Trains one (row, seed) in ``workdir`` and returns its result-file dict; ``origin``
    (experiments.provenance.current) is stored under ``provenance``."""
    from seedjax.train.loop import NonFiniteLossError, Trainer
    cfg = apply_overrides(base, row.get("overrides", {}))
    cfg.train.seed = seed
    t0 = time.time()
    try:
        trainer = Trainer(cfg, workdir)
        summary = trainer.run()
    except NonFiniteLossError as e:
        return {"row": row["name"], "seed": seed, "status": "diverged", "error": str(e),
                "wall_s": time.time() - t0, "provenance": origin}
    train = summary["train"] or {}
    from seedjax.train.metrics import read_metrics
    metrics = os.path.join(workdir, "metrics.jsonl")  # absent if preempted before any log
    rows = read_metrics(metrics) if os.path.exists(metrics) else []
    # a resumed run logs the steps after its checkpoint again: keep the last value per step
    curve = lambda split: sorted({r["step"]: r["loss"] for r in rows
                                  if r["split"] == split}.items())
    extra = {}
    val_more = {k: v for k, v in (summary["val"] or {}).items()
                if k not in ("loss", "bits_per_byte", "tokens")}
    if val_more:  # e.g. a looped model's loop_ce/t and exit statistics
        extra["val_metrics"] = val_more
    if summary.get("data_diagnostics"):  # e.g. over-encoding's table collisions at step 0
        extra["data_diagnostics"] = summary["data_diagnostics"]
    if summary["status"] == "completed" and "task_eval" in cfg:  # memory-task accuracy hook
        import jax
        from seedjax.eval.task_scoring import evaluate_config
        model = trainer.mdef.merge(jax.device_get(trainer.state["params"]))
        extra["tasks"] = evaluate_config(model, cfg)
    unit = getattr(getattr(trainer, "task", None), "unit", "tokens")
    if summary["status"] == "completed" and unit == "images":
        extra["image_eval"] = image_eval(trainer, cfg, workdir)
    unit = f"{unit}_per_s"
    return {**extra, "row": row["name"], "seed": seed, "status": summary["status"],
            "step": summary["step"], "params": summary["n_params"],
            "val_loss": summary["val"]["loss"], "val_bpb": summary["val"].get("bits_per_byte"),
            "train_loss": train.get("loss"), "step_time_s": train.get("step_time_s"),
            unit: train.get(unit), "wall_s": time.time() - t0,
            "val_curve": curve("val"), "train_curve": curve("train"), "provenance": origin}


def image_eval(trainer, cfg, workdir: str) -> dict:
    """A diffusion run's samples scored by the in-repo classifier (FID-proxy, class accuracy;
    ``image_eval.per_class`` images per class, ``sample.*`` sampler), and its sample grid."""
    from seedjax.eval.diffusion_sampling import generate_per_class, write_class_grid
    from seedjax.eval.fid_proxy import score_images, train_classifier
    per_class = int(cfg.get("image_eval", {}).get("per_class", 50))
    images, labels = generate_per_class(trainer, per_class, seed=1000 + int(cfg.train.seed))
    out = score_images(train_classifier(cfg.data.source), images, labels)
    write_class_grid(trainer, os.path.join(workdir, "samples.png"))
    return out


def row_flops(base, row: dict) -> float | None:
    """Activated forward FLOPs per token of a row's model (None if no formula applies)."""
    from seedjax.models import LMConfig
    from seedjax.train.flops import lm_forward_flops_per_token
    try:
        cfg = apply_overrides(base, row.get("overrides", {}))
        if cfg.get("task", "lm") == "image_diffusion":   # per patch token
            from seedjax.models.dit import DiTConfig, forward_flops_per_image
            dit = DiTConfig.from_dict(cfg.model)
            return sum(forward_flops_per_image(dit).values()) / dit.tokens
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


def reproduce_commands(config: str, out: str, rows: list, results: list) -> list[str]:
    """The fewest ``experiments.reproduce`` commands (one per distinct set of seeds) that, from an
    empty ``<out>/runs``, make exactly the runs in ``results``: rows sharing a seed set share a
    command; ``--rows`` is left out when every row of the sweep has that set."""
    seeds_of = {r["name"]: tuple(sorted({int(x["seed"]) for x in results
                                         if x["row"] == r["name"]})) for r in rows}
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if seeds_of[r["name"]]:
            groups.setdefault(seeds_of[r["name"]], []).append(r["name"])
    cmds = []
    for seeds, names in groups.items():
        sel = "" if len(names) == len(rows) else f" --rows {','.join(names)}"
        cmds.append(f"python -m experiments.reproduce --config {config} --out {out}{sel} "
                    f"--seeds {','.join(map(str, seeds))}")
    return cmds


def scale_lines(base, results: list, rows: list, paper_scale: dict | None) -> list[str]:
    """Markdown line: our model and token count beside the paper's, as ratios.

    paper_scale: {"what": text, "params": float, "tokens": float} (a config's PAPER_SCALE)."""
    params = next((x["params"] for r in rows[:1] for x in results
                   if x["row"] == r["name"] and x.get("params")), None)
    if base is None or not params:
        return []
    if "seq_len" not in base.data:   # images: the count of training samples drawn
        images = int(base.train.steps) * int(base.data.batch_size)
        ours = (f"Scale: ours {params / 1e6:.2f}M parameters ({rows[0]['name']}), "
                f"{images / 1e3:.1f}k training images drawn (steps x batch)")
        if not paper_scale or "images" not in paper_scale:
            return [ours + "."]
        return [ours + f"; paper: {paper_scale['what']}, {paper_scale['params'] / 1e6:,.0f}M "
                f"parameters, {paper_scale['images'] / 1e6:,.0f}M images drawn: ours is 1/"
                f"{paper_scale['params'] / params:,.0f} of its parameters and 1/"
                f"{paper_scale['images'] / images:,.0f} of its images."]
    tokens = int(base.train.steps) * int(base.data.batch_size) * int(base.data.seq_len)
    ours = f"Scale: ours {params / 1e6:.2f}M parameters ({rows[0]['name']}), {tokens / 1e6:.2f}M " \
           f"training tokens"
    if not paper_scale:
        return [ours + "; the config states no paper scale."]
    if "params" not in paper_scale:
        return [ours + f"; paper: {paper_scale['what']}."]
    return [ours + f"; paper: {paper_scale['what']}, {paper_scale['params'] / 1e6:,.0f}M "
            f"parameters, {paper_scale['tokens'] / 1e9:,.0f}B tokens: ours is 1/"
            f"{paper_scale['params'] / params:,.0f} of its parameters and 1/"
            f"{paper_scale['tokens'] / tokens:,.0f} of its tokens."]


def report_text(out: str, config: str, rows: list, results: list, base=None,
                series: list | None = None, paper_scale: dict | None = None,
                plots: bool = True) -> str:
    """table.md of a sweep, from its run files only (so CI can regenerate and compare it); draws
    the task and series plots too unless ``plots`` is False."""
    by_row = {r["name"]: [x for x in results if x["row"] == r["name"]] for r in rows}
    loss = {n: seed_stats([x.get("val_loss") for x in res]) for n, res in by_row.items()}
    base_name = rows[0]["name"]
    base_mean = loss[base_name][0]
    seeds = sorted({int(x["seed"]) for x in results if "seed" in x})
    lines = [f"# {os.path.basename(out.rstrip('/'))}: reproduction table", "",
             f"Config: `{config}`. Seeds: {seeds}.", "",
             "Commands that make exactly these runs (each run file also holds its own):", "",
             *[f"    {c}" for c in reproduce_commands(config, out, rows, results)], "",
             *provenance.summary_lines(results), *scale_lines(base, results, rows, paper_scale),
             "", "Verdicts: experiments/verdict.py, the rule stated in results/README.md.", "",
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
                     f"{mean_std_text(m, s, n, 4)} | {m - base_mean:+.4f} | "
                     f"{'' if math.isnan(bpb) else f'{bpb:.4f}'} | "
                     f"{st:.3f} | {params / 1e6:.2f}M | {flops} | {div} |")
    lines += paired_table(rows, by_row, lambda x: x.get("val_loss"),
                          "Paired val-loss differences (row minus its reference on the same "
                          "seed; negative = row lower):")
    task_names = sorted({t for x in results for t in (x.get("tasks") or {})})
    kinds = {t: task_kind(results, t) for t in task_names}
    gen_names = [t for t in task_names if kinds[t] == "generation"]
    cap_names = [t for t in task_names if kinds[t] == "capacity"]
    forced_names = [t for t in task_names if kinds[t] == "forced"]
    if forced_names:  # runs of configs with a task_eval block (see seedjax.eval.task_scoring)
        lines += metric_tables(
            rows, by_row, forced_names, task_metric,
            "Held-out memory-task token accuracy (teacher-forced greedy; mean ± std, n):",
            lambda t: f"Paired {t} token-accuracy differences (row minus its reference on the "
            "same seed; positive = row better, so 'lower on' counts seeds where it is worse):",
            digits=3)
    if gen_names:  # generation-scored tasks, e.g. cfg_generation (grammar-accepted samples)
        lines += metric_tables(
            rows, by_row, gen_names, task_metric,
            "Generation accuracy (samples from bos at temperature 1 accepted by the task's "
            "judge, e.g. the grammar; mean ± std, n):",
            lambda t: f"Paired {t} generation-accuracy differences (row minus its reference on "
            "the same seed; positive = row better, so 'lower on' counts seeds where it is "
            "worse):", digits=3)
    if cap_names:  # knowledge-capacity probes (capo_capacity: bits stored per parameter)
        lines += metric_tables(
            rows, by_row, cap_names, task_metric,
            "Knowledge capacity R(F), bits stored per parameter (seedjax.eval.capacity; mean ± "
            "std, n):",
            lambda t: f"Paired {t} bits-per-parameter differences (row minus its reference on "
            "the same seed):", digits=4)
    image_names = [k for k in ("fid_proxy", "class_accuracy")
                   if any(k in (x.get("image_eval") or {}) for x in results)]
    if image_names:  # diffusion runs (reproduce.image_eval)
        lines += metric_tables(
            rows, by_row, image_names, lambda x, k: (x.get("image_eval") or {}).get(k),
            "Samples scored by the in-repo digit classifier (FID-proxy: Frechet distance of its "
            "128-d features to the train images', lower is better, NOT comparable to ImageNet "
            "FID; class accuracy of the conditioned label; mean ± std, n):",
            lambda k: f"Paired {k} differences (row minus its reference on the same seed):",
            digits=3)
    val_names = sorted({k for x in results for k in (x.get("val_metrics") or {})},
                       key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])
                                      if k.rsplit("/", 1)[-1].isdigit() else -1, k))
    if val_names:  # e.g. a looped model's per-loop CE and exit statistics
        lines += metric_tables(
            rows, by_row, val_names, lambda x, k: (x.get("val_metrics") or {}).get(k),
            "Further validation metrics (mean ± std, n; runs that report them):",
            lambda k: f"Paired {k} differences (row minus its reference on the same seed):",
            digits=4, paired_names=[k for k in val_names if "/" not in k], skip_empty=True)
    os.makedirs(out, exist_ok=True)
    if task_names:
        if plots:
            plot_task_accuracy(out, rows, by_row, task_names)
        lines += ["", "Plot: `tasks.png` (every seed of every row, mean ± std, chance)."]
    if series:  # loss against a swept quantity (experiments/sweep_series.py)
        per_seed = {n: {x["seed"]: x["val_loss"] for x in res if x.get("val_loss") is not None}
                    for n, res in by_row.items()}
        lines += write_series(out, series, loss, plot=plots, per_seed=per_seed)
    return "\n".join(lines) + "\n"


def metric_tables(rows: list, by_row: dict, names: list, value: Callable, caption: str,
                  paired_title: Callable[[str], str], digits: int = 3,
                  paired_names: list | None = None, skip_empty: bool = False) -> list[str]:
    """Markdown lines: a table of ``value(run, name)`` (mean ± std over seeds) per row and name,
    then a paired-difference table per name of ``paired_names`` (default: all)."""
    lines = ["", caption, "", "| row | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for r in rows:
        stats = [seed_stats([value(x, k) for x in by_row[r["name"]]]) for k in names]
        if skip_empty and not any(n for _, _, n in stats):
            continue
        lines.append(f"| {r['name']} | " + " | ".join(
            mean_std_text(m, s, n, digits) if n else "" for m, s, n in stats) + " |")
    for k in (names if paired_names is None else paired_names):
        lines += paired_table(rows, by_row, lambda x, k=k: value(x, k), paired_title(k),
                              digits=digits)
    return lines


def write_report(out: str, config: str, rows: list, results: list, base=None,
                 series: list | None = None, paper_scale: dict | None = None) -> None:
    """Writes ``<out>/table.md`` (report_text) and the plots val_loss.png and curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = report_text(out, config, rows, results, base, series, paper_scale)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    by_row = {r["name"]: [x for x in results if x["row"] == r["name"]] for r in rows}
    loss = {n: seed_stats([x.get("val_loss") for x in res]) for n, res in by_row.items()}
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


def load_sweep(config: str) -> dict:
    """Everything a report needs from ``config`` (file[:variant]): base config, validated rows
    and series, the paper's scale."""
    module, variant = load_config_module(config)
    rows = module.get_sweep(variant)
    series = module.get_series(variant) if hasattr(module, "get_series") else []
    validate_series(series, [r["name"] for r in rows])
    validate_references(rows)
    return {"base": module.get_config(variant), "rows": rows, "series": series,
            "paper_scale": paper_scale_of(module, variant)}


def page_text(out: str, config: str) -> str:
    """``<out>/table.md`` as the run files in ``<out>/runs`` give it (no plots drawn)."""
    sw = load_sweep(config)
    results = load_results(os.path.join(out, "runs"), [r["name"] for r in sw["rows"]])
    return report_text(out, config, sw["rows"], results, sw["base"], sw["series"],
                       sw["paper_scale"], plots=False)


def main(argv):
    del argv  # the flags are in FLAGS; provenance reads sys.argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    with cli.expected_errors(f"--config={FLAGS.config}"):
        sw = load_sweep(FLAGS.config)
    base, series = sw["base"], sw["series"]
    rows = all_rows = sw["rows"]
    if FLAGS.rows:
        wanted = FLAGS.rows.split(",")
        unknown = sorted(set(wanted) - {r["name"] for r in rows})
        if unknown:
            cli.fail(f"--rows {unknown} unknown; rows: {[r['name'] for r in rows]}")
        rows = [r for r in rows if r["name"] in wanted]
    with cli.expected_errors():
        seeds = cli.int_list("--seeds", FLAGS.seeds)
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
    origin = provenance.current(sys.argv, FLAGS.config)  # absl strips the flags from argv

    def report():  # every row of the sweep and every finished seed, whatever --rows/--seeds ran
        results = load_results(run_dir, [r["name"] for r in all_rows])
        write_report(FLAGS.out, FLAGS.config, all_rows, results, base, series,
                     sw["paper_scale"])

    if not FLAGS.report_only:
        for i, (r, s) in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {r['name']} seed {s}", flush=True)
            res = run_one(base, r, s, os.path.join(FLAGS.workroot, paper, r["name"], f"s{s}"),
                          origin)
            if res["status"] == "preempted":  # SIGTERM: the run saved a checkpoint; no result
                print(f"preempted during {r['name']} seed {s}; rerun to resume", flush=True)
                break
            with open(result_path(run_dir, r["name"], s), "w") as f:
                json.dump(res, f, indent=2)
            report()  # the table is current after every run, so a killed sweep leaves one
    report()
    print(open(os.path.join(FLAGS.out, "table.md")).read())


if __name__ == "__main__":
    cli.run(main, define_flags)
