"""The one statistical rule that gives every comparison on a results page its verdict word.

A comparison is a row against its reference row, paired seed by seed (same seed = same data order
and, where shapes allow, the same init): d_s = row_s - reference_s over the seeds both finished.
With n pairs, mean m, sample std s and the 95% t-interval m ± t(0.975, n-1) · s / sqrt(n):

  "one seed"      n = 1 (no spread to compare with, whatever the size of the difference);
  "finding"       n >= 2 and the 95% interval excludes zero;
  "suggestive"    n >= 2, every seed has the same (non-zero) sign, the interval includes zero;
  "within noise"  otherwise.

The rule is stated once for readers in ``results/README.md``; page text may explain a verdict but
never upgrade it. (With 3 seeds, t(0.975, 2) = 4.30: a finding needs |m| > 2.48 s.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

VERDICTS = ("finding", "suggestive", "within noise", "one seed")
CONFIDENCE = 0.95


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (scipy, a jax dependency)."""
    from scipy.stats import t
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Comparison:
    """Paired differences of one row against its reference and the verdict they earn."""
    diffs: tuple[float, ...]
    mean: float
    std: float
    ci: tuple[float, float] | None   # 95% t-interval of the mean difference; None for one seed
    n_negative: int                  # seeds where the row is below its reference
    verdict: str

    @property
    def n(self) -> int:
        return len(self.diffs)


def compare(diffs) -> Comparison:
    """Comparison of paired differences ``diffs`` (finite floats, one per seed; at least one)."""
    d = tuple(float(x) for x in diffs)
    if not d or not all(math.isfinite(x) for x in d):
        raise ValueError(f"paired differences must be one or more finite numbers, got {d}")
    n = len(d)
    mean = sum(d) / n
    neg = sum(x < 0 for x in d)
    if n == 1:
        return Comparison(d, mean, 0.0, None, neg, "one seed")
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if lo > 0 or hi < 0:
        verdict = "finding"
    elif neg == n or all(x > 0 for x in d):
        verdict = "suggestive"
    else:
        verdict = "within noise"
    return Comparison(d, mean, std, (lo, hi), neg, verdict)
