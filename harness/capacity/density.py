"""Capacity planning from density runs: what one more instance costs, and how many fit.

Input: results of the density study (`bench run density`). Every ramp of a cell (backend
x variant) gives, per live-instance count n, the host's MemAvailable, the instances' PSS
(and cgroup) sums, the daemons' PSS, and the start latency of each new instance.

The fits (memory curve, start latency, kernel counters) and how they are made are
harness.capacity.fit's.

Per host. usable = host memory x (1 - reserve); by memory: the largest n with y(n) +
n x workload memory <= usable. By the start-latency SLO: the count whose p95 reaches the SLO, scaled
by target cpus / measured cores (latency growth with count taken to be CPU-bound), and
flagged when it lies beyond the measured range. The smallest of memory, the SLO and the
kernel limits binds. A plan more than `max_extrapolation` times the measured top is
refused by `bench capacity` (or flagged with --allow-extrapolation), with the count to
measure instead; the p95 of the start latency at the planned count comes from the
measured ramp (flagged beyond it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import data
from harness.capacity.fit import (
    MODELS,
    RESAMPLES,
    Array,
    LatencyFit,
    LimitPlan,
    MemoryFit,
    fit_latency,
    fit_limits,
    fit_memory,
)
from harness.capacity.target import TargetHost
from harness.core import hostinfo
from harness.core.errors import UsageError
from harness.core.probes import kernel_limits
from harness.core.units import format_seconds
from harness.results import Loaded, frame, load_all

MIB = 2**20
MARGINAL_AT = 40  # where the marginal is also reported (the old scenario's whole ramp)
# What each basis needs of a ramp: a cell without one of them is not planned on it.
BASIS_METRICS = {
    "pss+kernel": ("density.pss_total", "density.daemon_pss", "density.kernel_mem"),
    "pss": ("density.pss_total", "density.daemon_pss"),
    "cgroup": ("density.cgroup_total", "density.daemon_pss"),
    "host": ("density.mem_available", "density.daemon_pss"),
}
BASES = {
    "pss+kernel": "the instances' PSS + the daemons' PSS + the rise of the host's "
                  "unreclaimable kernel memory (SUnreclaim, KernelStack, PageTables, Percpu)",
    "pss": "sum of the instances' PSS + the daemons' PSS",
    "cgroup": "sum of the instances' cgroup usage + the daemons' PSS",
    "host": "drop of the host's MemAvailable since n = 0 + the daemons' PSS at n = 0",
}


@dataclass
class CellPlan:
    backend: str
    variant: str
    kind: str  # process | container | vm | unknown (harness.data.backend_kind)
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
    limits: list[LimitPlan] = field(default_factory=list)
    pids_limit: int | None = None  # the instances' own pids limit (the scenario's)
    p95_at_plan: float | None = None  # start latency at the planned count (capped at the top)
    extrapolation: float = 0.0  # planned count / measured top
    host: str = ""  # the measuring machine, named when the results come from several

    @property
    def label(self) -> str:
        """As the reports label a cell: "docker [volume]", "(TCG, emulated)" for a VM
        without hardware acceleration; "on HOST" when the plan covers several machines."""
        text = self.backend if self.variant == "default" else f"{self.backend} [{self.variant}]"
        return text + (" (TCG, emulated)" if self.emulated else "") + \
            (f" on {self.host}" if self.host else "")

    @property
    def first_limit(self) -> LimitPlan | None:
        """The kernel limit this backend hits first on the target host."""
        bound = [lim for lim in self.limits if lim.count is not None]
        return min(bound, key=lambda lim: lim.count or 0.0) if bound else None

    @property
    def measure_instead(self) -> int:
        """Instances to measure for this plan to stay within the extrapolation factor."""
        return 0 if self.instances is None else math.ceil(self.instances)


@dataclass
class CapacityPlan:
    target: TargetHost
    cells: list[CellPlan]
    files: list[str]
    assumptions: list[str]

    def too_far(self) -> list[CellPlan]:
        """Cells whose plan lies beyond the target's max_extrapolation."""
        return [c for c in self.cells if c.extrapolation > self.target.max_extrapolation]



# --- from result documents to plans ------------------------------------------------------

def density_frame(docs: Sequence[Loaded]) -> pd.DataFrame:
    """The density samples of `docs`, with a `ramp` key (file, round), and the reports'
    `kind`, `emulated` and `dataset` columns (harness.data.enrich)."""
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
    daemon = t.get("density.daemon_pss")  # (0 for a daemonless backend, as recorded)
    if daemon is None:  # not read: no 0 in its place
        return None
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
    # (Counts that only carry a start latency, inside a batch or between measured
    # counts, have no memory figures.)
    y = y.dropna()
    return y.index.to_numpy(float), y.to_numpy(float)


def _stops(docs: Sequence[Loaded]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, doc in docs:
        for e in doc.events:
            if e.get("kind") == "ramp_stopped":
                out.setdefault((e["backend"], e["variant"]), []).append(dict(e))
    return out


def _pids_limit(docs: Sequence[Loaded]) -> int | None:
    for _, doc in docs:
        pids = (doc.scenario.get("limits") or {}).get("pids")
        if pids:
            return int(pids)
    return None


def analyse(docs: Sequence[Loaded], target: TargetHost) -> CapacityPlan:
    if target.basis not in BASES:
        raise UsageError(f"--basis: unknown basis {target.basis!r}; known: {', '.join(BASES)}")
    if unknown := sorted(set(target.limits) - set(kernel_limits.BY_NAME)):
        raise UsageError(f"--limit: unknown limit {unknown[0]!r}; known: "
                         f"{', '.join(kernel_limits.BY_NAME)}")
    df = density_frame(docs)
    cells: list[CellPlan] = []
    gaps: list[str] = []
    # one plan per measuring machine (hardware id): a fleet's results side by side
    machine = {p: str(hostinfo.hardware_id(d.host) or d.host.get("id")) for p, d in docs}
    machines = sorted(set(machine.values()))
    names = {m: str(next(d.host.get("hostname") for p, d in docs if machine[p] == m))
             for m in machines}
    for m in machines:
        mine = [(p, d) for p, d in docs if machine[p] == m]
        name = "" if len(machines) == 1 else names[m] if list(names.values()).count(
            names[m]) == 1 else f"{names[m]} ({m[:8]})"
        _plan_cells(mine, df[df["file"].isin([p for p, _ in mine])], target, name, cells,
                    gaps)
    if gaps:
        raise UsageError(f"--basis {target.basis}: no plan without what the ramps did not "
                         f"read: {'; '.join(gaps)}")
    for c in cells:
        project(c, target)
    return CapacityPlan(target=target, cells=cells, files=[p for p, _ in docs],
                assumptions=assumptions(target, cells))


def _plan_cells(docs: Sequence[Loaded], df: pd.DataFrame, target: TargetHost, name: str,
                cells: list[CellPlan], gaps: list[str]) -> None:
    """The cells of one machine's results (`name`: how its labels call it, "" alone)."""
    hosts = {p: d.host for p, d in docs}
    stops = _stops(docs)
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
            events = stops.get((backend, str(variant)), [])
            ceilings: dict[str, int] = {}
            for e in events:  # the lowest a ramp met
                for k, v in (e.get("limits") or {}).items():
                    ceilings[k] = min(int(v), ceilings.get(k, int(v)))
            cells.append(CellPlan(
                backend=backend, variant=str(variant), kind=str(g["kind"].iloc[0]),
                emulated=bool(g["emulated"].any()),
                accel=next((str(a) for a in g["accel"].dropna().unique()), None),
                ramps=len(ramps), max_measured=int(g["instance"].max()),
                stopped_by=[str(e.get("reason"))[:160] for e in events],
                measured_cores=int(host.get("cores") or 0),
                measured_memory=int(host.get("mem_total") or 0), fits=fits,
                latency=fit_latency(lat["instance"].to_numpy(float),
                                    lat["value"].to_numpy(float)),
                limits=fit_limits(g, ceilings, target.limits), pids_limit=_pids_limit(docs),
                host=name))
            if target.basis not in fits:
                absent = [m for m in BASIS_METRICS[target.basis]
                          if not g[g["metric"] == m]["value"].notna().any()]
                gaps.append(f"{cells[-1].label}: " + (", ".join(absent) if absent else
                            "fewer than two instance counts with every figure"))


def project(c: CellPlan, t: TargetHost) -> None:
    """Instances per target host by memory, the SLO and the kernel limits; which binds."""
    fit = c.fits.get(t.basis)
    c.basis = t.basis
    if fit is None or fit.curve is None or fit.curve_draws is None:
        c.notes.append(f"no {t.basis} data (fewer than two instance counts, or the backend "
                       "does not report it)")
    else:
        n = float(fit.curve.count_within(t.usable, t.workload_memory)[0])
        c.by_memory = n if math.isfinite(n) else None
        draws = fit.curve_draws.count_within(t.usable, t.workload_memory)
        # inverted_cdf picks drawn values: no interpolation between infinities
        lo, hi = np.quantile(draws, [0.025, 0.975], method="inverted_cdf")
        c.by_memory_ci = (float(lo) if np.isfinite(lo) else None,
                          float(hi) if np.isfinite(hi) else None)
        if fit.held:
            c.notes.append(
                f"the {' and the '.join(fit.held)} of the {fit.model} fit on {t.basis} held "
                "at 0: not resolved by this ramp (without the bound the fit puts it below "
                "0, which is no cost: the curve over the measured counts does not pin "
                "y(n) near n = 0)")
        if fit.marginal_top_ci[0] <= 0 < fit.marginal_top_ci[1] and not t.workload_memory:
            c.notes.append("the marginal memory is not distinguishable from 0 on this basis")
        lo_t, hi_t = fit.marginal_top_ci
        if any(not lo_t <= m <= hi_t for m in fit.per_ramp_top):
            c.notes.append(
                f"the ramps disagree at the top ({fit.top}): "
                + ", ".join(f"{m / MIB:.3g}" for m in fit.per_ramp_top)
                + f" MiB per instance, outside the CI [{lo_t / MIB:.3g}, {hi_t / MIB:.3g}], "
                "which resamples points, not ramps: the host drifted between ramps")
        host = c.fits.get("host")
        if t.basis != "host" and host is not None and not (
                host.marginal_top_ci[0] <= fit.marginal_top <= host.marginal_top_ci[1]):
            c.notes.append(
                f"at the top ({fit.top}) the host's MemAvailable fell by "
                f"{host.marginal_top / MIB:.3g} MiB per instance "
                f"[{host.marginal_top_ci[0] / MIB:.3g}, {host.marginal_top_ci[1] / MIB:.3g}], "
                f"not the {fit.marginal_top / MIB:.3g} of {t.basis}: MemAvailable moves with "
                "every other process on the host and counts page cache and reclaimable slab "
                "as available; PSS splits shared file pages among the instances (compare the "
                "ramps with --json)")
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
    bounds = {k: v for k, v in (("memory", c.by_memory), ("start-latency SLO", c.by_slo))
              if v is not None}
    if (first := c.first_limit) is not None and first.count is not None:
        bounds[f"{first.name} ({first.what})"] = first.count
    if bounds:
        c.binding = min(bounds, key=lambda k: bounds[k])
        c.instances = bounds[c.binding]
    tasks = [lim for lim in c.limits if lim.counter == "tasks" and lim.count is not None]
    if tasks and c.pids_limit:  # the pids the instances may take, not the idle ones
        lim = min(tasks, key=lambda x: x.ceiling - x.base)
        worst = math.floor((lim.ceiling - lim.base) / c.pids_limit)
        c.notes.append(f"{lim.name}: {lim.per_instance:.3g} tasks per idle instance; if each "
                       f"ran up to its pids limit ({c.pids_limit}), {lim.name} {lim.ceiling:,} "
                       f"would bind at {worst:,}")
    if c.instances is not None and c.max_measured:
        c.extrapolation = c.instances / c.max_measured
        if c.latency is not None:
            c.p95_at_plan = c.latency.p95_at(min(c.instances / scale, c.latency.max_n))
        if c.extrapolation > 1:
            c.notes.append(f"the plan ({c.instances:,.0f}) is {c.extrapolation:.3g}× the "
                           f"{c.max_measured} measured instances: memory beyond them goes on "
                           "at the marginal of the top, the start-latency p95 is the top's")


def assumptions(t: TargetHost, cells: Sequence[CellPlan]) -> list[str]:
    cores = sorted({c.measured_cores for c in cells})
    mems = sorted({round(c.measured_memory / 2**30) for c in cells})
    out = [
        f"Measured on a host with {', '.join(map(str, cores))} cores and "
        f"{', '.join(map(str, mems))} GiB; planned for {t.cpus} cpus and "
        f"{t.memory / 2**30:.3g} GiB, {t.reserve:.0%} of it reserved.",
        f"Memory basis '{t.basis}': {BASES[t.basis]}. y(n) is fitted over every ramp's "
        "points with n ≥ 1 as a line, a parabola and two lines joined at a knot; BIC "
        "chooses (see harness/capacity/fit.py). 95 % CIs by a percentile bootstrap "
        f"({RESAMPLES} resamples of the points within each ramp).",
    ]
    # What the data show of the marginal, per cell: said, not assumed.
    for c in cells:
        f = c.fits.get(t.basis)
        if f is None or f.curve is None:
            continue
        at = min(MARGINAL_AT, f.top)
        m_at, m_top = f.marginal_at(at), f.marginal_top
        shape = (f"{c.label}: {MODELS[f.model]} fits best (BIC "
                 + ", ".join(f"{k} {v:.0f}" for k, v in sorted(f.bic.items(),
                                                             key=lambda kv: kv[1]))
                 + f"); marginal {m_at / MIB:.3g} MiB at {at}, {m_top / MIB:.3g} MiB at the "
                 f"top ({f.top}), average slope {f.marginal / MIB:.3g} MiB. ")
        if m_top > 1.1 * m_at:
            shape += ("The marginal rises with the count: a plan from a shorter ramp "
                      "underestimates the cost; past the top the plan goes on at the top's "
                      "marginal, which still underestimates if the rise continues.")
        elif m_top < 0.9 * m_at:
            shape += ("The marginal falls with the count (shared pages make the first "
                      "instances dearer): going on at the top's marginal errs on the safe "
                      "side.")
        else:
            shape += "The marginal stays within 10 % over the range."
        if f.autocorr > 0.5:
            shape += (f" Residuals are autocorrelated (lag-1 r = {f.autocorr:.2f}): the "
                      "points are not independent, the CIs are too narrow.")
        out.append(shape)
    out += [
        "Instances are idle (the density workload); "
        + (f"each also gets {t.workload_memory / MIB:.4g} MiB of workload memory."
           if t.workload_memory else "--workload-memory adds what the real workload uses."),
        "Instances per host by memory: the largest n with y(n) + n × workload memory ≤ "
        "host memory × (1 − reserve); the CI carries the fit's uncertainty only.",
        "Kernel limits: each counter grows linearly per instance from this host's value at "
        "n = 0 (the target's idle usage is taken to be this host's); ceilings are the "
        "measured host's unless given with --limit"
        + (f" ({', '.join(f'{k}={v:,}' for k, v in sorted(t.limits.items()))})"
           if t.limits else "") + ".",
    ]
    if t.slo_start is not None:
        out.append(
            f"Start-latency SLO: p95 ≤ {format_seconds(t.slo_start)}. p95 at n = hinge fit "
            "of the latency + the 95th percentile of its residuals. Latency growth with the "
            "count is taken as CPU-bound, so the count at the SLO scales with target cpus / "
            "measured cores; past the measured counts it is a linear extrapolation "
            "(flagged); with no growth measured the SLO is not extrapolated.")
    else:
        out.append("No start-latency SLO given (--slo-start): the p95 at the planned count "
                   "is shown, not planned with.")
    out.append("Not modelled: CPU use of busy instances, addresses, disk, "
               "KSM/ballooning/overcommit, and other engine or kernel versions.")
    if any(c.emulated for c in cells):
        out.append("(TCG, emulated) cells are VMs without hardware virtualisation: they start "
                   "slower and use more CPU than under KVM, so their latency is not "
                   "representative.")
    return out


def refuse_extrapolation(plan: CapacityPlan) -> None:
    """UsageError naming every cell planned beyond the target's max_extrapolation, with
    the instances to measure instead."""
    far = plan.too_far()
    if far:
        t = plan.target
        parts = [f"{c.label} {c.instances:,.0f} from {c.max_measured:,} measured (measure "
                 f"≥ {math.ceil((c.instances or 0) / t.max_extrapolation):,}: "
                 f"params.per_backend.{c.backend}.max_instances)" for c in far]
        raise UsageError(f"the plan is more than {t.max_extrapolation:g}× beyond the measured "
                         f"range: {'; '.join(parts)}; ramp further, or pass "
                         "--allow-extrapolation")


# --- output ---------------------------------------------------------------------------

def _mib(x: float) -> float:
    return round(x / MIB, 4)


def _count(x: float | None) -> int | None:
    return None if x is None else int(x)


def as_json(plan: CapacityPlan) -> dict[str, Any]:
    t = plan.target
    cells = []
    for c in plan.cells:
        mem: dict[str, Any] = {}
        for basis, f in c.fits.items():
            at = min(MARGINAL_AT, f.top)
            mem[basis] = {"marginal_mib": _mib(f.marginal),
                          "marginal_ci_mib": [_mib(v) for v in f.marginal_ci],
                          "fixed_mib": _mib(f.fixed), "fixed_ci_mib": [_mib(v) for v in f.fixed_ci],
                          "per_ramp_marginal_mib": [_mib(v) for v in f.per_ramp],
                          "per_ramp_marginal_top_mib": [_mib(v) for v in f.per_ramp_top],
                          "curve_fixed_mib": _mib(f.curve_fixed),
                          "held_at_0": list(f.held), "line_held_at_0": list(f.line_held),
                          "model": f.model, "bic": {k: round(v, 2) for k, v in f.bic.items()},
                          "top": f.top, "marginal_top_mib": _mib(f.marginal_top),
                          "marginal_top_ci_mib": [_mib(v) for v in f.marginal_top_ci],
                          f"marginal_at_{at}_mib": _mib(f.marginal_at(at)),
                          "residual_autocorr": None if math.isnan(f.autocorr)
                          else round(f.autocorr, 3),
                          "points": f.points}
        lat = c.latency
        first = c.first_limit
        cells.append({
            "backend": c.backend, "variant": c.variant, "emulated": c.emulated,
            "host": c.host or None,
            "accel": c.accel, "ramps": c.ramps, "max_measured": c.max_measured,
            "stopped_by": c.stopped_by,
            "basis": c.basis,
            "marginal_mib": mem.get(c.basis, {}).get("marginal_mib"),
            "marginal_ci_mib": mem.get(c.basis, {}).get("marginal_ci_mib"),
            "marginal_top_mib": mem.get(c.basis, {}).get("marginal_top_mib"),
            "fixed_mib": mem.get(c.basis, {}).get("fixed_mib"),
            "memory": mem,
            "latency": None if lat is None else {
                "points": lat.points, "base_s": lat.base, "slope_s_per_instance": lat.slope,
                "knee": lat.knee,
                "knee_at_target": None if lat.knee is None else
                int(lat.knee * t.cpus / c.measured_cores) if c.measured_cores else lat.knee,
                "knee_p_value": lat.p_value, "p95_s": lat.p95, "p95_top_s": lat.p95_last,
                "p95_at_plan_s": c.p95_at_plan},
            "limits": [{"name": lim.name, "counter": lim.counter, "ceiling": lim.ceiling,
                        "given": lim.given, "at_0": lim.base,
                        "per_instance": round(lim.per_instance, 4),
                        "binds_at": _count(lim.count)} for lim in c.limits],
            "instances_per_host": {
                "by_memory": _count(c.by_memory),
                "by_memory_ci": [_count(v) for v in c.by_memory_ci],
                "by_slo": _count(c.by_slo), "slo_note": c.slo_note,
                "first_limit": None if first is None else first.name,
                "by_first_limit": None if first is None else _count(first.count),
                "max": _count(c.instances), "binding": c.binding or None,
                "extrapolation": round(c.extrapolation, 3)},
            "notes": c.notes,
        })
    return {"target": {"host_memory": t.memory, "host_cpus": t.cpus, "reserve": t.reserve,
                       "workload_memory": t.workload_memory, "slo_start": t.slo_start,
                       "basis": t.basis, "limits": t.limits,
                       "max_extrapolation": t.max_extrapolation},
            "files": plan.files, "assumptions": plan.assumptions, "backends": cells}


def load(paths: Iterable[str | Path]) -> list[Loaded]:
    return load_all(list(paths))
