"""Sample text from a trained run's latest checkpoint using the KV cache.

  python -m experiments.generate --workdir runs/tiny --prompt "def " --length 200 \
      --temperature 0.8 --top_p 0.95     # --temperature 0 for greedy

Text is encoded and decoded with the run's tokenizer: bytes, or the run's
``<workdir>/tokenizer.json`` when it trained with ``data.tokenizer="bpe"`` or a file.
"""
from __future__ import annotations

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
flags.DEFINE_string("prompt", None, "Prompt text (default: the config's sample.prompt).")
flags.DEFINE_integer("length", None, "Tokens to generate (default: config sample.length).")
flags.DEFINE_float("temperature", None, "0 = greedy (default: config).")
flags.DEFINE_float("top_p", None, "Nucleus mass in (0, 1] (default: config).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("num_samples", 1, "Number of samples (batch).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from experiments.cli import fail
    from seedjax.train.config_check import ConfigError, check_field, validate_sample
    try:  # flag ranges first, before any checkpoint is read
        if FLAGS.num_samples < 1:
            raise ConfigError(f"--num_samples={FLAGS.num_samples} must be >= 1")
        for k in ("prompt", "length", "temperature", "top_p"):
            if getattr(FLAGS, k) is not None:
                check_field(f"--{k}", f"sample.{k}", getattr(FLAGS, k))
    except ConfigError as e:
        fail(e)
    from seedjax.data.pipeline import run_tokenizer
    from seedjax.eval.sampling import sample_text
    from seedjax.train.restore import load_model
    try:
        model, config, step = load_model(FLAGS.workdir, FLAGS.step)
        s = config.sample
        pick = lambda flag, default: default if flag is None else flag
        prompt, length = pick(FLAGS.prompt, s.prompt), pick(FLAGS.length, s.length)
        temperature, top_p = pick(FLAGS.temperature, s.temperature), pick(FLAGS.top_p, s.top_p)
        names = {k: f"--{k}" if getattr(FLAGS, k) is not None else f"sample.{k} (saved config)"
                 for k in ("prompt", "length", "temperature", "top_p")}
        validate_sample(prompt, length, temperature, top_p, max_seq_len=model.cfg.max_seq_len,
                        num_samples=FLAGS.num_samples, names={**names, "num_samples": "--num_samples"})
        tokenizer = run_tokenizer(FLAGS.workdir, config.data.get("tokenizer", "byte"))
        text = sample_text(model, tokenizer, prompt, length, temperature=temperature,
                           top_p=top_p, seed=FLAGS.seed, num_samples=FLAGS.num_samples)
    except ValueError as e:
        fail(e)
    print(f"[checkpoint step {step}]\n{text}")


if __name__ == "__main__":
    from experiments.cli import parse_flags
    flags.mark_flag_as_required("workdir")
    app.run(main, flags_parser=parse_flags)
