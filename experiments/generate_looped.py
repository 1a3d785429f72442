"""Generate text with a looped LM (Ouro / LoopLM) with physical early exit at decode.

  # a converted / downloaded HF Ouro directory (config.json + *.safetensors) and its tokenizer
  python -m experiments.generate_looped --checkpoint ~/Ouro-1.4B \\
      --tokenizer ~/Ouro-1.4B/tokenizer.json --prompt "The capital of France is" \\
      --max_new_tokens 32 --exit_threshold 0.4 --kv_policy last_available
  # a native seedjax run (model.stack="looped"), byte tokenizer
  python -m experiments.generate_looped --workdir runs/ouro_smoke --prompt "def " \\
      --exit_at_step 1 --temperature 0.8 --top_p 0.95

Several --prompt flags decode as one left-padded batch. Exit options (released priority):
--exit_at_step (0-based) > --exit_threshold q (Q-exit: first loop with exit CDF >= q) >
--weighted_exit > the checkpoint's own rule. --kv_policy: full_per_depth (run all loops, select;
the reference), last_available, final_exit_shared (see seedjax/eval/looped_decode.py). Prints
the texts, then loops executed per decoded token (mean and histogram), tokens/s (compile time
separate) and, with --json_out, writes the same as JSON.
"""
from __future__ import annotations

import json
import os

from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS
POLICIES = ["full_per_depth", "last_available", "final_exit_shared"]


def define_flags(fv: flags.FlagValues = FLAGS) -> flags.FlagValues:
    """Defines this CLI's flags on ``fv`` (called by ``__main__``; tests pass their own
    FlagValues, so importing this module defines no global flags)."""
    s, i, f, b, e = (flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float,
                     flags.DEFINE_bool, flags.DEFINE_enum)
    s("checkpoint", None, "HF Ouro directory (config.json + *.safetensors).", flag_values=fv)
    s("workdir", None, "Native seedjax run directory (checkpoints/).", flag_values=fv)
    i("step", None, "Checkpoint step of --workdir (default: latest).", flag_values=fv)
    s("tokenizer", None, "HF tokenizer.json (default: the byte tokenizer).", flag_values=fv)
    flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat for a left-padded batch.",
                              flag_values=fv)
    i("max_new_tokens", 32, "Tokens to generate per prompt.", flag_values=fv)
    i("loops", None, "Loops T (default: the checkpoint's).", flag_values=fv)
    i("exit_at_step", None, "Static exit at this 0-based loop.", flag_values=fv)
    f("exit_threshold", None, "Q-exit level q in (0, 1].", flag_values=fv)
    b("weighted_exit", False, "sum_t p_t logits_t (needs full_per_depth).", flag_values=fv)
    e("kv_policy", "full_per_depth", POLICIES,
      "K/V for deeper loops of tokens that exited early.", flag_values=fv)
    f("temperature", 0.0, "0 = greedy.", flag_values=fv)
    f("top_p", 1.0, "Nucleus mass in (0, 1].", flag_values=fv)
    i("seed", 0, "Sampling seed.", flag_values=fv)
    e("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype (--checkpoint).",
      flag_values=fv)
    s("json_out", None, "Also write texts and statistics to this JSON file.", flag_values=fv)
    return fv


def check_flags(f) -> None:
    """Flag ranges and combinations, before anything is loaded (ValueError on the first)."""
    if (f.checkpoint is None) == (f.workdir is None):
        raise ValueError("give exactly one of --checkpoint (HF Ouro directory) and --workdir "
                         "(native seedjax run)")
    if f.checkpoint is not None and not os.path.isfile(os.path.join(f.checkpoint, "config.json")):
        raise ValueError(f"--checkpoint={f.checkpoint!r} has no config.json")
    if f.step is not None and f.workdir is None:
        raise ValueError("--step needs --workdir")
    if f.tokenizer is not None and not os.path.isfile(f.tokenizer):
        raise ValueError(f"--tokenizer={f.tokenizer!r} is not a file (a HF tokenizer.json)")
    if not f.prompt or any(p == "" for p in f.prompt):
        raise ValueError("--prompt must be given and non-empty")
    if f.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={f.max_new_tokens} must be >= 1")
    if f.loops is not None and f.loops < 1:
        raise ValueError(f"--loops={f.loops} must be >= 1")
    if f.exit_at_step is not None and f.exit_at_step < 0:
        raise ValueError(f"--exit_at_step={f.exit_at_step} must be >= 0 (0-based loop index)")
    if f.exit_threshold is not None and not 0.0 < f.exit_threshold <= 1.0:
        raise ValueError(f"--exit_threshold={f.exit_threshold} must be in (0, 1]")
    if f.weighted_exit and f.kv_policy != "full_per_depth":
        raise ValueError("--weighted_exit reads every loop: it needs --kv_policy=full_per_depth")
    if f.temperature < 0:
        raise ValueError(f"--temperature={f.temperature} must be >= 0 (0 = greedy)")
    if not 0.0 < f.top_p <= 1.0:
        raise ValueError(f"--top_p={f.top_p} must be in (0, 1]")


class HFTokenizer:
    """A HF ``tokenizer.json`` through the ``tokenizers`` package."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # the package raises its own exception type
            raise ValueError(f"--tokenizer={path!r} is not a readable tokenizer.json: {e}") from e
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


class BytesTokenizer:
    """UTF-8 bytes; ids >= 256 (a model vocabulary larger than bytes) decode as U+FFFD."""
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        out = bytearray()
        for i in ids:
            out += bytes([int(i)]) if 0 <= int(i) < 256 else "\ufffd".encode()
        return out.decode("utf-8", errors="replace")


def load(checkpoint=None, workdir=None, step=None, dtype="float32"):
    import jax.numpy as jnp
    if checkpoint is not None:
        from seedjax.convert.ouro import load_hf
        return load_hf(checkpoint, dtype=getattr(jnp, dtype))
    from seedjax.train.restore import load_model
    return load_model(workdir, step)[0]


def run(model, tokenizer, prompts: list[str], max_new_tokens: int, **decode_kw) -> dict:
    """Encodes, left-pads, generates with ``looped_generate`` (compile timed separately) and
    returns texts (continuations), token ids, per-token exit steps / loops and statistics."""
    import numpy as np
    from seedjax.eval.looped_decode import loop_stats, resolve_exit, timed_looped_generate
    ids = [tokenizer.encode(p) for p in prompts]
    vocab = model.cfg.vocab_size
    for p, row in zip(prompts, ids):
        if not row:
            raise ValueError(f"--prompt {p!r} encodes to no tokens")
        if max(row) >= vocab:
            raise ValueError(f"--prompt {p!r} has token id {max(row)} >= the model's vocab_size "
                             f"{vocab} (tokenizer and checkpoint do not match)")
    width = max(len(r) for r in ids)
    prompt = np.zeros((len(ids), width), np.int32)
    mask = np.zeros((len(ids), width), bool)
    for i, row in enumerate(ids):
        prompt[i, width - len(row):], mask[i, width - len(row):] = row, True
    spec = resolve_exit(model, **{k: decode_kw.get(k) for k in
                                  ("loops", "exit_at_step", "exit_threshold", "weighted_exit")},
                        kv_policy=decode_kw.get("kv_policy", "full_per_depth"))
    gen, compile_s, run_s = timed_looped_generate(
        model, prompt, max_new_tokens, prompt_mask=None if mask.all() else mask, **decode_kw)
    new = gen.tokens[:, width:]
    stats = loop_stats(gen, spec.loops)
    n_tok = int(new.size)
    stats.update(loops=spec.loops, exit_rule=spec.rule, exit_arg=spec.arg,
                 kv_policy=spec.kv_policy, compile_s=compile_s, run_s=run_s,
                 tokens_per_s=n_tok / run_s if run_s > 0 else float("inf"))
    return {"texts": [tokenizer.decode(r) for r in new], "prompts": list(prompts),
            "new_tokens": new.tolist(), "exit_steps": gen.exit_steps.tolist(),
            "token_loops": gen.token_loops.tolist(), "stats": stats}


def report(result: dict) -> str:
    s = result["stats"]
    lines = []
    for p, t in zip(result["prompts"], result["texts"]):
        lines += [f"{p}{t}", "----"]
    hist = " ".join(f"{k}:{v}" for k, v in s["loops_histogram"].items())
    rule = s["exit_rule"] + ("" if s["exit_arg"] is None else f"={s['exit_arg']}")
    lines += [f"exit rule {rule}, kv_policy {s['kv_policy']}, T = {s['loops']}",
              f"loops executed per decoded token: mean {s['mean_loops']:.3f} of {s['loops']} "
              f"({100 * s['saved_fraction']:.1f}% saved; batched forward mean "
              f"{s['mean_batch_loops']:.3f}); histogram {hist} "
              f"(over {s['decoded_tokens']} tokens; the first token of each row comes from "
              f"the all-loop prefill)",
              f"{s['tokens_per_s']:.1f} tokens/s ({s['run_s']:.3f} s; compile "
              f"{s['compile_s']:.1f} s)"]
    return "\n".join(lines)


def main_with(f) -> dict:
    """The CLI on parsed flag values ``f``: expected errors print one ``error:`` line and exit
    2; prints the report and returns the result dict."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    with cli.expected_errors():  # flags first, then checkpoint, tokenizer, exit rule vs model
        check_flags(f)
        model = load(f.checkpoint, f.workdir, f.step, f.dtype)
        tokenizer = HFTokenizer(f.tokenizer) if f.tokenizer else BytesTokenizer()
        result = run(model, tokenizer, f.prompt, f.max_new_tokens, loops=f.loops,
                     exit_at_step=f.exit_at_step, exit_threshold=f.exit_threshold,
                     weighted_exit=f.weighted_exit or None, kv_policy=f.kv_policy,
                     temperature=f.temperature, top_p=f.top_p, seed=f.seed)
    print(report(result))
    if f.json_out:
        with open(f.json_out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


def main(argv):
    del argv
    main_with(FLAGS)


if __name__ == "__main__":
    cli.run(main, define_flags)
