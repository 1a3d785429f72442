"""``python -m experiments.bench moe``: the flag checks and one tiny end-to-end run (d=16,
T=16, E=4, k=2: four small compiles) writing the JSON and markdown."""
import json

import pytest

from experiments import bench
from experiments import bench_moe as bm


def test_bad_design_fails_before_compiling():
    with pytest.raises(ValueError, match=r"--moe_top_ks: k=3 must divide 4 d = 1024"):
        bm.check_design(256, (8,), (3,), ("blocked",))
    with pytest.raises(ValueError, match=r"--moe_top_ks: k=8 > E=4"):
        bm.check_design(256, (4,), (8,), ("blocked",))
    with pytest.raises(ValueError, match=r"--moe_dispatches: 'megablox' is not allowed"):
        bm.check_design(256, (8,), (2,), ("megablox",))
    bench.FLAGS(["bench", "moe", "--moe_experts=8,x"])
    try:
        with pytest.raises(ValueError, match="--moe_experts="):
            bench.check_flags("moe")
    finally:
        bench.FLAGS.unparse_flags()


def test_bench_moe_tiny(tmp_path):
    r = bm.bench_moe(str(tmp_path), d_model=16, batch=2, seq=8, experts=(4,), top_ks=(2,),
                     rounds=2, block_size=8, command="test")
    result = json.loads((tmp_path / "moe.json").read_text())
    assert result["rows"] == json.loads(json.dumps(r["rows"]))
    for key in ("benchmark", "command", "versions", "devices", "cpu_count", "load_avg",
                "load_avg_end", "time", "d_model", "n_tokens", "rounds", "rows"):
        assert key in result, key
    rows = {row["arm"]: row for row in result["rows"]}
    assert list(rows) == ["dense", "E4_k2_blocked", "E4_k2_ragged_dot", "E4_k2_dense_masked"]
    assert rows["dense"]["ratio_to_dense"] == 1.0 and rows["dense"]["hidden_dim"] == 64
    # equal activated FLOPs: k 4 d F = 16 d^2 per token, x3 for forward + backward, T = 16
    assert {row["model_flops"] for row in rows.values()} == {3 * 16 * 16 * 16 ** 2}
    for name in ("E4_k2_blocked", "E4_k2_ragged_dot", "E4_k2_dense_masked"):
        row = rows[name]
        assert row["hidden_dim"] == 32 and row["n_pairs"] == 32 and row["step"]["n"] == 2
        assert row["step"]["median_s"] > 0 and row["ratio_to_dense"] > 0
        assert row["max_load_over_mean"] >= 1 and row["xla_flops"] > 0
    assert rows["E4_k2_dense_masked"]["ratio_to_dense_masked"] == 1.0
    md = (tmp_path / "moe.md").read_text()
    for text in ("Command: `test`", "load average", "| E4_k2_blocked | 4 | 2 | 32 |", "/ dense",
                 "## Reading", "**blocked** (sparse grouped)", "**ragged_dot**"):
        assert text in md, text
