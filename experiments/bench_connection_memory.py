"""Training memory of the connection arms at several widths, beside the Hyper-Connections paper's
Table 9 (``python -m experiments.bench connection_memory``).

For each width d (the reproduction model, configs/papers/common.py:cpu, with d_model = d,
mlp_dim = 3 d, 6 layers, batch 16 x 128) and each arm of ``CONNECTION_ARMS`` that changes the
residual stream, the LM loss gradient is AOT-compiled by libtpu for one TPU v5e chip (abstract
inputs: nothing runs, so the numbers do not depend on this machine's load) and its temp bytes
(activations kept for the backward pass plus scratch) are read from the compiled module. The
paper reports whole-accelerator memory (weights, gradients, AdamW state and activations), so the
table also gives temp + 16 bytes per parameter (f32 weights, gradients, two AdamW moments) as
"training bytes", and its ratio to the pre-norm baseline of the same width.
"""
from __future__ import annotations

ARMS = ("baseline", "hc_n4", "hc_n4_stored", "shc_n4", "fc_m4", "mhc_n4", "mhc_n4_stored")
PAPER = ("HC Table 9 (OLMo-1B, 8 GPUs, whole memory): SHC x4 +26.0%, DHC x4 +26.1%, DHC x2 "
         "+15.7%; OLMoE-1B-7B DHC x4 +9.7%; the paper recomputes the stream operations.")
BYTES_PER_PARAM = 16


def width_overrides(d: int) -> dict:
    """Config overrides of the reproduction model at width d (mlp_dim = 3 d, as configured at
    d = 128)."""
    return {"model.d_model": d, "model.mlp_dim": 3 * d}


def bench_connection_memory(out_dir: str, widths, *, arms: dict, tpu_temp, command: str = ""
                            ) -> dict:
    """Writes connection_memory.{json,md}; rows of (width, arm, params, TPU temp, training bytes,
    ratios to the width's baseline). ``arms``: {name: config overrides} (bench.CONNECTION_ARMS);
    ``tpu_temp(model_cfg, batch, seq)``: gradient temp bytes or None without libtpu
    (bench.tpu_grad_temp_bytes), which raises RuntimeError here (nothing to measure)."""
    from flax import nnx

    from configs.papers.common import base_config
    from experiments.bench_common import machine, write_result
    from experiments.overrides import apply_overrides
    from seedjax.models import LM, LMConfig
    from seedjax.train.state import abstract_model, count_params

    base = base_config("cpu", "bench_connection_memory")
    b, t = int(base.data.batch_size), int(base.data.seq_len)
    rows = []
    for d in widths:
        ref = None
        for arm in ARMS:
            cfg = apply_overrides(base, {**width_overrides(d), **arms[arm]})
            model_cfg = cfg.model.to_dict()
            temp = tpu_temp(model_cfg, b, t)
            if temp is None:
                raise RuntimeError("connection_memory needs libtpu (pip install libtpu) for its "
                                   "AOT TPU compiles")
            params = count_params(nnx.state(abstract_model(
                lambda: LM(LMConfig.from_dict(model_cfg), rngs=nnx.Rngs(0))), nnx.Param))
            total = temp + BYTES_PER_PARAM * params
            ref = ref or (temp, total)
            rows.append({"d_model": d, "arm": arm, "params": params, "tpu_grad_temp_bytes": temp,
                         "training_bytes": total, "temp_vs_baseline": temp / ref[0],
                         "training_vs_baseline": total / ref[1]})
            print(f"[connection_memory] d={d} {arm}: temp {temp / 2**20:.1f} MiB", flush=True)
    result = {"benchmark": "connection_memory", "command": command, "batch": b, "seq_len": t,
              "n_layers": int(base.model.n_layers), "chip": "TPU v5e (AOT, libtpu)",
              "bytes_per_param": BYTES_PER_PARAM, "paper": PAPER, **machine(), "rows": rows}
    write_result(out_dir, "connection_memory", result, _markdown(result))
    return result


def _markdown(r: dict) -> list:
    md = [f"# Connection memory at three widths ({r['time']})", "",
          f"Command: `{r['command']}`",
          f"Model: configs/papers/common.py:cpu with d_model = d, mlp_dim = 3d, "
          f"{r['n_layers']} layers, batch {r['batch']} x seq {r['seq_len']}; LM loss gradient "
          f"AOT-compiled for one {r['chip']} (nothing runs: independent of this machine's load). "
          f"Training bytes = gradient temp + {r['bytes_per_param']} B/param (f32 weights, "
          "gradients, AdamW m and v). `_stored` arms keep the stream reads for the backward "
          "pass; the others recompute them (`connection_kwargs.recompute`, on by default for HC "
          "and mHC, off for FC).", "",
          "| d | arm | params | temp MiB | temp / baseline | training MiB | training / baseline |",
          "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        md.append(f"| {row['d_model']} | {row['arm']} | {row['params'] / 1e6:.2f}M | "
                  f"{row['tpu_grad_temp_bytes'] / 2**20:,.1f} | {row['temp_vs_baseline']:.2f}x | "
                  f"{row['training_bytes'] / 2**20:,.1f} | {row['training_vs_baseline']:.2f}x |")
    md += ["", f"Paper: {r['paper']}"]
    return md
