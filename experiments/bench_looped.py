"""``python -m experiments.bench looped``: decode tokens/s and loops executed vs the Q-exit level q
for a looped LM (Ouro layout, random weights), physical early exit (``last_available``,
``final_exit_shared``) against run-all decoding (``full_per_depth``: every loop, then select) of
the same model, measured in one run. Batch 1 (where a skipped loop is really not computed),
greedy, compile excluded (first call), best of ``repeats`` timed calls per setting, settings
interleaved round-robin so machine drift hits all alike. Writes results/bench/looped.{json,md}.

``workdir``: a trained looped run instead of the random model (its checkpoint's params, its
tokenizer encoding a fixed Python prompt): its gate decides the exits, so the rows are points
of the real exit curve (their CE is ``experiments.looped_depth``'s). Writes
``looped_trained.{json,md}``.
"""
from __future__ import annotations

import time

from experiments.bench_common import machine as _machine
from experiments.bench_common import write_result as _write

QS = (0.3, 0.5, 0.7, 0.9, 1.0)
POLICIES = ("last_available", "final_exit_shared")


def bench_model(d_model=256, n_layers=4, loops=4, vocab=256, max_seq_len=160, seed=0):
    """A random looped LM: N(0, 0.02) weights (norm gains 1), gate kernel N(0, 0.15^2) so the
    exit loop differs between tokens (the gate is untrained: this measures cost, not quality)."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from seedjax.models import LM, LMConfig
    cfg = LMConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=4,
                   n_kv_heads=4, mlp_dim=int(2.75 * d_model), max_seq_len=max_seq_len,
                   sandwich_norm=True, head="untied", stack="looped",
                   stack_kwargs={"loops": loops})
    m = LM(cfg, rngs=nnx.Rngs(seed))
    m.layers.exit_gate.kernel[...] = jnp.asarray(
        np.random.default_rng(seed).normal(0, 0.15, d_model), jnp.float32)
    return m


PROMPT = "import os\n\n\ndef read_lines(path, encoding=None):\n    "


def trained_model(workdir: str, prompt_len: int):
    """(model, prompt [1, prompt_len] int32) of a trained looped run: its checkpointed params
    (not the EMA) and its own tokenizer applied to ``PROMPT``."""
    import numpy as np

    from seedjax.data.pipeline import run_tokenizer
    from seedjax.train.restore import load_run
    run = load_run(workdir, use_ema=False)
    if getattr(run.model.cfg, "stack", "plain") != "looped":
        raise ValueError(f"--looped_workdir={workdir!r} holds a {run.model.cfg.stack!r} stack "
                         "model; the looped bench needs model.stack='looped'")
    ids = run_tokenizer(workdir, run.config.data.get("tokenizer", "byte")).encode(PROMPT)
    if len(ids) < prompt_len:
        raise ValueError(f"the prompt has {len(ids)} tokens < prompt_len={prompt_len}")
    return run.model, np.asarray(ids[:prompt_len], np.int32)[None]


def bench_looped(out_dir: str = "results/bench", *, prompt_len: int = 16, new_tokens: int = 64,
                 repeats: int = 3, qs=QS, policies=POLICIES, command: str = "",
                 workdir: str | None = None) -> dict:
    import jax
    import numpy as np

    from seedjax.eval.looped_decode import loop_stats, prepare
    from seedjax.train.flops import lm_forward_flops_per_token

    if workdir:
        model, prompt = trained_model(workdir, prompt_len)
    else:
        model = bench_model()
        prompt = np.random.default_rng(1).integers(1, model.cfg.vocab_size,
                                                   (1, prompt_len)).astype(np.int32)
    cfg = model.cfg
    loops = model.layers.config.loops
    settings = [("full_per_depth", 1.0)] + [(p, q) for p in policies for q in qs]
    runs = {}
    for policy, q in settings:
        fn, args, static = prepare(model, prompt, new_tokens, exit_threshold=q, kv_policy=policy)
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **static))
        runs[(policy, q)] = {"call": (fn, args, static), "compile_s": time.perf_counter() - t0,
                             "out": out, "times": []}
        print(f"[bench looped] compiled {policy} q={q}", flush=True)
    for _ in range(repeats):
        for r in runs.values():
            fn, args, static = r["call"]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args, **static))
            r["times"].append(time.perf_counter() - t0)
    from seedjax.eval.looped_decode import LoopedGeneration
    base_t = min(runs[("full_per_depth", 1.0)]["times"])
    base_tokens = np.asarray(runs[("full_per_depth", 1.0)]["out"][0])
    ctx = prompt_len + new_tokens // 2
    rows = []
    for (policy, q), r in runs.items():
        gen = LoopedGeneration(*(None if a is None else np.asarray(a) for a in r["out"]))
        s = loop_stats(gen, loops)
        t = min(r["times"])
        flops = sum(lm_forward_flops_per_token(cfg, ctx, loops=s["mean_loops"],
                                               head_calls=1).values())
        rows.append({"kv_policy": policy, "q": q, "mean_loops": s["mean_loops"],
                     "loops_histogram": s["loops_histogram"],
                     "saved_fraction": s["saved_fraction"], "seconds": t,
                     "tokens_per_s": new_tokens / t, "speedup_vs_run_all": base_t / t,
                     "decode_gflop_per_token": flops / 1e9,
                     "same_tokens_as_run_all": bool((gen.tokens == base_tokens).all()),
                     "compile_s": r["compile_s"]})
    import dataclasses
    model_fields = {k: (dict(v) if hasattr(v, "items") else v)
                    for k, v in dataclasses.asdict(cfg).items()
                    if isinstance(v, (int, float, str, bool, type(None))) or hasattr(v, "items")}
    result = {"benchmark": "looped", "model": model_fields, "loops": loops, "batch": 1, "prompt_len": prompt_len,
              "new_tokens": new_tokens, "repeats": repeats, **_machine(), "rows": rows,
              "command": command, "workdir": workdir}
    what = (f"trained run `{workdir}` (its params and gate; prompt: its tokenizer on a fixed "
            "Python snippet)" if workdir else "random looped LM (Ouro layout)")
    note = ("Trained gate: the rows are points of this run's exit curve." if workdir else
            "Untrained gate (N(0, 0.15^2) kernel): the numbers are cost, not quality.")
    md = [f"# Looped LM decode: physical early exit vs run-all ({result['time']})", "",
          f"Command: `{command}`",
          f"Model: {what} d={cfg.d_model}, {cfg.n_layers} shared layers x "
          f"T={loops} loops, vocab {cfg.vocab_size}; batch 1, prompt {prompt_len}, "
          f"{new_tokens} greedy tokens; {result['device_kind']}, {result['cpu_count']} cores, load "
          f"average {result['load_avg'][0]} at start; "
          f"best of {repeats} interleaved calls per row, compile excluded. {note}", "",
          "| kv policy | q | loops/token (mean) | histogram 1..T | saved | tokens/s | "
          "speed-up vs run-all | GFLOP/token | same tokens as run-all |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hist = "/".join(str(v) for v in r["loops_histogram"].values())
        md.append(f"| {r['kv_policy']} | {r['q']} | {r['mean_loops']:.2f} | {hist} | "
                  f"{100 * r['saved_fraction']:.0f}% | {r['tokens_per_s']:.1f} | "
                  f"{r['speedup_vs_run_all']:.2f}x | {r['decode_gflop_per_token']:.4f} | "
                  f"{'yes' if r['same_tokens_as_run_all'] else 'no'} |")
    md += ["", "run-all = `full_per_depth` at q = 1 (every loop, then select: what the released "
           "ports do). Loops/token counts decoded tokens after the first (the prompt's forward "
           "runs all loops). GFLOP/token = `seedjax/train/flops.py` forward FLOPs with "
           "loops = the mean executed and one head call. Tokens may differ from run-all when "
           "exiting early (different logits, and for the skipping policies different K/V)."]
    _write(out_dir, "looped_trained" if workdir else "looped", result, md)
    return result
