"""The kernel's limits that bind before memory when instances are counted in thousands,
and how much of each the host uses now.

Each LIMIT compares one COUNTER (read host-wide, or for the runner's user, or for one
process) with one ceiling. `usage()` reads every counter in one pass over /proc; it costs
tens of milliseconds at a few thousand processes, so the density ramp takes it with its
memory figures, not at every step. `ceilings()` reads the ceilings as this host has them.

Per-user counters (inotify, keys) are the runner's user's: rootful engines and `ns` create
their instances' processes as that user, in the initial user namespace, so they count
against it. A user namespace of its own (rootless engines) has its own counts.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Memory cgroup ids are 16 bits (MEM_CGROUP_ID_MAX); a removed cgroup keeps its id while
# pages are still charged to it (a dying cgroup), so repeated ramps add up.
MEMCG_IDS = 65535
# A Linux bridge numbers its ports in 10 bits, port 0 unused (BR_MAX_PORTS = 1024).
BRIDGE_PORTS = 1023


@dataclass(frozen=True)
class KernelLimit:
    """One of the kernel's ceilings on a counter (runtimes.base.Limits: an instance's)."""

    name: str  # as given to `bench capacity --limit NAME=VALUE`
    counter: str  # the counter it caps (a key of usage())
    what: str  # where the ceiling comes from


COUNTERS = {
    "tasks": "processes and threads on the host (each takes a pid)",
    "runner_fds": "descriptors the runner holds open",
    "daemon_fds": "descriptors of the engine daemon process nearest its limit",
    "files": "open files on the host (fs/file-nr)",
    "netns": "network namespaces on the host",
    "bridge_ports": "ports of the fullest Linux bridge",
    "memcgs": "memory cgroups, dying ones included (/proc/cgroups)",
    "inotify_instances": "inotify instances of the runner's user",
    "inotify_watches": "inotify watches of the runner's user",
    "keys": "kernel keys of the runner's user (/proc/key-users)",
    "key_bytes": "bytes of kernel keys of the runner's user",
}

LIMITS = (
    KernelLimit("pid_max", "tasks", "kernel.pid_max"),
    KernelLimit("threads_max", "tasks", "kernel.threads-max"),
    KernelLimit("nofile", "runner_fds", "the runner's soft RLIMIT_NOFILE"),
    KernelLimit("daemon_nofile", "daemon_fds", "that daemon's soft RLIMIT_NOFILE"),
    KernelLimit("file_max", "files", "fs.file-max"),
    KernelLimit("max_net_namespaces", "netns", "user.max_net_namespaces"),
    KernelLimit("bridge_ports", "bridge_ports", f"a bridge's {BRIDGE_PORTS} ports (BR_MAX_PORTS)"),
    KernelLimit("memcg_ids", "memcgs", f"{MEMCG_IDS} memory cgroup ids (MEM_CGROUP_ID_MAX)"),
    KernelLimit("inotify_instances", "inotify_instances", "fs.inotify.max_user_instances"),
    KernelLimit("inotify_watches", "inotify_watches", "fs.inotify.max_user_watches"),
    KernelLimit("maxkeys", "keys", "kernel.keys.maxkeys (root_maxkeys for root)"),
    KernelLimit("maxbytes", "key_bytes", "kernel.keys.maxbytes (root_maxbytes for root)"),
)
BY_NAME = {lim.name: lim for lim in LIMITS}


def _int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> Iterator[str]:
    return (p for p in os.listdir("/proc") if p.isdigit())


def _fds(pid: str | int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return []


def _key_users(uid: int) -> tuple[int, int, int, int] | None:
    """(keys, maxkeys, bytes, maxbytes) of `uid` from /proc/key-users."""
    try:
        lines = Path("/proc/key-users").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "    0:     9 8/8 3/1000000 40/25000000"
        if len(parts) >= 5 and parts[0] == f"{uid}:":
            keys, maxkeys = parts[3].split("/")
            kb, maxb = parts[4].split("/")
            return int(keys), int(maxkeys), int(kb), int(maxb)
    return None


def _memcgs() -> int | None:
    try:
        for line in Path("/proc/cgroups").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "memory":
                return int(parts[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _bridge_ports() -> int:
    most = 0
    for brif in Path("/sys/class/net").glob("*/brif"):
        try:
            most = max(most, len(os.listdir(brif)))
        except OSError:
            continue
    return most


def _nofile(pid: int) -> int | None:
    """A process's soft RLIMIT_NOFILE (from /proc: it may not be our process)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _daemon(daemon_pids: Iterable[int]) -> tuple[int | None, int | None]:
    """(descriptors, soft limit) of the daemon process nearest its limit; (0, None)
    without daemons, (None, None) when no daemon's descriptors could be listed (a
    counter not read, not 0)."""
    pids = set(daemon_pids)
    best: tuple[float, int | None, int | None] = (-1.0, None if pids else 0, None)
    for pid in pids:
        try:
            n = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:  # gone, or not ours to read
            continue
        lim = _nofile(pid)
        ratio = n / lim if lim else 0.0
        if ratio > best[0]:
            best = (ratio, n, lim)
    return best[1], best[2]


def usage(daemon_pids: Iterable[int] = ()) -> dict[str, int]:
    """Every counter now (a counter this host cannot read is left out)."""
    uid = os.geteuid()
    netns: set[str] = set()
    inotify = watches = 0
    for pid in _pids():
        try:
            netns.add(os.readlink(f"/proc/{pid}/ns/net"))
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        for fd in _fds(pid):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    watches += sum(line.startswith("inotify wd:") for line in f)
            except OSError:
                continue
            inotify += 1
    out = {"runner_fds": len(_fds("self")), "netns": len(netns),
           "inotify_instances": inotify, "inotify_watches": watches,
           "bridge_ports": _bridge_ports()}
    if (daemon_fds := _daemon(daemon_pids)[0]) is not None:
        out["daemon_fds"] = daemon_fds
    with contextlib.suppress(OSError, ValueError, IndexError):
        # "0.20 0.18 0.12 1/80 11206": runnable/total tasks
        out["tasks"] = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    if (files := _int("/proc/sys/fs/file-nr")) is not None:
        out["files"] = files
    if (memcgs := _memcgs()) is not None:
        out["memcgs"] = memcgs
    if (keys := _key_users(uid)) is not None:
        out["keys"], out["key_bytes"] = keys[0], keys[2]
    return out


def ceilings(daemon_pids: Iterable[int] = ()) -> dict[str, int]:
    """Every limit's value on this host now (unlimited or unreadable ones are left out)."""
    sysctl = {"pid_max": "kernel/pid_max", "threads_max": "kernel/threads-max",
              "file_max": "fs/file-max", "max_net_namespaces": "user/max_net_namespaces",
              "inotify_instances": "fs/inotify/max_user_instances",
              "inotify_watches": "fs/inotify/max_user_watches"}
    out = {k: v for k, p in sysctl.items() if (v := _int(f"/proc/sys/{p}")) is not None}
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        out["nofile"] = soft
    if (daemon := _daemon(daemon_pids)[1]) is not None:
        out["daemon_nofile"] = daemon
    out["bridge_ports"] = BRIDGE_PORTS
    out["memcg_ids"] = MEMCG_IDS
    if (keys := _key_users(os.geteuid())) is not None:
        out["maxkeys"], out["maxbytes"] = keys[1], keys[3]
    return {k: v for k, v in out.items() if v < 2**62}


def raise_nofile() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: a ramp holds a few descriptors per
    live instance. Returns (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard, hard
