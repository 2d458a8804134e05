"""Summary tables computed with pandas from `harness.results.load()` frames."""

from __future__ import annotations

import pandas as pd

from harness import stats

KEYS = ["scenario", "backend", "variant", "metric", "unit"]


def summary(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Median with its bootstrap 95 % CI per cell and metric, plus n and a stability note."""
    by = by or KEYS
    rows = []
    for key, group in df.groupby(by, sort=False, dropna=False):
        values = group["value"].astype(float).tolist()
        s = stats.summarize(values)
        rows.append({**dict(zip(by, key, strict=True)), "n": s.n, "median": s.median,
                     "ci_lo": s.lo, "ci_hi": s.hi, "mean": s.mean, "stdev": s.stdev,
                     "min": s.min, "max": s.max, "warning": stats.unstable(values) or ""})
    return pd.DataFrame(rows)
