"""sysbench inside the instance, for the self-contained studies (cpu, mem).

One sample = one fresh instance whose script runs sysbench `warmup` seconds (output
discarded: page faults, frequency, a VM's first touches), then each job in turn between
marker lines, then exits; the instance is removed. Each job's output is kept as an
artifact (kind "sysbench") and its figure read from it (harness.core.probes.sysbench).
The instance runs on the scenario's limits.cpuset, recorded in every sample (cpuset).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from harness.core.errors import InstanceError
from harness.core.probes import sysbench
from harness.core.probes.io import sections
from harness.sampling import Cell, Context, Measurement
from harness.studies import _lifecycle as life

BEGIN, END = "CVBENCH-SYSBENCH-BEGIN", "CVBENCH-SYSBENCH-END"
# sub (None: the study has one figure) -> sysbench's arguments
Jobs = dict[str | None, list[str]]


def script(jobs: Jobs, warmup: list[str] | None) -> str:
    lines = [f"{shlex.join(warmup)} >/dev/null || exit 1"] if warmup else []
    for sub, argv in jobs.items():
        name = sub or "-"
        lines += [f"echo {BEGIN} {name}", f"{shlex.join(argv)} 2>&1",
                  f"echo {END} {name} rc=$?"]
    return "\n".join(lines) + "\n"


def run(ctx: Context, cell: Cell, jobs: Jobs, warmup: list[str] | None, metric: str,
        figure: Callable[[sysbench.Run], float | None],
        extra: dict[str, Any] | None = None) -> list[Measurement]:
    """Each job's figure, with the cpuset (and `extra`) kept in the sample."""
    spec = ctx.spec(cell, readiness="exit", capture=True,
                    argv=("sh", "-c", script(jobs, warmup)))
    inst, ex = life.run(ctx, cell, spec)
    life.finish(ctx, cell, inst)
    output = life.text(ex.stdout)
    found = sections(output, BEGIN, END)
    out: list[Measurement] = []
    for sub in jobs:
        name = sub or "-"
        if name not in found:
            raise InstanceError(f"{metric}: no sysbench output for {name} (exit {ex.code}): "
                                f"{(output or life.text(ex.stderr))[-300:]!r}")
        _info, body, end = found[name]
        ctx.artifact("sysbench", body, variant=sub, rc=end)
        value = figure(sysbench.parse(body))
        if end != "rc=0" or value is None:
            raise InstanceError(f"{metric}: sysbench {name} ended with {end}: {body[-300:]!r}")
        out.append(Measurement(metric, value, variant=sub,
                               extra={"cpuset": cell.config.limits.cpuset, **(extra or {})}))
    return out
