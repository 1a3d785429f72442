"""Routing diagnostics of trained Race-DiT runs (issue 20 item 6; notes C.11 items 3-6): where
the experts go over time levels (Fig. 6), patch positions and stroke vs background patches,
load statistics per layer (Table 2), block-output norms per layer with and without per-layer
regularisation (Fig. 5), and experts per token at batch size 1 (threshold vs batch race).

  R=runs/reproduce/race_dit_cpu
  A=$R/expert_race/s0,$R/race_identity/s0,$R/race_identity_threshold/s0
  B=$R/race_identity_threshold_plr/s0,$R/race_balance_loss/s0
  python -m experiments.diagnose_race --workdirs $A,$B --results results/race_dit/runs \
      --out results/race_dit/diagnostics [--names a,b,...] [--levels 8] [--images 256] \
      [--single_images 32] [--params auto|ema|params] [--step N]

(the full recipe; no threshold, i.e. the batch race at inference; threshold without PLR;
threshold + PLR without RSL; + Switch balance loss.)

Each run's latest checkpoint (or --step) is loaded with ``seedjax.train.restore.load_run``
(``--params``: the EMA weights when the run keeps them, by default); the first --images val
images of its own data config are noised at --levels time levels s = (i + 0.5) / levels
(s = 0 noise, s = 1 data; the paper's low timestep index is s near 1) with fixed noise
(--seed). Definitions: ``seedjax.eval.routing_maps``. Writes to --out:
  diagnostics.md        command, commit, per-run provenance and the tables
  diagnostics.json      the numbers
  experts_vs_time.png   experts per token vs s per run and layer (eval mode: threshold; training
                        mode: batch race over batches of the run's batch size mixing all levels)
  spatial_maps.png      experts per token per patch position (eval mode), per run and layer
  block_norms.png       RMS of each block's attention / FFN output per layer, runs with and
                        without PLR side by side
  load.png              per-expert load and experts-per-token histogram per run (eval mode)
--results: the reproduction's run files (<row>__s<seed>.json, from the workdir's
<row>/s<seed> tail) whose ``provenance`` says what each run was trained with.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS
PARAMS = {"auto": None, "ema": True, "params": False}


def define_flags() -> None:
    flags.DEFINE_list("workdirs", None, "Comma-separated Race-DiT run directories.")
    flags.DEFINE_list("names", None, "Comma-separated labels (default: <row>/s<seed> of "
                      "reproduction run directories, else the basenames).")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest of each run).")
    flags.DEFINE_integer("levels", 8, "Time levels s = (i + 0.5) / levels.")
    flags.DEFINE_integer("images", 256, "Val images per run (per level).")
    flags.DEFINE_integer("single_images", 32, "Val images run alone (batch 1) per level.")
    flags.DEFINE_integer("seed", 0, "Noise seed.")
    flags.DEFINE_enum("params", "auto", list(PARAMS),
                      "auto: EMA weights when the run has them; ema: require them; params: raw.")
    flags.DEFINE_float("stroke_threshold", -0.9, "A patch is stroke when its mean clean pixel "
                       "(in [-1, 1]) exceeds this.")
    flags.DEFINE_string("results", None, "Directory of the runs' result files "
                        "(<row>__s<seed>.json) for provenance.")
    flags.DEFINE_bool("progress", True, "Show progress bars.")
    flags.mark_flags_as_required(["workdirs", "out"])


def default_name(workdir: str) -> str:
    """'<row>/s<seed>' for a reproduction run directory, else its basename."""
    parts = os.path.normpath(workdir).split(os.sep)
    if re.fullmatch(r"s\d+", parts[-1]) and len(parts) > 1:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def check_args(workdirs: list[str], names: list[str] | None, levels: int, images: int,
               single_images: int, step: int | None, params: str = "auto"
               ) -> tuple[list[str], list]:
    """Validates the arguments and each run (checkpoint step, task, MoE) from its saved config
    alone; returns (names, configs). One-line ValueErrors."""
    from experiments.diagnose_connections import check_runs
    from seedjax.train.restore import run_config
    names = check_runs(workdirs, names or [default_name(w) for w in workdirs], 1)
    for flag, v, low in (("--levels", levels, 1), ("--images", images, 1),
                         ("--single_images", single_images, 0)):
        if v < low:
            raise ValueError(f"{flag}={v} must be >= {low}")
    if params not in PARAMS:
        raise ValueError(f"--params={params!r}; allowed: {list(PARAMS)}")
    configs = []
    for w in workdirs:
        config, _ = run_config(w, step)
        task = config.get("task", "lm")
        if task != "image_diffusion":
            raise ValueError(f"workdir {w!r} is not an image-diffusion run (task={task!r}); "
                             "routing diagnostics need a Race-DiT run")
        if config.model.get("ffn") != "moe":
            raise ValueError(f"workdir {w!r} is not an MoE run (model.ffn="
                             f"{config.model.get('ffn')!r}); routing diagnostics need "
                             "model.ffn='moe'")
        if params == "ema" and not float(config.train.get("ema_decay", 0.0)) > 0:
            raise ValueError(f"--params=ema but the run in {w!r} keeps no EMA of its weights "
                             "(train.ema_decay = 0); use --params=params or auto")
        configs.append(config)
    return names, configs


def run_file(results: str | None, workdir: str) -> dict | None:
    """The reproduction's result-file dict of ``workdir`` (``<row>/s<seed>``), if found."""
    if not results:
        return None
    parts = os.path.normpath(workdir).split(os.sep)
    m = re.fullmatch(r"s(\d+)", parts[-1])
    if not m or len(parts) < 2:
        return None
    path = os.path.join(results, f"{parts[-2]}__s{m.group(1)}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def val_images(config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` val images [n, H, W, C] in [-1, 1] and labels of a run's data config."""
    from seedjax.data.images import ImageData
    d = config.data
    data = ImageData(source=d.source, batch_size=int(d.batch_size), seed=int(config.train.seed),
                     val_fraction=float(d.val_fraction), max_val_batches=1)
    return data.val_x[:n], data.val_y[:n]


def _bar(enabled: bool, desc: str):
    """A progress callback (done, total) drawing a tqdm bar, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    state = {}

    def update(done, total):
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stdout,
                                leave=False)
        state["bar"].update(done - state["bar"].n)
        if done == total:
            state["bar"].close()
    return update


def diagnose_run(workdir: str, config, *, name: str, step, levels: int, images: int,
                 single_images: int, seed: int, use_ema, stroke_threshold: float,
                 progress: bool) -> dict:
    """All diagnostics of one run (numpy inside); see ``run``."""
    import jax

    from seedjax.eval import routing_maps as rm
    from seedjax.train.diffusion import make_diffusion_objective
    from seedjax.train.restore import load_run
    loaded = load_run(workdir, step, use_ema=use_ema)
    model = loaded.model
    tc = config.train
    objective = make_diffusion_objective(tc.get("objective", "flow"),
                                         dict(tc.get("objective_kwargs") or {}))
    x, y = val_images(config, images)
    lv = rm.time_levels(levels)
    key = jax.random.key(seed)
    batch = int(config.data.batch_size)
    kw = dict(key=key, objective=objective, batch_size=batch, stroke_threshold=stroke_threshold)
    print(f"{name}: step {loaded.step} ({loaded.params_used} weights), {len(x)} val images x "
          f"{levels} levels", flush=True)
    ev = rm.allocation(model, x, y, lv, train=False, progress=_bar(progress, f"{name} eval"), **kw)
    tr = rm.allocation(model, x, y, lv, train=True, progress=_bar(progress, f"{name} race"),
                       **kw)
    one = (rm.batch_one(model, x[:single_images], y[:single_images], lv, key=key,
                        objective=objective) if single_images else None)
    moe = model.config.moe_config()
    return {"name": name, "workdir": workdir, "step": loaded.step,
            "params_used": loaded.params_used, "images": len(x), "batch_size": batch,
            "router": moe.router, "gating": moe.routing.gating, "k": moe.top_k,
            "n_experts": moe.n_experts, "threshold": moe.uses_threshold, "plr": moe.plr,
            "similarity_coef": moe.similarity_coef, "balance_coef": moe.balance_coef,
            "rule": rm.inference_rule(model), "eval": ev, "train": tr, "batch_one": one}


# ----------------------------------------------------------------------------- page
def _f(x, digits=2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(map(str, r)) + " |" for r in rows], ""]


def markdown(runs: list[dict], levels: np.ndarray, command: str, origin: dict,
             run_files: list) -> str:
    from experiments import provenance
    from seedjax.eval.routing_maps import summary_rows
    dirty = " (+uncommitted edits)" if provenance.code_edits(origin) else ""
    lines = ["# Race-DiT routing diagnostics\n", f"Command: `{command}`\n",
             f"Commit: {origin['commit'][:10]}{dirty}; machine: {origin['machine']}.\n",
             "Time: s = 0 pure noise, s = 1 clean data (the paper's low timestep index, fine "
             "detail, is s near 1). Eval mode routes by the run's inference rule (the EMA "
             "threshold, or the batch race over one level's images when the run keeps no "
             "threshold, as when sampling); training mode races over batches of the run's "
             "batch size that mix all levels. Stroke patches: mean clean pixel above the "
             "stroke threshold.\n", "## Runs\n"]
    with_prov = [r for r in run_files if r]
    if with_prov:
        lines += [*provenance.summary_lines(with_prov), ""]
    rows = []
    for r, f in zip(runs, run_files):
        p = (f or {}).get("provenance") or {}
        trained = (p["commit"][:10] + (" (+edits)" if provenance.code_edits(p) else "")
                   if p else "no provenance record")
        rows.append([r["name"], f"`{r['workdir']}`", r["step"], r["params_used"],
                     f"{r['router']}/{r['gating']}", f"{r['k']}-in-{r['n_experts']}",
                     r["rule"], "yes" if r["plr"] else "no", r["similarity_coef"],
                     r["balance_coef"], trained])
    lines += _table(["run", "workdir", "step", "weights", "router/gating", "MoE",
                     "inference rule", "PLR", "RSL coef", "balance coef", "trained at"], rows)

    lines += ["## Experts per token vs time level (Fig. 6)\n",
              "Mean experts per token over the val images at each level, per MoE layer "
              "(block index); k is the budget.\n"]
    rows = []
    for r in runs:
        for mode in ("eval", "train"):
            a = r[mode]
            for i, b in enumerate(a.layers):
                rows.append([r["name"], "threshold/eval" if mode == "eval" else "batch race",
                             b, *[_f(v) for v in a.per_level[i]]])
    lines += _table(["run", "mode", "block", *[f"s={s:.3f}" for s in levels]], rows)

    lines += ["## Stroke vs background patches\n"]
    rows = []
    for r in runs:
        for mode in ("eval", "train"):
            for row in summary_rows(r[mode]):
                rows.append([r["name"], mode, row["block"], _f(row["stroke"]),
                             _f(row["background"]), _f(row["experts_per_token"])])
    lines += _table(["run", "mode", "block", "stroke", "background", "all"], rows)

    lines += ["## Load statistics per layer (Table 2 pattern)\n",
              "MaxVio = (max - mean) / mean of the per-expert pair counts pooled over the val "
              "items; Comb = % of expert pairs holding 95% of co-activations (mean over "
              "forward batches); histogram = fraction of tokens with 0, 1, ..., E experts.\n"]
    rows = []
    for r in runs:
        for mode in ("eval", "train"):
            for row in summary_rows(r[mode]):
                hist = " ".join(f"{h:.2f}" for h in row["histogram"])
                rows.append([r["name"], mode, row["block"], _f(row["max_violation"], 3),
                             _f(row["combination_usage"], 1), _f(row["load_min"], 3),
                             _f(row["load_max"], 3), _f(row["tokens_without_expert"], 3),
                             hist, int(row["dropped"]),
                             "" if row["tau"] is None else _f(row["tau"], 4)])
    lines += _table(["run", "mode", "block", "MaxVio", "Comb %", "load min", "load max",
                     "no expert", "histogram 0..E", "dropped", "tau"], rows)

    lines += ["## Block-output norms (Fig. 5)\n",
              "RMS of each block's gated attention / FFN output, eval mode, mean over the "
              "levels (sqrt of the mean square).\n"]
    n_layers = max(r["eval"].branch_norms.shape[1] for r in runs)
    rows = []
    for r in runs:
        bn = np.sqrt(np.mean(np.square(r["eval"].branch_norms), 0))
        rows.append([r["name"], "yes" if r["plr"] else "no",
                     *[f"{bn[i, 0]:.3g} / {bn[i, 1]:.3g}" for i in range(bn.shape[0])]])
    lines += _table(["run", "PLR", *[f"block {i} attn / ffn" for i in range(n_layers)]], rows)

    lines += ["## Batch size 1\n",
              "Each image alone: experts per token (mean over images, layers, levels) with the "
              "eval-mode rule and with the batch race (a race over one image selects exactly "
              "L k pairs); deviation from k.\n"]
    rows = []
    for r in runs:
        one = r["batch_one"]
        if one is None:
            continue
        st = one.stats()
        for mode, label in (("threshold", f"eval ({one.rule})"), ("race", "batch race")):
            m = st[mode]
            rows.append([r["name"], label, r["k"], _f(m["mean"], 3), _f(m["mean_dev"], 3),
                         _f(m["mean_abs_dev"], 3), _f(m["max_abs_dev"], 3)])
    lines += _table(["run", "routing", "k", "experts/token", "mean - k", "mean abs dev",
                     "max abs dev"], rows) if rows else ["(--single_images=0: skipped)\n"]
    lines += ["Plots: experts_vs_time.png, spatial_maps.png, block_norms.png, load.png.\n"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panels(plt, n: int, width: float, height: float, rows_per_panel: int = 1, **kw):
    """(figure, [panel][row] axes) for n panels in up to 4 columns."""
    cols = min(n, 4)
    grid = -(-n // cols)
    fig, axes = plt.subplots(grid * rows_per_panel, cols, figsize=(width * cols,
                             height * grid * rows_per_panel), squeeze=False, **kw)
    panels = [[axes[g * rows_per_panel + r][c] for r in range(rows_per_panel)]
              for g in range(grid) for c in range(cols)]
    for extra in panels[n:]:
        for ax in extra:
            ax.axis("off")
    return fig, panels[:n]


def plot_time(runs: list[dict], path: str) -> None:
    plt = _plt()
    fig, panels = _panels(plt, len(runs), 4, 3.2, sharey=True)
    for (ax,), r in zip(panels, runs):
        for mode, style in (("eval", "-"), ("train", "--")):
            a = r[mode]
            for i, b in enumerate(a.layers):
                ax.plot(a.levels, a.per_level[i], style, marker="o", ms=3, color=f"C{i}",
                        label=f"block {b} ({'threshold/eval' if mode == 'eval' else 'race'})")
        ax.axhline(r["k"], color="grey", lw=0.8, ls=":")
        ax.set_title(r["name"], fontsize=9)
        ax.set_xlabel("s (0 noise -> 1 data)")
        ax.set_ylabel("experts per token")
    panels[-1][0].legend(fontsize=6)
    _save(plt, fig, path)


def plot_spatial(runs: list[dict], path: str) -> None:
    plt = _plt()
    m = max(len(r["eval"].layers) for r in runs)
    fig, axes = plt.subplots(len(runs), m, figsize=(2.2 * m, 2.2 * len(runs)), squeeze=False)
    for row, r in zip(axes, runs):
        a = r["eval"]
        maps = np.nanmean(a.spatial, axis=1)
        for j, ax in enumerate(row):
            ax.axis("off")
            if j >= len(a.layers):
                continue
            im = ax.imshow(maps[j], cmap="viridis", vmin=0)
            ax.set_title(f"{r['name']}\nblock {a.layers[j]}", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("experts per token per patch (eval mode, mean over levels)", fontsize=9)
    _save(plt, fig, path)


def plot_norms(runs: list[dict], path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, plr in zip(axes, (True, False)):
        for c, r in enumerate(x for x in runs if x["plr"] == plr):
            bn = np.sqrt(np.mean(np.square(r["eval"].branch_norms), 0))
            idx = np.arange(bn.shape[0])
            ax.plot(idx, bn[:, 1], "-o", color=f"C{c}", ms=3, label=f"{r['name']} ffn")
            ax.plot(idx, bn[:, 0], ":", color=f"C{c}", label=f"{r['name']} attn")
        ax.set_title("with PLR" if plr else "without PLR", fontsize=9)
        ax.set_xlabel("block")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("RMS of block output (eval, mean over levels)")
    _save(plt, fig, path)


def plot_load(runs: list[dict], path: str) -> None:
    plt = _plt()
    fig, panels = _panels(plt, len(runs), 3.6, 2.5, rows_per_panel=2)
    for (top, bottom), r in zip(panels, runs):
        a = r["eval"]
        e = np.arange(a.n_experts)
        w = 0.8 / len(a.layers)
        hist = a.histogram.sum(1)
        for i, b in enumerate(a.layers):
            top.bar(e + i * w, a.expert_load[i], w, color=f"C{i}", label=f"block {b}")
            h = hist[i] / max(hist[i].sum(), 1)
            bottom.bar(np.arange(a.n_experts + 1) + i * w, h, w, color=f"C{i}")
        top.axhline(1 / a.n_experts, color="grey", lw=0.8, ls=":")
        top.set_title(r["name"], fontsize=9)
        top.set_xlabel("expert")
        top.set_ylabel("fraction of pairs")
        bottom.set_xlabel("experts per token")
        bottom.set_ylabel("fraction of tokens")
    panels[-1][0].legend(fontsize=6)
    _save(plt, fig, path)


def to_json(r: dict) -> dict:
    from experiments.diagnose_connections import jsonable
    from seedjax.eval.routing_maps import summary_rows
    out = {k: v for k, v in r.items() if k not in ("eval", "train", "batch_one")}
    for mode in ("eval", "train"):
        a = r[mode]
        out[mode] = {"layers": a.layers, "items": a.items, "batches": a.batches,
                     "per_level": a.per_level, "content": a.content,
                     "spatial": a.spatial, "expert_load": a.expert_load,
                     "summary": summary_rows(a)}
        if a.branch_norms is not None:
            out[mode]["branch_norms"] = a.branch_norms
    if r["batch_one"] is not None:
        out["batch_one"] = {"rule": r["batch_one"].rule, **r["batch_one"].stats()}
    return jsonable(out)


def run(workdirs: list[str], names: list[str] | None, out: str, *, step: int | None = None,
        levels: int = 8, images: int = 256, single_images: int = 32, seed: int = 0,
        params: str = "auto", stroke_threshold: float = -0.9, results: str | None = None,
        progress: bool = True, argv: list[str] | None = None) -> dict:
    """Diagnoses every run and writes the files of the module doc to ``out``; returns
    {"levels", "command", "runs": [per-run JSON dicts]}."""
    from experiments import provenance
    from seedjax.eval.routing_maps import time_levels
    names, configs = check_args(workdirs, names, levels, images, single_images, step, params)
    argv = sys.argv if argv is None else argv
    command = shlex.join(["python", "-m", "experiments.diagnose_race", *argv[1:]])
    origin = provenance.current(argv, "")
    runs = []
    for i, (w, name, config) in enumerate(zip(workdirs, names, configs)):
        print(f"[{i + 1}/{len(workdirs)}] {name}", flush=True)
        runs.append(diagnose_run(w, config, name=name, step=step, levels=levels, images=images,
                                 single_images=single_images, seed=seed,
                                 use_ema=PARAMS[params], stroke_threshold=stroke_threshold,
                                 progress=progress))
    os.makedirs(out, exist_ok=True)
    files = [run_file(results, w) for w in workdirs]
    lv = time_levels(levels)
    with open(os.path.join(out, "diagnostics.md"), "w") as f:
        f.write(markdown(runs, lv, command, origin, files))
    plot_time(runs, os.path.join(out, "experts_vs_time.png"))
    plot_spatial(runs, os.path.join(out, "spatial_maps.png"))
    plot_norms(runs, os.path.join(out, "block_norms.png"))
    plot_load(runs, os.path.join(out, "load.png"))
    result = {"levels": lv.tolist(), "command": command, "commit": origin["commit"],
              "runs": [to_json(r) for r in runs]}
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def main(argv):
    del argv  # the flags are in FLAGS; the page's command reads sys.argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    with cli.expected_errors():  # flags, workdirs, checkpoint steps, non-MoE runs
        check_args(FLAGS.workdirs, FLAGS.names, FLAGS.levels, FLAGS.images,
                   FLAGS.single_images, FLAGS.step, FLAGS.params)
    result = run(FLAGS.workdirs, FLAGS.names, FLAGS.out, step=FLAGS.step, levels=FLAGS.levels,
                 images=FLAGS.images, single_images=FLAGS.single_images, seed=FLAGS.seed,
                 params=FLAGS.params, stroke_threshold=FLAGS.stroke_threshold,
                 results=FLAGS.results, progress=FLAGS.progress)
    for r in result["runs"]:
        ept = ", ".join(f"{x:.2f}" for x in np.mean(r["eval"]["per_level"], 0))
        print(f"{r['name']}: eval experts/token vs s (mean over layers): {ept}")
    print(f"wrote {FLAGS.out}/diagnostics.md, diagnostics.json and 4 PNGs")


if __name__ == "__main__":
    cli.run(main, define_flags)
