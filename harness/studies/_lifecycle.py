"""Instance life-cycle steps the studies share: start to ready, run to exit, finish.

Every instance is tracked from the moment it exists, so an interrupted or failed sample
never leaves it behind (the runner removes what is still tracked).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from harness.core.errors import InstanceError
from harness.runner import Context, Placement
from runtimes.base import Exit, Instance, InstanceSpec


def start(ctx: Context, cell: Placement, spec: InstanceSpec) -> Instance:
    """Create and start an instance; with marker readiness, wait for its ready line."""
    rt = cell.runtime
    inst = rt.create(spec, cell.prepared)
    ctx.track(cell, inst)
    rt.start(inst)
    if spec.readiness == "marker":
        rt.wait_ready(inst, ctx.timeout)
    return inst


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
