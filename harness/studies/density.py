"""density: how many idle instances fit, and what each one more costs.

One sample of a cell is one full ramp. Idle instances (the scenario's workload: the
ready line, then e.g. `sleep 3600`) are started one step at a time, `concurrency`
instances per step, and kept running. Before anything starts, and after every step once
the new instances are ready and `settle` seconds have passed, the study records, with
the number of live instances n as the measurement's `instance` field:

  density.mem_available  the host's MemAvailable (B): what the kernel could still hand
                         out without swapping; its drop from the ramp's n = 0 value is the
                         host's own view of what the instances cost, kernel memory
                         (page tables, namespaces, cgroups, slab) included
  density.pss_total      the sum of the instances' PSS (B), read for every live instance
                         at the same moment: shared pages are split among the sharers, so
                         the sum is what the n instances cost together in user memory
  density.uss_total      the sum of their USS (B): private pages only
  density.cgroup_total   the sum of their cgroups' usage (B), where every instance has one
  density.daemon_pss     the PSS of the engine's daemons (B; 0 for daemonless backends),
                         apart from the instances', never hidden in them
  density.kernel_mem     the host's unreclaimable kernel memory (B): SUnreclaim +
                         KernelStack + PageTables + Percpu of /proc/meminfo, which PSS
                         never shows (namespaces, cgroups, page tables, task structures);
                         host-wide, so less exposed to neighbours than MemAvailable but
                         not immune
  density.start_latency  per new instance (instance = its ordinal n): create call begins
                         -> its ready line arrives at the host (s)
  density.<counter>      the kernel's counters that bind before memory at scale (tasks,
                         descriptors, network namespaces, bridge ports, memory cgroups,
                         inotify, kernel keys: harness.core.probes.kernel_limits), with the
                         memory figures; their ceilings go to the "ramp_stopped" event

At scale the memory figures are not taken at every step: reading every live instance's
PSS at every step costs O(n²) over a ramp. They are taken at every step up to DENSE
instances, then at every `measure_every`-th count (0 = so that a ramp to
`max_instances` has about POINTS of them), and at the top; start latency is recorded for
every instance. `settle` is waited before a measured step only.

The ramp stops at the first of (the reason goes to the result as a "ramp_stopped"
event): `max_instances`; the host-memory budget (the ramp may take at most
`max_memory_fraction` of the MemAvailable it started with); a kernel limit (a step
does not start that would take a counter past HEADROOM of its ceiling, e.g. the host's
tasks past kernel.pid_max: the reason names it); the hard floor (no step
starts unless MemAvailable, less what the step is expected to take, stays above
`min_mem_available`: checked before every step, so the host is never pushed towards the
OOM killer); the start-latency SLO (`slo_start` seconds exceeded by `slo_consecutive`
new instances in a row; 0 = off); `max_ramp_time`; a Ctrl-C; or an instance that fails
to start (the steps measured so far are kept; when a counter was past NEAR of its
ceiling, or the error was EMFILE/ENFILE/ENOMEM, the reason names the limit). Any other
error after the first step (a KeyError, a TypeError: the harness's own) is not a stop
reason: it fails the sample, as at the first step. Every instance is
tracked from the moment it exists and all are removed at the end of the ramp, also on
failure or Ctrl-C.

With concurrency c > 1, the c instances of a step are created and started back to back
(the backend's calls are not made concurrently) and each one's ready line is awaited by
its own thread from its start on: their boots overlap, as when a scheduler places a burst.

`[params.per_backend.<backend>]` overrides any parameter for one backend (e.g. fewer,
slower VMs); the harness never names a backend itself.

A couple of rounds (sampling.min_samples = max_samples = 2..3) give each cell as many
ramps, from which `bench capacity` fits the memory per instance with a CI.

On a 2-core host: the shipped ramps (2,000 ns and host instances, 300 docker and podman
containers, 6 emulated VMs, twice each) take about an hour. Idle instances cost memory
and kernel objects rather than CPU; their start latency is measured while the ramp's own
starts share the two cores, and `bench capacity` scales the count at which it reaches an
SLO by target cpus / measured cores.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.core import hostinfo
from harness.core.errors import BenchError, InstanceError
from harness.core.probes import kernel_limits
from harness.core.probes.memory import processes_memory
from harness.core.probes.timing import now_ns
from harness.core.units import format_size, parse_size
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from runtimes import registry
from runtimes.base import Instance

METRICS = {
    "density.mem_available": "B",
    "density.pss_total": "B",
    "density.uss_total": "B",
    "density.cgroup_total": "B",
    "density.daemon_pss": "B",
    "density.kernel_mem": "B",
    "density.start_latency": "s",
    **{f"density.{c}": "count" for c in kernel_limits.COUNTERS},
}
DENSE = 50  # every step is measured up to this many instances
POINTS = 100  # measured counts beyond DENSE, by default
HEADROOM = 0.95  # of a kernel limit's ceiling: the host is shared, leave it some
NEAR = 0.9  # a failure with a counter past this share of its ceiling is that limit's

# Kernel memory that PSS never shows and that cannot be reclaimed: slab that is not
# reclaimable (namespaces, cgroups, sockets, overlay and task structures), kernel stacks,
# page tables and per-CPU allocations (a memory cgroup's statistics live there).
KERNEL_FIELDS = ("SUnreclaim", "KernelStack", "PageTables", "Percpu")

DEFAULTS: dict[str, Any] = {
    "max_instances": 40,
    "concurrency": 1,
    "max_memory_fraction": 0.25,
    "min_mem_available": "2G",
    "slo_start": 0.0,
    "slo_consecutive": 3,
    "max_ramp_time": 900.0,
    "settle": 0.2,
    "measure_every": 0,
    "per_backend": {},
}


@dataclass(frozen=True)
class RampParams:
    max_instances: int
    concurrency: int
    max_memory_fraction: float
    min_mem_available: int  # bytes
    slo_start: float
    slo_consecutive: int
    max_ramp_time: float
    settle: float
    measure_every: int  # resolved: never 0

    def measured(self, before: int, after: int) -> bool:
        """Is the count `after` (reached from `before`) a measured one?"""
        return after <= DENSE or after // self.measure_every > before // self.measure_every


def _problems(values: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    """Range checks of one set of parameters (the top level or one backend's table)."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        k = f"{where}.{key}"
        if key not in DEFAULTS or key == "per_backend":
            allowed = ", ".join(sorted(set(DEFAULTS) - {"per_backend"}))
            out.append((k, f"unknown parameter (allowed: {allowed})"))
            continue
        default = DEFAULTS[key]
        if isinstance(value, bool) or not (
                type(value) is type(default)
                or (isinstance(default, float) and isinstance(value, int))):
            out.append((k, f"must be {type(default).__name__}, not {type(value).__name__}"))
            continue
        if key in ("max_instances", "concurrency", "slo_consecutive") and value < 1:
            out.append((k, f"must be at least 1, not {value}"))
        elif key == "max_memory_fraction" and not 0 < value < 1:
            out.append((k, f"must be between 0 and 1 (exclusive), not {value}"))
        elif key in ("slo_start", "settle", "measure_every") and value < 0:
            out.append((k, f"must not be negative, not {value}"))
        elif key == "max_ramp_time" and value <= 0:
            out.append((k, f"must be positive, not {value}"))
        elif key == "min_mem_available":
            try:
                parse_size(value)
            except ValueError as e:
                out.append((k, str(e)))
    return out


def resolve(params: Mapping[str, Any], backend: str) -> RampParams:
    """The parameters of one backend's ramp: defaults < [params] < per_backend.<backend>
    (a flavoured backend "docker:runsc" also takes "docker"'s table, then its own)."""
    merged = {**DEFAULTS, **params}
    per = dict(merged.pop("per_backend"))
    for name in dict.fromkeys([backend.split(":")[0], backend]):
        merged.update(per.get(name, {}))
    return RampParams(
        max_instances=int(merged["max_instances"]), concurrency=int(merged["concurrency"]),
        max_memory_fraction=float(merged["max_memory_fraction"]),
        min_mem_available=parse_size(merged["min_mem_available"]),
        slo_start=float(merged["slo_start"]), slo_consecutive=int(merged["slo_consecutive"]),
        max_ramp_time=float(merged["max_ramp_time"]), settle=float(merged["settle"]),
        measure_every=int(merged["measure_every"])
        or max(1, math.ceil((int(merged["max_instances"]) - DENSE) / POINTS)))


class Ramp:
    """One ramp of one cell: the live instances, the memory estimate, the stop tests."""

    def __init__(self, ctx: Context, cell: Cell, p: RampParams) -> None:
        self.ctx, self.cell, self.p = ctx, cell, p
        self.live: list[Instance] = []
        self.out: list[Measurement] = []
        self.t_start = time.monotonic()
        self.avail0 = hostinfo.mem_available()
        self.last_avail = self.avail0
        self.drops: list[int] = []  # MemAvailable drop per instance between measurements
        self.top = 0  # the count of the last measurement
        self.ready = 0  # instances that reached their ready line
        self.over_slo = 0
        self.ceilings = kernel_limits.ceilings(self._daemon_pids())
        self.usage0: dict[str, int] = {}
        self.usage: dict[str, int] = {}
        self.usage_at = 0  # the count usage was read at

    @property
    def n(self) -> int:
        return len(self.live)

    def _daemon_pids(self) -> list[int]:
        return life.daemon_pids(self.cell.runtime)

    @property
    def per_instance(self) -> int:
        """What the next instance is expected to take: the median drop of MemAvailable
        per instance over the steps so far (a median, so that one neighbour's allocation
        during a step does not end the ramp), 0 before the first step."""
        d = sorted(self.drops)
        return max(0, d[len(d) // 2]) if d else 0

    def near_limit(self, count: int, share: float) -> str | None:
        """The kernel limit that `count` more instances would take past `share` of its
        ceiling, by the per-instance growth measured so far, as a stop reason."""
        for lim in kernel_limits.LIMITS:
            ceiling, now = self.ceilings.get(lim.name), self.usage.get(lim.counter)
            if ceiling is None or now is None or not self.usage_at:
                continue
            grow = max(0.0, (now - self.usage0.get(lim.counter, now)) / self.usage_at)
            expected = now + grow * (self.n - self.usage_at + count)
            if expected > share * ceiling:
                return (f"limit {lim.name}: {lim.counter} {now:,} at {self.usage_at} instances, "
                        f"{expected:,.0f} after {count} more, of {lim.what} {ceiling:,}")
        return None

    def stop_reason(self, step: int) -> str | None:
        """Why the next step of `step` instances must not start, or None."""
        p = self.p
        if self.ctx.stop_requested():
            return "interrupted"
        if self.n >= p.max_instances:
            return "max_instances"
        if time.monotonic() - self.t_start > p.max_ramp_time:
            return "max_ramp_time"
        if p.slo_start and self.over_slo >= p.slo_consecutive:
            return "slo_start"
        if reason := self.near_limit(step, HEADROOM):
            return reason
        avail = hostinfo.mem_available()
        expected = step * self.per_instance
        if avail - expected < p.min_mem_available:
            return "min_mem_available"
        if (self.avail0 - avail) + expected > p.max_memory_fraction * self.avail0:
            return "max_memory_fraction"
        return None

    def failed(self, e: Exception, count: int) -> str | None:
        """The stop reason of a step that failed: the named limit it ran into (a
        descriptor table full, host memory exhausted, a kernel counter past NEAR of its
        ceiling), else the instance's own failure (InstanceError); None for anything
        else, a harness error, which must not pass for the end of a ramp."""
        what = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        code = cause.errno if isinstance(cause, OSError) else None
        if code == errno.ENFILE or "Too many open files in system" in what:
            return f"limit file_max: instance failed: {what}"
        if code == errno.EMFILE or "Too many open files" in what:
            return f"limit nofile: instance failed: {what}"
        if code == errno.ENOMEM:
            return f"limit memory: instance failed: {what}"
        self.usage, self.usage_at = kernel_limits.usage(self._daemon_pids()), self.n
        if near := self.near_limit(count, NEAR):
            return f"{near}: instance failed: {what}"
        return f"instance failed: {what}" if isinstance(e, InstanceError) else None

    def step(self, count: int) -> None:
        """Start `count` instances back to back and wait for every ready line."""
        if count == 1:
            t0, inst = self._begin()
            self._latency(t0, self.cell.runtime.wait_ready(inst, self.ctx.timeout))
            return
        # One waiter thread per instance, started as soon as the instance is: its ready
        # line is timestamped when it arrives, not when the harness is done creating the
        # rest of the batch (host and ns timestamp the line when they read it).
        with ThreadPoolExecutor(max_workers=count) as pool:
            waits = []
            for _ in range(count):
                t0, inst = self._begin()
                waits.append((t0, pool.submit(self.cell.runtime.wait_ready, inst,
                                              self.ctx.timeout)))
            for t0, ready in waits:
                self._latency(t0, ready.result())

    def _begin(self) -> tuple[int, Instance]:
        rt, ctx = self.cell.runtime, self.ctx
        spec = ctx.spec(self.cell)
        t0 = now_ns()
        inst = rt.create(spec, self.cell.prepared)
        ctx.track(self.cell, inst)
        self.live.append(inst)
        rt.start(inst)
        return t0, inst

    def _latency(self, t0: int, t_ready: int) -> None:
        latency = (t_ready - t0) * 1e-9
        self.ready += 1
        self.out.append(Measurement("density.start_latency", latency, instance=self.ready))
        if self.p.slo_start:
            self.over_slo = self.over_slo + 1 if latency > self.p.slo_start else 0

    def measure(self) -> None:
        """Memory and the kernel's counters at the current count: every live instance's
        PSS read in one pass."""
        rt, n = self.cell.runtime, self.n
        pss = uss = cgroup = 0
        all_cgroups = True
        for inst in self.live:
            st = life.memory_of(rt, inst)
            pss, uss = pss + st.pss, uss + st.uss
            if st.cgroup is None:
                all_cgroups = False
            else:
                cgroup += st.cgroup
        daemons = self._daemon_pids()
        daemon = processes_memory(daemons).pss
        info = hostinfo.meminfo()
        avail = hostinfo.mem_available()
        self.usage, self.usage_at = kernel_limits.usage(daemons), n
        if not n:
            self.usage0 = dict(self.usage)
        if all(k in info for k in KERNEL_FIELDS):  # else absent: not a partial sum
            self.out.append(Measurement("density.kernel_mem",
                                        sum(info[k] for k in KERNEL_FIELDS), instance=n))
        self.out += [Measurement("density.mem_available", avail, instance=n),
                     Measurement("density.pss_total", pss, instance=n),
                     Measurement("density.uss_total", uss, instance=n),
                     Measurement("density.daemon_pss", daemon, instance=n)]
        self.out += [Measurement(f"density.{k}", v, instance=n) for k, v in self.usage.items()]
        if n and all_cgroups:  # (at n = 0 there is nothing to say)
            self.out.append(Measurement("density.cgroup_total", cgroup, instance=n))
        if n > self.top:
            self.drops.append((self.last_avail - avail) // (n - self.top))
        self.last_avail = avail
        self.top = n

    def run(self) -> str:
        """Ramp up until a stop condition; return the reason."""
        self.measure()
        while True:
            count = min(self.p.concurrency, self.p.max_instances - self.n)
            reason = self.stop_reason(max(count, 1))
            if reason:
                if self.n > self.top:  # the top of the ramp is always measured
                    self.measure()
                return reason
            try:
                self.step(count)
            except Exception as e:  # a limit or the instance's failure ends the ramp
                reason = self.failed(e, count) if self.top else None
                if reason is None:  # the first step, or a harness error: the sample fails
                    raise
                return reason
            if self.p.measured(self.n - count, self.n):
                if self.p.settle:
                    time.sleep(self.p.settle)
                self.measure()

    def remove_all(self) -> list[str]:
        """Stop and remove every instance of the ramp, newest first; report failures.
        Killed without a grace period: an idle PID 1 such as sleep ignores SIGTERM, and
        half a second each is a quarter of an hour at 2,000 instances."""
        rt, errors = self.cell.runtime, []
        for inst in reversed(self.live):
            try:
                rt.stop(inst, grace=0)
                rt.remove(inst)
                self.ctx.untrack(inst)
            except Exception as e:  # keep removing; still tracked: the runner retries
                errors.append(f"{inst.spec.name}: {e}")
        self.live.clear()
        return errors


class Density(Base):
    name = "density"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = DEFAULTS

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        """Ranges and the per-backend tables; and an idle workload that stays up."""
        params = dict(s.params)
        out = _problems({k: v for k, v in params.items() if k != "per_backend"}, "params")
        per = params.get("per_backend", {})
        for backend, table in per.items():
            where = f"params.per_backend.{backend}"
            if problem := registry.unknown(backend):
                out.append((where, problem))
            elif not isinstance(table, dict):
                out.append((where, "must be a table of parameters"))
            else:
                out += _problems(table, where)
        if s.workload.readiness != "marker":
            out.append(("workload.readiness", "density needs \"marker\": instances must stay "
                        "up after their ready line (an idle workload such as sleep)"))
        return out

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = resolve(ctx.params, cell.backend)
        ramp = Ramp(ctx, cell, p)
        reason = "interrupted"  # by a second Ctrl-C, unless an error says otherwise
        try:
            reason = ramp.run()
            return ramp.out
        except Exception as e:
            reason = f"failed: {e}"
            raise
        finally:
            top = ramp.top
            errors = ramp.remove_all()
            avail_after = hostinfo.mem_available()
            ctx.event("ramp_stopped", backend=cell.backend, variant=cell.variant.name,
                      reason=reason, instances=top, concurrency=p.concurrency,
                      seconds=round(time.monotonic() - ramp.t_start, 3),
                      mem_available_start=ramp.avail0, mem_available_after=avail_after,
                      per_instance_estimate=ramp.per_instance,
                      measure_every=p.measure_every, limits=ramp.ceilings,
                      usage_start=ramp.usage0, usage_top=ramp.usage,
                      note=f"{top} instances, stopped by {reason}; MemAvailable "
                           f"{format_size(ramp.avail0)} -> {format_size(ramp.last_avail)}",
                      cleanup_errors=errors)


STUDY: Study = Density()
