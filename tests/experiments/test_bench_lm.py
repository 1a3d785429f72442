"""``python -m experiments.bench lm`` on the smoke variant: the step is timed with the matmul
probe interleaved, and the probe's best / median / worst rates are ordered and feed
'MFU vs probe' (model FLOP/s over the best probe rate)."""
import json

import pytest

from tests.experiments.bench_runner import run_bench


def test_lm_smoke_with_interleaved_probe(tmp_path):
    run_bench("lm", "--variants=smoke", "--steps=2", f"--out={tmp_path}")
    (row,) = json.loads((tmp_path / "lm.json").read_text())["rows"]
    assert row["probe_flops_best"] >= row["probe_flops_median"] >= row["probe_flops_worst"] > 0
    tokens = row["batch"] * row["seq_len"]
    assert row["probe_shape"][0] == tokens
    assert row["mfu_vs_probe"] == pytest.approx(row["tflops_per_device"] * 1e12
                                                / row["probe_flops_best"])
    assert "MFU vs probe" in (tmp_path / "lm.md").read_text()
