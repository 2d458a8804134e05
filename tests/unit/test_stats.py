"""Bootstrap CIs and tests behave as statistics should."""

from __future__ import annotations

import numpy as np

from harness import stats


def test_median_ci_covers_true_median() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        x = rng.lognormal(0, 0.3, 40)
        lo, hi = stats.median_ci(x, resamples=500)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.995


def test_summary_and_degenerate_inputs() -> None:
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s.n == 3 and s.median == 2.0 and s.lo <= 2.0 <= s.hi
    assert stats.summarize([]).n == 0
    one = stats.summarize([5.0])
    assert one.lo == one.hi == 5.0


def test_ratio_ci() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(10, 0.5, 50)
    new = rng.normal(12, 0.5, 50)
    r, lo, hi = stats.ratio_ci(base, new)
    assert lo < 1.2 < hi and 1.1 < r < 1.3


def test_mann_whitney() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 40)
    assert stats.mann_whitney(a, a + 3) < 1e-6
    assert stats.mann_whitney(a, rng.permutation(a)) > 0.5


def test_unstable_flags_spread() -> None:
    assert stats.unstable([1.0] * 20) is None
    assert stats.unstable([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]) is not None
    assert "only 3" in (stats.unstable([1.0, 1.1, 1.2]) or "")
