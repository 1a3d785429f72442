"""The declared verdict rule (experiments/verdict.py): one seed is always "one seed"; "finding"
only when the 95% t-interval of the paired mean excludes zero; "suggestive" when every seed agrees
in sign but the interval includes zero; otherwise "within noise"."""
import math

import pytest

from experiments.verdict import compare, t_quantile


def test_t_quantiles_match_the_printed_table():
    """Two-sided 95% critical values of Student's t from any statistics table."""
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=1e-3)


def test_one_seed_is_never_more_than_one_seed():
    c = compare([-0.5])
    assert c.verdict == "one seed" and c.ci is None and c.n == 1 and c.n_negative == 1


def test_interval_excluding_zero_is_a_finding():
    """-0.013 ± 0.003 over 3 seeds: half-width 4.3027 * 0.003 / sqrt(3) = 0.00745 < 0.013."""
    c = compare([-0.013, -0.010, -0.016])
    assert c.verdict == "finding"
    assert c.mean == pytest.approx(-0.013) and c.std == pytest.approx(0.003)
    assert c.ci == pytest.approx((-0.013 - 0.0074528, -0.013 + 0.0074528), abs=1e-6)


def test_same_sign_with_interval_over_zero_is_suggestive():
    """The V2 Tucker-penalty row of results/ultramem_v2 (lower on 3/3, -0.0226 ± 0.0216)."""
    c = compare([-0.0115, -0.0475, -0.0089])
    assert c.verdict == "suggestive" and c.n_negative == 3 and c.ci[0] < 0 < c.ci[1]


def test_mixed_signs_are_within_noise():
    assert compare([-0.05, 0.02, -0.10]).verdict == "within noise"
    assert compare([0.0, 0.0]).verdict == "within noise"     # no difference at all
    assert compare([0.01, 0.0, 0.02]).verdict == "within noise"  # a tie is not agreement


def test_identical_nonzero_differences_are_a_finding():
    """Zero spread: the interval is the point itself."""
    assert compare([0.2, 0.2]).verdict == "finding"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="finite"):
        compare([])
    with pytest.raises(ValueError, match="finite"):
        compare([0.1, math.nan])
