"""warm: each technology at its best start, a pool of prepared instances, next to its
cold start, and what the pool costs.

A backend that keeps a pool (the `Pool` protocol of runtimes/base.py: `ns:pool`,
`docker:precreated`, `podman:precreated`, `libvirt:restore`) takes one sample as:

  refill     drain the pool, fill(spec, size) and time until ready() == size:
             warm.refill_rate = size / that time, slots prepared per second by the
             backend's own filler, back to back (sustained: the pool starts empty)
  idle cost  per ready slot (runtimes.base.Slot): warm.idle.pss, the PSS of the host
             processes it holds (a true 0 for a slot holding none, such as a Docker
             container created but not started: its cost is then in the engine's daemons
             and on disk); warm.idle.kernel, its cgroup's kernel memory, where it has a
             cgroup; warm.idle.disk, what it keeps on disk, and warm.idle.namespaces,
             the namespaces it holds open, where the backend tells them
  request    one instance taken from the full pool, timed as startup times a cold one:
             warm.create (taking the slot), warm.start, warm.ready, warm.to_ready
             (create → ready line); once ready its memory, warm.pss and warm.cgroup
             (the backend's stats()); warm.from_slot 1 if it came from a slot, 0 if the
             pool made it cold (Instance.warm)
  burst      the pool refilled to size, then `burst` requests (more than the pool
             holds) issued back to back by one client (create and start, without waiting
             for the previous one's ready line: each is awaited by a thread of its own),
             all kept until the last is ready: warm.burst.rate = burst / (last ready
             line − first request), in instances per second; warm.burst.to_ready and
             warm.burst.from_slot (1 or 0) per request; warm.burst.slots and
             warm.burst.cold, how many came from a slot and how many not (made cold,
             or for libvirt:restore cloned from its template on the spot: the fall back
             once the pool is empty; none when the filler keeps up with the requests,
             which is a finding too)

and the pool is drained at the end of every sample, also when it failed.

A backend without a pool (host, ns, docker, podman, libvirt) takes the same sample
without one: its warm.to_ready is its cold start (startup's to_ready, for the same
workload), its burst is all cold, and it has no refill or idle figures. So cold and warm
stand side by side in one run, and the report's seed claims are judged on warm.to_ready
too.

The instance's spec is the scenario's, as every study's; a slot's name and nonce are its
own (runtimes.base.Pool), read from the instance. The workload must stay up after its
ready line (readiness "marker", an idle command such as sleep): the instance's memory
is read while it runs, and the burst's instances are all alive at its end.

On a 2-core host the filler competes with the timed requests for the CPU (as a pool's
refill does on a busy host): the burst's rate includes that; the single request is
taken from a full pool, and ns:pool replaces a slot only once its request is served
(its refill policy), so no refill runs beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import ReadyTimeout
from harness.core.probes import memory
from harness.core.probes.timing import Timeline, now_ns
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from runtimes.base import Instance, Pool, Slot

METRICS = {
    "warm.create": "s", "warm.start": "s", "warm.ready": "s", "warm.to_ready": "s",
    "warm.pss": "B", "warm.cgroup": "B", "warm.from_slot": "bool",
    "warm.refill_rate": "slots/s", "warm.idle.pss": "B", "warm.idle.kernel": "B",
    "warm.idle.disk": "B", "warm.idle.namespaces": "namespaces",
    "warm.burst.rate": "instances/s", "warm.burst.to_ready": "s", "warm.burst.from_slot": "bool",
    "warm.burst.slots": "instances", "warm.burst.cold": "instances",
}
POLL = 0.002  # seconds between looks at ready(): well under a slot's making


def refill_rate(size: int, t0_ns: int, t1_ns: int) -> float:
    """Slots prepared per second: `size` slots made between t0 and t1 (monotonic ns)."""
    if size < 1 or t1_ns <= t0_ns:
        raise ValueError(f"no refill to rate: {size} slots in {t1_ns - t0_ns} ns")
    return size / ((t1_ns - t0_ns) * 1e-9)


@dataclass(frozen=True)
class Request:
    """One request of a burst: when it was issued, when its ready line came, and whether
    the instance came from a slot."""

    t0: int
    ready: int
    warm: str | None


def burst_figures(requests: list[Request]) -> dict[str, float]:
    """The burst's rate (instances ready per second, from the first request to the last
    ready line) and its counts of instances from a slot and made cold."""
    if not requests:
        raise ValueError("an empty burst")
    span = max(r.ready for r in requests) - min(r.t0 for r in requests)
    if span <= 0:
        raise ValueError(f"a burst of {len(requests)} over {span} ns")
    slots = sum(1 for r in requests if r.warm == "slot")
    return {"warm.burst.rate": len(requests) / (span * 1e-9),
            "warm.burst.slots": float(slots), "warm.burst.cold": float(len(requests) - slots)}


def idle_cost(slot: Slot) -> dict[str, float]:
    """A ready slot's idle cost, read from the host: the PSS of its processes, its
    cgroup's kernel memory; and its disk bytes and the namespaces it holds open, each
    where the slot tells it."""
    out = {"warm.idle.pss": float(memory.processes_memory(slot.pids).pss)}
    if slot.cgroup is not None:
        kernel = memory.cgroup_kernel(Path(slot.cgroup))
        if kernel is not None:
            out["warm.idle.kernel"] = float(kernel)
    if slot.disk_bytes is not None:
        out["warm.idle.disk"] = float(slot.disk_bytes)
    if slot.namespaces is not None:
        out["warm.idle.namespaces"] = float(slot.namespaces)
    return out


def wait_pool(pool: Pool, size: int, timeout: float, stop: Callable[[], bool]) -> int:
    """Block until `size` slots are ready; when (monotonic ns). ReadyTimeout if the pool
    has fewer at the timeout (it says how many); the pool's own error if it fails."""
    deadline = time.monotonic() + timeout
    while (n := pool.ready()) < size:
        if time.monotonic() > deadline or stop():
            raise ReadyTimeout(f"the pool had {n} of {size} slots ready after "
                               f"{timeout:g} s")
        time.sleep(POLL)
    return now_ns()


class Warm(Base):
    name = "warm"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {"pool": 4, "burst": 8}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        p = {**self.params, **dict(s.params)}
        out = []
        if p["pool"] < 1:
            out.append(("params.pool", f"must be at least 1, not {p['pool']}"))
        if p["burst"] <= p["pool"]:
            out.append(("params.burst", f"must be more than params.pool ({p['pool']}): the "
                        "burst shows the fall back to cold starts once the pool is empty"))
        if s.workload.readiness != "marker":
            out.append(("workload.readiness", "warm needs \"marker\": instances must stay "
                        "up after their ready line (an idle workload such as sleep)"))
        return out

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        size, burst = int(p["pool"]), int(p["burst"])
        rt = cell.runtime
        pool = rt if isinstance(rt, Pool) else None
        out: list[Measurement] = []
        try:
            if pool is not None:
                pool.drain()
                t0 = now_ns()
                pool.fill(ctx.spec(cell), cell.prepared, size)
                t1 = wait_pool(pool, size, ctx.timeout, ctx.stop_requested)
                out.append(Measurement("warm.refill_rate", refill_rate(size, t0, t1)))
                for i, slot in enumerate(pool.slots()):
                    out += [Measurement(m, v, instance=i, extra=dict(slot.details) or None)
                            for m, v in idle_cost(slot).items()]
            out += self._request(ctx, cell)
            if pool is not None:
                wait_pool(pool, size, ctx.timeout, ctx.stop_requested)
            out += self._burst(ctx, cell, burst)
            return out
        finally:
            if pool is not None:
                pool.drain()

    def _request(self, ctx: Context, cell: Cell) -> list[Measurement]:
        """One instance to its ready line, timed as startup times it; its memory."""
        rt = cell.runtime
        t0 = now_ns()
        inst = rt.create(ctx.spec(cell), cell.prepared)
        t1 = now_ns()
        ctx.track(cell, inst)
        try:
            rt.start(inst)
            t2 = now_ns()
            t3 = rt.wait_ready(inst, ctx.timeout)
            st = life.memory_of(rt, inst)
        finally:
            life.finish(ctx, cell, inst)
        tl = Timeline(t0, t1, t2, t3, t3, t3).metrics()
        extra = {"warm": inst.warm}
        out = [Measurement(f"warm.{p}", tl[f"startup.{p}"], extra=extra)
               for p in ("create", "start", "ready", "to_ready")]
        out += [Measurement("warm.from_slot", float(inst.warm == "slot"), extra=extra),
                Measurement("warm.pss", st.pss)]
        if st.cgroup is not None:
            out.append(Measurement("warm.cgroup", st.cgroup))
        return out

    def _burst(self, ctx: Context, cell: Cell, n: int) -> list[Measurement]:
        """`n` requests issued back to back (create and start, as fast as one client
        can), each instance's ready line awaited by a thread of its own from its start,
        all alive until the last is ready."""
        rt = cell.runtime
        live: list[Instance] = []
        t0s: list[int] = []
        waiters: list[threading.Thread] = []
        ready: dict[int, int | Exception] = {}

        def wait(i: int, inst: Instance) -> None:
            try:
                ready[i] = rt.wait_ready(inst, ctx.timeout)
            except Exception as e:  # raised below, in the sample's thread
                ready[i] = e

        try:
            for i in range(n):
                t0s.append(now_ns())
                inst = rt.create(ctx.spec(cell), cell.prepared)
                ctx.track(cell, inst)
                live.append(inst)
                rt.start(inst)
                waiters.append(threading.Thread(target=wait, args=(i, inst), daemon=True))
                waiters[-1].start()
        finally:
            for w in waiters:  # (each ends by its ready line or the timeout)
                w.join()
            for inst in live:
                life.finish(ctx, cell, inst)
        done = []
        for i in range(n):
            if isinstance(got := ready[i], Exception):
                raise got
            done.append(Request(t0s[i], got, live[i].warm))
        out = [Measurement(m, v) for m, v in burst_figures(done).items()]
        for i, r in enumerate(done):
            out += [Measurement("warm.burst.to_ready", (r.ready - r.t0) * 1e-9, instance=i,
                                extra={"warm": r.warm}),
                    Measurement("warm.burst.from_slot", float(r.warm == "slot"), instance=i)]
        return out


STUDY: Study = Warm()
