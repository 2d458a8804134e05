"""Memory of an instance: PSS, USS and RSS of its host processes, and its cgroup usage.

PSS (proportional set size) charges each shared page to the processes sharing it in
equal parts, so the PSS of all instances adds up to what they really cost together; USS
is what freeing the instance would give back. Both come from /proc/PID/smaps_rollup,
read here: psutil's memory_full_info() gives the same figures 8x slower (1.6 ms against
0.2 ms for 50 processes on this machine), and a density ramp reads every instance at
every step. Finding processes (children, command lines, names) is psutil's.

A figure that cannot be read is never a zero: a process the harness may not read raises
Unreadable. A process that exited while we read costs nothing any more (it adds 0), but
a reading in which every process had gone is no reading (Unreadable). Daemons are found
by the pid that their socket, systemd unit or pid file names (`daemon_pid`), never by a
process name that any process can take.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.core.cgroupfs import cgroup_procs as cgroup_procs
from harness.core.errors import Unreadable


@dataclass(frozen=True)
class ProcMemory:
    pss: int = 0
    uss: int = 0
    rss: int = 0

    def __add__(self, other: ProcMemory) -> ProcMemory:
        return ProcMemory(self.pss + other.pss, self.uss + other.uss, self.rss + other.rss)


def smaps_rollup(pid: int) -> ProcMemory | None:
    """One process's memory; None if it is gone (it may exit while we read). Unreadable
    if it may not be read (a zero would be taken for a reading)."""
    fields: dict[str, int] = {}
    path = f"/proc/{pid}/smaps_rollup"
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[key] = int(parts[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError as e:
        raise Unreadable(f"{path}: {e.strerror}: its memory cannot be read") from e
    # (A kernel thread's file is empty: it has no user memory, truly 0.)
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return ProcMemory(pss=fields.get("Pss", 0), uss=uss, rss=fields.get("Rss", 0))


def processes_memory(pids: Iterable[int]) -> ProcMemory:
    """The processes' memory summed; zeros for no process at all (a daemonless backend's
    daemons). Unreadable when processes were given but every one had gone."""
    pids = set(pids)
    read = [m for m in map(smaps_rollup, pids) if m is not None]
    if pids and not read:
        raise Unreadable(f"no process of {sorted(pids)[:8]} is left to read: they exited")
    total = ProcMemory()
    for m in read:
        total = total + m
    return total


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it: from /proc/PID/task/TID/children where the
    kernel has them (CONFIG_PROC_CHILDREN: a few reads), else psutil, which builds the
    tree from every process's parent (a scan of the host per call: seconds per density
    measurement at hundreds of instances)."""
    out, todo = [pid], [pid]
    try:
        while todo:
            p = todo.pop()
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
        return out
    except FileNotFoundError as e:
        if e.filename and str(e.filename).endswith("/children"):  # no CONFIG_PROC_CHILDREN
            try:
                return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
            except psutil.NoSuchProcess:
                pass
        return out  # (a process exited while we read: what was found)
    except PermissionError as e:  # a partial tree would understate the instance
        raise Unreadable(f"the processes below {pid}: {e}") from e
    except (ProcessLookupError, ValueError):
        return out


def cgroup_usage(path: Path) -> int | None:
    """Bytes charged to a memory cgroup (v2 memory.current, v1 memory.usage_in_bytes)."""
    for name in ("memory.current", "memory.usage_in_bytes"):
        try:
            return int((path / name).read_text())
        except (FileNotFoundError, ValueError):
            continue
    return None


# cgroup v2's memory.stat keys of kernel memory, for kernels older than its "kernel" key
V2_KERNEL = ("kernel_stack", "pagetables", "percpu", "sock", "slab")


def cgroup_kernel(path: Path) -> int | None:
    """Kernel memory charged to a memory cgroup (its slabs, kernel stacks, page tables):
    v1 memory.kmem.usage_in_bytes, v2 memory.stat's "kernel" (or the sum of its kernel
    parts on kernels before 5.18); None where the cgroup says nothing of it."""
    try:
        return int((path / "memory.kmem.usage_in_bytes").read_text())
    except (FileNotFoundError, ValueError):
        pass
    try:
        lines = (path / "memory.stat").read_text().splitlines()
    except FileNotFoundError:
        return None
    stat = {k: int(v) for k, _, v in (line.partition(" ") for line in lines) if v.isdigit()}
    if "kernel" in stat:
        return stat["kernel"]
    if "slab" in stat and "kernel_stack" in stat:  # a v2 file, without "kernel" yet
        return sum(stat.get(k, 0) for k in V2_KERNEL)
    return None  # v1's memory.stat has no kernel figure


def _alive(pid: int | None) -> int | None:
    return pid if pid and pid > 1 and psutil.pid_exists(pid) else None


def socket_peer(path: str) -> int | None:
    """The pid of the process that listens on the unix socket `path` (SO_PEERCRED of a
    connection to it: the credentials of whoever called listen()); None if nothing
    answers, or if PID 1 listens (systemd's socket activation: the service is another
    process, its unit's MainPID)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(path)
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                 struct.calcsize("3i"))
    except OSError:
        return None
    return _alive(struct.unpack("3i", creds)[0])


def unit_main_pid(unit: str) -> int | None:
    """systemd's MainPID of `unit`; None where systemd is not PID 1 or the unit does not
    run."""
    if not Path("/run/systemd/system").is_dir():
        return None
    try:
        out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", unit],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _alive(int(out.strip())) if out.strip().isdigit() else None


def pid_file(path: str) -> int | None:
    """The live process a pid file names; None without the file or the process."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return _alive(int(text)) if text.isdigit() else None


def daemon_pid(sockets: Iterable[str] = (), units: Iterable[str] = (),
               pidfiles: Iterable[str] = ()) -> int | None:
    """A daemon's pid, by the first source that names a live process: the process that
    listens on one of its sockets, its systemd unit's MainPID, its pid file."""
    for pid in (*map(socket_peer, sockets), *map(unit_main_pid, units),
                *map(pid_file, pidfiles)):
        if pid is not None:
            return pid
    return None


def pids_of(name: str, needle: str = "") -> list[int]:
    """Processes whose command name is `name` (compared as the kernel keeps it, its first
    15 characters: psutil completes a cut name from the command line) and whose command
    line contains `needle` (one container's shim, by its container id; a daemon is found
    by daemon_pid)."""
    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if (p.info["name"] or "")[:15] == name[:15]
            and needle in " ".join(p.info["cmdline"] or ())]


def memory_cgroup(pid: int) -> Path | None:
    """The memory cgroup of `pid`: the v1 memory controller's directory, else the v2 one."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        if ctrls == "":
            v2 = path
    if v2 is not None and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Path("/sys/fs/cgroup") / v2.lstrip("/")
    return None
