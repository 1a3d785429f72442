"""``python -m experiments.bench generate``: KV-cache decoding speed of a plain LM
(``seedjax.eval.sampling.generate``, greedy) at several batch sizes B and prompt lengths P.

For each (B, P): ``generate`` of one token (the prefill: empty caches, the prompt's forward,
the first token) and of N tokens; decode ms/step = the difference / (N - 1), the steps that
run in the jitted ``lax.scan``. Beside it, the bytes a decode step must read (every
weight once, plus the K/V cache filled to P + N / 2 on average) over the measured streaming-read
bandwidth: the step's memory roofline (decoding a small model is bandwidth bound). Random
weights (speed does not depend on them); compile excluded; best of ``repeats`` calls, settings
interleaved round-robin. Writes results/bench/generate.{json,md}.
"""
from __future__ import annotations

import os
import time

from experiments.bench_common import machine as _machine
from experiments.bench_common import write_result as _write


def kv_cache_bytes(cfg, batch: int, length: int, itemsize: int = 4) -> int:
    """Bytes of the K and V caches of every layer for ``batch`` rows of ``length`` positions."""
    return 2 * cfg.n_layers * batch * cfg.kv_heads * length * cfg.resolved_head_dim * itemsize


def _model(variant: str, max_len: int):
    from flax import nnx

    from configs.lm import get_config
    from seedjax.models import LM, LMConfig
    c = get_config(variant)
    c.model.max_seq_len = max_len
    return LM(LMConfig.from_dict(c.model), rngs=nnx.Rngs(0))


def bench_generate(out_dir: str, *, variant: str = "tiny", batches=(1, 8), prompts=(128, 1024),
                   new_tokens: int = 64, repeats: int = 3, command: str = "") -> dict:
    import jax
    from flax import nnx

    from experiments.bench_memory import measure_read_bandwidth
    from seedjax.eval.sampling import generate
    from seedjax.train.state import count_params

    load_start = [round(x, 2) for x in os.getloadavg()]
    bandwidth = measure_read_bandwidth()
    model = _model(variant, max(prompts) + new_tokens)
    cfg = model.cfg
    weight_bytes = 4 * count_params(nnx.state(model, nnx.Param))

    settings = [(b, p) for b in batches for p in prompts]
    prompts_of = {s: jax.random.randint(jax.random.key(s[0] * 7919 + s[1]), s, 0, cfg.vocab_size)
                  for s in settings}
    runs = {s: (lambda s=s: generate(model, prompts_of[s], new_tokens, temperature=0.0),
                lambda s=s: generate(model, prompts_of[s], 1, temperature=0.0))
            for s in settings}
    best = {(s, part): float("inf") for s in settings for part in (0, 1)}
    for fns in runs.values():                                   # compile
        for fn in fns:
            jax.block_until_ready(fn())
    for _ in range(repeats):
        for s, fns in runs.items():
            for part, fn in enumerate(fns):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                best[s, part] = min(best[s, part], time.perf_counter() - t0)
    rows = []
    for b, p in settings:
        total, pre = best[(b, p), 0], best[(b, p), 1]
        step = max(total - pre, 0.0) / max(new_tokens - 1, 1)
        cache_mean = kv_cache_bytes(cfg, b, p + new_tokens // 2)
        step_bytes = weight_bytes + cache_mean
        rows.append({"batch": b, "prompt": p, "new_tokens": new_tokens,
                     "generate_s": total, "prefill_s": pre, "decode_ms_per_step": 1e3 * step,
                     "decode_tokens_per_s": b / step if step > 0 else float("nan"),
                     "weight_mb": weight_bytes / 1e6,
                     "kv_cache_mb": kv_cache_bytes(cfg, b, p + new_tokens) / 1e6,
                     "step_mb": step_bytes / 1e6,
                     "roofline_ms": 1e3 * step_bytes / bandwidth,
                     "time_over_roofline": step * bandwidth / step_bytes})
    result = {"command": command, "variant": variant, "d_model": cfg.d_model,
              "n_layers": cfg.n_layers, "kv_heads": cfg.kv_heads,
              "head_dim": cfg.resolved_head_dim, "repeats": repeats,
              "read_bandwidth_bytes_per_s": bandwidth, "rows": rows,
              "machine": _machine(), "load_avg_start": load_start}
    _write(out_dir, "generate", result, _markdown(result))
    return result


def _markdown(r: dict) -> list:
    m = r["machine"]
    md = [f"# LM decoding with the KV cache ({m['time']})", "",
          f"Command: `{r['command']}`",
          f"Model: configs/lm.py `{r['variant']}` (d = {r['d_model']}, {r['n_layers']} layers, "
          f"{r['kv_heads']} KV heads x {r['head_dim']}), random weights, float32, greedy; "
          f"{m['device_kind']}, {m['cpu_count']} cores; jax {m['versions'].get('jax', '?')}; "
          f"load average {r['load_avg_start'][0]} at start, {m['load_avg'][0]} at end; best of "
          f"{r['repeats']} interleaved calls, compile excluded. Streaming read "
          f"{r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (measured in this run).", "",
          "| B | prompt | new tokens | prefill ms | decode ms / step | tokens / s | KV cache MB "
          "| MB read / step | roofline ms | time / roofline |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        md.append(f"| {x['batch']} | {x['prompt']} | {x['new_tokens']} | "
                  f"{1e3 * x['prefill_s']:.1f} | {x['decode_ms_per_step']:.2f} | "
                  f"{x['decode_tokens_per_s']:.0f} | {x['kv_cache_mb']:.1f} | "
                  f"{x['step_mb']:.1f} | {x['roofline_ms']:.2f} | "
                  f"{x['time_over_roofline']:.1f}x |")
    md += ["", "Prefill = `generate` of one token; decode ms / step = (generate of all new "
           "tokens - prefill) / (new tokens - 1). MB read / step = "
           "every weight once plus the K/V cache at its mean fill (prompt + new tokens / 2); "
           "roofline = that over the streaming-read bandwidth. The cache is head-major "
           "[B, K, S, D] (`seedjax/nn/attention.py`); results/bench/README.md compares it with "
           "the earlier token-major layout."]
    return md
