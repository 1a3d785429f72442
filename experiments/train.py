"""Train a model from an ml_collections config; resumes automatically from --workdir.

  python -m experiments.train --config configs/lm.py:tiny --workdir runs/tiny \
      [--config.train.steps=600] [--config.data.source=/path/to/text]

At the end it prints validation bits-per-byte and a text sample, and writes loss.png,
metrics.jsonl and TensorBoard events to the workdir. Multi-host: pass --coordinator,
--num_processes and --process_id (or --distributed_auto on TPU pods / SLURM).

The config and every flag are validated before anything runs (seedjax.train.config_check):
a bad value, unknown field, config file or multi-host flag prints one ``error:`` line and
exits 2; a non-finite loss exits 3.
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from experiments.cli import CONFIG_OVERRIDES, fail
    from experiments.overrides import load_config
    from seedjax.train.config_check import ConfigError, check_distributed_flags
    try:
        config = load_config(FLAGS.config, CONFIG_OVERRIDES)
        check_distributed_flags(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    except ConfigError as e:
        fail(e)
    from seedjax.sharding.multihost import maybe_initialize
    maybe_initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                     auto_detect=FLAGS.distributed_auto)
    import jax
    from seedjax.train.loop import NonFiniteLossError, Trainer

    try:
        trainer = Trainer(config, FLAGS.workdir, progress=FLAGS.progress)
        summary = trainer.run()
    except ValueError as e:
        fail(e)
    except NonFiniteLossError as e:
        fail(e, code=3)
    if jax.process_index() != 0:
        return
    print(f"status: {summary['status']} at step {summary['step']} "
          f"({summary['n_params'] / 1e6:.2f}M parameters)")
    if summary["val"]:
        print(f"validation: loss {summary['val']['loss']:.4f} nats/byte, "
              f"bits/byte {summary['val']['bits_per_byte']:.4f}")
    if summary["train"] and "tokens_per_s" in summary["train"]:  # absent: no timed step
        t = summary["train"]
        print(f"throughput: {t['tokens_per_s']:.0f} tokens/s, {t['tflops_per_device'] * 1e3:.1f} "
              f"GFLOP/s/device, MFU {t['mfu']:.1%} ({trainer.peak_source})")
    if summary["loss_png"]:
        print(f"loss curve: {summary['loss_png']}")
    if FLAGS.sample and summary["status"] == "completed":
        from seedjax.eval.sampling import sample_text
        model = trainer.mdef.merge(jax.device_get(trainer.state["params"]))
        s = config.sample
        print("sample:\n" + sample_text(model, trainer.data.tokenizer, s.prompt, s.length,
                                        temperature=s.temperature, top_p=s.top_p, seed=s.seed))


if __name__ == "__main__":
    from experiments.cli import parse_flags
    app.run(main, flags_parser=parse_flags)
