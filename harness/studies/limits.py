"""limits: are `cpus` and `memory` enforced, and enforced alike, on every backend?

CPU (sub-variants `limits.cpus=<c>`, one per value of `cpus`): an instance limited to c
cores runs `threads` busy loops (more work than c cores can do), and the host measures
the CPU time of the instance's host processes (utime + stime from /proc/PID/stat, all
threads, the qemu process of a VM included) over `duration` seconds of wall time:

  limits.cpu_used   cores used: CPU seconds / wall seconds
  limits.cpu_ratio  cpu_used / c: 1.0 is a limit enforced exactly, > 1 not enforced
  limits.host_idle  cores the whole host left idle meanwhile: a ratio below 1 with no
                    idle core left is contention (a busy host), not the limit

Memory (sub-variant `limits.memory=<m>`): an instance limited to m bytes tries, one
after the other, to allocate and touch buffers of `hog` fractions of m (a `dd` whose
block is the buffer, fed from /dev/zero); each attempt is a new process, so an OOM kill
ends one attempt, not the instance:

  limits.mem_max_ok     the largest buffer that was allocated and touched
  limits.mem_killed_at  the smallest buffer whose process was killed, or failed to get
                        its memory (absent if none was)
  limits.mem_enforced   1 if some attempt up to the largest fraction was killed, else 0

A backend that applies no limits (host) is measured all the same: its figures show what
an unlimited workload does, the floor the others are compared with.

On a 2-core host: a CPU limit is only tested when the host leaves idle cores meanwhile
(`limits.host_idle`); with other jobs on the two cores the claim is "inconclusive:
contention", not a verdict.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import InstanceError
from harness.core.units import parse_size
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from runtimes.base import Limits

HOG = "CVBENCH-HOG"
_HOG_LINE = re.compile(rf"^{HOG} (\d+) (\d+)\s*$", re.MULTILINE)
TICKS = os.sysconf("SC_CLK_TCK")
METRICS = {"limits.cpu_used": "cores", "limits.cpu_ratio": "×", "limits.host_idle": "cores",
           "limits.mem_max_ok": "B", "limits.mem_killed_at": "B", "limits.mem_enforced": "bool"}


def cpu_seconds(pids: tuple[int, ...] | list[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds; gone ones count 0."""
    total = 0
    for pid in set(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / TICKS


def idle_seconds() -> float:
    """Idle + iowait time of all the host's CPUs since boot (/proc/stat), in seconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / TICKS


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class LimitsStudy(Base):
    name = "limits"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {
        "cpus": [0.5, 1.0], "threads": 2, "duration": 3.0, "warmup": 0.5,
        "memory": "64M", "hog": [0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0]}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        out: list[Measurement] = []
        for cpus in p["cpus"]:
            out += self.cpu(ctx, cell, float(cpus), int(p["threads"]),
                            float(p["duration"]), float(p["warmup"]))
        out += self.memory(ctx, cell, parse_size(p["memory"]), [float(f) for f in p["hog"]])
        return out

    def cpu(self, ctx: Context, cell: Cell, cpus: float, threads: int, duration: float,
            warmup: float) -> list[Measurement]:
        loops = " ".join(["(while :; do :; done) &"] * max(1, threads))
        spec = ctx.spec(cell, argv=("sh", "-c", f"{loops} wait"),
                        limits=Limits(cpus=cpus, memory=cell.config.limits.memory,
                                      pids=cell.config.limits.pids),
                        readiness="marker")
        rt = cell.runtime
        with life.instance(ctx, cell, spec) as inst:
            time.sleep(warmup)  # let every loop start
            pids = rt.stats(inst).pids
            c0, i0, t0 = cpu_seconds(pids), idle_seconds(), time.monotonic()
            time.sleep(duration)
            pids = rt.stats(inst).pids
            c1, i1, t1 = cpu_seconds(pids), idle_seconds(), time.monotonic()
        used = (c1 - c0) / (t1 - t0)
        sub = f"limits.cpus={_show(cpus)}"
        return [Measurement("limits.cpu_used", used, variant=sub),
                Measurement("limits.cpu_ratio", used / cpus, variant=sub),
                Measurement("limits.host_idle", (i1 - i0) / (t1 - t0), variant=sub)]

    def memory(self, ctx: Context, cell: Cell, limit: int, fractions: list[float]
               ) -> list[Measurement]:
        sizes = sorted({int(limit * f) for f in fractions if f > 0})
        steps = " ".join(str(s) for s in sizes)
        script = (f"for b in {steps}; do dd if=/dev/zero of=/dev/null bs=$b count=1 "
                  f"2>/dev/null; echo \"{HOG} $b $?\"; done")
        spec = ctx.spec(cell, argv=("sh", "-c", script), readiness="exit", capture=True,
                        limits=Limits(memory=limit, cpus=cell.config.limits.cpus,
                                      pids=cell.config.limits.pids))
        inst, ex = life.run(ctx, cell, spec)
        life.finish(ctx, cell, inst)
        results = {int(b): int(rc) for b, rc in _HOG_LINE.findall(life.text(ex.stdout))}
        if set(results) != set(sizes):
            raise InstanceError(f"limits: the memory hog reported {sorted(results)}, not "
                                f"{sizes} (exit {ex.code}): {ex.stdout[-300:]!r} "
                                f"{ex.stderr[-300:]!r}")
        ok = [b for b, rc in results.items() if rc == 0]
        killed = [b for b, rc in results.items() if rc != 0]
        sub = f"limits.memory={limit}"
        out = [Measurement("limits.mem_max_ok", float(max(ok, default=0)), variant=sub),
               Measurement("limits.mem_enforced", 1.0 if killed else 0.0, variant=sub)]
        if killed:
            out.append(Measurement("limits.mem_killed_at", float(min(killed)), variant=sub))
        return out


STUDY: Study = LimitsStudy()
