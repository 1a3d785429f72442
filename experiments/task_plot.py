"""``<out>/tasks.png``: held-out memory-task accuracy per sweep row, every seed shown.

One panel per task (seedjax.eval.task_scoring result key ``tasks``; its headline metric,
``task_metric``: token accuracy, or generation accuracy for generation tasks): each finished
seed is a small dot, the mean over seeds a marker with a ± std bar, and the task's chance
accuracy a dashed line. With seed spreads as large as the gaps between designs
(results/memory_tasks), the dots matter more than the means.
"""
from __future__ import annotations

import os

from experiments.seed_stats import seed_stats


# a task's kind -> its headline metric and axis label: generation probes (``gen_acc``, e.g.
# cfg_generation), capacity probes (``bits_per_param``, capo_capacity), teacher-forced tasks
KINDS = {"generation": ("gen_acc", "generation accuracy (sampled)"),
         "capacity": ("bits_per_param", "knowledge capacity (bits / parameter)"),
         "forced": ("token_acc", "held-out token accuracy")}
PRIMARY_KEYS = tuple(key for key, _ in KINDS.values())


def task_kind(runs, task: str) -> str:
    """"generation", "capacity" or "forced" (teacher-forced): the kind of the runs' scores of
    ``task``, told by its headline metric."""
    metrics = [(x.get("tasks") or {}).get(task) or {} for x in runs]
    return next((kind for kind, (key, _) in KINDS.items()
                 if any(key in m for m in metrics)), "forced")


def task_metric(run: dict, task: str, key: str | None = None) -> float | None:
    """One run result's metric for one task (None if the run has no such task score); ``key``
    None: the task's headline metric (``PRIMARY_KEYS``: the first one the run has)."""
    m = (run.get("tasks") or {}).get(task) or {}
    if key is None:
        key = next((k for k in PRIMARY_KEYS if k in m), PRIMARY_KEYS[-1])
    return m.get(key)


def task_values(runs: list, task: str, key: str | None = None) -> list[tuple[int, float]]:
    """[(seed, value)] of one task's metric over a row's runs (runs without it are left out)."""
    return [(int(x.get("seed", -1)), float(v)) for x in runs
            if (v := task_metric(x, task, key)) is not None]


def plot_task_accuracy(out: str, rows: list, by_row: dict, task_names: list) -> str:
    """Writes ``<out>/tasks.png`` and returns its path. rows: sweep rows; by_row: row name ->
    run results; task_names: the tasks to draw (one panel each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # per panel, the rows that have the task (a sweep may score different tasks per row)
    panels = {t: {r["name"]: vals for r in rows
                  if (vals := task_values(by_row.get(r["name"], []), t))} for t in task_names}
    width = max(len(values) for values in panels.values())
    fig, axes = plt.subplots(1, len(task_names), squeeze=False,
                             figsize=(max(5, 0.8 * width) * len(task_names), 4))
    for ax, task in zip(axes[0], task_names):
        names = list(panels[task])
        chance = next((c for n in names for x in by_row.get(n, [])
                       if (c := task_metric(x, task, "chance"))), None)
        for i, vals in enumerate(panels[task].values()):
            ax.plot([i] * len(vals), [v for _, v in vals], "o", ms=4, color="grey", alpha=0.7)
            m, s, _ = seed_stats([v for _, v in vals])
            ax.errorbar([i + 0.15], [m], yerr=[s], fmt="D", ms=6, capsize=4, color="C0")
        if chance is not None:
            ax.axhline(chance, color="C3", ls="--", lw=0.8, label=f"chance {chance:.3f}")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(f"{task}: dots = seeds, diamond = mean ± std", fontsize=9)
        kind = task_kind([x for n in names for x in by_row.get(n, [])], task)
        ax.set_ylabel(KINDS[kind][1])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, "tasks.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
