"""Benchmarks. Writes JSON and a markdown table under results/bench/.

  python -m experiments.bench lm [--variants smoke,tiny,small] [--steps 5]
  python -m experiments.bench connections [--steps 5] [--conn_rounds 5] [--conn_widths 128,...]
  python -m experiments.bench connection_memory [--conn_widths 128,512,1024]
  python -m experiments.bench memory [--mem_d_model 512] [--mem_batches 1,4,16,64,256]
  python -m experiments.bench decode_profile [--mem_batches 1,16,64,256] [--profile_reps 20]
  python -m experiments.bench looped [--looped_new_tokens 64] [--looped_workdir RUN]
  python -m experiments.bench generate [--gen_batches 1,8] [--gen_prompts 128,1024]
  python -m experiments.bench over_encoding [--oe_sizes 16381,65521,...] [--oe_rounds 12]
  python -m experiments.bench moe [--moe_experts 8,16,32] [--moe_top_ks 2,4] [--moe_rounds 5]

``lm``: in one run, measures the machine's matmul peak (the MFU denominator on CPU; a vendor table
on TPU/GPU) and, for each configs/lm.py variant, the jitted train-step time (median of --steps after
compile), tokens/s, model TFLOP/s per device and MFU, plus the forward-only time and XLA's own FLOP
count (so the gap between model FLOPs and executed FLOPs is visible).

``memory``: the memory layers' inference-cost claim (UltraMem Fig. 1/6c/7): for one width, a
dense SwiGLU FFN, an UltraMemV2 and an UltraMem layer of about the dense FFN's activated
FLOPs/token and ~11x its parameters, and a fine-grained MoE of the same total parameters and
activated FLOPs; the time of one forward call on x [B, 1, d] (a decode step) for each B, beside
the cost model's weight bytes and FLOPs per step (``seedjax/train/memory_cost.py``). Also writes
memory.png (time and bytes vs B, log-log).

``decode_profile``: the same layers under the JAX profiler, each compiled op's time grouped into
matmul / top-k / gather / sort / other, with the largest ops named
(``experiments/bench_profile.py``): where a decode step goes.
"""
from __future__ import annotations

import time

from absl import flags

from experiments import cli
from experiments.bench_common import machine as _machine
from experiments.bench_common import median_time as _median_time
from experiments.bench_common import write_result as _write
from experiments.bench_memory import (MEMORY_MODELS, MEMORY_TOLERANCE,  # noqa: F401 (re-exported)
                                      bench_memory, design_memory_bench, memory_cost_objects)

FLAGS = flags.FLAGS
flags.DEFINE_string("variants", "smoke,tiny,small", "configs/lm.py variants to time.")
flags.DEFINE_integer("steps", 5, "Timed steps per variant (after one compile step).")
flags.DEFINE_string("out", "results/bench", "Output directory.")
flags.DEFINE_integer("mem_d_model", 512, "memory: model width d.")
flags.DEFINE_integer("mem_ffn_dim", 0, "memory: dense SwiGLU inner width F (0 -> 2 d).")
flags.DEFINE_float("mem_param_ratio", 11.0,
                   "memory: target total params of the memory layers and the MoE / dense FFN's.")
flags.DEFINE_integer("mem_moe_top_k", 8, "memory: MoE experts per token (E is solved).")
flags.DEFINE_integer("mem_v2_topk", 32, "memory: UltraMemV2 TopM.")
flags.DEFINE_integer("mem_v1_topk", 16, "memory: UltraMem TopM per head (2 heads).")
flags.DEFINE_list("mem_batches", ["1", "4", "16", "64", "256"],
                  "memory: decode batch sizes B (tokens per step).")
flags.DEFINE_integer("mem_rounds", 60, "memory: interleaved timing rounds (median reported).")
flags.DEFINE_integer("mem_bandwidth_mb", 256, "memory: array size of the read-bandwidth probe.")
flags.DEFINE_bool("mem_plot", True, "memory: write memory.png.")
flags.DEFINE_list("conn_widths", ["128", "512", "1024"],
                  "connections / connection_memory: model widths d (mlp_dim = 3 d; connections "
                  "times every arm at the first width, the recomputing arms at the others).")
flags.DEFINE_integer("conn_rounds", 5, "connections: interleaved timing rounds per width.")
flags.DEFINE_integer("profile_reps", 20, "decode_profile: profiled calls per layer and B (the "
                     "layers and B come from the mem_ flags).")
flags.DEFINE_integer("looped_new_tokens", 64, "looped: greedy tokens decoded per setting.")
flags.DEFINE_integer("looped_repeats", 3, "looped: timed calls per setting (best reported).")
flags.DEFINE_string("looped_workdir", None, "looped: a trained looped run's workdir (default: "
                    "a random model); writes looped_trained.{json,md}.")
flags.DEFINE_string("gen_variant", "tiny", "generate: configs/lm.py variant decoded.")
flags.DEFINE_list("gen_batches", ["1", "8"], "generate: batch sizes B.")
flags.DEFINE_list("gen_prompts", ["128", "1024"], "generate: prompt lengths P.")
flags.DEFINE_integer("gen_new_tokens", 64, "generate: greedy tokens decoded per setting (>= 2).")
flags.DEFINE_integer("gen_repeats", 3, "generate: timed calls per setting (best reported).")
flags.DEFINE_list("oe_sizes", ["16381", "65521", "262139", "1048573", "4194301"],
                  "over_encoding: table sizes m of the n=2, k=1 arms.")
flags.DEFINE_integer("oe_paper_m", 262139, "over_encoding: m of the n=3, k=2 arm (0: none).")
flags.DEFINE_integer("oe_decode_m", 262139, "over_encoding: m of the n=3, k=2 decode arm.")
flags.DEFINE_list("oe_decode_batches", ["1", "16"], "over_encoding: decode batch sizes B.")
flags.DEFINE_integer("oe_rounds", 12, "over_encoding: interleaved train rounds.")
flags.DEFINE_integer("oe_steps", 1, "over_encoding: timed steps per arm per round.")
flags.DEFINE_integer("oe_decode_rounds", 30, "over_encoding: interleaved decode rounds.")
flags.DEFINE_integer("oe_decode_tokens", 16, "over_encoding: decode steps per arm per round.")
flags.DEFINE_bool("oe_plot", True, "over_encoding: write over_encoding.png.")
flags.DEFINE_integer("moe_d_model", 256, "moe: model width d.")
flags.DEFINE_integer("moe_batch", 8, "moe: images B (T = B x moe_seq tokens).")
flags.DEFINE_integer("moe_seq", 256, "moe: tokens per image L.")
flags.DEFINE_list("moe_experts", ["8", "16", "32"], "moe: expert counts E.")
flags.DEFINE_list("moe_top_ks", ["2", "4"], "moe: experts per token k (= hidden split s).")
flags.DEFINE_list("moe_dispatches", ["blocked", "ragged_dot", "dense_masked"],
                  "moe: PairExperts dispatches timed against the dense MLP.")
flags.DEFINE_integer("moe_rounds", 5, "moe: interleaved timing rounds (median reported).")
flags.DEFINE_integer("moe_block_size", 128, "moe: block size of the blocked dispatch.")


def bench_lm_variant(variant: str, steps: int, peak: float) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from configs.lm import get_config
    from seedjax.models import LM, LMConfig
    from seedjax.train import flops as flops_lib
    from seedjax.train.optim import make_optimizer
    from seedjax.train.state import abstract_model, count_params, init_params, model_def, param_labels
    from seedjax.train.step import make_train_step

    cfg = get_config(variant)
    mcfg = LMConfig.from_dict(cfg.model)
    b, t = int(cfg.data.batch_size), int(cfg.data.seq_len)
    model_fn = lambda: LM(mcfg, rngs=nnx.Rngs(0))
    abstract = abstract_model(model_fn)
    mdef = model_def(abstract)
    tx, sched = make_optimizer(cfg.train, *param_labels(abstract))
    params = init_params(model_fn)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    x = jax.random.randint(jax.random.key(1), (b, t + 1), 0, mcfg.vocab_size)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    step = jax.jit(make_train_step(mdef, tx, sched), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    xla_flops = float((cost if isinstance(cost, dict) else cost[0]).get("flops", float("nan")))
    holder = {"s": state}

    def run():
        holder["s"], m = compiled(holder["s"], batch)
        jax.block_until_ready(m["loss"])

    run()
    step_s, step_p90, probe = _interleaved_with_probe(run, steps, b * t, mcfg, params)
    fwd = jax.jit(lambda p, x: mdef.merge(p)(x).logits.sum())
    fwd(holder["s"]["params"], batch["inputs"]).block_until_ready()
    fwd_s, _ = _median_time(lambda: fwd(holder["s"]["params"], batch["inputs"]).block_until_ready(),
                            steps)
    parts = _component_times(mcfg, b, t, tx, holder["s"]["params"], steps)
    per_tok = flops_lib.lm_train_flops_per_token(mcfg, t)
    model_flops = per_tok * b * t
    tflops = model_flops / step_s / jax.device_count() / 1e12
    return {
        "variant": variant, "params": count_params(params), "batch": b, "seq_len": t,
        "compile_s": compile_s, "step_s": step_s, "step_p90_s": step_p90, "fwd_s": fwd_s,
        "tokens_per_s": b * t / step_s, "model_tflops_per_step": model_flops / 1e12,
        "xla_tflops_per_step": xla_flops / 1e12, "tflops_per_device": tflops,
        "mfu": tflops * 1e12 / peak, **probe,
        "mfu_vs_probe": tflops * 1e12 / probe["probe_flops_best"],
        "breakdown_fwd_flops_per_token": flops_lib.lm_forward_flops_per_token(mcfg, t),
        "components_s": parts,
    }


def _interleaved_with_probe(run, steps: int, tokens: int, mcfg, params, probes: int = 3):
    """Times ``steps`` calls of ``run`` with ``probes`` matmul probes after each one, so the
    peak the step is compared with is measured on the same machine state. The probe is the
    model's own widest projection shape, [tokens, d] x [d, mlp_dim] in the parameters' dtype;
    its rate is the best over all probes (a step cannot beat the best matmul it contains).
    Returns (step median s, step p90 s, {"probe_shape", "probe_flops_best",
    "probe_flops_median", "probe_flops_worst"})."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    dtype = jax.tree.leaves(params)[0].dtype
    m, k, n = tokens, mcfg.d_model, mcfg.mlp_dim
    a, w = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
    mm = jax.jit(lambda a, w: a @ w)
    mm(a, w).block_until_ready()
    step_t, probe_t = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        step_t.append(time.perf_counter() - t0)
        for _ in range(probes):
            t0 = time.perf_counter()
            mm(a, w).block_until_ready()
            probe_t.append(time.perf_counter() - t0)
    rates = 2.0 * m * k * n / np.asarray(probe_t)
    return (float(np.median(step_t)), float(np.percentile(step_t, 90)),
            {"probe_shape": [m, k, n], "probe_flops_best": float(rates.max()),
             "probe_flops_median": float(np.median(rates)),
             "probe_flops_worst": float(rates.min())})


def _component_times(mcfg, b, t, tx, params, steps) -> dict:
    """Where the step time goes: the attention core (scores, mask, softmax, AV; fwd+bwd) of all
    layers, the optimizer update, and the dense projections at the measured matmul peak."""
    import jax
    import jax.numpy as jnp
    import optax

    from seedjax.nn.attention import CAUSAL_CHUNK, _attend_causal
    from seedjax.train import flops as flops_lib
    from seedjax.train.hardware import measure_matmul_peak

    h, kv, d = mcfg.n_heads, mcfg.kv_heads, mcfg.resolved_head_dim
    chunk = int((mcfg.mixer_kwargs or {}).get("causal_chunk", CAUSAL_CHUNK))
    key = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(key[0], (b, h, t, d))                 # head-major, as the layer runs it
    k = jax.random.normal(key[1], (b, kv, t, d))
    v = jax.random.normal(key[2], (b, kv, t, d))
    attn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(_attend_causal(q, k, v, h // kv, chunk)),
                            argnums=(0, 1, 2)))
    jax.block_until_ready(attn(q, k, v))
    attn_s, _ = _median_time(lambda: jax.block_until_ready(attn(q, k, v)), steps)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    upd = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
    jax.block_until_ready(upd(grads, opt_state, params))
    opt_s, _ = _median_time(lambda: jax.block_until_ready(upd(grads, opt_state, params)), steps)
    fwd = flops_lib.lm_forward_flops_per_token(mcfg, t)
    dense_flops = 3 * (sum(fwd.values()) - fwd["attn_scores"]) * b * t
    return {"attention_core_all_layers": attn_s * mcfg.n_layers, "optimizer_update": opt_s,
            "dense_matmuls_at_peak": dense_flops / measure_matmul_peak(2048)}


def bench_lm(variants, steps, out_dir):
    import jax

    from seedjax.train.hardware import measure_matmul_peak, peak_flops_per_device
    from seedjax.train.loop import versions

    peak, source = peak_flops_per_device()
    matmul_f32 = measure_matmul_peak(2048)
    rows = []
    for v in variants:
        print(f"[bench lm] {v} ...", flush=True)
        rows.append(bench_lm_variant(v, steps, peak))
        r = rows[-1]
        print(f"  {r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tok/s, MFU {r['mfu']:.1%}",
              flush=True)
    peak_end = measure_matmul_peak(2048)  # re-measured: shows machine noise over the run
    if source.startswith("measured"):  # conservative: the best matmul rate seen in this run
        peak = max(peak, matmul_f32, peak_end)
        for r in rows:
            r["mfu"] = r["tflops_per_device"] * 1e12 / peak
    result = {
        "benchmark": "lm", "peak_flops_per_device": peak, "peak_source": source,
        "matmul_2048_f32_flops_start": matmul_f32, "matmul_2048_f32_flops_end": peak_end,
        **_machine(), "rows": rows,
    }
    md = [f"# LM train-step benchmark ({result['time']})", "",
          f"Command: `python -m experiments.bench lm --variants {','.join(variants)} --steps {steps}`",
          f"Machine: {result['device_kind']} x{len(result['devices'])}, {result['cpu_count']} cores, "
          f"{result['machine']}; jax {result['versions'].get('jax')}, flax "
          f"{result['versions'].get('flax')}.",
          f"Peak: {peak / 1e9:.1f} GFLOP/s per device ({source}; on CPU the best of the "
          f"start-of-run {matmul_f32 / 1e9:.1f} and end-of-run {peak_end / 1e9:.1f} GFLOP/s "
          "2048^3 f32 matmuls).", "",
          "| variant | params | batch x seq | compile s | step s (p90) | fwd s | tokens/s | "
          "model GFLOP/step | XLA GFLOP/step | GFLOP/s/device | MFU | probe GFLOP/s best "
          "(median, worst) | MFU vs probe |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['batch']}x{r['seq_len']} | "
                  f"{r['compile_s']:.1f} | {r['step_s']:.3f} ({r['step_p90_s']:.3f}) | "
                  f"{r['fwd_s']:.3f} | {r['tokens_per_s']:.0f} | "
                  f"{r['model_tflops_per_step'] * 1e3:.1f} | {r['xla_tflops_per_step'] * 1e3:.1f} | "
                  f"{r['tflops_per_device'] * 1e3:.1f} | {r['mfu']:.1%} | "
                  f"{r['probe_flops_best'] / 1e9:.1f} ({r['probe_flops_median'] / 1e9:.1f}, "
                  f"{r['probe_flops_worst'] / 1e9:.1f}) | {r['mfu_vs_probe']:.1%} |")
    md += ["", "Probe: the variant's [batch x seq, d] x [d, mlp_dim] matmul, 3 times after every "
           "timed step (interleaved, so it sees the same machine state); its best rate is the "
           "denominator of 'MFU vs probe', a ceiling no step can beat. The 2048^3 probe of the "
           "'MFU' column is measured once at the start and end of the run."]
    md += ["", "Where the step time goes (seconds; attention core and optimizer measured alone, "
           "dense projections = their FLOPs at the matmul peak; rest = norms, RoPE, SwiGLU "
           "elementwise, cross-entropy, GEMM shapes below peak, fusion boundaries):", "",
           "| variant | step | attention core | optimizer | dense matmuls at peak | rest |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        c = r["components_s"]
        rest = r["step_s"] - sum(c.values())
        md.append(f"| {r['variant']} | {r['step_s']:.3f} | {c['attention_core_all_layers']:.3f} | "
                  f"{c['optimizer_update']:.3f} | {c['dense_matmuls_at_peak']:.3f} | {rest:.3f} |")
    md += ["", "MFU = model FLOPs (matmuls, causal attention halved, x3 for fwd+bwd; "
           "`seedjax/train/flops.py`) / step time / peak. XLA GFLOP/step counts every executed op "
           "(incl. optimizer, softmax, norms, full attention)."]
    _write(out_dir, "lm", result, md)
    return result


CONNECTION_ARMS = {
    "baseline": {},
    "hc_n4": {"model.connection": "hyper", "model.connection_kwargs": {"rate": 4}},
    "hc_n4_stored": {"model.connection": "hyper",
                     "model.connection_kwargs": {"rate": 4, "recompute": False}},
    "shc_n4": {"model.connection": "hyper",
               "model.connection_kwargs": {"rate": 4, "dynamic": False}},
    "fc_m4": {"model.connection": "frac", "model.connection_kwargs": {"rate": 4}},
    "mhc_n4": {"model.connection": "mhc", "model.connection_kwargs": {"rate": 4}},
    "mhc_n4_stored": {"model.connection": "mhc",
                      "model.connection_kwargs": {"rate": 4, "recompute": False}},
    "seednorm": {"model.norm": "seednorm"},
    "dyt": {"model.norm": "dyt"},
}


def tpu_grad_temp_bytes(model_cfg, batch: int, seq: int, chip: str = "v5e") -> int | None:
    """Temp bytes of the LM loss gradient AOT-compiled by libtpu for one ``chip`` on this host
    (abstract inputs, nothing runs); None without libtpu. TPU buffer assignment reflects what a
    rematerialisation saves, XLA:CPU's temp total mostly does not."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        return None
    import os

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from seedjax.models import LM, LMConfig
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    names = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
    dev = topologies.get_topology_desc(platform="tpu", topology_name=names[chip]).devices[0]
    rep = NamedSharding(Mesh(np.array([dev]), ("x",)), PartitionSpec())
    g, s = nnx.split(nnx.eval_shape(lambda: LM(LMConfig.from_dict(model_cfg), rngs=nnx.Rngs(0))))
    s = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), s)
    x = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=rep)
    loss = lambda s, x: jnp.mean(nnx.merge(g, s)(x).logits ** 2)  # noqa: E731
    return int(jax.jit(jax.grad(loss)).lower(s, x).compile().memory_analysis().temp_size_in_bytes)


WIDE_ARMS = ("baseline", "hc_n4", "shc_n4", "fc_m4", "mhc_n4")
"""Arms timed at widths past the first (the recomputing defaults; memory of all arms at every
width is ``connection_memory``'s)."""


def _time_connection_arms(base, arms: dict, batch: dict, steps: int, rounds: int) -> list[dict]:
    """Compiles the train step of each arm (config overrides of ``base``), then times ``rounds``
    x ``steps`` steps per arm, interleaved round-robin so machine drift affects every arm alike.
    Rows of (params, median step s, XLA:CPU temp bytes)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from experiments.overrides import apply_overrides
    from seedjax.models import LM, LMConfig
    from seedjax.train.optim import make_optimizer
    from seedjax.train.state import (abstract_model, count_params, init_params, model_def,
                                     param_labels)
    from seedjax.train.step import make_train_step

    live = {}
    for name, overrides in arms.items():
        cfg = apply_overrides(base, overrides)
        mcfg = LMConfig.from_dict(cfg.model)
        model_fn = lambda: LM(mcfg, rngs=nnx.Rngs(0))
        abstract = abstract_model(model_fn)
        tx, sched = make_optimizer(cfg.train, *param_labels(abstract))
        params = init_params(model_fn)
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": tx.init(params), "rng": jax.random.key_data(jax.random.key(0))}
        compiled = jax.jit(make_train_step(model_def(abstract), tx, sched),
                           donate_argnums=0).lower(state, batch).compile()
        mem = compiled.memory_analysis()
        live[name] = {"compiled": compiled, "params": count_params(params),
                      "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)), "times": []}
        live[name]["state"], m = compiled(state, batch)
        jax.block_until_ready(m["loss"])
        print(f"[bench connections] d={cfg.model.d_model}: compiled {name}", flush=True)
    for _ in range(rounds):
        for a in live.values():
            for _ in range(steps):
                t0 = time.perf_counter()
                a["state"], m = a["compiled"](a["state"], batch)
                jax.block_until_ready(m["loss"])
                a["times"].append(time.perf_counter() - t0)
    return [{"arm": n, "params": a["params"], "step_s": float(np.median(a["times"])),
             "temp_bytes": a["temp_bytes"]}
            for n, a in live.items()]


def bench_connections(steps, out_dir, rounds: int = 5, widths=(128,)):
    """Step time and XLA temp (activation) memory of each connection/norm arm relative to the
    pre-norm baseline of the same width, on the reproduction model (configs/papers/common.py:cpu
    with d_model = d, mlp_dim = 3 d; every arm at the first width, ``WIDE_ARMS`` at the others).
    TPU memory of every arm at every width: ``connection_memory``."""
    import jax

    from configs.papers.common import base_config
    from experiments.bench_connection_memory import width_overrides

    base = base_config("cpu", "bench_connections")
    b, t = int(base.data.batch_size), int(base.data.seq_len)
    x = jax.random.randint(jax.random.key(1), (b, t + 1), 0, 256)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    rows = []
    for i, d in enumerate(widths):
        arms = {n: {**width_overrides(d), **o} for n, o in CONNECTION_ARMS.items()
                if i == 0 or n in WIDE_ARMS}
        timed = _time_connection_arms(base, arms, batch, steps, rounds)
        ref = timed[0]
        for r in timed:
            rows.append({"d_model": d, "arm": r["arm"], "params": r["params"],
                         "step_s": r["step_s"], "step_ratio": r["step_s"] / ref["step_s"],
                         "temp_mb": r["temp_bytes"] / 2**20,
                         "temp_ratio": r["temp_bytes"] / ref["temp_bytes"] if ref["temp_bytes"]
                         else float("nan")})
    result = {"benchmark": "connections", "model": base.model.to_dict(), "batch": b, "seq_len": t,
              "widths": list(widths), "rounds": rounds, "steps_per_round": steps, **_machine(),
              "rows": rows}
    result["load_avg_end"] = _machine()["load_avg"]
    flags = f"--steps {steps} --conn_rounds {rounds} --conn_widths {','.join(map(str, widths))}"
    md = [f"# Connection / norm overhead ({result['time']})", "",
          f"Command: `python -m experiments.bench connections {flags}`",
          f"Model: configs/papers/common.py:cpu ({base.model.n_layers} layers, batch {b} x seq "
          f"{t}; d_model = d, mlp_dim = 3 d); "
          f"{result['device_kind']}, {result['cpu_count']} cores; median of {rounds} x {steps} "
          f"interleaved steps per arm; load average {result['load_avg'][0]:.1f} at the start, "
          f"{result['load_avg_end'][0]:.1f} at the end (shared machine: compare ratios).", "",
          "| d | arm | params | step s | step / baseline | XLA:CPU temp MB | temp / baseline |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['d_model']} | {r['arm']} | {r['params'] / 1e6:.3f}M | {r['step_s']:.3f} | "
                  f"{r['step_ratio']:.2f}x | {r['temp_mb']:.1f} | {r['temp_ratio']:.2f}x |")
    md += ["", "XLA temp = `compiled.memory_analysis().temp_size_in_bytes` of the whole train step "
           "(activations kept for the backward pass plus scratch). Paper (HC Table 9, OLMo-1B on 8 "
           "GPUs, whole-GPU memory incl. weights and optimizer state): SHC x4 +26.0%, DHC x4 "
           "+26.1%, DHC x2 +15.7%; OLMoE-1B-7B DHC x4 +9.7%. Ours counts activations only; at "
           "small widths the n x d streams dominate, so ratios are far larger. HC and mHC "
           "recompute their stream reads in the backward pass by default (connection_kwargs "
           "recompute=True; `_stored` arms: False); XLA:CPU's temp total barely reflects it. "
           "The memory a TPU v5e needs (its buffer assignment does reflect the recomputation), "
           "for every arm at three widths: `python -m experiments.bench connection_memory` "
           "(`connection_memory.md`)."]
    _write(out_dir, "connections", result, md)


# ---------------------------------------------------------------------------------------------
# memory: decode-step cost of dense FFN vs UltraMemV2 vs UltraMem vs MoE (UltraMem Fig. 1/6c/7)
# ---------------------------------------------------------------------------------------------

def _command(sub: str, prefix: str, *names: str) -> str:
    """The command line of this run: the subcommand and the flags given explicitly."""
    set_flags = [FLAGS[n].serialize() for n in FLAGS
                 if (n.startswith(prefix) or n in names) and FLAGS[n].present]
    return " ".join(["python -m experiments.bench", sub, *set_flags])


SUBCOMMANDS = ("lm", "connections", "connection_memory", "memory", "decode_profile", "looped",
               "generate", "over_encoding", "moe")


def check_flags(sub: str) -> dict:
    """The flags of subcommand ``sub`` (ValueError naming the first bad one); returns the
    memory benchmark's design for ``memory`` (solved here, so an impossible shape fails at once)."""
    from seedjax.validation import check_choice, check_int
    if sub in ("lm", "connections"):
        check_int("--steps", FLAGS.steps)
    if sub == "lm":
        from configs.lm import VARIANTS
        variants = [v for v in FLAGS.variants.split(",") if v]
        if not variants:
            raise ValueError(f"--variants is empty; allowed: {VARIANTS}")
        for v in variants:
            check_choice("--variants", v, VARIANTS)
    if sub == "looped":
        check_int("--looped_new_tokens", FLAGS.looped_new_tokens)
        check_int("--looped_repeats", FLAGS.looped_repeats)
    if sub == "generate":
        from configs.lm import VARIANTS
        check_choice("--gen_variant", FLAGS.gen_variant, VARIANTS)
        cli.int_list("--gen_batches", FLAGS.gen_batches, minimum=1)
        cli.int_list("--gen_prompts", FLAGS.gen_prompts, minimum=1)
        check_int("--gen_new_tokens", FLAGS.gen_new_tokens, minimum=2)
        check_int("--gen_repeats", FLAGS.gen_repeats)
    if sub == "over_encoding":
        from experiments.bench_over_encoding import check_arms
        for name in ("oe_rounds", "oe_steps", "oe_decode_rounds", "oe_decode_tokens"):
            check_int(f"--{name}", FLAGS[name].value)
        check_int("--oe_paper_m", FLAGS.oe_paper_m, minimum=0)
        check_int("--oe_decode_m", FLAGS.oe_decode_m)
        cli.int_list("--oe_decode_batches", FLAGS.oe_decode_batches, minimum=1)
        check_arms(cli.int_list("--oe_sizes", FLAGS.oe_sizes, minimum=1), FLAGS.oe_paper_m,
                   FLAGS.oe_decode_m)
    if sub == "moe":
        from experiments.bench_moe import check_design
        for name in ("moe_d_model", "moe_batch", "moe_seq", "moe_rounds", "moe_block_size"):
            check_int(f"--{name}", FLAGS[name].value)
        check_design(FLAGS.moe_d_model, cli.int_list("--moe_experts", FLAGS.moe_experts, 1),
                     cli.int_list("--moe_top_ks", FLAGS.moe_top_ks, 1), FLAGS.moe_dispatches)
    if sub == "decode_profile":
        check_int("--profile_reps", FLAGS.profile_reps)
    if sub in ("connections", "connection_memory"):
        cli.int_list("--conn_widths", FLAGS.conn_widths, minimum=8)
    if sub == "connections":
        check_int("--conn_rounds", FLAGS.conn_rounds)
    if sub not in ("memory", "decode_profile"):
        return {}
    cli.int_list("--mem_batches", FLAGS.mem_batches, minimum=1)
    for name in ("mem_d_model", "mem_moe_top_k", "mem_v2_topk", "mem_v1_topk", "mem_rounds",
                 "mem_bandwidth_mb"):
        check_int(f"--{name}", FLAGS[name].value)
    check_int("--mem_ffn_dim", FLAGS.mem_ffn_dim, minimum=0)
    if not FLAGS.mem_param_ratio > 0:
        raise ValueError(f"--mem_param_ratio={FLAGS.mem_param_ratio} must be > 0")
    return design_memory_bench(FLAGS.mem_d_model, FLAGS.mem_ffn_dim or None,
                               FLAGS.mem_param_ratio, FLAGS.mem_moe_top_k, FLAGS.mem_v2_topk,
                               FLAGS.mem_v1_topk)


def main(argv):
    with cli.expected_errors():
        if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
            raise ValueError(f"subcommand {' '.join(argv[1:]) or '(none)'}: give one of "
                             f"{SUBCOMMANDS}, e.g. python -m experiments.bench lm")
        design = check_flags(argv[1])
    if argv[1] == "looped":
        from experiments.bench_looped import bench_looped
        bench_looped(FLAGS.out, new_tokens=FLAGS.looped_new_tokens,
                     repeats=FLAGS.looped_repeats, command=_command("looped", "looped_", "out"),
                     workdir=FLAGS.looped_workdir)
        return
    if argv[1] == "generate":
        from experiments.bench_generate import bench_generate
        bench_generate(FLAGS.out, variant=FLAGS.gen_variant,
                       batches=cli.int_list("--gen_batches", FLAGS.gen_batches, minimum=1),
                       prompts=cli.int_list("--gen_prompts", FLAGS.gen_prompts, minimum=1),
                       new_tokens=FLAGS.gen_new_tokens, repeats=FLAGS.gen_repeats,
                       command=_command("generate", "gen_", "out"))
        return
    if argv[1] == "over_encoding":
        from experiments.bench_over_encoding import bench_over_encoding
        bench_over_encoding(
            FLAGS.out, sizes=[int(m) for m in FLAGS.oe_sizes], paper_m=FLAGS.oe_paper_m,
            decode_m=FLAGS.oe_decode_m, decode_batches=[int(b) for b in FLAGS.oe_decode_batches],
            rounds=FLAGS.oe_rounds, steps_per_round=FLAGS.oe_steps,
            decode_rounds=FLAGS.oe_decode_rounds, decode_tokens=FLAGS.oe_decode_tokens,
            plot=FLAGS.oe_plot, command=_command("over_encoding", "oe_", "out"))
        return
    if argv[1] == "moe":
        from experiments.bench_moe import bench_moe
        bench_moe(FLAGS.out, d_model=FLAGS.moe_d_model, batch=FLAGS.moe_batch,
                  seq=FLAGS.moe_seq, experts=[int(e) for e in FLAGS.moe_experts],
                  top_ks=[int(k) for k in FLAGS.moe_top_ks],
                  dispatches=tuple(FLAGS.moe_dispatches), rounds=FLAGS.moe_rounds,
                  block_size=FLAGS.moe_block_size, command=_command("moe", "moe_", "out"))
        return
    if argv[1] == "memory":
        bench_memory(d_model=FLAGS.mem_d_model, ffn_dim=FLAGS.mem_ffn_dim or None,
                     param_ratio=FLAGS.mem_param_ratio, moe_top_k=FLAGS.mem_moe_top_k,
                     v2_topk=FLAGS.mem_v2_topk, v1_topk=FLAGS.mem_v1_topk,
                     batches=[int(x) for x in FLAGS.mem_batches], rounds=FLAGS.mem_rounds,
                     bandwidth_mb=FLAGS.mem_bandwidth_mb, out_dir=FLAGS.out, plot=FLAGS.mem_plot,
                     command=_command("memory", "mem_", "out"), design=design)
        return
    if argv[1] == "decode_profile":
        from experiments.bench_profile import bench_decode_profile
        bench_decode_profile(FLAGS.out, design=design, batches=[int(x) for x in FLAGS.mem_batches],
                             reps=FLAGS.profile_reps,
                             command=_command("decode_profile", "mem_", "profile_reps", "out"))
        return
    if argv[1] == "connection_memory":
        from experiments.bench_connection_memory import bench_connection_memory
        bench_connection_memory(FLAGS.out, [int(w) for w in FLAGS.conn_widths],
                                arms=CONNECTION_ARMS, tpu_temp=tpu_grad_temp_bytes,
                                command=_command("connection_memory", "conn_", "out"))
        return
    if argv[1] == "connections":
        bench_connections(FLAGS.steps, FLAGS.out, rounds=FLAGS.conn_rounds,
                          widths=[int(w) for w in FLAGS.conn_widths])
        return
    variants = [v for v in FLAGS.variants.split(",") if v]
    bench_lm(variants, FLAGS.steps, FLAGS.out)


if __name__ == "__main__":
    cli.run(main, positional=True)
