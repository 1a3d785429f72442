"""``python -m experiments.bench connections`` at two widths (two arms and a norm arm, tiny
widths): every arm at the first width, only the wide arms at the next, ratios to the same
width's baseline; a bad flag is one error line."""
import json

import pytest

from experiments import bench
from tests.experiments.bench_runner import run_bench


def test_connections_rows_per_width(tmp_path, monkeypatch):
    arms = {n: bench.CONNECTION_ARMS[n] for n in ("baseline", "hc_n4", "seednorm")}
    monkeypatch.setattr(bench, "CONNECTION_ARMS", arms)
    run_bench("connections", "--steps=1", "--conn_rounds=2", "--conn_widths=16,24",
              f"--out={tmp_path}")
    r = json.loads((tmp_path / "connections.json").read_text())
    assert [(x["d_model"], x["arm"]) for x in r["rows"]] == [
        (16, "baseline"), (16, "hc_n4"), (16, "seednorm"), (24, "baseline"), (24, "hc_n4")]
    for x in r["rows"]:
        base = next(y for y in r["rows"] if y["d_model"] == x["d_model"] and y["arm"] == "baseline")
        assert x["step_ratio"] == pytest.approx(x["step_s"] / base["step_s"])
        assert x["temp_ratio"] == pytest.approx(x["temp_mb"] / base["temp_mb"])
    assert r["rows"][3]["params"] > r["rows"][0]["params"]          # the width override took
    md = (tmp_path / "connections.md").read_text()
    assert "--conn_widths 16,24" in md and "| 24 | hc_n4 |" in md


def test_connections_bad_rounds_is_one_error(capsys):
    with pytest.raises(SystemExit):
        run_bench("connections", "--conn_rounds=0")
    assert "--conn_rounds=0 must be an integer >= 1" in capsys.readouterr().err
