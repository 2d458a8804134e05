"""startup: one instance through its whole life, timed by phase.

Between the first and the last timestamp only Runtime calls and monotonic_ns() run: no
imports, no file writes, no pandas. The figures are computed after remove returns.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.core.errors import InstanceError
from harness.core.probes.timing import STARTUP_METRICS, Timeline, now_ns
from harness.runner import Cell, Context, Measurement


class Startup:
    name = "startup"
    metrics: dict[str, str] = dict.fromkeys(STARTUP_METRICS, "s")
    params: ClassVar[dict[str, Any]] = {}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        rt, spec = cell.runtime, ctx.spec(cell)
        timeout = ctx.timeout
        t0 = now_ns()
        inst = rt.create(spec, cell.prepared)
        t1 = now_ns()
        ctx.track(cell, inst)
        rt.start(inst)
        t2 = now_ns()
        if spec.readiness == "marker":
            t3 = rt.wait_ready(inst, timeout)
            ex = rt.wait_exit(inst, timeout)
        else:  # readiness "exit": the instance is ready when the workload has run
            ex = rt.wait_exit(inst, timeout)
            t3 = ex.t_ns
        rt.remove(inst)
        t5 = now_ns()
        ctx.untrack(inst)
        if not ex.ok:
            raise InstanceError(f"workload exited with {ex.code}"
                                + (" (OOM-killed)" if ex.oom_killed else "")
                                + f": {ex.stderr[-300:]!r}")
        tl = Timeline(t0, t1, t2, t3, ex.t_ns, t5)
        return [Measurement(metric, value) for metric, value in tl.metrics().items()]


STUDY = Startup()
