"""Summary tables computed with pandas from `harness.results.load()` frames."""

from __future__ import annotations

import pandas as pd

from harness import stats

KEYS = ["scenario", "backend", "variant", "metric", "unit"]


def summary(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Median with its bootstrap 95 % CI per cell and metric, plus n and a stability note.

    With a `dataset` column (see `harness.report.data.enrich`) cells of different
    datasets stay apart. A figure identical in every sample gets no stability warning.
    """
    by = by or (["dataset", *KEYS] if "dataset" in df.columns else KEYS)
    rows = []
    for key, group in df.groupby(by, sort=False, dropna=False):
        values = group["value"].astype(float).tolist()
        s = stats.summarize(values)
        # A figure that is the same every time (bytes on disk) is exact, not unstable.
        warning = "" if s.min == s.max else stats.unstable(values) or ""
        rows.append({**dict(zip(by, key, strict=True)), "n": s.n, "median": s.median,
                     "ci_lo": s.lo, "ci_hi": s.hi, "mean": s.mean, "stdev": s.stdev,
                     "min": s.min, "max": s.max, "warning": warning})
    return pd.DataFrame(rows, columns=[*by, "n", "median", "ci_lo", "ci_hi", "mean", "stdev",
                                       "min", "max", "warning"])


def memory(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: median PSS per instance, the amortised daemon share and their sum, each
    with its 95 % CI (see `data.per_instance_memory`)."""
    from harness.report.data import per_instance_memory

    inst = per_instance_memory(df)
    rows = []
    for key, g in inst.groupby(["dataset", "backend", "variant"], sort=False):
        row = dict(zip(["dataset", "backend", "variant"], key, strict=True))
        row["instances"] = int(g.groupby("round").size().median())
        row["n"] = len(g)
        for col in ("pss", "daemon", "total"):
            s = stats.summarize(g[col].to_numpy(float))
            row |= {col: s.median, f"{col}_lo": s.lo, f"{col}_hi": s.hi}
        rows.append(row)
    return pd.DataFrame(rows)


def ratios(df: pd.DataFrame, base: str, new: str) -> pd.DataFrame:
    """Per cell and metric present in both datasets: new/base median ratio with its CI."""
    rows = []
    for key, g in df.groupby(KEYS, sort=False):
        a = g[g["dataset"] == base]["value"].to_numpy(float)
        b = g[g["dataset"] == new]["value"].to_numpy(float)
        if a.size == 0 or b.size == 0 or not (abs(float(pd.Series(a).median())) > 0):
            continue
        r, lo, hi = stats.ratio_ci(a, b)
        rows.append({**dict(zip(KEYS, key, strict=True)), "base": float(pd.Series(a).median()),
                     "new": float(pd.Series(b).median()), "ratio": r, "ratio_lo": lo,
                     "ratio_hi": hi, "changed": bool(lo > 1 or hi < 1)})
    return pd.DataFrame(rows, columns=[*KEYS, "base", "new", "ratio", "ratio_lo", "ratio_hi",
                                       "changed"])
