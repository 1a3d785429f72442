"""The report of ``python -m experiments.bench memory``: memory.md (design table, per-B timings,
MoE kernel slices, floors) and memory.png, from the result dict ``bench_memory`` builds (the
layer order is the order of ``r["models"]``, the tolerances ``r["matching"]["tolerance"]``)."""
from __future__ import annotations

import os

from experiments.bench_common import on_cpu
from experiments.bench_floors import floors_markdown

LABELS = {"dense": "dense SwiGLU", "ultramem_v2": "UltraMemV2", "ultramem": "UltraMem",
          "moe": "MoE", "moe_gather": "MoE (gathered blocks, before)"}


def _shape_str(name, cfg):
    if name == "dense":
        return f"F={cfg['ffn_dim']}"
    if name.startswith("moe"):
        return f"{cfg['grouped_matmul']} kernel, E={cfg['n_experts']}, top-{cfg['top_k']}, F_e={cfg['expert_dim']}"
    s = (f"knum={cfg['n_keys']} (N={cfg['n_keys'] ** 2}), Dk={cfg['k_dim']}, Dv={cfg['v_dim']}, "
         f"H={cfg['heads']}, m={cfg['topk']}, r={cfg['rank']}, h_c={cfg['cores']}")
    if name == "ultramem_v2":
        return s + f", Dp={cfg['p_dim']}, {cfg['query_mode']} queries"
    return s + f", IVE E={cfg['expand']}"


def _platform_caveat(r) -> str:
    if on_cpu(r):
        return ("**CPU caveat.** These timings are from a CPU, not the papers' GPU regime, where "
                "a decode step is bound by HBM bandwidth. On a CPU, caches can keep part of the "
                "weights between steps, the retrieval's top-k, gathers and small ops pay XLA:CPU "
                "per-op overheads that fused GPU kernels avoid, and this machine is shared with "
                "other jobs. The byte counts are the portable part: they are the weight bytes a "
                "decode step must read, on any hardware.")
    return (f"**Accelerator caveat.** At this size one layer's decode step reads a few MB, "
            f"microseconds at the measured bandwidth (the roofline column), so on "
            f"{r['device_kind']} the times measure kernel launches and XLA's per-op work, i.e. "
            "how many ops a layer runs, not its bytes: a model of many such layers, or a wider "
            "one, moves toward the roofline. The byte counts are the portable part.")


def memory_markdown(r) -> list:
    mb = lambda x: "n/a" if x is None else f"{x / 1e6:.2f}"
    ratio = lambda x: "n/a" if x is None else f"{x:.2f}x"
    m = r["models"]
    md = [f"# Memory layers at decode: time and bytes per step ({r['time']})", "",
          f"Command: `{r['command']}`",
          f"Machine: {r['device_kind']} x{len(r['devices'])}, {r['cpu_count']} cores, "
          f"{r['machine']}; jax {r['versions'].get('jax')}, flax {r['versions'].get('flax')}; "
          f"load average {r['loadavg_start'][0]:.1f} at start, {r['loadavg_end'][0]:.1f} at end "
          "(shared machine).",
          f"Measured in this run: 1024^3 f32 matmul {r['matmul_1024_f32_flops'] / 1e9:.1f} "
          f"GFLOP/s, streaming read {r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s.", "",
          _platform_caveat(r), "",
          f"One layer at d={r['d_model']}, {r['dtype']} ({r['bytes_per_param']} bytes/param). "
          f"Sparse layers are designed so that activated FLOPs/token match the dense FFN's and "
          f"total params are about {r['param_ratio_target']:g}x the dense FFN's "
          "(`design_memory_bench` in `experiments/bench.py`; tolerances: FLOPs within "
          f"{r['matching']['tolerance']['flops_rel']:.0%}, MoE params within "
          f"{r['matching']['tolerance']['moe_params_rel']:.0%} of each memory layer's).", "",
          "| layer | shape | params | params / dense | FLOPs/token (module) | FLOPs / dense | "
          "FLOPs/token (cost model) | cost class |", "|---|---|---|---|---|---|---|---|"]
    for name in r["models"]:
        i = m[name]
        cm = i["flops_per_token_cost_model"]
        md.append(f"| {LABELS[name]} | {_shape_str(name, i['config'])} | "
                  f"{i['params'] / 1e6:.3f}M | {i['params_vs_dense']:.2f}x | "
                  f"{i['flops_per_token_module'] / 1e6:.3f}M | "
                  f"{i['flops_vs_dense']:.3f}x | "
                  f"{'n/a' if cm is None else format(cm / 1e6, '.3f') + 'M'} | "
                  f"{'; '.join(x for x in (i['cost_class'], i['cost_note']) if x)} |")
    md += ["", f"Median of {r['rounds']} interleaved rounds per cell (rotating layer order; "
           f"inputs cycle through {r['input_pool']} random batches). MB/step = weight bytes read "
           "per decode step from `seedjax/train/memory_cost.py` (uniform routing: expected "
           "distinct experts U_E or value rows U(N, draws)); 'observed' substitutes the "
           "distinct experts/rows the actual routing of this run's inputs touched. "
           "Roofline = max(FLOPs / matmul rate, cost-model bytes / read bandwidth), both "
           "measured above.", "",
           "The memory layers run prepared for decoding (`seedjax.nn.memory.prepare_decode`, "
           "as `seedjax.eval.sampling.generate` does): the retrieval's weight-only work (key "
           "LayerNorm, the keys in the rank-major layout the score product reads without a "
           "copy, the cores' rank-1 SVD) is done once when the layer is loaded, not per step.",
           "",
           "'In a loop': the same layer applied to the pool's inputs inside one jitted "
           "`lax.scan` (as `seedjax.eval.sampling` generates), time per step; one call per "
           "step pays the call's dispatch every time.", "",
           "| B | layer | ms / step (p10-p90) | time / dense | in a loop: ms / step | "
           "in a loop: time / dense | MB/step (cost model) | "
           "MB/step (observed routing) | bytes / dense | experts or rows touched: expected / "
           "observed | GFLOP/step | roofline ms | time / roofline |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        te, to = row["touched_expected"], row["touched_observed"]
        touched = "-" if te is None else f"{te:,.1f} / {to:,.1f}"
        md.append(f"| {row['batch']} | {LABELS[row['model']]} | {row['time_s'] * 1e3:.3f} "
                  f"({row['time_p10_s'] * 1e3:.3f}-{row['time_p90_s'] * 1e3:.3f}) | "
                  f"{row['time_vs_dense']:.2f}x | {row['loop_time_s'] * 1e3:.3f} | "
                  f"{row['loop_time_vs_dense']:.2f}x | {mb(row['decode_bytes_cost_model'])} | "
                  f"{mb(row['decode_bytes_observed_routing'])} | "
                  f"{ratio(row['bytes_vs_dense'])} | "
                  f"{touched} | {row['flops_per_step_module'] / 1e9:.4f} | "
                  f"{row['roofline_s'] * 1e3:.3f} | {row['time_s'] / row['roofline_s']:.1f}x |")
    md += ["", "FLOPs: 'module' is each config's `forward_flops_per_token()` (the matching "
           "target); 'cost model' is the `*Cost.flops_per_token()` formula of the same shapes. "
           "They differ in the retrieval's grid term (the module counts the k_s x k_s "
           "rescoring grid, 2 H k_s^2 r (r+1) h_c; the cost model H h_c (2 m r^2 + 2 m^2 r)) "
           "and the cost model's rank-1 merge; top-k, norms and gathers are not FLOPs in "
           "either. MoE FLOPs exclude the blocked kernel's padding rows. Decode bytes exclude "
           "activations, the KV cache and the IVE permutation table (a constant)."]
    per_arm = {n: [x for x in r["rows"] if x["model"] == n and x["moe_kernel_slices"]]
               for n in ("moe", "moe_gather")}
    if any(per_arm.values()):
        md += ["", "MoE kernels: both arms use `MoEFFN`'s dropless block layout (every expert's "
               "queue padded to whole blocks of rows). 'MoE (gathered blocks, before)' "
               "(\"blocked\", blocks of up to 128 rows) copies one [d, F_e] weight slice per "
               "block into a [G, d, F_e] buffer with an XLA gather, more slices than distinct "
               "experts; 'MoE' (\"blocked_sliced\", blocks of up to 8 rows) loops over the "
               "touched experts, reads each one's weights once by a dynamic slice and runs its "
               "blocks on them. Slices per matrix (observed) / expected distinct experts, MB of "
               "weights read:"]
        for n, rows in per_arm.items():
            md.append(f"* {LABELS[n]}: " + "; ".join(
                f"B={x['batch']}: {x['moe_kernel_slices']:g} / {x['touched_expected']:.1f}, "
                f"{x['moe_kernel_bytes'] / 1e6:.1f} MB" for x in rows))
        md += ["", "A grouped-GEMM kernel (GPU/TPU `ragged_dot`) reads each touched expert once; "
               "on CPU `ragged_dot` lowers to a dense matmul over all experts."]
    md += floors_markdown(r["rows"], LABELS)
    diff = r.get("prepared_vs_parameters_max_abs_diff")
    if diff:
        md += ["", "Prepared decode constants vs the parameter path, max |difference| of the "
               "outputs on one input: " + ", ".join(f"{LABELS[n]} {v:.1e}"
                                                     for n, v in diff.items()) + "."]
    return md


def memory_plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in r["models"]:
        rows = [x for x in r["rows"] if x["model"] == name]
        bs = [x["batch"] for x in rows]
        a.plot(bs, [x["time_s"] * 1e3 for x in rows], "o-", label=LABELS[name])
        if rows[0]["decode_bytes_cost_model"] is not None:
            line, = b.plot(bs, [x["decode_bytes_cost_model"] / 1e6 for x in rows], "o-",
                           label=f"{LABELS[name]} (cost model)")
            if rows[0]["touched_expected"] is not None:
                b.plot(bs, [x["decode_bytes_observed_routing"] / 1e6 for x in rows], "x:",
                       color=line.get_color(), label=f"{LABELS[name]} (observed routing)")
            if rows[0].get("moe_kernel_bytes") is not None:
                b.plot(bs, [x["moe_kernel_bytes"] / 1e6 for x in rows], "s--",
                       color=line.get_color(), label=f"{LABELS[name]} (blocked kernel gathers)")
    for ax, ylabel, title in ((a, "ms per decode step (median)", "measured time"),
                              (b, "MB of weights read per step",
                               "weight bytes (UltraMem and V2 overlap)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch B (tokens per decode step)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"One layer, d={r['d_model']}, {r['dtype']}: dense FFN vs memory layers vs MoE "
                 "of equal activated FLOPs", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
