"""Train a model from an ml_collections config; resumes automatically from --workdir.

  python -m experiments.train --config configs/lm.py:tiny --workdir runs/tiny \
      [--config.train.steps=600] [--config.data.source=/path/to/text]

At the end it prints validation bits-per-byte and a text sample (encoded and decoded with the
run's tokenizer, data.tokenizer), and writes loss.png,
metrics.jsonl and TensorBoard events to the workdir. Multi-host: pass --coordinator,
--num_processes and --process_id (or --distributed_auto on TPU pods / SLURM).

The config and every flag are validated before anything runs (seedjax.train.config_check):
a bad value, unknown field, config file or multi-host flag prints one ``error:`` line and
exits 2; a non-finite loss exits 3. Multi-host: when a peer process dies, the others exit within
--peer_timeout_s (default 30 s) with one ``error: lost process ...`` line naming it and the last
checkpoint step (exit code 4; SIGABRT when the coordinator itself died), see
seedjax/sharding/failure.py. SIGTERM: inside the training loop the step finishes, a checkpoint is
saved and the run exits 0 (``status: preempted``); before the first step (start-up) or after the
loop it exits 0 at once with one ``status: stopped by SIGTERM ...`` line.
"""
from __future__ import annotations

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file and variant, e.g. configs/lm.py:tiny; override "
                    "any field with --config.<section>.<field>=<value> ('None' for optional fields).")
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")
flags.DEFINE_bool("sample", True, "Print a text sample at the end.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator address host:port.")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's id (multi-host).")
flags.DEFINE_bool("distributed_auto", False, "Auto-detect the cluster for jax.distributed.")
flags.DEFINE_float("peer_timeout_s", 30.0, "Multi-host: when a peer process has been silent "
                   "this long, every other process exits with one line naming it (exit code 4).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import os

    from seedjax.sharding import failure
    guard = failure.SigtermGuard()  # SIGTERM during start-up: one status line, exit 0
    guard.install()
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from experiments.cli import CONFIG_OVERRIDES, fail
    from experiments.overrides import load_config
    from seedjax.train.config_check import ConfigError, check_distributed_flags
    try:
        config = load_config(FLAGS.config, CONFIG_OVERRIDES)
        check_distributed_flags(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
        if not FLAGS.peer_timeout_s > 0:
            raise ConfigError(f"--peer_timeout_s={FLAGS.peer_timeout_s} must be > 0 (seconds)")
    except ConfigError as e:
        fail(e)
    ckpt_dir = os.path.abspath(os.path.join(FLAGS.workdir, "checkpoints"))
    failure.set_checkpoint_reporter(lambda: failure.last_committed_step(ckpt_dir))
    if FLAGS.coordinator or FLAGS.distributed_auto:
        failure.filter_fatal_stderr(ckpt_dir)  # jax's abort when the coordinator dies -> 1 line
    from seedjax.sharding.multihost import maybe_initialize
    multi = maybe_initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                             auto_detect=FLAGS.distributed_auto,
                             peer_timeout_s=FLAGS.peer_timeout_s)
    guard.install()  # again: jax.distributed's preemption notifier may have taken SIGTERM
    import jax
    from seedjax.train.loop import NonFiniteLossError, Trainer

    try:
        trainer = Trainer(config, FLAGS.workdir, progress=FLAGS.progress)
        summary = trainer.run()
    except Exception as e:  # noqa: BLE001
        if multi:  # a failed collective: a peer died; the watchdog names it and exits
            failure.wait_if_peer_lost(e)
        if isinstance(e, NonFiniteLossError):
            fail(e, code=3)
        if isinstance(e, ValueError):
            fail(e)
        raise
    guard.phase = "wind-down (after the training loop)"
    if jax.process_index() != 0:
        return
    print(f"status: {summary['status']} at step {summary['step']} "
          f"({summary['n_params'] / 1e6:.2f}M parameters)")
    unit = trainer.task.unit
    if summary["val"] and unit == "tokens":
        print(f"validation: loss {summary['val']['loss']:.4f} nats/token, "
              f"bits/byte {summary['val']['bits_per_byte']:.4f}")
    elif summary["val"]:
        print(f"validation: loss {summary['val']['loss']:.4f} (mean squared error of the "
              f"{trainer.objective.kind} target)")
    if summary["train"] and f"{unit}_per_s" in summary["train"]:  # absent: no timed step
        t = summary["train"]
        print(f"throughput: {t[f'{unit}_per_s']:.0f} {unit}/s, {t['tflops_per_device'] * 1e3:.1f} "
              f"GFLOP/s/device, MFU {t['mfu']:.1%} ({trainer.peak_source})")
    if summary["loss_png"]:
        print(f"loss curve: {summary['loss_png']}")
    if FLAGS.sample and summary["status"] == "completed" and unit == "images":
        from seedjax.eval.diffusion_sampling import write_class_grid
        path = write_class_grid(trainer, os.path.join(FLAGS.workdir, "samples.png"))
        print(f"samples: {path} (one row per class)")
    elif FLAGS.sample and summary["status"] == "completed":
        from seedjax.eval.sampling import sample_text
        model = trainer.mdef.merge(jax.device_get(trainer.state["params"]))
        s = config.sample
        print("sample:\n" + sample_text(model, trainer.data.tokenizer, s.prompt, s.length,
                                        temperature=s.temperature, top_p=s.top_p, seed=s.seed))


if __name__ == "__main__":
    from experiments.cli import parse_flags
    app.run(main, flags_parser=parse_flags)
