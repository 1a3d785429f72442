"""``python -m experiments.bench memory``: the decode-step benchmark of dense FFN vs UltraMemV2 vs
UltraMem vs MoE runs at tiny sizes, writes its JSON/markdown/plot, and its designs match
activated FLOPs and total parameters within the stated tolerances."""
import json

import pytest

from experiments import bench
from tests.experiments.bench_runner import run_bench

MODELS = ("dense", "ultramem_v2", "ultramem", "moe", "moe_gather")


def _check_matching(params: dict, flops_vs_dense: dict, ratio: float = 11.0):
    tol = bench.MEMORY_TOLERANCE
    for name in MODELS[1:]:
        assert abs(flops_vs_dense[name] - 1) <= tol["flops_rel"], (name, flops_vs_dense[name])
        assert abs(params[name] / params["dense"] / ratio - 1) <= tol["param_ratio_rel"], params
        assert 10 <= params[name] / params["dense"] <= 12, (name, params)
    for name in ("ultramem_v2", "ultramem"):
        assert abs(params["moe"] / params[name] - 1) <= tol["moe_params_rel"], params


@pytest.mark.parametrize("d_model,ffn_dim", [(512, None), (64, 256)])
def test_design_matches_flops_and_params(d_model, ffn_dim):
    design = bench.design_memory_bench(d_model, ffn_dim)
    f = design["dense"]["ffn_dim"]
    dense_flops = 6 * d_model * f
    flops = {n: sum(design[n].forward_flops_per_token().values()) / dense_flops
             for n in MODELS[1:]}
    _check_matching(design["params"], flops)
    moe = design["moe"]
    assert moe.load_balance_coef == 0 and moe.capacity_factor is None
    costs = bench.memory_cost_objects(design)
    assert all(c is not None for c, _ in costs.values())      # default shapes are expressible
    assert costs["moe"][0].forward_flops() == sum(moe.forward_flops_per_token().values())
    # decode bytes: MoE touches all experts as B grows, memory layers a fraction of their rows
    big = {n: c.decode_bytes_total(64, 4) / costs["dense"][0].decode_bytes_total(64, 4)
           for n, (c, _) in costs.items()}
    assert big["moe"] > 5 and big["ultramem_v2"] < big["moe"] and big["ultramem"] < big["moe"]


def test_unexpressible_shape_is_reported():
    import dataclasses
    design = bench.design_memory_bench(64, 256)
    design["ultramem_v2"] = dataclasses.replace(design["ultramem_v2"], values="plain")
    cost, note = bench.memory_cost_objects(design)["ultramem_v2"]
    assert cost is None and "not expressible" in note


def test_memory_subcommand_tiny(tmp_path):
    run_bench("memory", "--mem_d_model=64", "--mem_ffn_dim=256", "--mem_batches=1,2",
              "--mem_rounds=2", "--mem_bandwidth_mb=4", f"--out={tmp_path}")
    result = json.loads((tmp_path / "memory.json").read_text())
    for key in ("benchmark", "command", "versions", "devices", "cpu_count", "time", "dtype",
                "bytes_per_param", "d_model", "ffn_dim", "batches", "rounds",
                "matmul_1024_f32_flops", "read_bandwidth_bytes_per_s", "models", "matching",
                "rows"):
        assert key in result, key
    assert result["benchmark"] == "memory" and result["batches"] == [1, 2]
    assert "--mem_batches=1,2" in result["command"]
    assert set(result["models"]) == set(MODELS)
    assert len(result["rows"]) == 2 * len(MODELS)
    for row in result["rows"]:
        for key in ("model", "batch", "time_s", "time_vs_dense", "loop_time_s",
                    "loop_time_vs_dense", "decode_bytes_cost_model",
                    "decode_bytes_observed_routing", "flops_per_step_module", "roofline_s"):
            assert key in row, key
        assert row["time_s"] > 0 and row["decode_bytes_cost_model"] > 0
        assert row["loop_time_s"] > 0
        if row["model"] == "dense":
            assert row["time_vs_dense"] == 1.0 and row["loop_time_vs_dense"] == 1.0
        else:   # routing touches at most B * (slots per token) units
            assert 0 < row["touched_observed"] <= row["batch"] * 32
    m = result["models"]
    _check_matching({n: m[n]["params"] for n in MODELS},
                    {n: m[n]["flops_vs_dense"] for n in MODELS})
    match = result["matching"]
    assert all(match["flops_within_tol"].values()) and match["moe_params_within_tol"]
    assert all(match["param_ratio_in_range"].values())
    # floors: memory arms' (dense + top-k) / dense > 1, the MoE's expert GEMMs > 0 s; the
    # prepared decode constants leave the memory layers' outputs unchanged
    floors = {r["model"]: r for r in result["rows"] if "floor_s" in r and r["batch"] == 2}
    assert set(floors) == {"ultramem_v2", "ultramem", "moe"}
    assert all(r["floor_s"] > 0 for r in floors.values())
    assert floors["ultramem_v2"]["floor_vs_dense"] > 1 and floors["moe"]["floor_vs_roofline"] > 0
    assert max(result["prepared_vs_parameters_max_abs_diff"].values()) < 1e-5
    md = (tmp_path / "memory.md").read_text()
    assert "not the papers' GPU" in md and "| 2 | MoE |" in md
    assert "## Floors" in md and "| 2 | MoE | batched expert GEMMs alone |" in md
    assert (tmp_path / "memory.png").stat().st_size > 0


def test_decode_loop_equals_one_call_per_step():
    """The in-loop timing computes what one call per step computes (same outputs)."""
    import jax
    import numpy as np
    from flax import nnx

    from experiments.bench_memory import _first, decode_loop
    from seedjax.nn.memory.ultramem_v2 import UltraMemV2, UltraMemV2Config
    layer = UltraMemV2(UltraMemV2Config(d_model=32, n_keys=8, k_dim=16, topk=8),
                       rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(1), (3, 2, 1, 32))
    looped = nnx.jit(decode_loop)(layer, xs)
    for i in range(3):
        np.testing.assert_allclose(looped[i], _first(layer(xs[i])), rtol=1e-5, atol=1e-6)
