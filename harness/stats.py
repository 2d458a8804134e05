"""Statistics: bootstrap CIs of the median, tests, and the regression decision.

The bootstrap is numpy's own (percentile bootstrap, fixed seed, vectorised): the runner
calls it between samples to decide when a cell has enough, and importing scipy into the
runner process would make every fork of it (the `ns` start path) about 3 ms slower, as
measured on a 2-core machine. Tests (Mann-Whitney U) come from scipy, imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

RESAMPLES = 2000
SEED = 20261127


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    lo: float  # 95 % CI of the median
    hi: float
    mean: float
    stdev: float
    min: float
    max: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def rel_half_width(self) -> float:
        return self.half_width / abs(self.median) if self.median else float("inf")


def median_ci(values: ArrayLike, confidence: float = 0.95,
              resamples: int = RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap CI of the median."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    meds = np.median(x[idx], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(meds, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def summarize(values: ArrayLike) -> Summary:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan, nan)
    lo, hi = median_ci(x)
    return Summary(n=int(x.size), median=float(np.median(x)), lo=lo, hi=hi,
                   mean=float(x.mean()), stdev=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                   min=float(x.min()), max=float(x.max()))


def ratio_ci(base: ArrayLike, new: ArrayLike, confidence: float = 0.95,
             resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """Ratio of medians new/base with a two-sample percentile-bootstrap CI."""
    b = np.asarray(base, dtype=float)
    n = np.asarray(new, dtype=float)
    ratio = float(np.median(n) / np.median(b))
    rng = np.random.default_rng(SEED)
    mb = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    mn = np.median(n[rng.integers(0, n.size, size=(resamples, n.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = mn / mb
    ratios = ratios[np.isfinite(ratios)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha]) if ratios.size else (np.nan, np.nan)
    return ratio, float(lo), float(hi)


def mann_whitney(base: ArrayLike, new: ArrayLike) -> float:
    """Two-sided Mann-Whitney U p-value (scipy)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(np.asarray(new, dtype=float), np.asarray(base, dtype=float),
                              alternative="two-sided").pvalue)


def unstable(values: ArrayLike) -> str | None:
    """pyperf-style stability check: a warning text, or None when the spread is fine."""
    s = summarize(values)
    if s.n < 3 or not s.median:
        return None
    if s.n < 10:
        return f"only {s.n} samples"
    if s.stdev / abs(s.mean) > 0.10:
        return f"unstable: stdev {s.stdev / abs(s.mean):.0%} of mean"
    if s.max > 1.5 * s.median or s.min < 0.5 * s.median:
        return "unstable: outliers beyond 0.5x-1.5x median"
    return None
