"""startup: one instance through its whole life, timed by phase.

Between the first and the last timestamp only Runtime calls, monotonic_ns() and, with a
service readiness (tcp, http, log), the probe's attempts run: no imports, no file
writes, no pandas. The figures are computed after remove returns. A service is removed
once it answers (it would not exit): its sample has `serving` and `to_serving`, and no
`exit` phase.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.core.probes.timing import STARTUP_METRICS, Timeline, now_ns
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study
from harness.studies import _lifecycle as life


class Startup(Base):
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
        ex, served = None, None
        if spec.readiness == "exit":  # the instance is ready when the workload has run
            ex = rt.wait_exit(inst, timeout)
            t3 = ex.t_ns
        else:
            t3 = rt.wait_ready(inst, timeout)
            # A service keeps running: it is removed once it answers.
            served = life.serve(ctx, cell, inst, t0 * 1e-9 + timeout)
            if served is None:
                ex = rt.wait_exit(inst, timeout)
        rt.remove(inst)
        t5 = now_ns()
        ctx.untrack(inst)
        if ex is not None:
            life.check(ex, "startup")
        tl = Timeline(t0, t1, t2, t3, ex.t_ns if ex else t3, t5, served)
        return [Measurement(metric, value) for metric, value in tl.metrics().items()]


STUDY: Study = Startup()
