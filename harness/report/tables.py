"""Summary tables computed with pandas from `harness.results.load()` frames."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness import capacity, data, stats

KEYS = ["scenario", "backend", "variant", "metric", "unit"]


def summary(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Median with its bootstrap 95 % CI per cell and metric, plus n and a stability note.

    With a `dataset` column (see `harness.data.enrich`) cells of different
    datasets stay apart. A figure identical in every sample gets no stability warning.
    """
    by = by or (["dataset", *KEYS] if "dataset" in df.columns else KEYS)
    rows = []
    for key, group in df.groupby(by, sort=False, dropna=False):
        values = group["value"].astype(float).tolist()
        s = stats.summarize(values)
        # A figure that is the same every time (bytes on disk) is exact, not unstable.
        warning = "" if s.min == s.max else stats.unstable(values) or ""
        t = data.tally(group)
        rows.append({**dict(zip(by, key, strict=True)), "n": s.n, "median": s.median,
                     "ci_lo": s.lo, "ci_hi": s.hi, "mean": s.mean, "stdev": s.stdev,
                     "min": s.min, "max": s.max, "warning": warning,
                     **attempts(t)})
    return pd.DataFrame(rows, columns=[*by, "n", "median", "ci_lo", "ci_hi", "mean", "stdev",
                                       "min", "max", "warning", *ATTEMPTS])


# A cell's measured samples beside its figures: ok of tried (NaN: not counted in the
# result) and the most common reason of the failures.
ATTEMPTS = ["ok", "tried", "reason"]


def attempts(t: data.Tally | None) -> dict[str, Any]:
    return ({"ok": t.ok, "tried": t.tried, "reason": t.reason} if t is not None
            else {"ok": math.nan, "tried": math.nan, "reason": ""})


def tally_of(r: Mapping[Any, Any]) -> data.Tally | None:
    """The Tally of a row with the ATTEMPTS columns."""
    tried = r.get("tried")
    if tried is None or not math.isfinite(float(tried)):
        return None
    return data.Tally(int(r["ok"]), int(tried), str(r.get("reason") or ""))


def memory(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: median PSS per instance, the amortised daemon share and their sum, each
    with its 95 % CI (see `data.per_instance_memory`)."""
    inst = data.per_instance_memory(df)
    rows = []
    for key, g in inst.groupby(["dataset", "backend", "variant"], sort=False):
        row = dict(zip(["dataset", "backend", "variant"], key, strict=True))
        row["emulated"] = bool(g["emulated"].any())
        row["ram"] = data.in_ram(g)
        row["instances"] = int(g.groupby("round").size().median())
        row["n"] = len(g)
        row |= attempts(data.tally(g))
        for col in ("pss", "daemon", "total"):
            s = stats.summarize(g[col].dropna().to_numpy(float))
            row |= {col: s.median, f"{col}_lo": s.lo, f"{col}_hi": s.hi}
        rows.append(row)
    return pd.DataFrame(rows)


def ratios(df: pd.DataFrame, base: str, new: str) -> pd.DataFrame:
    """Per cell and metric present in both datasets: new/base median ratio with its CI.
    `unlike` says why the two are not like for like ("writable layer tmpfs → disk": the
    backend kept its writes in RAM in one dataset, on disk in the other), "" when they
    are."""
    rows = []
    for key, g in df.groupby(KEYS, sort=False):
        ga, gb = g[g["dataset"] == base], g[g["dataset"] == new]
        a, b = ga["value"].to_numpy(float), gb["value"].to_numpy(float)
        if a.size == 0 or b.size == 0 or not (abs(float(pd.Series(a).median())) > 0):
            continue
        r, lo, hi = stats.ratio_ci(a, b)
        layers = [", ".join(sorted(set(x.get("writable_layer", pd.Series(dtype=str)))))
                  for x in (ga, gb)]
        rows.append({**dict(zip(KEYS, key, strict=True)), "base": float(pd.Series(a).median()),
                     "new": float(pd.Series(b).median()), "ratio": r, "ratio_lo": lo,
                     "ratio_hi": hi, "changed": bool(lo > 1 or hi < 1),
                     "unlike": "" if layers[0] == layers[1] else
                     f"writable layer {layers[0] or 'not recorded'} → "
                     f"{layers[1] or 'not recorded'}"})
    return pd.DataFrame(rows, columns=[*KEYS, "base", "new", "ratio", "ratio_lo", "ratio_hi",
                                       "changed", "unlike"])


LIMITS_COLUMNS = ["dataset", "backend", "variant", "kind", "emulated", "ram", "applied",
                  "resource",
                  "asked", "n", "value", "value_lo", "value_hi", "ratio", "ratio_lo",
                  "ratio_hi", "idle", "room", "killed", "enforced", *ATTEMPTS]


def limits(df: pd.DataFrame) -> pd.DataFrame:
    """The limits study per cell and asked limit: what was used against what was asked.

    One row per (dataset, backend, variant without the limit, resource, asked), with
    medians and 95 % CIs. cpus: `value` = cores used, `ratio` = used / asked, `idle` =
    cores the host left idle meanwhile, `room` = used + idle (the most the instance could
    have taken: when it is not above the limit, the host was too busy to tell a limit
    from contention). memory: `value` = the largest allocation that lived, `ratio` =
    that / asked, `killed` = the smallest killed (NaN: none was), `enforced` = the share
    of samples in which one was. `applied`: whether the backend applies that limit at
    all (its metadata's not_applied); a backend that does not still has its figures,
    those of an unlimited workload.
    """
    d = df[df["metric"].str.startswith("limits.")]
    asked = d["variant"].map(data.limit_of)
    d = d[asked.notna()]
    if d.empty:
        return pd.DataFrame(columns=LIMITS_COLUMNS)
    d = d.assign(resource=asked[asked.notna()].map(lambda x: x[0]),
                 asked=asked[asked.notna()].map(lambda x: x[1]))
    d = d.assign(rest=[data.without_axis(v, f"limits.{r}")
                       for v, r in zip(d["variant"], d["resource"], strict=True)])
    rows = []
    for key, g in d.groupby(["dataset", "backend", "rest", "resource", "asked"], sort=False):
        ds, backend, rest, resource, _ = key
        limit = float(g["asked"].iloc[0])
        per = g.pivot_table(index="round", columns="metric", values="value", aggfunc="median")

        def col(metric: str, per: pd.DataFrame = per) -> pd.Series:
            return per[metric] if metric in per else pd.Series(dtype=float)

        if resource == "cpus":
            value, idle = col("limits.cpu_used"), col("limits.host_idle")
            ratio = value / limit
            extra = {"idle": float(idle.median()), "room": float((value + idle).median()),
                     "killed": math.nan, "enforced": math.nan}
        else:
            value, killed = col("limits.mem_max_ok"), col("limits.mem_killed_at").dropna()
            ratio = value / limit
            extra = {"idle": math.nan, "room": math.nan,
                     "killed": float(killed.median()) if killed.size else math.nan,
                     "enforced": float(col("limits.mem_enforced").mean())}
        v, r = stats.summarize(value.dropna()), stats.summarize(ratio.dropna())
        rows.append({"dataset": ds, "backend": backend, "variant": rest,
                     "kind": str(g["kind"].iloc[0]), "emulated": bool(g["emulated"].any()),
                     "ram": data.in_ram(g), "applied": data.applied(str(g["not_applied"].iloc[0]),
                                             f"limits.{resource}"),
                     "resource": resource, "asked": limit, "n": v.n,
                     "value": v.median, "value_lo": v.lo, "value_hi": v.hi,
                     "ratio": r.median, "ratio_lo": r.lo, "ratio_hi": r.hi, **extra,
                     **attempts(data.tally(g))})
    return pd.DataFrame(rows, columns=LIMITS_COLUMNS)


# The memory basis of the density summary: the capacity plan's default first, then what
# older results (without the kernel's figures) still allow.
DENSITY_BASES = ("pss+kernel", "pss", "host")
DENSITY_COLUMNS = ["dataset", "backend", "variant", "kind", "emulated", "ram", "basis",
                   "ramps",
                   "fixed", "marginal", "marginal_lo", "marginal_hi", "low", "low_counts",
                   "top", "top_counts", "max_count", "start_p95", *ATTEMPTS]


def density(df: pd.DataFrame) -> pd.DataFrame:
    """The density study in one row per cell: memory = fixed + marginal × n fitted over
    every ramp (`harness.capacity.fit_memory`, on the first basis of DENSITY_BASES the
    ramps have), the marginal over the low and the top end of the counts alone (the
    lowest and highest third, at least two counts each; NaN with fewer than four), the
    largest count reached, and the 95th percentile of every start latency."""
    d = df[df["metric"].str.startswith("density.")].dropna(subset=["instance"])
    rows = []
    for key, g in d.groupby(["dataset", "backend", "variant"], sort=False):
        g = g.assign(instance=g["instance"].astype(int),
                     ramp=g["file"].astype(str) + "#" + g["round"].astype(str))
        ramps = [r for _, r in g.groupby("ramp", sort=True)]
        basis, series = next(
            ((b, s) for b in DENSITY_BASES
             if (s := [x for x in (capacity.ramp_series(r, b) for r in ramps) if x is not None])),
            ("", []))
        counts = sorted({int(c) for n, _ in series for c in n[n >= 1]})
        k = max(2, len(counts) // 3)
        low, top = (counts[:k], counts[-k:]) if len(counts) >= 4 else ([], [])
        fit = capacity.fit_memory(series, basis) if series else None
        lat = g[g["metric"] == "density.start_latency"]["value"].to_numpy(float)
        rows.append({
            **dict(zip(["dataset", "backend", "variant"], key, strict=True)),
            "kind": str(g["kind"].iloc[0]), "emulated": bool(g["emulated"].any()),
            "ram": data.in_ram(g), "basis": basis, "ramps": len(ramps),
            "fixed": fit.fixed if fit else math.nan,
            "marginal": fit.marginal if fit else math.nan,
            "marginal_lo": fit.marginal_ci[0] if fit else math.nan,
            "marginal_hi": fit.marginal_ci[1] if fit else math.nan,
            "low": _marginal(series, basis, low), "low_counts": _span(low),
            "top": _marginal(series, basis, top), "top_counts": _span(top),
            "max_count": int(g["instance"].max()),
            "start_p95": float(np.quantile(lat, 0.95)) if lat.size else math.nan,
            **attempts(data.tally(g))})
    return pd.DataFrame(rows, columns=DENSITY_COLUMNS)


def _marginal(series: list[Any], basis: str, counts: list[int]) -> float:
    """The fitted marginal over the points at `counts` alone (NaN without two counts)."""
    fit = capacity.fit_memory([(n[np.isin(n, counts)], y[np.isin(n, counts)])
                               for n, y in series], basis) if len(counts) >= 2 else None
    return fit.marginal if fit is not None else math.nan


def _span(counts: list[int]) -> str:
    return f"{counts[0]}–{counts[-1]}" if counts else ""
