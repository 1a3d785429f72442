"""Floors of the ``memory`` benchmark's sparse arms on the backend it runs on: the primitives a
layer cannot avoid, timed alone in the same interleaved rounds as the layers
(``bench_memory.bench_memory``), so a speed target can be checked against what the backend's
primitives allow.

* UltraMemV2 / UltraMem: the retrieval's top-k calls alone, on random scores of the layer's
  shapes: per head two side top-k (k_s of the n keys per side) and one over the k_s^2 grid (m).
  If everything else the layer does cost what the whole dense FFN costs (its matmuls read about
  the dense FFN's bytes and do its FLOPs), the layer would take dense + top-k, so
  (dense + top-k) / dense estimates the lowest time / dense the layer can reach here.
* MoE: the expert SwiGLU of every expert on C = ceil(k B / E) rows as one batched GEMM
  ([E, C, d] x [E, d, F_e], the capacity layout with no router, sort, dispatch or combine, and
  exact only if routing were perfectly balanced): the least any grouped kernel made of XLA dots
  pays; floor / roofline is its distance from the roofline.

Each floor runs over the input pool inside one ``lax.scan`` and is reported per step, like the
'in a loop' column (no per-call dispatch)."""
from __future__ import annotations

FLOOR_ARMS = {"ultramem_v2": "top-k alone", "ultramem": "top-k alone",
              "moe": "batched expert GEMMs alone"}


def floor_functions(design: dict, batch: int, pool: int, seed: int = 0) -> dict:
    """{arm: (jitted fn, args)} for the arms of ``FLOOR_ARMS``; ``fn(*args)`` runs ``pool``
    steps at decode batch ``batch``."""
    import jax
    import jax.numpy as jnp

    from seedjax.nn.moe.experts import stacked_linear, swiglu_ffn
    from seedjax.ops.common import top_k

    key = jax.random.key(seed)
    out = {}
    for name in ("ultramem_v2", "ultramem"):
        r = design[name].retrieval_config()
        k1, k2, key = jax.random.split(key, 3)
        sides = jax.random.normal(k1, (pool, 2, batch, r.heads, r.n_keys))
        grid = jax.random.normal(k2, (pool, batch, r.heads, r.topk_side ** 2))

        def step(carry, xs, r=r):
            s, g = xs
            picked = [top_k(s[i], r.topk_side)[1] for i in range(2)] + [top_k(g, r.topk)[1]]
            return carry, picked
        out[name] = (jax.jit(lambda s, g, step=step: jax.lax.scan(step, None, (s, g))[1]),
                     (sides, grid))
    moe = design["moe"]
    e, d, f = moe.n_experts, moe.d_model, moe.expert_dim
    c = -(-moe.top_k * batch // e)
    ks = jax.random.split(key, 4)
    weights = {"w_gate": jax.random.normal(ks[0], (e, d, f)),
               "w_up": jax.random.normal(ks[1], (e, d, f)),
               "w_down": jax.random.normal(ks[2], (e, f, d))}
    rows = jax.random.normal(ks[3], (pool, e, c, d))

    def expert_step(carry, x):
        return carry, swiglu_ffn(weights, x, stacked_linear, jnp.float32)
    out["moe"] = (jax.jit(lambda x: jax.lax.scan(expert_step, None, x)[1]), (rows,))
    return out


def add_floors(rows: list, floor_times: dict) -> None:
    """Adds "floor_s" (per step), "floor_kind" and the floor ratios to the benchmark's rows:
    memory arms "floor_vs_dense" / "loop_floor_vs_dense" ((dense + top-k) / dense, one call and
    in a loop), the MoE "floor_vs_roofline"."""
    dense = {x["batch"]: x for x in rows if x["model"] == "dense"}
    for x in rows:
        t = floor_times.get((x["model"], x["batch"]))
        if t is None:
            continue
        ref = dense[x["batch"]]
        x.update(floor_s=t, floor_kind=FLOOR_ARMS[x["model"]])
        if x["model"] == "moe":
            x["floor_vs_roofline"] = t / x["roofline_s"]
        else:
            x["floor_vs_dense"] = (ref["time_s"] + t) / ref["time_s"]
            x["loop_floor_vs_dense"] = (ref["loop_time_s"] + t) / ref["loop_time_s"]


def floors_markdown(rows: list, labels: dict) -> list:
    """The floors section of memory.md."""
    mem = [x for x in rows if "floor_vs_dense" in x]
    moe = [x for x in rows if "floor_vs_roofline" in x]
    if not mem and not moe:
        return []
    md = ["", "## Floors: what this backend's primitives allow", "",
          "Timed alone in the same rounds, per step over the input pool in one `lax.scan` "
          "(`experiments/bench_floors.py`). Memory layers: their top-k calls alone (two side "
          "top-k per head and one over the k_s^2 grid, random scores of the layer's shapes); "
          "'(dense + top-k) / dense' is the time / dense the layer would have if all its other "
          "work cost what the whole dense FFN costs. MoE: every expert's SwiGLU on "
          "ceil(k B / E) rows as one batched GEMM, no routing, dispatch or combine.", "",
          "| B | layer | floor | floor ms / step | (dense + top-k) / dense: one call, in a loop "
          "| layer time / dense: one call, in a loop | floor / roofline | layer time / roofline |",
          "|---|---|---|---|---|---|---|---|"]
    for x in sorted(mem + moe, key=lambda x: (x["batch"], x["model"])):
        is_moe = "floor_vs_roofline" in x
        md.append(
            f"| {x['batch']} | {labels[x['model']]} | {x['floor_kind']} | "
            f"{x['floor_s'] * 1e3:.3f} | "
            + ("- | - | " if is_moe else
               f"{x['floor_vs_dense']:.2f}x, {x['loop_floor_vs_dense']:.2f}x | "
               f"{x['time_vs_dense']:.2f}x, {x['loop_time_vs_dense']:.2f}x | ")
            + (f"{x['floor_vs_roofline']:.2f}x | {x['time_s'] / x['roofline_s']:.1f}x |"
               if is_moe else "- | - |"))
    return md
