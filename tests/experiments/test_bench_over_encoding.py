"""``python -m experiments.bench over_encoding``: the byte arithmetic of the n-gram tables (known
values), the flag checks, and one tiny end-to-end run writing the JSON and markdown (marked
slow: its compiles take ~20-30 s on a shared 2-core CPU)."""
import json

import pytest

from experiments import bench
from experiments import bench_over_encoding as boe

TINY = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_dim=64, max_seq_len=16,
            head="tied")


def test_table_bytes_known_values():
    # 16 bytes per parameter: f32 weight + 2 Adam moments + gradient; rows sharded over 8
    assert boe.table_bytes(16384, 128) == {"table_params": 2_097_152,
                                           "table_bytes": 33_554_432,
                                           "table_bytes_per_device": 4_194_304}
    assert boe.table_bytes(1001, 8)["table_bytes_per_device"] == 126 * 8 * 16  # ceil(1001 / 8)
    assert boe.table_bytes(1000, 8, shards=4)["table_bytes_per_device"] == 250 * 8 * 16
    # the benchmark's layouts at d=128: n=2, k=1, m=16381 -> 16384 padded rows of width 128
    lay = boe._oe_layout(boe._lm_config(boe.MODEL, dict(m=16381, n=2, k=1)))
    assert (lay["table_rows"], lay["slice_width"], lay["table_bytes"],
            lay["table_bytes_per_device"]) == (16384, 128, 33_554_432, 4_194_304)
    # the paper's layout n=3, k=2 at m=262139: 4 slices of width 32, moduli m, m+2, m+4, m+6
    lay = boe._oe_layout(boe._lm_config(boe.MODEL, dict(m=262139, n=3, k=2)))
    assert lay["moduli"] == [262139, 262141, 262143, 262145] and lay["slice_width"] == 32
    assert lay["table_rows"] == 1_048_576 and lay["table_params"] == 33_554_432
    assert lay["table_bytes"] == 512 * 2**20 and lay["table_bytes_per_device"] == 64 * 2**20
    assert lay["history_len"] == 2


def test_bad_size_fails_before_compiling():
    with pytest.raises(ValueError, match="--oe_sizes: m=16384.*multiple of the vocabulary"):
        boe.check_arms([16381, 16384], 0, 262139)
    argv = ["bench", "over_encoding", "--oe_sizes=16381,8192"]
    bench.FLAGS(argv)
    try:
        with pytest.raises(ValueError, match="--oe_sizes: m=8192"):
            bench.check_flags("over_encoding")
    finally:
        bench.FLAGS.unparse_flags()


@pytest.fixture
def fast_compile():
    """XLA with most optimisations off: the tiny run's compiles take half the time (the test
    checks the outputs' structure and arithmetic, not the timings)."""
    import jax
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.mark.slow  # ~20-30 s on a loaded 2-core CPU: 15 small XLA compiles (train, fwd+bwd,
#                   init, prefill, decode); run with -m slow
def test_bench_over_encoding_tiny(tmp_path, fast_compile):
    r = boe.bench_over_encoding(str(tmp_path), sizes=(1021, 4093), paper_m=0, decode_m=1021,
                                decode_batches=(1,), rounds=1, decode_rounds=1, decode_tokens=2,
                                prompt_len=4, batch_size=2, seq_len=8, model=TINY, plot=False,
                                command="test")
    result = json.loads((tmp_path / "over_encoding.json").read_text())
    assert result["rows"] == json.loads(json.dumps(r["rows"]))
    for key in ("benchmark", "command", "commit", "versions", "devices", "cpu_count", "load_avg",
                "load_avg_end", "time", "model", "train", "batch", "seq_len", "rounds",
                "bytes_per_param", "shards", "rows", "fit_n2", "decode", "paper", "skipped"):
        assert key in result, key
    rows = {row["arm"]: row for row in result["rows"]}
    assert list(rows) == ["baseline", "oe_n2_k1_m1021", "oe_n2_k1_m4093"]
    assert rows["baseline"]["step_ratio"] == 1.0 and rows["baseline"]["fwd_bwd_ratio"] == 1.0
    # d=32, n=2, k=1: m=1021 -> 1024 rows x 32; m=4093 -> 4096 rows x 32 (padded to 128)
    for arm, rows_, params in (("oe_n2_k1_m1021", 1024, 32768), ("oe_n2_k1_m4093", 4096, 131072)):
        row = rows[arm]
        assert (row["table_rows"], row["table_params"]) == (rows_, params)
        assert row["table_bytes"] == 16 * params
        assert row["table_bytes_per_device"] == rows_ // 8 * 32 * 16
        assert row["params"] == rows["baseline"]["params"] + params + 32 * 32  # + projection
        assert row["step"]["median_s"] > 0 and row["fwd_bwd"]["median_s"] > 0
        assert row["update_s"] == pytest.approx(row["step"]["median_s"]
                                                - row["fwd_bwd"]["median_s"])
        assert row["fwd_flops_ratio"] > 1
    dec = {row["arm"]: row for row in result["decode"]["rows"]}
    assert set(dec) == {"baseline_B1", "oe_B1"}
    assert dec["baseline_B1"]["time_ratio"] == 1.0 and dec["oe_B1"]["time_ratio"] > 0
    assert dec["oe_B1"]["history_shape"] == [1, 2] and dec["baseline_B1"]["history_shape"] is None
    md = (tmp_path / "over_encoding.md").read_text()
    for text in ("## Train step", "## Decode step", "## Paper's numbers beside ours",
                 "can and cannot show", "-4.6%", "oe_n2_k1_m4093", "Commit:"):
        assert text in md, text
