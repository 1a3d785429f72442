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
    with pytest.raises(ValueError, match="logx / fit needs x > 0"):
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


def test_log10_fit_per_seed_gets_the_verdict_rule(tmp_path):
    """Known values: losses exactly 3 - 0.02 log10 x (+ a per-seed offset) give b = -0.02 for
    every seed (a finding: zero spread); a seed missing a point is left out of the fit; a seed
    set with slopes of both signs is within noise."""
    from experiments.sweep_series import log10_slope, seed_slopes
    series = dict(SERIES[0], fit="log10", paper_slope=-0.0256)
    per_seed = {r: {sd: 3.0 + 0.1 * sd - 0.02 * math.log10(x) for sd in (0, 1, 2)}
                for r, x in series["points"]}
    del per_seed["big"][2]
    a, b = log10_slope([(10, 2.0), (1000, 1.0)])
    assert (a, b) == pytest.approx((2.5, -0.5))
    assert seed_slopes(series, per_seed) == pytest.approx({0: -0.02, 1: -0.02})
    stats = {"small": (1.6, 0.01, 3), "base": (1.55, 0.01, 3), "big": (1.5, 0.01, 2)}
    text = "\n".join(write_series(str(tmp_path), [series], stats, per_seed=per_seed))
    assert "b = -0.0200 ± 0.0000 (2) per decade" in text and "**finding**" in text
    assert "paper: b = -0.0256 per decade" in text
    per_seed["small"] = {0: 3.1, 1: 2.9}
    text = "\n".join(write_series(str(tmp_path), [series], stats, per_seed=per_seed, plot=False))
    assert "**within noise**" in text
    with pytest.raises(ValueError, match="fit='cubic' is not allowed"):
        validate_series([dict(SERIES[0], fit="cubic")], ["base", "small", "big"])
