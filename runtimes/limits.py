"""An instance's resource limits (runtimes.base re-exports Limits: backends find it there).

A module of its own, on harness.core.record alone: `cvbench-ns create` (a new interpreter
for each call) needs Limits for the container's cgroup, and the imports of runtimes.base
(the result records, typing, secrets...), or dataclasses', would cost it more than its
own work.
"""

from __future__ import annotations

from harness.core.record import record

TYPE_CHECKING = False  # (only mypy reads these)
if TYPE_CHECKING:
    from runtimes.base import Json


@record
class Limits:
    """Resource limits. cpus: CPU time in cores (quota/period); memory, in bytes; pids.
    rlimits: (name of RLIMIT_NAMES, soft, hard) the workload's first process gets, over
    the backend's own defaults (-1: unlimited). cpuset: the host CPUs the instance may
    run on, as cpuset.cpus spells them ("1", "0-3,6"): a cgroup cpuset for containers,
    the vCPUs (and QEMU's own threads) pinned for a VM, the affinity of a host process."""

    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    rlimits: tuple[tuple[str, int, int], ...] = ()
    cpuset: str | None = None
    # memory + swap, in bytes (-1: unlimited); None: `memory` (no swap). Only cvbench-ns
    # sets it, from an OCI bundle's linux.resources.memory.swap; cgroup v1 only.
    swap: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"cpus": self.cpus, "memory": self.memory, "pids": self.pids}

    def recorded(self) -> dict[str, Json]:
        """as_dict() and, when set, the rlimits (a field added in schema 1: older results
        have none)."""
        out: dict[str, Json] = dict(self.as_dict())
        if self.rlimits:
            out["rlimits"] = {n: [soft, hard] for n, soft, hard in self.rlimits}
        if self.cpuset is not None:  # added in schema 1, like rlimits
            out["cpuset"] = self.cpuset
        return out
