"""Capacity planning from density runs: what one more instance costs, and how many fit.

Input: results of the density study (`bench run density`). Every ramp of a cell (backend
x variant) gives, per live-instance count n, the host's MemAvailable, the instances' PSS
(and cgroup) sums, the daemons' PSS, and the start latency of each new instance.

Memory. y(n) = fixed + marginal * n, fitted by ordinary least squares over the points
n >= 1 of every ramp, on one basis:
  pss+kernel  (default) the instances' PSS + the daemons' PSS + the rise of the host's
          unreclaimable kernel memory since n = 0 (slab, kernel stacks, page tables,
          per-CPU: namespaces, cgroups and task structures that PSS never shows). The
          kernel part is host-wide, but it moves far less with what neighbours do than
          MemAvailable does
  pss     the instances' PSS + the daemons' PSS: user memory only, attributable to the
          instances and blind to neighbours; it misses the kernel's share
  cgroup  the instances' cgroup usage + the daemons' PSS (the kernel memory and page
          cache charged to the instances' cgroups; where every instance has one)
  host    the drop of MemAvailable since n = 0 + the daemons' PSS at n = 0: the host's
          own view, everything included, but every other process's activity lands in it
          too, so it needs a quiet host
The 95 % CIs come from a percentile bootstrap (2000 resamples, fixed seed) of the points,
resampled within each ramp; they assume the points scatter independently around the line.
Each ramp's own slope is given too: ramps that disagree beyond the CI mean drift.

Latency. A hinge model, latency(n) = base + slope * max(0, n - knee), fitted by least
squares for every candidate knee (the observed counts); it is kept only if it beats a
constant by an F-test at ALPHA and the fitted growth over the measured range is at least
MIN_GROWTH of the base; else there is no knee and the latency is flat. The p95 at count n
is the fitted latency plus the 95th percentile of the residuals.

Per host. usable = host memory x (1 - reserve) - fixed; by memory: usable / (marginal +
workload memory). By the start-latency SLO: the count whose p95 reaches the SLO, scaled
by target cpus / measured cores (latency growth with count taken to be CPU-bound), and
flagged when it lies beyond the measured range. The smaller of the two binds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from harness import stats
from harness.core.errors import UsageError
from harness.core.units import format_seconds
from harness.report import data
from harness.results import Loaded, frame, load_all

MIB = 2**20
RESAMPLES = 2000
ALPHA = 0.01  # significance of a knee (the search over knees makes p optimistic: be strict)
MIN_GROWTH = 0.2  # a knee must add at least this fraction of the base over the range
BASES = {
    "pss+kernel": "the instances' PSS + the daemons' PSS + the rise of the host's "
                  "unreclaimable kernel memory (SUnreclaim, KernelStack, PageTables, Percpu)",
    "pss": "sum of the instances' PSS + the daemons' PSS",
    "cgroup": "sum of the instances' cgroup usage + the daemons' PSS",
    "host": "drop of the host's MemAvailable since n = 0 + the daemons' PSS at n = 0",
}

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Target:
    """The host to plan for, and the planner's choices."""

    memory: int  # bytes
    cpus: int
    reserve: float = 0.10  # fraction of memory kept for the OS and headroom
    workload_memory: int = 0  # bytes the real workload adds per instance
    slo_start: float | None = None  # s, on the p95 of the start latency
    basis: str = "pss+kernel"

    @property
    def usable(self) -> float:
        return self.memory * (1 - self.reserve)


@dataclass(frozen=True)
class MemoryFit:
    """y = fixed + marginal * n, in bytes; CIs from the bootstrap draws."""

    basis: str
    fixed: float
    marginal: float
    fixed_ci: tuple[float, float]
    marginal_ci: tuple[float, float]
    per_ramp: tuple[float, ...]  # each ramp's own slope
    points: int
    draws: Array = field(repr=False, compare=False)  # (RESAMPLES, 2): fixed, marginal


@dataclass(frozen=True)
class LatencyFit:
    """latency(n) = base + slope * max(0, n - knee); flat (slope 0) without a knee."""

    points: int
    max_n: int
    base: float
    slope: float
    knee: int | None
    p_value: float | None
    q95_residual: float
    p95: float  # of every measured start latency
    p95_last: float  # of the start latencies at the top counts (the last fifth)

    def p95_at(self, n: float) -> float:
        grow = self.slope * max(0.0, n - self.knee) if self.knee is not None else 0.0
        return self.base + grow + self.q95_residual

    def max_under(self, slo: float) -> float | None:
        """The count at which the p95 reaches `slo` (0: not even the first instance
        meets it); None when it never does (no growth)."""
        if self.p95_at(1) > slo:
            return 0.0
        if self.knee is None or self.slope <= 0:
            return None
        return self.knee + (slo - self.base - self.q95_residual) / self.slope


@dataclass
class CellPlan:
    backend: str
    variant: str
    kind: str  # process | container | vm | unknown (harness.report.data.backend_kind)
    emulated: bool
    accel: str | None
    ramps: int
    max_measured: int
    stopped_by: list[str]
    measured_cores: int
    measured_memory: int
    fits: dict[str, MemoryFit]
    latency: LatencyFit | None
    basis: str = ""
    by_memory: float | None = None  # None: unbounded (marginal not above 0)
    by_memory_ci: tuple[float | None, float | None] = (None, None)
    by_slo: float | None = None
    slo_note: str = ""
    instances: float | None = None
    binding: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """As the reports label a cell: "docker [volume]", "(TCG, emulated)" for a VM
        without hardware acceleration."""
        text = self.backend if self.variant == "default" else f"{self.backend} [{self.variant}]"
        return text + (" (TCG, emulated)" if self.emulated else "")


@dataclass
class Plan:
    target: Target
    cells: list[CellPlan]
    files: list[str]
    assumptions: list[str]


# --- fits ------------------------------------------------------------------------------

def _ols(x: Array, y: Array) -> tuple[float, float]:
    """Intercept and slope of the least-squares line."""
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum()) / sxx if sxx else math.nan
    return float(ym - slope * xm), slope


def fit_memory(ramps: Sequence[tuple[Array, Array]], basis: str) -> MemoryFit | None:
    """Fit fixed + marginal * n over every ramp's (n, bytes) points with n >= 1.

    None when there are fewer than two distinct counts (no slope to fit)."""
    ramps = [(n[n >= 1], y[n >= 1]) for n, y in ramps]
    ramps = [(n, y) for n, y in ramps if n.size]
    if not ramps:
        return None
    n_all = np.concatenate([n for n, _ in ramps])
    y_all = np.concatenate([y for _, y in ramps])
    if np.unique(n_all).size < 2:
        return None
    fixed, marginal = _ols(n_all, y_all)
    # Stratified bootstrap: each ramp keeps its number of points.
    rng = np.random.default_rng(stats.SEED)
    offset, idx_parts = 0, []
    for n, _ in ramps:
        idx_parts.append(offset + rng.integers(0, n.size, size=(RESAMPLES, n.size)))
        offset += n.size
    idx = np.concatenate(idx_parts, axis=1)
    nb, yb = n_all[idx], y_all[idx]
    nm, ym = nb.mean(axis=1, keepdims=True), yb.mean(axis=1, keepdims=True)
    sxx = ((nb - nm) ** 2).sum(axis=1)
    ok = sxx > 0
    slopes = ((nb - nm) * (yb - ym)).sum(axis=1)[ok] / sxx[ok]
    intercepts = ym[ok, 0] - slopes * nm[ok, 0]
    draws = np.column_stack([intercepts, slopes])
    lo_f, hi_f = np.quantile(draws[:, 0], [0.025, 0.975])
    lo_m, hi_m = np.quantile(draws[:, 1], [0.025, 0.975])
    per_ramp = tuple(_ols(n, y)[1] for n, y in ramps if np.unique(n).size >= 2)
    return MemoryFit(basis=basis, fixed=fixed, marginal=marginal,
                     fixed_ci=(float(lo_f), float(hi_f)), marginal_ci=(float(lo_m), float(hi_m)),
                     per_ramp=per_ramp, points=int(n_all.size), draws=draws)


def fit_latency(n: Array, y: Array) -> LatencyFit | None:
    """The hinge model with the knee chosen by least squares, kept only if significant."""
    from scipy.stats import f as f_dist

    if n.size == 0:
        return None
    order = np.argsort(n, kind="stable")
    n, y = n[order].astype(float), y[order].astype(float)
    max_n = int(n.max())
    top = y[n >= max_n - max(1, max_n // 5) + 1] if max_n > 1 else y
    p95, p95_last = float(np.quantile(y, 0.95)), float(np.quantile(top, 0.95))
    mean = float(y.mean())
    sse0 = float(((y - mean) ** 2).sum())
    flat = LatencyFit(points=int(n.size), max_n=max_n, base=mean, slope=0.0, knee=None,
                      p_value=None, q95_residual=float(np.quantile(y - mean, 0.95)),
                      p95=p95, p95_last=p95_last)
    counts = np.unique(n)
    if counts.size < 5 or n.size < 6:
        return flat
    best: tuple[float, float, float, float] | None = None  # sse, knee, base, slope
    for k in counts[:-3]:  # at least 3 counts after the knee carry the slope
        x = np.maximum(0.0, n - k)
        base, slope = _ols(x, y)
        if not slope > 0:
            continue
        sse = float(((y - base - slope * x) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(k), base, slope)
    if best is None:
        return flat
    sse1, k, base, slope = best
    dof = n.size - 3
    p = 0.0 if sse1 == 0 else float(f_dist.sf(((sse0 - sse1) / 2) / (sse1 / dof), 2, dof))
    growth = slope * (max_n - k)
    if p >= ALPHA or growth < MIN_GROWTH * max(base, 1e-9):
        return replace(flat, p_value=p)
    resid = y - base - slope * np.maximum(0.0, n - k)
    return LatencyFit(points=int(n.size), max_n=max_n, base=base, slope=slope, knee=int(k),
                      p_value=p, q95_residual=float(np.quantile(resid, 0.95)), p95=p95,
                      p95_last=p95_last)


# --- from result documents to plans ------------------------------------------------------

def density_frame(docs: Sequence[Loaded]) -> pd.DataFrame:
    """The density samples of `docs`, with a `ramp` key (file, round), and the reports'
    `kind`, `emulated` and `dataset` columns (harness.report.data.enrich)."""
    df = data.enrich(frame(docs), docs)
    df = df[df["metric"].str.startswith("density.")].copy()
    if df.empty:
        raise UsageError("no density samples in the given results; run `bench run density` "
                         "first")
    if df["instance"].isna().any():
        raise UsageError("density samples without an instance count; the result is not "
                         "from the density study")
    df["instance"] = df["instance"].astype(int)
    df["ramp"] = df["file"] + "#" + df["round"].astype(str)
    return df


def ramp_series(g: pd.DataFrame, basis: str) -> tuple[Array, Array] | None:
    """(n, bytes) of one ramp on `basis`; None if the ramp lacks what the basis needs."""
    t = g.pivot_table(index="instance", columns="metric", values="value", aggfunc="mean")
    daemon = t.get("density.daemon_pss")
    daemon = daemon.fillna(0.0) if daemon is not None else pd.Series(0.0, index=t.index)
    if basis == "host":
        if "density.mem_available" not in t or 0 not in t.index:
            return None
        y = t["density.mem_available"].loc[0] - t["density.mem_available"] + daemon.loc[0]
    else:
        metric = {"pss": "density.pss_total", "pss+kernel": "density.pss_total",
                  "cgroup": "density.cgroup_total"}[basis]
        if metric not in t:
            return None
        y = t[metric] + daemon
        if basis == "pss+kernel":
            if "density.kernel_mem" not in t or 0 not in t.index:
                return None
            y = y + t["density.kernel_mem"] - t["density.kernel_mem"].loc[0]
    # (Counts that only carry a start latency, inside a batch, have no memory figures.)
    y = y.dropna()
    return y.index.to_numpy(float), y.to_numpy(float)


def _stops(docs: Sequence[Loaded]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for _, doc in docs:
        for e in doc.events:
            if e.get("kind") == "ramp_stopped":
                out.setdefault((e["backend"], e["variant"]), []).append(
                    str(e.get("reason"))[:120])
    return out


def analyse(docs: Sequence[Loaded], target: Target) -> Plan:
    if target.basis not in BASES:
        raise UsageError(f"--basis: unknown basis {target.basis!r}; known: {', '.join(BASES)}")
    df = density_frame(docs)
    hosts = {p: d.host for p, d in docs}
    stops = _stops(docs)
    cells: list[CellPlan] = []
    for backend in data.backend_order(df):
        sub = df[df["backend"] == backend]
        for variant in sub["variant"].unique():
            g = sub[sub["variant"] == variant]
            files = list(g["file"].unique())
            ids = {hosts[f].get("id") for f in files}
            if len(ids) > 1:
                raise UsageError(f"{backend} [{variant}]: results from different hosts "
                                 f"({', '.join(sorted(map(str, ids)))}); a plan needs one "
                                 "host's measurements")
            host = hosts[files[0]]
            ramps = [r for _, r in g.groupby("ramp", sort=True)]
            fits: dict[str, MemoryFit] = {}
            for basis in BASES:
                series = [s for s in (ramp_series(r, basis) for r in ramps) if s is not None]
                fit = fit_memory(series, basis) if series else None
                if fit is not None:
                    fits[basis] = fit
            lat = g[g["metric"] == "density.start_latency"]
            cells.append(CellPlan(
                backend=backend, variant=str(variant), kind=str(g["kind"].iloc[0]),
                emulated=bool(g["emulated"].any()),
                accel=next((str(a) for a in g["accel"].dropna().unique()), None),
                ramps=len(ramps), max_measured=int(g["instance"].max()),
                stopped_by=stops.get((backend, str(variant)), []),
                measured_cores=int(host.get("cores") or 0),
                measured_memory=int(host.get("mem_total") or 0), fits=fits,
                latency=fit_latency(lat["instance"].to_numpy(float),
                                    lat["value"].to_numpy(float))))
    for c in cells:
        project(c, target)
    return Plan(target=target, cells=cells, files=[p for p, _ in docs],
                assumptions=assumptions(target, cells))


def project(c: CellPlan, t: Target) -> None:
    """Instances per target host by memory and by the SLO; which one binds."""
    fit = c.fits.get(t.basis)
    c.basis = t.basis
    if fit is None:
        c.notes.append(f"no {t.basis} data (fewer than two instance counts, or the backend "
                       "does not report it)")
    else:
        c.by_memory = _fit_count(t.usable - fit.fixed, fit.marginal + t.workload_memory)
        free = t.usable - fit.draws[:, 0]
        per = fit.draws[:, 1] + t.workload_memory
        with np.errstate(divide="ignore", invalid="ignore"):
            n = np.where(per > 0, np.floor(np.maximum(free, 0) / per), np.inf)
        # inverted_cdf picks drawn values: no interpolation between infinities
        lo, hi = np.quantile(n, [0.025, 0.975], method="inverted_cdf")
        c.by_memory_ci = (float(lo) if np.isfinite(lo) else None,
                          float(hi) if np.isfinite(hi) else None)
        if fit.marginal_ci[0] <= 0 < fit.marginal_ci[1] and not t.workload_memory:
            c.notes.append("the marginal memory is not distinguishable from 0 on this basis")
        host = c.fits.get("host")
        if t.basis != "host" and host is not None and not (
                host.marginal_ci[0] <= fit.marginal <= host.marginal_ci[1]):
            c.notes.append(
                f"the host's MemAvailable fell by {host.marginal / MIB:.3g} MiB per instance "
                f"[{host.marginal_ci[0] / MIB:.3g}, {host.marginal_ci[1] / MIB:.3g}], not the "
                f"{fit.marginal / MIB:.3g} of {t.basis}: other processes on the host, or "
                "memory the basis does not see (compare the ramps with --json)")
    scale = t.cpus / c.measured_cores if c.measured_cores else 1.0
    if t.slo_start is not None and c.latency is not None:
        at = c.latency.max_under(t.slo_start)
        if at is None:
            reach = math.floor(c.latency.max_n * scale)
            c.slo_note = (f"p95 {format_seconds(c.latency.p95_at(c.latency.max_n))} stays "
                          f"under the SLO up to the {c.latency.max_n} measured (≈ {reach} "
                          f"at {t.cpus} cpus); not extrapolated")
        elif at == 0:
            c.by_slo = 0.0
            c.slo_note = (f"even the first instance misses the SLO (p95 "
                          f"{format_seconds(c.latency.p95_at(1))})")
        else:
            c.by_slo = float(math.floor(at * scale))
            c.slo_note = ("extrapolated beyond the measured range" if at > c.latency.max_n
                          else "within the measured range")
    limits = {k: v for k, v in (("memory", c.by_memory), ("start-latency SLO", c.by_slo))
              if v is not None}
    if limits:
        c.binding = min(limits, key=lambda k: limits[k])
        c.instances = limits[c.binding]
    covered = (c.latency.max_n if c.latency else c.max_measured) * scale
    if c.instances is not None and c.binding == "memory" and c.instances > covered:
        c.notes.append(f"the plan extrapolates {c.max_measured} measured instances to "
                       f"{c.instances:.0f}: latency and any limit other than memory are "
                       "unverified beyond that")


def _fit_count(free: float, per: float) -> float | None:
    if per <= 0:
        return None
    return float(max(0, math.floor(free / per)))


def assumptions(t: Target, cells: Sequence[CellPlan]) -> list[str]:
    cores = sorted({c.measured_cores for c in cells})
    mems = sorted({round(c.measured_memory / 2**30) for c in cells})
    out = [
        f"Measured on a host with {', '.join(map(str, cores))} cores and "
        f"{', '.join(map(str, mems))} GiB; planned for {t.cpus} cpus and "
        f"{t.memory / 2**30:.3g} GiB, {t.reserve:.0%} of it reserved.",
        f"Memory basis '{t.basis}': {BASES[t.basis]}. Per instance it is linear: fixed + "
        "marginal × n, fitted by OLS over every ramp's points with n ≥ 1; 95 % CIs by a "
        f"percentile bootstrap ({RESAMPLES} resamples of the points within each ramp) that "
        "takes the points as independent.",
        "The marginal is the slope over the measured range. Shared pages make the first "
        "instances dearer, so the curve flattens; extrapolating the slope errs on the safe "
        "side.",
        "Instances are idle (the density workload); "
        + (f"each also gets {t.workload_memory / MIB:.4g} MiB of workload memory."
           if t.workload_memory else "--workload-memory adds what the real workload uses."),
        "Instances per host by memory = (host memory × (1 − reserve) − fixed) / "
        "(marginal + workload memory); the CI carries the fit's uncertainty only.",
    ]
    if t.slo_start is not None:
        out.append(
            f"Start-latency SLO: p95 ≤ {format_seconds(t.slo_start)}. p95 at n = hinge fit "
            "of the latency + the 95th percentile of its residuals. Latency growth with the "
            "count is taken as CPU-bound, so the count at the SLO scales with target cpus / "
            "measured cores; past the measured counts it is a linear extrapolation "
            "(flagged); with no growth measured the SLO is not extrapolated.")
    else:
        out.append("No start-latency SLO given (--slo-start): only memory is planned.")
    out.append("Not modelled: CPU use of busy instances, PIDs, file descriptors, addresses, "
               "disk, KSM/ballooning/overcommit, and other engine or kernel versions.")
    if any(c.emulated for c in cells):
        out.append("(TCG, emulated) cells are VMs without hardware virtualisation: they start "
                   "slower and use more CPU than under KVM, so their latency is not "
                   "representative.")
    return out


# --- output ---------------------------------------------------------------------------

def _mib(x: float) -> float:
    return round(x / MIB, 4)


def _count(x: float | None) -> int | None:
    return None if x is None else int(x)


def as_json(plan: Plan) -> dict[str, Any]:
    t = plan.target
    cells = []
    for c in plan.cells:
        mem: dict[str, Any] = {}
        for basis, f in c.fits.items():
            mem[basis] = {"marginal_mib": _mib(f.marginal),
                          "marginal_ci_mib": [_mib(v) for v in f.marginal_ci],
                          "fixed_mib": _mib(f.fixed), "fixed_ci_mib": [_mib(v) for v in f.fixed_ci],
                          "per_ramp_marginal_mib": [_mib(v) for v in f.per_ramp],
                          "points": f.points}
        lat = c.latency
        cells.append({
            "backend": c.backend, "variant": c.variant, "emulated": c.emulated,
            "accel": c.accel, "ramps": c.ramps, "max_measured": c.max_measured,
            "stopped_by": c.stopped_by,
            "basis": c.basis,
            "marginal_mib": mem.get(c.basis, {}).get("marginal_mib"),
            "marginal_ci_mib": mem.get(c.basis, {}).get("marginal_ci_mib"),
            "fixed_mib": mem.get(c.basis, {}).get("fixed_mib"),
            "memory": mem,
            "latency": None if lat is None else {
                "points": lat.points, "base_s": lat.base, "slope_s_per_instance": lat.slope,
                "knee": lat.knee,
                "knee_at_target": None if lat.knee is None else
                int(lat.knee * t.cpus / c.measured_cores) if c.measured_cores else lat.knee,
                "knee_p_value": lat.p_value, "p95_s": lat.p95, "p95_top_s": lat.p95_last},
            "instances_per_host": {
                "by_memory": _count(c.by_memory),
                "by_memory_ci": [_count(v) for v in c.by_memory_ci],
                "by_slo": _count(c.by_slo), "slo_note": c.slo_note,
                "max": _count(c.instances), "binding": c.binding or None},
            "notes": c.notes,
        })
    return {"target": {"host_memory": t.memory, "host_cpus": t.cpus, "reserve": t.reserve,
                       "workload_memory": t.workload_memory, "slo_start": t.slo_start,
                       "basis": t.basis},
            "files": plan.files, "assumptions": plan.assumptions, "backends": cells}


def load(paths: Iterable[str | Path]) -> list[Loaded]:
    return load_all(list(paths))
