"""Checks run before the ns runtime acts (runc's configs/validate in spirit).

`host_problem()` says whether this host can run instances at all; `spec()` rejects an
InstanceSpec the runtime cannot honour, before any directory, cgroup or process exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UsageError
from runtimes.base import InstanceSpec
from runtimes.ns.cgroups import Manager


def host_problem(cg: Manager) -> tuple[str, str] | None:
    """(reason, fix) when this host cannot run ns instances, else None."""
    if os.geteuid() != 0:
        return ("ns needs root (mount, pivot_root and cgroups)", "run bench as root")
    for ns in ("pid", "mnt", "uts", "ipc", "net"):
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            return (f"the kernel has no {ns} namespaces", "use a kernel with namespaces")
    if "overlay" not in Path("/proc/filesystems").read_text():
        return ("the overlay filesystem is not available", "modprobe overlay")
    reason = cg.check()
    if reason:
        return (reason, "mount the cgroup controllers (see scripts/provision)")
    return None


def spec(s: InstanceSpec) -> None:
    if s.network == "bridge":
        raise UsageError("ns: network 'bridge' is not implemented yet; use none or host")
    for m in s.mounts:
        if m.type == "bind" and not os.path.exists(m.source or ""):
            raise UsageError(f"ns: bind mount source {m.source} does not exist")
    if not s.argv:
        raise UsageError("ns: empty argv")
