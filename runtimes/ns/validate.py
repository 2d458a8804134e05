"""Checks run before the ns runtime acts (runc's configs/validate in spirit).

`host_problem()` says whether this host can run instances at all (and, for a non-root
user, whether it lets unprivileged users make user namespaces); `spec()` rejects an
InstanceSpec the runtime cannot honour, before any directory, cgroup or process exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.errors import NotApplicable, UsageError
from runtimes.base import InstanceSpec, check_publish

if TYPE_CHECKING:
    from runtimes.ns.cgroups import Manager  # (a protocol only mypy sees)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def userns_problem() -> tuple[str, str] | None:
    """(reason, fix) when unprivileged user namespaces are forbidden here, else None."""
    if not os.path.exists("/proc/self/ns/user"):
        return ("the kernel has no user namespaces (CONFIG_USER_NS)",
                "use a kernel with user namespaces, or run bench as root")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return ("unprivileged user namespaces are disabled "
                "(kernel.unprivileged_userns_clone = 0)",
                "sysctl -w kernel.unprivileged_userns_clone=1, or run bench as root")
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        return ("user namespaces are disabled (user.max_user_namespaces = 0)",
                "sysctl -w user.max_user_namespaces=15000, or run bench as root")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor forbids unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns = 1)",
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root")
    return None


def host_problem(cg: Manager, rootless: bool = False) -> tuple[str, str] | None:
    """(reason, fix) when this host cannot run ns instances, else None."""
    for ns in ("pid", "mnt", "uts", "ipc", "net", "cgroup"):
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            return (f"the kernel has no {ns} namespaces", "use a kernel with namespaces")
    if "overlay" not in Path("/proc/filesystems").read_text():
        return ("the overlay filesystem is not available", "modprobe overlay")
    if rootless:
        return userns_problem()
    reason = cg.check()
    if reason:
        return (reason, "mount the cgroup controllers (see scripts/provision)")
    return None


def spec(s: InstanceSpec, rootless: bool = False) -> None:
    if not s.argv:
        raise UsageError("ns: empty argv")
    check_publish("ns", s)
    if rootless and s.network not in ("none", "host"):
        raise NotApplicable(f"ns: network {s.network!r} needs root (it adds links to the "
                            "host); rootless instances can use none or host")
    for m in s.mounts:
        if not m.target.startswith("/") or ".." in m.target.split("/"):
            raise UsageError(f"ns: mount target {m.target!r} must be an absolute path "
                             "without '..'")
        if m.type == "bind" and not os.path.exists(m.source or ""):
            raise UsageError(f"ns: bind mount source {m.source} does not exist")
        if m.type == "volume" and (not m.source or "/" in m.source or m.source[0] == "."):
            raise UsageError(f"ns: volume name {m.source!r} must be a plain name")
    if not s.workdir.startswith("/"):
        raise UsageError(f"ns: workdir {s.workdir!r} must be absolute")
