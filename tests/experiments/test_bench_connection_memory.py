"""``python -m experiments.bench connection_memory`` plumbing, with the libtpu compile replaced by
a stand-in (the real AOT compiles take minutes): parameter counts are the models', training
bytes are temp + 16 B/param, ratios are to the same width's baseline, and a missing libtpu is
one clear error."""
import json

import pytest

from experiments import bench
from experiments.bench_connection_memory import ARMS, bench_connection_memory


def test_rows_are_per_width_ratios_to_the_baseline(tmp_path):
    temps = {}

    def fake_temp(model_cfg, batch, seq):
        key = (model_cfg["d_model"], model_cfg["connection"], str(model_cfg["connection_kwargs"]))
        return temps.setdefault(key, 1000 * (len(temps) + 1))

    r = bench_connection_memory(str(tmp_path), [16, 32], arms=bench.CONNECTION_ARMS,
                                tpu_temp=fake_temp, command="test")
    assert [(row["d_model"], row["arm"]) for row in r["rows"]] == \
        [(d, a) for d in (16, 32) for a in ARMS]
    for row in r["rows"]:
        base = next(x for x in r["rows"] if x["d_model"] == row["d_model"]
                    and x["arm"] == "baseline")
        assert row["training_bytes"] == row["tpu_grad_temp_bytes"] + 16 * row["params"]
        assert row["temp_vs_baseline"] == pytest.approx(row["tpu_grad_temp_bytes"]
                                                        / base["tpu_grad_temp_bytes"])
        assert row["training_vs_baseline"] == pytest.approx(row["training_bytes"]
                                                            / base["training_bytes"])
    by = {(row["d_model"], row["arm"]): row["params"] for row in r["rows"]}
    assert by[(32, "baseline")] > by[(16, "baseline")]          # the width override took
    assert by[(16, "mhc_n4")] > by[(16, "baseline")]            # mHC adds its mixing params
    saved = json.loads((tmp_path / "connection_memory.json").read_text())
    assert saved["rows"] == r["rows"]
    assert "| 32 | hc_n4_stored |" in (tmp_path / "connection_memory.md").read_text()


def test_without_libtpu_it_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="libtpu"):
        bench_connection_memory(str(tmp_path), [16], arms=bench.CONNECTION_ARMS,
                                tpu_temp=lambda *a: None)
