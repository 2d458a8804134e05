"""Instance life-cycle steps the studies share: start to ready, run to exit, finish.

Every instance is tracked from the moment it exists, so an interrupted or failed sample
never leaves it behind (the runner removes what is still tracked).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

from harness.core.errors import InstanceError, NotApplicable, ReadyTimeout, Unreadable
from harness.core.probes import serving
from harness.sampling import Cell, Context, Placement
from runtimes.base import Exit, Instance, InstanceSpec, Runtime, Stats


def start(ctx: Context, cell: Placement, spec: InstanceSpec) -> Instance:
    """Create and start an instance; unless readiness is "exit", wait for its ready
    line, and with a service probe (tcp, http, log) until the service answers."""
    rt = cell.runtime
    t0 = time.monotonic()
    inst = rt.create(spec, cell.prepared)
    ctx.track(cell, inst)
    rt.start(inst)
    if spec.readiness != "exit":
        rt.wait_ready(inst, ctx.timeout)
        serve(ctx, cell, inst, t0 + ctx.timeout)
    return inst


# How long an instance whose output ended may take to exit: it closes its output on the
# way out, a moment before the exit status is there to read.
EXITING = 2.0


def ended(rt: Runtime, inst: Instance, wait: float = 0.0) -> serving.Ended:
    """How `inst` ended ("exited with status 3: <its output>"), None while it runs
    (after `wait` seconds): what a readiness probe asks between attempts. wait_exit with
    timeout 0 polls (an InstanceError at once while the instance runs)."""
    def check() -> str | None:
        try:
            ex = rt.wait_exit(inst, wait)
        except InstanceError:
            return None  # still running (or its end cannot be told: the probe waits on)
        output = (ex.stdout + ex.stderr)[-300:]
        return (f"exited with status {ex.code}" + (" (OOM-killed)" if ex.oom_killed else "")
                + f": {text(output)!r}")
    return check


def serve(ctx: Context, cell: Placement, inst: Instance, deadline: float) -> int | None:
    """Wait until the instance's service answers as its readiness asks (a tcp connect or
    an http GET from the host every ctx.probe_interval, or a line of its output); the
    time of the first answer (monotonic ns), or None for readiness without a service.
    `deadline` is a time.monotonic() value (the create call + the timeout). An instance
    that exits first fails at once with its exit status and output."""
    probe = serving.parse(inst.spec.readiness)
    if not probe.serving:
        return None
    rt = cell.runtime
    if probe.kind == "log":
        try:
            return rt.wait_output(inst, re.compile(probe.pattern.encode()),
                                  max(0.0, deadline - time.monotonic()))
        except ReadyTimeout:
            raise
        except InstanceError as e:  # the output ended: say how the instance did
            why = ended(rt, inst, EXITING)()
            if why is None:
                raise
            raise InstanceError(f"{probe}: the instance {why}, before a line matched") from e
    address = rt.address(inst)
    if address is None:
        raise InstanceError(f"{probe}: the instance has no address the host can reach "
                            f"(network {inst.spec.network})")
    answered = serving.poll(probe, address, ctx.probe_interval, deadline, ended(rt, inst))
    if answered is None:
        raise ReadyTimeout(f"{probe}: no answer from {address} within the timeout")
    return answered


def run(ctx: Context, cell: Placement, spec: InstanceSpec) -> tuple[Instance, Exit]:
    """Start an instance and wait for its workload to exit; the instance is left in
    place (its writable layer, its cgroup) for the caller to measure, then finish()."""
    inst = start(ctx, cell, spec)
    return inst, cell.runtime.wait_exit(inst, ctx.timeout)


def finish(ctx: Context, cell: Placement, inst: Instance) -> None:
    """Stop and remove an instance (idempotent in the backends), and stop tracking it."""
    cell.runtime.stop(inst, grace=0.5)
    cell.runtime.remove(inst)
    ctx.untrack(inst)


@contextlib.contextmanager
def instance(ctx: Context, cell: Placement, spec: InstanceSpec) -> Iterator[Instance]:
    """An instance started to ready for the body, finished afterwards."""
    inst = start(ctx, cell, spec)
    try:
        yield inst
    finally:
        finish(ctx, cell, inst)


def memory_of(rt: Runtime, inst: Instance) -> Stats:
    """The instance's memory (rt.stats); Unreadable when no host process of it was found
    (a sum over nothing is no reading)."""
    st = rt.stats(inst)
    if not st.pids:
        raise Unreadable(f"{inst.spec.name}: no host process of the instance was found: "
                         "its memory cannot be read")
    return st


def daemon_pids(rt: Runtime) -> list[int]:
    """The pids of the backend's daemons ([] for a daemonless one); Unreadable naming a
    daemon that was not found (its memory would read as 0)."""
    found = rt.daemons()
    if missing := [name for name, pids in found.items() if not pids]:
        raise Unreadable(f"{rt.name}: {', '.join(missing)} not found (by its socket, unit "
                         "or pid file): the daemons' memory cannot be read")
    return [pid for pids in found.values() for pid in pids]


def check(ex: Exit, what: str) -> None:
    if not ex.ok:
        raise InstanceError(f"{what}: the workload exited with {ex.code}"
                            + (" (OOM-killed)" if ex.oom_killed else "")
                            + f": {ex.stderr[-300:]!r}")


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")



def params(ctx: Context, defaults: dict[str, Any]) -> dict[str, Any]:
    """The study's parameters: its defaults, overridden by the scenario's [params]."""
    return {**defaults, **ctx.params}


def network_applicable(cell: Cell, mode: str, modes: tuple[str, ...]) -> None:
    """Raise NotApplicable unless the study measures network `mode` (one of `modes`)
    and the backend applies it: one without network isolation (host) only has "host";
    one whose metadata's not_applied lists "network.<mode>" lacks that mode."""
    skip = cell.traits.not_applied
    if mode not in modes:
        raise NotApplicable(f"network {mode}: this study measures {', '.join(modes)}")
    if ("network" in skip and mode != "host") or f"network.{mode}" in skip:
        raise NotApplicable(f"{cell.backend} does not apply network {mode}")
