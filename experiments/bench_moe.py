"""``python -m experiments.bench moe``: the step time of one Race-DiT MoE layer's experts
(``seedjax.nn.moe.PairExperts``, GELU experts) against a dense GELU MLP of equal activated
FLOPs, and sparse grouped dispatch against dense masked experts (issue 20 item 3).

Shapes (Race-DiT, notes C.2.2 / C.10, scaled to a CPU): width d, T = B L tokens, E experts,
k experts per token on average with hidden split s = k, so each expert's hidden width is
F = 4 d / k and a token's activated expert FLOPs equal one dense MLP of hidden 4 d
(k 4 d F = 16 d^2 per token, forward). Pairs come from an exact Expert Race (identity gating,
K = T k, ``routing_rules.expert_race``) on fixed random logits, once per (E, k); the timed
function is the expert layer alone (dispatch, experts, combine) forward + backward, gradients
w.r.t. x, the pair weights and all expert parameters, jitted, routing excluded.

Arms per (E, k): "blocked" and "ragged_dot" (sparse grouped, only the selected pairs) and
"dense_masked" (every expert on every token, then masked: the public Race-DiT code's way, E / k
times the FLOPs); plus one "dense" arm, a GELU MLP of hidden 4 d (``dense_masked`` of a
single expert with weight 1). All arms are compiled first, then timed interleaved round-robin
(each round starts at a rotating arm), so machine drift hits all alike; ratios are of medians
within this one run. XLA's own FLOP count of each compiled step is recorded beside the
model's activated FLOPs (3 x forward matmul FLOPs).

Writes <out>/moe.{json,md}.
"""
from __future__ import annotations

import time

from experiments.bench_common import machine as _machine
from experiments.bench_common import on_cpu
from experiments.bench_common import write_result as _write
from experiments.bench_over_encoding import _stats  # median / p10 / p90 of a list of times

EXPERTS = (8, 16, 32)
TOP_KS = (2, 4)
DISPATCHES = ("blocked", "ragged_dot", "dense_masked")


def check_design(d_model: int, experts, top_ks, dispatches) -> None:
    """ValueError naming the flag for an impossible shape (k > E, 4 d not divisible by k) or
    an unknown dispatch."""
    from seedjax.nn.moe.pair_experts import DISPATCHES as ALLOWED
    for name in dispatches:
        if name not in ALLOWED:
            raise ValueError(f"--moe_dispatches: {name!r} is not allowed; allowed: {ALLOWED}")
    for k in top_ks:
        if (4 * d_model) % k:
            raise ValueError(f"--moe_top_ks: k={k} must divide 4 d = {4 * d_model} (expert "
                             "hidden width 4 d / k)")
        for e in experts:
            if k > e:
                raise ValueError(f"--moe_top_ks: k={k} > E={e} (--moe_experts)")


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost if isinstance(cost, dict) else cost[0]).get("flops", float("nan")))


def _arm(module, x, pairs, ct, *, dense_weights=None) -> dict:
    """Compiled forward + backward of ``module`` (grads w.r.t. params, x and pair weights)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(module)

    def loss(state, x, w):
        m = nnx.merge(graphdef, state)
        y = m.dense_masked(x, w) if dense_weights is not None else m(x, pairs._replace(weight=w))
        return jnp.sum(y * ct)

    w = dense_weights if dense_weights is not None else pairs.weight
    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    t0 = time.perf_counter()
    compiled = step.lower(state, x, w).compile()
    compile_s = time.perf_counter() - t0
    run = lambda: jax.block_until_ready(compiled(state, x, w))
    run()
    return {"run": run, "compile_s": compile_s, "xla_flops": _xla_flops(compiled), "times": []}


def _race_pairs(n_experts, top_k, batch, seq, key):
    """Exact Expert Race pairs (K = B L k) on random logits; per-expert loads."""
    import jax

    from seedjax.nn.moe.routing_rules import expert_race, selected_pairs

    @jax.jit
    def route(logits):
        r, _ = expert_race(logits, top_k)
        return selected_pairs(r.mask, r.weights, batch * seq * top_k)

    return route(jax.random.normal(key, (batch, seq, n_experts)))


def bench_moe(out_dir: str = "results/bench", *, d_model: int = 256, batch: int = 8,
              seq: int = 256, experts=EXPERTS, top_ks=TOP_KS, dispatches=DISPATCHES,
              rounds: int = 5, steps_per_round: int = 1, block_size: int = 128,
              command: str = "", name: str = "moe") -> dict:
    """Runs the benchmark (module docstring) and writes ``<out_dir>/<name>.{json,md}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from seedjax.nn.moe.pair_experts import PairExperts, PairExpertsConfig

    check_design(d_model, experts, top_ks, dispatches)
    start = _machine()
    n_tokens = batch * seq
    x = jax.random.normal(jax.random.key(1), (n_tokens, d_model))
    ct = jax.random.normal(jax.random.key(2), (n_tokens, d_model))
    arms, info = {}, {}
    dense = PairExperts(PairExpertsConfig(d_model, 1, 4 * d_model, dispatch="dense_masked"),
                        rngs=nnx.Rngs(0))
    arms["dense"] = _arm(dense, x, None, ct, dense_weights=jnp.ones((n_tokens, 1)))
    info["dense"] = {"arm": "dense", "n_experts": 1, "top_k": 1, "hidden_dim": 4 * d_model,
                     "dispatch": "dense", "model_flops": 3 * 2 * n_tokens * 2 * d_model *
                     4 * d_model}
    print(f"[bench moe] compiled dense ({arms['dense']['compile_s']:.1f} s)", flush=True)
    for e in experts:
        for k in top_ks:
            pairs = _race_pairs(e, k, batch, seq, jax.random.key(100 * e + k))
            sizes = np.asarray(pairs.group_sizes)
            for disp in dispatches:
                cfg = PairExpertsConfig(d_model, e, 4 * d_model // k, dispatch=disp,
                                        block_size=block_size)
                arm = f"E{e}_k{k}_{disp}"
                arms[arm] = _arm(PairExperts(cfg, rngs=nnx.Rngs(0)), x, pairs, ct)
                info[arm] = {"arm": arm, "n_experts": e, "top_k": k, "hidden_dim": cfg.hidden_dim,
                             "dispatch": disp, "n_pairs": int(pairs.token.shape[0]),
                             "max_load_over_mean": float(sizes.max() / sizes.mean()),
                             "model_flops": 3 * n_tokens * k * cfg.flops_per_pair()}
                print(f"[bench moe] compiled {arm} ({arms[arm]['compile_s']:.1f} s)", flush=True)
    names = list(arms)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                arms[n]["run"]()
                arms[n]["times"].append(time.perf_counter() - t0)
        print(f"[bench moe] round {r + 1}/{rounds}", flush=True)
    ref = float(np.median(arms["dense"]["times"]))
    rows = []
    for n in names:
        a, st = arms[n], _stats(arms[n]["times"])
        row = {**info[n], "step": st, "ratio_to_dense": st["median_s"] / ref,
               "compile_s": a["compile_s"], "xla_flops": a["xla_flops"]}
        if n != "dense":
            masked = arms[f"E{row['n_experts']}_k{row['top_k']}_dense_masked"]["times"] \
                if "dense_masked" in dispatches else None
            row["ratio_to_dense_masked"] = (st["median_s"] / float(np.median(masked))
                                            if masked else None)
        rows.append(row)
    result = {"benchmark": "moe", "command": command, **start,
              "load_avg_end": _machine()["load_avg"], "d_model": d_model, "batch": batch,
              "seq_len": seq, "n_tokens": n_tokens, "rounds": rounds,
              "steps_per_round": steps_per_round, "block_size": block_size, "rows": rows}
    _write(out_dir, name, result, _markdown(result))
    return result


def _markdown(r: dict) -> list[str]:
    d, t = r["d_model"], r["n_tokens"]
    md = [f"# MoE layer (Race-DiT experts) vs dense MLP ({r['time']})", "",
          f"Command: `{r['command'] or 'python -m experiments.bench moe'}`",
          f"Machine: {r['device_kind']} x{len(r['devices'])}, {r['cpu_count']} cores, "
          f"{r['machine']}; load average {r['load_avg']} at the start, {r['load_avg_end']} at "
          f"the end; jax {r['versions'].get('jax')}, flax {r['versions'].get('flax')}.",
          f"Layer: d = {d}, T = {r['batch']} x {r['seq_len']} = {t} tokens, GELU experts of "
          f"hidden 4d/k (split s = k), pairs from an exact Expert Race (K = T k); forward + "
          f"backward of the expert layer alone (routing excluded), median of {r['rounds']} x "
          f"{r['steps_per_round']} interleaved steps per arm; block size {r['block_size']}.", "",
          "| arm | E | k | F | max load / mean | step ms (p10-p90) | / dense | / dense masked | "
          "model GFLOP | XLA GFLOP |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        st = row["step"]
        vs_masked = row.get("ratio_to_dense_masked")
        load = row.get("max_load_over_mean")
        md.append(f"| {row['arm']} | {row['n_experts']} | {row['top_k']} | {row['hidden_dim']} | "
                  f"{'-' if load is None else f'{load:.2f}'} | {st['median_s'] * 1e3:.1f} "
                  f"({st['p10_s'] * 1e3:.1f}-{st['p90_s'] * 1e3:.1f}) | "
                  f"{row['ratio_to_dense']:.2f}x | "
                  f"{'-' if vs_masked is None else f'{vs_masked:.2f}x'} | "
                  f"{row['model_flops'] / 1e9:.2f} | {row['xla_flops'] / 1e9:.2f} |")
    md += ["", "model GFLOP = 3 x the forward matmul FLOPs of the selected pairs (equal for every "
           "arm: k 4 d F = 16 d^2 per token); XLA GFLOP = `cost_analysis()` of the compiled step "
           "(blocked: padding rows counted; dense_masked: all E experts on all tokens; "
           + ("ragged_dot on CPU: XLA's dense lowering). " if on_cpu(r) else
              "ragged_dot: XLA's grouped GEMM, for which `cost_analysis()` gives no meaningful "
              "count). ")
           + "Ratios are of medians in this one run on a shared host; single cells can move by "
           "tens of percent between runs."]
    return md + _reading(r)


def _span(rows, key) -> str:
    vals = [row[key] for row in rows if row.get(key) is not None]
    return f"{min(vals):.2f}-{max(vals):.2f}x" if vals else "n/a"


def _reading(r: dict) -> list[str]:
    """Ranges over the (E, k) configs, computed from the rows."""
    by = {}
    for row in r["rows"]:
        if row["arm"] != "dense":
            row = {**row, "xla_over_model": row["xla_flops"] / row["model_flops"]}
            by.setdefault(row["dispatch"], []).append(row)
    out = ["", "## Reading (ranges over the (E, k) configurations of this run)", ""]
    if "blocked" in by:
        out.append(f"* **blocked** (sparse grouped): {_span(by['blocked'], 'ratio_to_dense')} "
                   f"the dense MLP's time at equal activated FLOPs and "
                   f"{_span(by['blocked'], 'ratio_to_dense_masked')} the dense masked experts' "
                   f"time. Its XLA FLOPs are {_span(by['blocked'], 'xla_over_model')} the model "
                   "FLOPs: the static bound of G = floor((P + E (b - 1)) / b) blocks computes up "
                   "to E (b - 1) padding rows whatever the routing, and each block gathers its "
                   "expert's weights.")
    if "dense_masked" in by:
        out.append(f"* **dense_masked** (every expert on every token, the public Race-DiT code's "
                   f"way): {_span(by['dense_masked'], 'ratio_to_dense')} the dense MLP "
                   f"(XLA FLOPs {_span(by['dense_masked'], 'xla_over_model')} the model FLOPs, "
                   "i.e. E / k).")
    if "ragged_dot" in by:
        rows = by["ragged_dot"]
        head = f"* **ragged_dot**: {_span(rows, 'ratio_to_dense')} the dense MLP"
        if on_cpu(r):
            out.append(f"{head} on this CPU, whose XLA lowers `jax.lax.ragged_dot` to a dense "
                       f"matmul over all E experts (XLA FLOPs {_span(rows, 'xla_over_model')} "
                       "the model FLOPs). It is the grouped GEMM of TPU/GPU; this run does not "
                       "measure those.")
        else:
            out.append(f"{head} and {_span(rows, 'ratio_to_dense_masked')} the dense masked "
                       f"experts on {r['device_kind']}, where it is XLA's grouped GEMM.")
    return out
