"""`bench capacity` with an application result: how many server instances, each serving a
given rate, fit on a host of X cores and Y GiB, and which resource binds.

CPU. Each sample ran one server instance pinned to its cpuset (`limits.cpuset` in the
scenario; without one, the whole measuring host) at saturation: its throughput per core
is the throughput ÷ the cpuset's cores. An instance serving `rate` needs rate ÷ per-core
cores, so `cpus` cores hold cpus × per-core ÷ rate instances (floor). Without a rate each
instance runs at the measured saturation on as many cores as it had. Assumed: throughput
scales linearly with cores (one worker per core; a rate above what one instance served
on its cpuset is flagged), and the load generator runs elsewhere (it had its own core
here, and is not counted).

Memory. Each instance costs its PSS under load (`<study>.pss_loaded`); the engine daemons
under load (`<study>.daemon_pss_loaded`, 0 for a daemonless backend) are paid once per
host. usable = memory × (1 − reserve); instances = (usable − daemons) ÷ (PSS + the
workload memory given). A cell without either figure (or with a PSS of 0: no reading) is
not planned around: the plan is refused, naming what is missing.

The 95 % CIs come from the bootstrap CIs of the medians (per-core throughput, PSS); the
smaller of the two counts binds. Cells are per backend, network mode and sub-case.

Which studies are application studies, and the figure of each that says how much work
was done (its throughput), is the caller's: `studies` maps one to the other.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness import data, stats
from harness.capacity.target import TargetHost
from harness.core.errors import UsageError
from harness.core.records import join_variant
from harness.core.units import format_size, format_value
from harness.results import Loaded, frame


@dataclass(frozen=True)
class AppCell:
    label: str
    backend: str
    variant: str
    sub: str
    kind: str
    emulated: bool
    n: int
    throughput: float  # one instance at saturation, median
    throughput_ci: tuple[float, float]
    cores: float  # the instance's cpuset
    per_core: float
    per_core_ci: tuple[float, float]
    rate: float  # what each planned instance serves
    cores_needed: float
    pss: float  # per instance under load, median
    pss_ci: tuple[float, float]
    daemons: float  # once per host
    by_cpu: int
    by_cpu_ci: tuple[int, int]
    by_memory: int
    by_memory_ci: tuple[int, int]
    instances: int
    binding: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AppPlan:
    target: TargetHost
    study: str
    metric: str
    unit: str
    rate: float | None  # None: each instance at the measured saturation
    cells: list[AppCell]
    assumptions: list[str]


def is_application(docs: Sequence[Loaded], studies: Collection[str]) -> bool:
    """Whether the results hold application studies (and so no density ramps)."""
    return any(str(doc.scenario.get("study", doc.scenario_name)) in studies
               for _, doc in docs)


def cpuset_cores(spec: str) -> int:
    """The CPUs of a cpuset list: "1" -> 1, "0-3" -> 4, "0,2-3" -> 3."""
    n = 0
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _cores(docs: Sequence[Loaded]) -> tuple[float, str]:
    """The instance's cores and where they come from."""
    for _, doc in docs:
        server, _ = data.cpusets(doc)
        try:
            counts = {cpuset_cores(c) for c in server}
        except ValueError:
            raise UsageError(f"{doc.scenario_name}: cpuset {' | '.join(server)!r} is not a "
                             "cpu list") from None
        if len(counts) > 1:
            raise UsageError(f"{doc.scenario_name}: instances ran on cpusets of different "
                             f"sizes ({' | '.join(server)}): no one throughput per core")
        if counts:
            return float(counts.pop()), f"cpuset {' | '.join(server)}"
        cores = doc.host.get("cores")
        if isinstance(cores, int) and cores > 0:
            return float(cores), f"no cpuset: all {cores} cores of the measuring host"
    raise UsageError("the results record neither a cpuset nor the host's cores")


def _count(x: float) -> int:
    return max(0, math.floor(x)) if math.isfinite(x) else 0


def plan(docs: Sequence[Loaded], target: TargetHost, rate: float | None,
         studies: Mapping[str, str]) -> AppPlan:
    """The plan for the results of one application study; `studies`: each application
    study's throughput metric ("http" -> "http.rps")."""
    found = sorted({name for _, d in docs
                    if (name := str(d.scenario.get("study", d.scenario_name))) in studies})
    if len(found) != 1:
        raise UsageError("give the results of one application study (found "
                         f"{', '.join(found) or 'none'}): each has its own rate unit")
    study = found[0]
    throughput = studies[study]
    if rate is not None and not rate > 0:
        raise UsageError("--rate: must be positive")
    mine = [(p, d) for p, d in docs if str(d.scenario.get("study", d.scenario_name)) == study]
    df = data.split_sub(data.enrich(frame(mine), mine), studies)
    thr = df[df["metric"] == throughput]
    if thr.empty:
        raise UsageError(f"no {throughput} samples in the {study} results")
    unit = str(thr["unit"].iloc[0])
    cores, where = _cores(mine)
    usable = target.usable
    cells = []
    missing = []
    for c in data.cells(thr):
        mem = c.select(df)
        pss_v = mem[mem["metric"] == f"{study}.pss_loaded"]["value"].to_numpy(float)
        daemon_v = mem[mem["metric"] == f"{study}.daemon_pss_loaded"]["value"].to_numpy(float)
        # A PSS of 0 is no reading (a process always has pages: an older result's failed
        # read); the daemons' 0 is a daemonless backend's, recorded as such.
        if not pss_v.size or not (pss_v > 0).all():
            missing.append(f"{c.label()}: {study}.pss_loaded")
        if not daemon_v.size:
            missing.append(f"{c.label()}: {study}.daemon_pss_loaded")
        if missing:
            continue
        daemons = float(np.median(daemon_v))
        pss = stats.summarize(pss_v)
        room = usable - daemons
        # More PSS, fewer instances: the CI's ends swap.
        by_mem = _count(room / (pss.median + target.workload_memory))
        by_mem_ci = (_count(room / (pss.hi + target.workload_memory)),
                     _count(room / (pss.lo + target.workload_memory)))
        for sub in dict.fromkeys(c.select(thr)["sub"]):
            v = c.select(thr)
            v = v[v["sub"] == sub]["value"].to_numpy(float)
            s = stats.summarize(v)
            per = stats.summarize(v / cores)
            want = s.median if rate is None else rate
            need = want / per.median
            notes = []
            if rate is not None and rate > s.hi:
                notes.append(f"one instance served {format_value(s.median, unit)} (median; "
                             f"CI up to {format_value(s.hi, unit)}) on its {cores:g} core(s): "
                             f"{rate:g} needs {need:.3g} cores, assuming throughput scales "
                             "linearly with cores")
            if c.emulated:
                notes.append("emulated (TCG): its throughput says nothing of real hardware")
            by_cpu = _count(target.cpus / need)
            by_cpu_ci = (_count(target.cpus * per.lo / want), _count(target.cpus * per.hi / want))
            binding = "memory" if by_mem < by_cpu else "CPU"
            label = data.ResultCell(c.backend, join_variant(c.variant, str(sub) or None),
                              c.dataset, c.kind, c.emulated, c.ram).label()
            cells.append(AppCell(
                label=label, backend=c.backend,
                variant=c.variant, sub=str(sub), kind=c.kind, emulated=c.emulated, n=s.n,
                throughput=s.median, throughput_ci=(s.lo, s.hi), cores=cores,
                per_core=per.median, per_core_ci=(per.lo, per.hi), rate=want,
                cores_needed=need, pss=pss.median, pss_ci=(pss.lo, pss.hi), daemons=daemons,
                by_cpu=by_cpu, by_cpu_ci=by_cpu_ci, by_memory=by_mem, by_memory_ci=by_mem_ci,
                instances=min(by_cpu, by_mem), binding=binding, notes=notes))
    if missing:
        raise UsageError(f"{study}: no plan without what the samples did not read: "
                         f"{'; '.join(missing)} (re-run the study)")
    hosts = sorted({f"{d.host.get('cores', '?')} cores, {d.host.get('mem_total_gib', '?')} GiB"
                    for _, d in mine})
    assumptions = [
        f"Measured on {', '.join(hosts)}; each instance on {where}, at saturation, loaded "
        "by a generator on other cores (not counted: clients run elsewhere).",
        "CPU: throughput per core = measured throughput ÷ the instance's cores, taken to "
        "scale linearly with cores; each instance needs rate ÷ per-core cores.",
        f"Memory: PSS per instance under load, + {format_size(target.workload_memory)} "
        f"workload memory each; the daemons' PSS under load once per host; "
        f"{target.reserve:.0%} of {format_size(target.memory)} reserved.",
    ]
    return AppPlan(target, study, throughput, unit, rate, cells, assumptions)


def as_json(p: AppPlan) -> dict[str, Any]:
    return {"target": {"host_memory": p.target.memory, "host_cpus": p.target.cpus,
                       "reserve": p.target.reserve,
                       "workload_memory": p.target.workload_memory},
            "study": p.study, "metric": p.metric, "unit": p.unit, "rate": p.rate,
            "cells": [asdict(c) for c in p.cells], "assumptions": p.assumptions}

