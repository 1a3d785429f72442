"""``python -m experiments.bench decode_profile``: the HLO classes of known ops, and the subcommand
at a tiny size (writes a row per layer and B whose class shares sum to 1)."""
import json

import jax
import jax.numpy as jnp
import pytest

from tests.experiments.bench_runner import run_bench
from experiments.bench_profile import CLASSES, classify_hlo


def test_classify_hlo_names_each_op_class():
    """A matmul, a top-k, a gather of table rows by the top-k's indices and a sort, in one jitted
    function, each land in their class; the loop op itself is not an entry (its ops are)."""
    def fn(x, w, table):
        h = x @ w                                                     # matmul
        _, idx = jax.lax.top_k(h, 4)                                  # top-k
        rows = jnp.take(table, idx, axis=0)                           # gather
        s = jnp.sort(h, axis=-1)                                      # sort
        loop = jax.lax.fori_loop(0, 3, lambda i, c: c * 2.0 + 1.0, s)
        return rows.sum() + loop.sum()

    args = (jnp.ones((8, 16)), jnp.ones((16, 32)), jnp.ones((100, 8)))
    classes = classify_hlo(jax.jit(fn).lower(*args).compile().as_text())
    found = {c for c, _ in classes.values()}
    assert {"matmul", "top-k", "gather", "sort"} <= found, classes
    assert not any(name.startswith("while") for name in classes), classes


def test_classify_hlo_rejects_text_without_entry():
    with pytest.raises(ValueError, match="ENTRY"):
        classify_hlo("HloModule m\n")


def test_decode_profile_subcommand_tiny(tmp_path):
    run_bench("decode_profile", "--mem_d_model=64", "--mem_ffn_dim=256", "--mem_batches=2",
              "--profile_reps=1", f"--out={tmp_path}")
    result = json.loads((tmp_path / "decode_profile.json").read_text())
    assert "--mem_batches=2" in result["command"] and result["steps"] == 8
    assert {r["layer"] for r in result["rows"]} == {"dense", "ultramem_v2", "ultramem", "moe"}
    for row in result["rows"]:
        assert row["total_us"] > 0 and set(row["shares"]) == set(CLASSES)
        assert abs(sum(row["shares"].values()) - 1) < 0.01, row
    dense = next(r for r in result["rows"] if r["layer"] == "dense")
    assert dense["shares"]["matmul"] > 0.5          # a SwiGLU FFN is its three matmuls
    assert "| 2 | UltraMemV2 |" in (tmp_path / "decode_profile.md").read_text()
