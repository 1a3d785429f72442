"""Sweep series (experiments/sweep_series.py): validation names the bad field or row, the table
lists every point with the finished seeds' mean and the paper's value, and the plot is written."""
import math

import pytest

from experiments.sweep_series import validate_series, write_series

SERIES = [{"name": "slots", "title": "loss vs slots", "xlabel": "rows", "logx": True,
           "points": [("small", 16), ("base", 64), ("big", 256)],
           "paper": {"label": "paper T3", "points": [(16, 2.8), (64, 2.7)]}}]


def test_validate_accepts_known_rows_and_rejects_bad_series():
    validate_series(SERIES, ["base", "small", "big", "other"])
    with pytest.raises(ValueError, match=r"rows \['big'\] that are not in the sweep"):
        validate_series(SERIES, ["base", "small"])
    with pytest.raises(ValueError, match="lacks field"):
        validate_series([{"name": "x", "points": []}], [])
    with pytest.raises(ValueError, match="logx needs x > 0"):
        validate_series([dict(SERIES[0], points=[("base", 0)])], ["base"])
    with pytest.raises(ValueError, match="repeated"):
        validate_series([SERIES[0], SERIES[0]], ["base", "small", "big"])


def test_write_series_table_and_plot(tmp_path):
    stats = {"small": (1.60, 0.01, 3), "base": (1.55, 0.0, 1), "big": (math.nan, math.nan, 0)}
    lines = write_series(str(tmp_path), SERIES, stats)
    text = "\n".join(lines)
    assert "| 16 | small | 1.6000 ± 0.0100 (3) | 2.8 |" in text
    assert "| 64 | base | 1.5500 (1) | 2.7 |" in text
    assert "| 256 | big | not run yet | - |" in text      # no paper value at x = 256 either
    assert (tmp_path / "series_slots.png").stat().st_size > 1000
    write_series(str(tmp_path), [dict(SERIES[0], min_yspan=0.5)], stats)  # y-range option
