"""The host a plan is for, and the planner's choices."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXTRAPOLATION = 5.0  # a plan beyond this many times the measured top is refused


@dataclass(frozen=True)
class TargetHost:
    """The host to plan for, and the planner's choices."""

    memory: int  # bytes
    cpus: int
    reserve: float = 0.10  # fraction of memory kept for the OS and headroom
    workload_memory: int = 0  # bytes the real workload adds per instance
    slo_start: float | None = None  # s, on the p95 of the start latency
    basis: str = "pss+kernel"
    limits: dict[str, int] = field(default_factory=dict)  # kernel limits given (--limit)
    max_extrapolation: float = MAX_EXTRAPOLATION

    @property
    def usable(self) -> float:
        return self.memory * (1 - self.reserve)
