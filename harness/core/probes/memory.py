"""Memory of an instance: PSS, USS and RSS of its host processes, and its cgroup usage.

PSS (proportional set size) charges each shared page to the processes sharing it in
equal parts, so the PSS of all instances adds up to what they really cost together; USS
is what freeing the instance would give back. Both come from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcMemory:
    pss: int = 0
    uss: int = 0
    rss: int = 0

    def __add__(self, other: ProcMemory) -> ProcMemory:
        return ProcMemory(self.pss + other.pss, self.uss + other.uss, self.rss + other.rss)


def smaps_rollup(pid: int) -> ProcMemory:
    """One process's memory; zeros if it is gone (it may exit while we read)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[key] = int(parts[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ProcMemory()
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return ProcMemory(pss=fields.get("Pss", 0), uss=uss, rss=fields.get("Rss", 0))


def processes_memory(pids: Iterable[int]) -> ProcMemory:
    total = ProcMemory()
    for pid in set(pids):
        total = total + smaps_rollup(pid)
    return total


def _parents() -> dict[int, int]:
    """pid -> ppid for every process (field 4 of /proc/PID/stat, after the comm)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (kernels without CONFIG_PROC_CHILDREN included)."""
    kids: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        kids.setdefault(parent, []).append(child)
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(kids.get(seen[i], []))
        i += 1
    return seen


def cgroup_procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def cgroup_usage(path: Path) -> int | None:
    """Bytes charged to a memory cgroup (v2 memory.current, v1 memory.usage_in_bytes)."""
    for name in ("memory.current", "memory.usage_in_bytes"):
        try:
            return int((path / name).read_text())
        except (FileNotFoundError, ValueError):
            continue
    return None


def pids_of_cmdline(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (daemons: dockerd, libvirtd)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in cmd:
            out.append(int(entry))
    return out


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
