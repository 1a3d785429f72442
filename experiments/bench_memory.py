"""``python -m experiments.bench memory``: the memory layers' inference-cost claim (UltraMem
Fig. 1/6c/7). For one width: a dense SwiGLU FFN, an UltraMemV2 and an UltraMem layer of about
the dense FFN's activated FLOPs/token and ~11x its parameters, and a fine-grained MoE of the same
total parameters and activated FLOPs (``design_memory_bench``); the time of one forward call on
x [B, 1, d] (a decode step) for each B beside the cost model's weight bytes and FLOPs per step
(``seedjax/train/memory_cost.py``); the memory layers run prepared for decoding
(``prepared_for_decode``), and the backend's floors (``bench_floors``) are timed in the same
rounds; JSON, markdown and memory.png (``bench_memory``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

from experiments.bench_common import machine as _machine
from experiments.bench_common import median_time as _median_time
from experiments.bench_common import write_result as _write
from experiments.bench_floors import add_floors, floor_functions
from experiments.bench_memory_report import memory_markdown, memory_plot


MEMORY_MODELS = ("dense", "ultramem_v2", "ultramem", "moe", "moe_gather")
"""Arms: "moe" is ``MoEFFN`` with the "blocked_sliced" kernel (each touched expert's weights
read once by a dynamic slice); "moe_gather" the same layer with the earlier "blocked" kernel (a [G, d, F]
gather of expert weights per call), kept as the before-and-after of issue 23's fair MoE."""
MEMORY_TOLERANCE = {"flops_rel": 0.05, "moe_params_rel": 0.05, "param_ratio_rel": 0.05}
"""Design tolerances (checked in the JSON's ``matching`` and by the test): activated FLOPs/token
of each sparse layer within flops_rel of the dense FFN's; MoE total params within moe_params_rel
of each memory layer's; total params / dense params within param_ratio_rel of the target
--mem_param_ratio (default 11: 10.45x-11.55x)."""


def _params_dense(d, f):
    return 3 * d * f


def _params_tdqkr(c):
    """TuckerRetrieval parameters: w_query, keys, cores, query/key LayerNorm scale+bias."""
    return (c.d_model * c.query_width + c.heads * 2 * c.n_keys * c.rank * c.k_dim
            + c.cores * c.heads * c.rank * c.rank + (4 * c.k_dim if c.qk_norm else 0)
            + c.query_conv * c.d_model)


def _params_v2(c):
    """UltraMemV2 (own tables): retrieval + w_out + values [+ w_pre + pre_values (PEER)]."""
    n = _params_tdqkr(c.retrieval_config()) + c.v_dim * c.d_model + c.n_slots * c.v_dim
    if c.values == "peer":
        n += c.d_model * c.p_dim + c.n_slots * c.p_dim
    return n


def _params_v1(c):
    """UltraMem: retrieval + values [N, Dv] + w_out [E Dv, D]."""
    return (_params_tdqkr(c.retrieval_config()) + c.n_slots * c.v_dim
            + c.expand * c.v_dim * c.d_model)


def _params_moe(c):
    return (c.d_model * c.n_experts + 3 * c.n_experts * c.d_model * c.expert_dim
            + 3 * c.n_shared_experts * c.d_model * c.shared_dim)


def _solve_memory(make, count, d, dense_flops, target_params):
    """Picks (knum, Dk) for a memory config ``make(knum, k_dim)``: for every knum, the Dk whose
    module FLOPs/token (``forward_flops_per_token``, linear in Dk) are closest to the dense
    FFN's; then the knum whose total parameters ``count(cfg)`` are closest to target_params."""
    best = None
    upper = int(math.isqrt(max(int(target_params), 1))) + 2
    for knum in range(2, upper + 1):
        try:
            f1 = sum(make(knum, 1).forward_flops_per_token().values())
            f2 = sum(make(knum, 2).forward_flops_per_token().values())
        except ValueError:       # too few keys for the TopM (topk > topk_side^2)
            continue
        k_dim = round(1 + (dense_flops - f1) / (f2 - f1))
        if k_dim < 1:
            continue
        cfg = make(knum, k_dim)
        n = count(cfg)
        err = abs(n - target_params)
        if best is None or err < best[0]:
            best = (err, cfg)
        elif n > target_params:  # params grow with knum: past the target and getting worse
            break
    if best is None:
        raise ValueError(f"no memory shape matches {dense_flops} FLOPs/token at d_model={d}: the "
                         "Dk-independent part (grid, values, projections) alone exceeds it; "
                         "raise --mem_ffn_dim or lower the TopM")
    return best[1]


def design_memory_bench(d_model: int = 512, ffn_dim: int | None = None,
                        param_ratio: float = 11.0, moe_top_k: int = 8, v2_topk: int = 32,
                        v1_topk: int = 16) -> dict:
    """Shapes of the four layers of the ``memory`` benchmark, all from formulas (no jax work).

    dense: SwiGLU of inner width ffn_dim (default 2 d_model); P = 3 d F params, 6 d F FLOPs.
    ultramem_v2: 1 head, r = h_c = 2, per-rank queries, PEER values, Dv = Dp = d/4 (the module
      defaults), TopM v2_topk; knum and Dk solved so that FLOPs/token = the dense FFN's (Dk is
      the compute knob, as in V2 Table 4) and total params = param_ratio * P.
    ultramem: 2 heads sharing one query pair, r = h_c = 2, IVE E = 4, Dv = d/2 (module
      defaults), TopM v1_topk per head; knum and Dk solved the same way.
    moe: top-k SwiGLU experts of width F_e ~ F / k (minus the router's FLOPs), E experts so that
      total params = param_ratio * P (activated FLOPs 2 d E + 6 k d F_e = the dense FFN's).
    Returns {"dense": {"d_model", "ffn_dim"}, "ultramem_v2": UltraMemV2Config,
    "ultramem": UltraMemConfig, "moe": MoEConfig, "params": {name: int}}."""
    from seedjax.nn.memory import UltraMemConfig, UltraMemV2Config
    from seedjax.nn.moe import MoEConfig

    d = d_model
    f = 2 * d if not ffn_dim else ffn_dim
    dense_params, dense_flops = _params_dense(d, f), 6 * d * f
    target = param_ratio * dense_params
    v2 = _solve_memory(lambda knum, dk: UltraMemV2Config(
        d_model=d, n_keys=knum, k_dim=dk, topk=v2_topk, init="official"),
        _params_v2, d, dense_flops, target)
    v1 = _solve_memory(lambda knum, dk: UltraMemConfig(
        d_model=d, n_keys=knum, k_dim=dk, topk=v1_topk, init="official"),
        _params_v1, d, dense_flops, target)
    k, fe = moe_top_k, max(1, f // moe_top_k)
    for _ in range(10):      # fixed point of (E from params, F_e from FLOPs); converges in 2-3
        e = max(k, round(target / (d + 3 * d * fe)))
        fe = max(1, round((dense_flops - 2 * d * e) / (6 * k * d)))
    # blocks of <= 8 rows: at decode the sliced kernel's cost is padding rows (FLOPs) plus one
    # weight slice per block (bytes); 8 balances them from B = 16 to 256 (measured 10-15%
    # faster than the default 128 at B = 64 and 256, equal at B <= 16, where blocks are smaller)
    moe = MoEConfig(d_model=d, n_experts=e, top_k=k, expert_dim=fe, load_balance_coef=0.0,
                    grouped_matmul="blocked_sliced", block_size=8)
    gather = dataclasses.replace(moe, grouped_matmul="blocked", block_size=128)
    return {"dense": {"d_model": d, "ffn_dim": f}, "ultramem_v2": v2, "ultramem": v1, "moe": moe,
            "moe_gather": gather,
            "params": {"dense": dense_params, "ultramem_v2": _params_v2(v2),
                       "ultramem": _params_v1(v1), "moe": _params_moe(moe),
                       "moe_gather": _params_moe(gather)}}


def memory_cost_objects(design: dict) -> dict:
    """{name: (cost object or None, note)}: ``seedjax.train.memory_cost`` classes built from the
    same shapes; None with the reason when a module's shape is not expressible in its class."""
    from seedjax.train.memory_cost import DenseFFNCost, MoECost, UltraMemCost, UltraMemV2Cost

    out = {"dense": (DenseFFNCost(design["dense"]["d_model"], design["dense"]["ffn_dim"]), "")}
    m = design["moe"]
    out["moe"] = (MoECost(m.d_model, m.n_experts, m.top_k, m.expert_dim, m.n_shared_experts,
                          m.shared_dim), "" if m.capacity_factor is None else
                  "capacity drops not modelled")
    out["moe_gather"] = out["moe"]
    v2 = design["ultramem_v2"]
    bad = [s for s, ok in (("heads != 1", v2.heads == 1), ("expand != 1", v2.expand == 1),
                           ("sharing", v2.sharing == "none"), ("plain values", v2.values == "peer"),
                           ("shared_pair queries", v2.query_mode != "shared_pair"))
           if not ok]
    out["ultramem_v2"] = (None, "not expressible in UltraMemV2Cost: " + ", ".join(bad)) if bad \
        else (UltraMemV2Cost(v2.d_model, v2.n_keys, v2.k_dim, v2.v_dim, v2.p_dim, v2.topk,
                             v2.rank, v2.cores, per_rank_queries=v2.query_mode == "per_rank",
                             rowcol_cap=v2.topk_side if v2.topk_side < v2.topk else 128), "")
    v1 = design["ultramem"]
    bad = [s for s, ok in (("query_mode != shared_pair", v1.query_mode == "shared_pair"),
                           ("query_conv", v1.query_conv == 0)) if not ok]
    out["ultramem"] = (None, "not expressible in UltraMemCost: " + ", ".join(bad)) if bad else \
        (UltraMemCost(v1.d_model, v1.n_keys, v1.k_dim, v1.v_dim, v1.topk, v1.heads, v1.rank,
                      v1.cores, v1.expand), "")
    return out


def _touched(name, design, batch):
    """(expected distinct units touched per step under uniform routing, params per unit) of the
    sparse part of a layer: experts (MoE) or value rows (memory); (None, 0) for dense."""
    from seedjax.train.memory_cost import distinct_rows, expected_distinct_experts
    if name.startswith("moe"):
        m = design[name]
        return expected_distinct_experts(m.n_experts, m.top_k, batch), 3 * m.d_model * m.expert_dim
    if name == "ultramem_v2":
        c = design["ultramem_v2"]
        return distinct_rows(c.n_slots, batch * c.heads * c.topk), c.v_dim + c.p_dim
    if name == "ultramem":
        c = design["ultramem"]
        return distinct_rows(c.n_slots, batch * c.heads * c.topk), c.v_dim
    return None, 0


def moe_kernel_slices(moe, batch: int, touched: float | None = None) -> float | None:
    """[d, F_e] expert weight slices (per matrix) that ``MoEFFN``'s dropless kernels read for
    ``batch`` tokens. "blocked" gathers one per block of rows, G = floor((A + min(E, A)(b - 1))
    / b) with A = B k assignments and b = ``block_rows`` (``seedjax/nn/moe/experts.py``), G >=
    the distinct experts touched; "blocked_sliced" reads each touched expert once
    (``touched``, the distinct experts of the routing). None for other kernels."""
    from seedjax.nn.moe.experts import block_rows
    if moe.capacity_factor is not None or moe.grouped_matmul not in ("blocked", "blocked_sliced"):
        return None
    if moe.grouped_matmul == "blocked_sliced":
        return touched
    a = batch * moe.top_k
    rows = block_rows(moe.block_size, a, moe.n_experts)
    return (a + min(moe.n_experts, a) * (rows - 1)) // rows


def measure_read_bandwidth(n_bytes: int = 256 * 2**20, repeats: int = 7) -> float:
    """Median bytes/s of a jitted sum over an ``n_bytes`` float32 array (a streaming read)."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((max(n_bytes // 4, 1),), jnp.float32)
    f = jax.jit(jnp.sum)
    f(a).block_until_ready()
    t, _ = _median_time(lambda: f(a).block_until_ready(), repeats)
    return a.size * 4 / t


def _build_memory_models(design, dtype):
    """{name: (ModelDef, params pure dict)}, initialised in one jitted call per layer (eager
    init compiles every small op separately) with the "unsafe_rbg" PRNG (its XLA:CPU compile is
    ~2x faster than threefry's; the values only need to be random); parameter counts are
    checked against the design formulas."""
    import jax
    from flax import nnx

    from seedjax.nn.memory import UltraMem, UltraMemV2
    from seedjax.nn.mlp import SwiGLU
    from seedjax.nn.moe import MoEFFN
    from seedjax.train.state import abstract_model, init_params, model_def

    makers = {
        "dense": lambda: SwiGLU(design["dense"]["d_model"], design["dense"]["ffn_dim"],
                                dtype=dtype, rngs=nnx.Rngs(0)),
        "ultramem_v2": lambda: UltraMemV2(design["ultramem_v2"], dtype=dtype, rngs=nnx.Rngs(1)),
        "ultramem": lambda: UltraMem(design["ultramem"], dtype=dtype, rngs=nnx.Rngs(2)),
        "moe": lambda: MoEFFN(design["moe"], dtype=dtype, rngs=nnx.Rngs(3)),
        "moe_gather": lambda: MoEFFN(design["moe_gather"], dtype=dtype, rngs=nnx.Rngs(3)),
    }
    out = {}
    for name, make in makers.items():
        with jax.default_prng_impl("unsafe_rbg"):
            mdef, params = model_def(abstract_model(make)), init_params(make)
        n = int(sum(x.size for x in jax.tree.leaves(params)))
        if n != design["params"][name]:
            raise AssertionError(f"{name}: module has {n} params, formula says "
                                 f"{design['params'][name]}")
        out[name] = (mdef, params)
    return out


def _observed_touched(models, design, pools):
    """{(name, batch): mean over the input pool of the distinct experts / value rows the actual
    routing touches in one decode step}."""
    import jax
    import numpy as np

    def units(name, mdef):
        if name == "moe":
            return jax.jit(lambda p, x: mdef.merge(p).route(x)[1])
        return jax.jit(lambda p, x: mdef.merge(p).retrieve(x)[1])

    big = max(pools)
    out = {}
    for name in ("ultramem_v2", "ultramem", "moe"):
        mdef, params = models[name]
        idx = np.asarray(units(name, mdef)(params, pools[big]))     # [P, B, 1, ...]
        for b in pools:
            out[(name, b)] = float(np.mean([np.unique(idx[i, :b]).size
                                            for i in range(idx.shape[0])]))
    for b in pools:                 # the same router and weights: the same routing
        out[("moe_gather", b)] = out[("moe", b)]
    return out


def bench_memory(*, d_model=512, ffn_dim=None, param_ratio=11.0, moe_top_k=8, v2_topk=32,
                 v1_topk=16, batches=(1, 4, 16, 64, 256), rounds=60, pool=8,
                 bandwidth_mb=256, out_dir="results/bench", plot=True, command=None,
                 design=None) -> dict:
    """Times one forward call ("decode step", x [B, 1, d]) of the four ``design_memory_bench``
    layers for each B, beside the cost model's weight bytes and FLOPs per step.

    Every (layer, B) is compiled once and warmed up; then ``rounds`` rounds each call every
    layer once per B, the layer order rotating between rounds (interleaved, so machine drift
    and background load hit all layers alike); the median per (layer, B) is reported. Inputs
    cycle through ``pool`` distinct random batches (the B-token batch is the first B tokens of
    a pool entry) so consecutive steps route to different experts / rows. ``design``: these
    arguments' ``design_memory_bench``, if already solved."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from seedjax.train.hardware import measure_matmul_peak

    dtype = jnp.float32
    bpp = jnp.dtype(dtype).itemsize
    batches = sorted({int(b) for b in batches})
    design = design or design_memory_bench(d_model, ffn_dim, param_ratio, moe_top_k, v2_topk,
                                           v1_topk)
    costs = memory_cost_objects(design)
    load_start = os.getloadavg()
    peak = measure_matmul_peak(1024, repeats=5)
    bandwidth = measure_read_bandwidth(bandwidth_mb * 2**20)
    models = _build_memory_models(design, dtype)
    d = design["dense"]["d_model"]
    n_pool = max(1, min(pool, rounds))
    base = jax.random.normal(jax.random.key(7), (n_pool, max(batches), 1, d), dtype)
    pools = {b: base[:, :b] for b in batches}
    inputs = {b: [pools[b][i] for i in range(n_pool)] for b in batches}
    observed = _observed_touched(models, design, pools)

    compiled, looped, compile_s = {}, {}, {}
    layers = {name: prepared_for_decode(*models[name]) for name in MEMORY_MODELS}
    for name in MEMORY_MODELS:
        graphdef, params = layers[name]
        fn = jax.jit(lambda p, x, gd=graphdef: _first(nnx.merge(gd, p)(x)))
        loop = jax.jit(lambda p, xs, gd=graphdef: decode_loop(nnx.merge(gd, p), xs))
        for b in batches:
            t0 = time.perf_counter()
            compiled[name, b] = fn.lower(params, inputs[b][0]).compile()
            looped[name, b] = loop.lower(params, pools[b]).compile()
            compile_s[name, b] = time.perf_counter() - t0
            for x in inputs[b]:                                     # warm-up
                compiled[name, b](params, x).block_until_ready()
            looped[name, b](params, pools[b]).block_until_ready()
        print(f"[bench memory] compiled {name} "
              f"({sum(compile_s[name, b] for b in batches):.1f} s)", flush=True)
    prepared_diff = _prepared_vs_parameters(models, layers, inputs[max(batches)][0])
    floors = {}
    for b in batches:
        for name, (fn, args) in floor_functions(design, b, n_pool).items():
            floors[name, b] = (fn.lower(*args).compile(), args)
            jax.block_until_ready(floors[name, b][0](*args))
    floor_times = {key: [] for key in floors}
    times = {key: [] for key in compiled}
    loop_times = {key: [] for key in compiled}
    order = list(MEMORY_MODELS)
    for r in range(rounds):
        rot = order[r % len(order):] + order[:r % len(order)]
        for b in batches:
            x = inputs[b][r % n_pool]
            for name in rot:
                params = layers[name][1]
                t0 = time.perf_counter()
                compiled[name, b](params, x).block_until_ready()
                times[name, b].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                looped[name, b](params, pools[b]).block_until_ready()
                loop_times[name, b].append((time.perf_counter() - t0) / n_pool)
            for key in [k for k in floors if k[1] == b]:
                fn, args = floors[key]
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                floor_times[key].append((time.perf_counter() - t0) / n_pool)
    load_end = os.getloadavg()

    info = {}
    dense_flops = 6 * d * design["dense"]["ffn_dim"]
    for name in MEMORY_MODELS:
        cfg = design[name]
        cost, note = costs[name]
        mflops = (float(dense_flops) if name == "dense"
                  else float(sum(cfg.forward_flops_per_token().values())))
        info[name] = {
            "config": cfg if name == "dense" else dataclasses.asdict(cfg),
            "params": design["params"][name],
            "params_vs_dense": design["params"][name] / design["params"]["dense"],
            "flops_per_token_module": mflops, "flops_vs_dense": mflops / dense_flops,
            "flops_per_token_cost_model": None if cost is None else cost.forward_flops(),
            "cost_class": None if cost is None else type(cost).__name__, "cost_note": note,
            "compile_s": sum(compile_s[name, b] for b in batches),
        }
    rows = []
    for b in batches:
        ref = float(np.median(times["dense", b]))
        loop_ref = float(np.median(loop_times["dense", b]))
        ref_bytes = costs["dense"][0].decode_bytes_total(b, bpp)
        for name in MEMORY_MODELS:
            t = np.asarray(times[name, b])
            cost = costs[name][0]
            exp_u, unit = _touched(name, design, b)
            obs_u = observed.get((name, b))
            nbytes = None if cost is None else cost.decode_bytes_total(b, bpp)
            obs_bytes = None if nbytes is None or exp_u is None else \
                nbytes + (obs_u - exp_u) * unit * bpp
            flops = info[name]["flops_per_token_module"] * b
            slices = moe_kernel_slices(design[name], b, obs_u) if name.startswith("moe") else None
            rows.append({
                "model": name, "batch": b, "time_s": float(np.median(t)),
                "time_p10_s": float(np.percentile(t, 10)),
                "time_p90_s": float(np.percentile(t, 90)),
                "time_vs_dense": float(np.median(t)) / ref,
                "loop_time_s": float(np.median(loop_times[name, b])),
                "loop_time_vs_dense": float(np.median(loop_times[name, b])) / loop_ref,
                "decode_bytes_cost_model": nbytes,
                "decode_bytes_observed_routing": obs_bytes if exp_u is not None else nbytes,
                "bytes_vs_dense": None if nbytes is None else nbytes / ref_bytes,
                "touched_expected": exp_u, "touched_observed": obs_u,
                "moe_kernel_slices": slices,
                "moe_kernel_bytes": None if slices is None else
                nbytes + (slices - exp_u) * unit * bpp,
                "flops_per_step_module": flops,
                "flops_per_step_cost_model": None if cost is None else cost.forward_flops() * b,
                "roofline_s": max(flops / peak,
                                  (nbytes if nbytes is not None else 0.0) / bandwidth),
            })
    add_floors(rows, {k: float(np.median(v)) for k, v in floor_times.items()})
    lo, hi = (param_ratio * (1 + s * MEMORY_TOLERANCE["param_ratio_rel"]) for s in (-1, 1))
    matching = {
        "tolerance": MEMORY_TOLERANCE,
        "flops_within_tol": {n: abs(info[n]["flops_vs_dense"] - 1) <= MEMORY_TOLERANCE["flops_rel"]
                             for n in MEMORY_MODELS[1:]},
        "moe_params_vs_memory": {n: design["params"]["moe"] / design["params"][n]
                                 for n in ("ultramem_v2", "ultramem")},
        "param_ratio_in_range": {n: lo <= info[n]["params_vs_dense"] <= hi
                                 for n in MEMORY_MODELS[1:]},
    }
    matching["moe_params_within_tol"] = all(
        abs(v - 1) <= MEMORY_TOLERANCE["moe_params_rel"]
        for v in matching["moe_params_vs_memory"].values())
    result = {
        "benchmark": "memory", "command": command or "python -m experiments.bench memory",
        **_machine(), "loadavg_start": load_start, "loadavg_end": load_end,
        "dtype": jnp.dtype(dtype).name, "bytes_per_param": bpp, "d_model": d,
        "ffn_dim": design["dense"]["ffn_dim"], "param_ratio_target": param_ratio,
        "batches": batches, "rounds": rounds, "input_pool": n_pool,
        "matmul_1024_f32_flops": peak, "read_bandwidth_bytes_per_s": bandwidth,
        "models": info, "matching": matching, "rows": rows,
        "prepared_vs_parameters_max_abs_diff": prepared_diff,
    }
    md = memory_markdown(result)
    if plot:
        memory_plot(result, os.path.join(out_dir, "memory.png"))
        md += ["", "![time and bytes per decode step](memory.png)"]
    _write(out_dir, "memory", result, md)
    return result


def _prepared_vs_parameters(models, layers, x) -> dict:
    """{memory layer: max |y_prepared - y_parameters|} on one input: the decode constants must
    not change the outputs."""
    import jax.numpy as jnp
    from flax import nnx

    out = {}
    for name in ("ultramem_v2", "ultramem"):
        mdef, params = models[name]
        graphdef, state = layers[name]
        want = _first(mdef.merge(params)(x))
        out[name] = float(jnp.max(jnp.abs(_first(nnx.merge(graphdef, state)(x)) - want)))
    return out


def prepared_for_decode(mdef, params):
    """(graphdef, state) of the layer ready to decode: the memory layers' retrievals hold their
    weight-only work done once (``seedjax.nn.memory.prepare_decode``: key LayerNorm, rank-major
    key layout, the cores' rank-1 vectors), as a server does after loading the weights and as
    ``seedjax.eval.sampling.generate`` does before its loop; other layers are unchanged."""
    from flax import nnx

    from seedjax.nn.memory import prepare_decode
    layer = mdef.merge(params)
    prepare_decode(layer)
    return nnx.split(layer)


def _first(y):
    """MoEFFN returns (y, aux); memory layers return y (no aux losses configured)."""
    return y[0] if isinstance(y, tuple) else y


def decode_loop(layer, xs):
    """The layer on each of xs [S, B, 1, d] inside one ``lax.scan``, as generation runs its
    steps (``seedjax.eval.sampling``): the weights are loop-invariant, so work that depends on
    them alone (the key LayerNorm, the cores' SVD, layout copies) runs once per loop, not per
    step. Returns the S outputs [S, B, 1, d]."""
    import jax
    return jax.lax.scan(lambda c, x: (c, _first(layer(x))), None, xs)[1]
