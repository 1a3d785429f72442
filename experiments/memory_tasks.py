"""Score a trained run on the memory-intensive synthetic tasks (teacher-forced greedy accuracy).

  python -m experiments.memory_tasks --config configs/memory_tasks.py:cpu \
      --workdir runs/memory_tasks [--tasks mqar,multi_round,icl] [--episodes 512]

Loads the model of ``--workdir``'s latest (or ``--step``) checkpoint. The task sizes are those of
``--config``'s ``data.source`` when it is a ``task:`` source (pass the config the run trained
with), else of the run's own saved config; tasks it does not list use their default sizes scaled
to ``data.seq_len``. ``--episodes``/``--seed``/``--batch_size`` default to the config's
``task_eval`` block (else 256 / 0 / 32). Episodes come from the ``test`` split, disjoint from
training. Prints a markdown table and writes ``--out`` (default ``<workdir>/memory_tasks.json``)
plus the table next to it (``.md``). JSON: ``{"workdir", "step", "episodes", "seed",
"tasks": {name: {"config": {...}, "metrics": {...}}}}`` (metrics: seedjax.eval.task_scoring).
"""
from __future__ import annotations

import dataclasses
import json
import os

from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS


def _define_flags():  # at __main__ only, so importing run() defines no global flags
    flags.DEFINE_string("config", None, "Config file[:variant] (its data.source and task_eval; "
                        "override fields with --config.<section>.<field>=<value>); default: the "
                        "run's saved config.")
    flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
    flags.DEFINE_string("tasks", "", "Comma-separated tasks (default: those of data.source, "
                        "or all).")
    flags.DEFINE_integer("episodes", None, "Held-out episodes per task (default: "
                         "task_eval.episodes).")
    flags.DEFINE_integer("seed", None, "Episode seed (default: task_eval.seed).")
    flags.DEFINE_integer("batch_size", None, "Episodes per forward (default: "
                         "task_eval.batch_size).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    flags.DEFINE_string("out", None, "JSON output path (default: <workdir>/memory_tasks.json).")
    flags.DEFINE_bool("progress", True, "Show progress bars.")
    flags.mark_flag_as_required("workdir")

def run(workdir: str, config=None, *, tasks: str = "", episodes: int | None = None,
        seed: int | None = None, batch_size: int | None = None, step: int | None = None,
        out: str | None = None, progress: bool = True) -> dict:
    """Evaluates ``workdir``'s model, writes ``out`` (JSON) and its ``.md`` table; returns the
    JSON dict plus ``"table"`` (markdown)."""
    from seedjax.eval.task_scoring import evaluate_tasks, markdown_table, tasks_from_config
    from seedjax.train.restore import load_model

    model, run_config, step = load_model(workdir, step)
    config = run_config if config is None else config
    te = config.get("task_eval") or {}
    episodes = int(te.get("episodes", 256) if episodes is None else episodes)
    seed = int(te.get("seed", 0) if seed is None else seed)
    batch_size = int(te.get("batch_size", 32) if batch_size is None else batch_size)
    task_cfgs = tasks_from_config(config, tasks or te.get("tasks", ""))
    metrics = evaluate_tasks(model, task_cfgs, n_episodes=episodes, seed=seed,
                             batch_size=batch_size, progress=progress)
    result = {"workdir": os.path.abspath(workdir), "step": step, "episodes": episodes,
              "seed": seed, "tasks": {name: {"config": dataclasses.asdict(task_cfgs[name]),
                                             "metrics": m} for name, m in metrics.items()}}
    table = markdown_table(metrics)
    out = out or os.path.join(workdir, "memory_tasks.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(f"Memory tasks: `{workdir}` step {step}, {episodes} test episodes per task, "
                f"seed {seed} (teacher-forced greedy accuracy on answer tokens).\n\n{table}\n")
    return {**result, "table": table, "out": out}


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    from experiments.overrides import load_config
    from seedjax.eval.task_scoring import TASKS
    from seedjax.validation import check_choice, check_int
    with cli.expected_errors():  # flags and config first, then workdir and checkpoint step
        if cli.CONFIG_OVERRIDES and not FLAGS.config:
            raise ValueError(f"--config.{cli.CONFIG_OVERRIDES[0][0]} needs --config")
        config = load_config(FLAGS.config, cli.CONFIG_OVERRIDES) if FLAGS.config else None
        for name in (t for t in FLAGS.tasks.split(",") if t):
            check_choice("--tasks", name, tuple(TASKS))
        for flag in ("episodes", "batch_size"):
            if getattr(FLAGS, flag) is not None:
                check_int(f"--{flag}", getattr(FLAGS, flag))
        if FLAGS.seed is not None:
            check_int("--seed", FLAGS.seed, minimum=0)
        res = run(FLAGS.workdir, config, tasks=FLAGS.tasks, episodes=FLAGS.episodes,
                  seed=FLAGS.seed, batch_size=FLAGS.batch_size, step=FLAGS.step, out=FLAGS.out,
                  progress=FLAGS.progress)
    print(f"[checkpoint step {res['step']}, {res['episodes']} episodes per task]\n{res['table']}")
    print(f"wrote {res['out']}")


if __name__ == "__main__":
    cli.run(main, _define_flags, config_overrides=True)
