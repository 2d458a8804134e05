"""memory: what N idle instances cost in memory, per instance, with the daemons apart.

One sample starts `instances` idle instances of the scenario's workload (the ready line,
then sleep), waits until every one is ready, lets them settle for `settle` seconds (lazy
page faults, a VM guest's boot-time work, an engine's post-start bookkeeping), then reads
per instance, from the backend's `stats()`:

  memory.pss     PSS of every host process of the instance (smaps_rollup): shared pages
                 are split among their users, so N instances' PSS adds up to their cost
  memory.uss     private pages only: what removing the instance gives back
  memory.rss     resident pages, shared ones counted in full (what `top` shows)
  memory.cgroup  the instance's cgroup usage (includes its page cache); where it has one
  memory.guest_* a VM's own view from inside the guest (Stats.extra "guest_*" numbers
                 in bytes: guest_used, guest_total, guest_ram...)

and once per sample, `memory.daemon`: the PSS of the engine's daemons (dockerd and
containerd, the podman service, libvirtd; found by their sockets or pid files), 0 for
daemonless backends. It is kept apart from the instances', never hidden in them; to
amortise it per instance, divide it by the number of `memory.pss` rows of the same
sample (backend, variant, round), which is `instances`.

A figure that cannot be read (no host process of an instance, a daemon not found, a file
the harness may not read) fails the sample with why: never a 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from harness.core.probes.memory import processes_memory
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from runtimes.base import Instance

METRICS = {"memory.pss": "B", "memory.uss": "B", "memory.rss": "B", "memory.cgroup": "B",
           "memory.daemon": "B"}


def guest_view(extra: Mapping[str, Any]) -> dict[str, float]:
    """Stats.extra's "guest_*" numbers (bytes, by the protocol), by metric suffix."""
    return {k: float(v) for k, v in sorted(extra.items())
            if k.startswith("guest_") and isinstance(v, int | float)
            and not isinstance(v, bool)}


class IdleMemory(Base):
    name = "memory"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {"instances": 4, "settle": 2.0}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        rt = cell.runtime
        started: list[Instance] = []
        try:
            for _ in range(max(1, int(p["instances"]))):
                started.append(life.start(ctx, cell, ctx.spec(cell)))
            time.sleep(float(p["settle"]))
            out: list[Measurement] = []
            for i, inst in enumerate(started):
                st = life.memory_of(rt, inst)
                out += [Measurement("memory.pss", st.pss, instance=i),
                        Measurement("memory.uss", st.uss, instance=i),
                        Measurement("memory.rss", st.rss, instance=i)]
                if st.cgroup is not None:
                    out.append(Measurement("memory.cgroup", st.cgroup, instance=i))
                out += [Measurement(f"memory.{k}", v, instance=i, unit="B")
                        for k, v in guest_view(st.extra).items()]
            out.append(Measurement("memory.daemon",
                                   processes_memory(life.daemon_pids(rt)).pss))
            return out
        finally:
            for inst in started:
                life.finish(ctx, cell, inst)


STUDY: Study = IdleMemory()
