"""cpu: sysbench cpu inside the instance (one thread), its events per second.

An event is the primes up to `max_prime` by trial division: integer arithmetic in a
loop that fits in L1, so it shows the CPU each backend gives the workload (a VM under
TCG: emulated) and no I/O or memory cost. Parameters: `duration` and `warmup` (s).

On a 2-core host: the instance runs on CPU 1 (`limits.cpuset`), one sysbench thread,
leaving CPU 0 to the runner and the rest of the host; what scales over cores does not
show.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.core.probes import sysbench
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study, _sysbench
from harness.studies import _lifecycle as life


class Cpu(Base):
    name = "cpu"
    metrics: ClassVar[dict[str, str]] = {"cpu.events": "events/s"}
    params: ClassVar[dict[str, Any]] = {"duration": 5.0, "warmup": 1.0, "max_prime": 10000}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        prime = int(p["max_prime"])
        warmup = sysbench.cpu_args(float(p["warmup"]), prime) if p["warmup"] else None
        return _sysbench.run(ctx, cell, {None: sysbench.cpu_args(float(p["duration"]), prime)},
                             warmup, "cpu.events", lambda r: r.events_per_s)


STUDY: Study = Cpu()
