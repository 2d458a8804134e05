"""The cgroup filesystem, read with `os` alone: the host's cgroup mode, a cgroup's
processes.

A module of its own (hostinfo and probes.memory re-export these) for ns's cgroup
managers, which `cvbench-ns` loads in a new interpreter on every `create`, `delete` and
`kill --all`: the imports of hostinfo and of the memory probe (psutil, subprocess, json,
hashlib...) would cost each call more than its work.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # (typing costs a cvbench-ns call a few ms: only mypy reads these)
if TYPE_CHECKING:
    from pathlib import Path


def cgroup_mode(root: str = "/sys/fs/cgroup") -> str:
    """v2 (unified), hybrid (v1 controllers + a cgroup2 mount), or v1."""
    if os.path.exists(f"{root}/cgroup.controllers"):
        return "v2"
    if os.path.isdir(f"{root}/unified") and os.path.exists(f"{root}/unified/cgroup.procs"):
        return "hybrid"
    if os.path.isdir(f"{root}/memory") or os.path.isdir(f"{root}/cpu"):
        return "v1"
    return "none"


def cgroup_procs(path: Path) -> list[int]:
    """The pids in the cgroup `path` ([] if it does not exist)."""
    try:
        with open(f"{path}/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ValueError):
        return []
