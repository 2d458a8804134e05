"""Capacity planning: how many instances fit on a host.

- `fit`: the curves the plans rest on (memory per instance count, start latency, kernel
  counters), with their bootstrap CIs;
- `density`: plans from density runs (idle instances: memory, SLO, kernel limits);
- `apps`: plans from application runs (server instances at a rate: CPU and memory);
- `target`: the host planned for.

`harness.report.capacity` shows a plan; nothing here draws.
"""

from harness.capacity.density import (
    BASES,
    BASIS_METRICS,
    MARGINAL_AT,
    MIB,
    CapacityPlan,
    CellPlan,
    analyse,
    as_json,
    assumptions,
    density_frame,
    load,
    project,
    ramp_series,
    refuse_extrapolation,
)
from harness.capacity.fit import (
    Curve,
    LatencyFit,
    LimitPlan,
    MemoryFit,
    fit_latency,
    fit_limits,
    fit_memory,
)
from harness.capacity.target import MAX_EXTRAPOLATION, TargetHost

__all__ = [
    "BASES",
    "BASIS_METRICS",
    "MARGINAL_AT",
    "MAX_EXTRAPOLATION",
    "MIB",
    "CapacityPlan",
    "CellPlan",
    "Curve",
    "LatencyFit",
    "LimitPlan",
    "MemoryFit",
    "TargetHost",
    "analyse",
    "as_json",
    "assumptions",
    "density_frame",
    "fit_latency",
    "fit_limits",
    "fit_memory",
    "load",
    "project",
    "ramp_series",
    "refuse_extrapolation",
]
