"""Statistics: bootstrap CIs of the median, tests, and the regression decision.

The bootstrap is numpy's own (percentile bootstrap, fixed seed, vectorised): the runner
calls it between samples to decide when a cell has enough, and importing scipy into the
runner process would make every fork of it (the `ns` start path) about 3 ms slower, as
measured on a 2-core machine. Tests (Mann-Whitney U) come from scipy, imported lazily.
"""

from __future__ import annotations

import math
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


# --- the regression decision (bench compare, bench calibrate) ---------------------------
#
# Two runs of the identical scenario on one host differ by more than their samples say:
# each run is a short stretch of time, and the load on the host (other jobs, the page
# cache, CPU frequency) changes between stretches. Interleaving rounds removes that drift
# between the cells of one run, but not between runs, so a test on the samples of two runs
# (Mann-Whitney, a bootstrap CI) calls most A/A differences "significant". The noise band
# is therefore measured at the level where it arises: the spread of a cell's median from
# run to run (`bench calibrate`, or several runs per side), and a change counts only when
# it is larger than what that spread produces by chance.

HIGHER_IS_BETTER_UNITS = frozenset({"iops", "ops", "op/s", "ops/s", "Hz"})


def higher_is_better(unit: str) -> bool:
    """From the unit, never the metric's name: rates (B/s, iops, anything per second) are
    better when higher; times, sizes and counts are better when lower."""
    return unit in HIGHER_IS_BETTER_UNITS or unit.endswith("/s")


def run_sigma(runs_by_side: list[list[float]]) -> tuple[float, int]:
    """Pooled standard deviation of log(run median) within each side, and its degrees of
    freedom: how much one run's median of a cell moves from run to run. `runs_by_side`
    holds, per side, the medians of that side's runs (a side with one run adds nothing)."""
    ss, df = 0.0, 0
    for medians in runs_by_side:
        logs = np.log(np.asarray([m for m in medians if m > 0], dtype=float))
        if logs.size >= 2:
            ss += float(((logs - logs.mean()) ** 2).sum())
            df += int(logs.size - 1)
    return (float(np.sqrt(ss / df)) if df else float("nan"), df)


@dataclass(frozen=True)
class AASpread:
    """A/A spread of one cell over `runs` calibration runs, each running the cell twice,
    interleaved. Logs of medians: `within` is the spread of one copy's median around the
    other copy's in the same run (sampling noise only: the copies share the run's
    conditions), `between` the run-to-run part, `total` what one run's median carries
    and what the noise band is built from."""

    runs: int
    within: float
    between: float
    total: float
    df: int
    max_within: float  # largest |A/A ratio - 1| seen between the copies of one run
    max_cross: float  # ... between copies of different runs

    def as_dict(self) -> dict[str, float | int]:
        return {"runs": self.runs, "sigma_within": self.within, "sigma_between": self.between,
                "sigma": self.total, "df": self.df, "max_aa_within": self.max_within,
                "max_aa_cross": self.max_cross}


def aa_spread(pairs: list[tuple[float, float]]) -> AASpread:
    """Variance components of log medians from (copy A, copy B) median pairs, one pair per
    calibration run: within = mean squared copy difference / 2, between = variance of the
    run means minus the within part they still carry (clipped at 0)."""
    x = np.log(np.asarray([p for p in pairs if p[0] > 0 and p[1] > 0], dtype=float))
    if x.ndim != 2 or x.shape[0] == 0:
        return AASpread(0, float("nan"), float("nan"), float("nan"), 0, float("nan"),
                        float("nan"))
    r = x.shape[0]
    w2 = float(np.mean((x[:, 0] - x[:, 1]) ** 2) / 2)
    b2 = max(float(np.var(x.mean(axis=1), ddof=1)) - w2 / 2, 0.0) if r >= 2 else 0.0
    cross = [abs(x[i, 0] - x[j, 1]) for i in range(r) for j in range(r) if i != j]
    return AASpread(runs=r, within=float(np.sqrt(w2)), between=float(np.sqrt(b2)),
                    total=float(np.sqrt(w2 + b2)), df=r - 1 if r >= 2 else 0,
                    max_within=float(np.expm1(np.abs(x[:, 0] - x[:, 1]).max())),
                    max_cross=float(np.expm1(max(cross))) if cross else float("nan"))


def noise_band(sigma: float, df: int, runs_base: int, runs_new: int, alpha: float,
               cells: int) -> float:
    """The relative change (0.25 = 25 %) an A/A comparison of these many runs per side
    exceeds with probability alpha / cells: a one-sided Student-t prediction bound on the
    difference of two log medians whose run-to-run sd is `sigma`, estimated with `df`
    degrees of freedom (t, not z, because sigma is itself estimated from few runs), and a
    Bonferroni share of alpha per cell, because one comparison gates many cells at once."""
    from scipy.stats import t

    if math.isnan(sigma) or df < 1:
        return float("nan")
    q = float(t.ppf(1 - alpha / max(cells, 1), df))
    return float(np.expm1(q * sigma * np.sqrt(1 / runs_base + 1 / runs_new)))


@dataclass(frozen=True)
class Decision:
    verdict: str  # regression | improvement | no change | n/a
    ratio: float  # median(new) / median(base)
    lo: float  # 95 % bootstrap CI of the ratio
    hi: float
    p: float  # Mann-Whitney U, two-sided
    worse: float  # relative change in the worse direction (0.3 = 30 % worse; < 0: better)
    why: str  # the condition that decided


def decide(base: ArrayLike, new: ArrayLike, unit: str, threshold: float, alpha: float,
           band: float) -> Decision:
    """Regression (or improvement) only when all three hold: Mann-Whitney p < alpha, the
    95 % CI of the ratio of medians excludes 1, and the change exceeds both `threshold` and
    the noise `band` (relative; NaN when unknown, then the threshold alone). Changes are
    measured in log space, so 2x slower and half the throughput are both +100 % worse."""
    b = np.asarray(base, dtype=float)
    n = np.asarray(new, dtype=float)
    nan = float("nan")
    if b.size < 2 or n.size < 2:
        return Decision("n/a", nan, nan, nan, nan, nan, "fewer than 2 samples on a side")
    if np.median(b) <= 0 or np.median(n) <= 0:
        return Decision("n/a", nan, nan, nan, nan, nan, "a median is 0: no ratio")
    ratio, lo, hi = ratio_ci(b, n)
    p = mann_whitney(b, n)
    up = higher_is_better(unit)
    worse = (1 / ratio if up else ratio) - 1
    worse_lo, worse_hi = (1 / hi, 1 / lo) if up else (lo, hi)  # CI of (1 + worse)
    need = threshold if math.isnan(band) else max(threshold, band)
    change = abs(float(np.log1p(worse)))
    if p >= alpha:
        return Decision("no change", ratio, lo, hi, p, worse, f"p = {p:.2g} >= {alpha:g}")
    if worse_lo <= 1 <= worse_hi:
        return Decision("no change", ratio, lo, hi, p, worse, "the 95 % CI includes 1")
    if change <= np.log1p(need):
        what = "threshold" if math.isnan(band) or band < threshold else "noise band"
        return Decision("no change", ratio, lo, hi, p, worse,
                        f"within the {what} ({need:.0%})")
    verdict = "regression" if worse > 0 else "improvement"
    return Decision(verdict, ratio, lo, hi, p, worse, f"beyond {need:.0%}")
