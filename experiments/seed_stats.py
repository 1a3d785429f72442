"""Mean, spread and count over seeds, and their table text (shared by experiments.reproduce and
experiments.sweep_series)."""
from __future__ import annotations

import math


def seed_stats(xs) -> tuple[float, float, int]:
    """(mean, sample std, n) over the finite values of xs; (nan, nan, 0) if there are none."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan"), 0
    mean = sum(xs) / len(xs)
    std = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return mean, std, len(xs)


def mean_std_text(m: float, s: float, n: int, digits: int) -> str:
    """'mean ± std (n)'; one run has no spread, so just 'value (1)'."""
    return f"{m:.{digits}f} ({n})" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f} ({n})"
