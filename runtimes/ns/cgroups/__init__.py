"""cgroup managers: one protocol, one module per cgroup version, a factory that looks.

Like runc's libcontainer/cgroups/manager/new.go choosing fs/ (v1) or fs2/ (v2): `new()`
reads the host's mode (v2: /sys/fs/cgroup is cgroup2 with controllers; v1 or hybrid: the
controllers are v1 hierarchies, whatever the empty cgroup2 at unified/ holds) and
returns the manager that can enforce limits there.

Every cgroup lives under a `cvbench` parent and is named `cvbench-<run id>-<n>`.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.core.cgroupfs import cgroup_mode

PARENT = "cvbench"

# Only mypy reads the protocol: cvbench-ns loads this package in a new interpreter on
# each `delete` and `kill --all`, where typing and dataclasses (Limits) would cost more
# than the call's work.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from runtimes.limits import Limits

    class Manager(Protocol):
        mode: str
        device_rules: tuple[str, ...]  # the device allow-list create() applies; () for none
        device_problem: str | None  # why the rules asked for are not applied (None: they are)

        def devices(self) -> str:
            """How create() applies device_rules, for the protection list."""
            ...

        def check(self) -> str | None:
            """None when usable; else the reason (a missing controller, not writable...)."""
            ...

        def writable(self) -> bool:
            """Whether this user may make the cgroups: the parent (or, before setup(), the
            root it goes under) is writable in every hierarchy. Root's is; a rootless user's
            only where the tree was delegated to it."""
            ...

        def create(self, name: str, limits: Limits) -> None:
            """Make the cgroup and write its limits (before any process joins)."""
            ...

        def join_files(self, name: str) -> list[str]:
            """Files a process writes "0" into to join the cgroup (one per hierarchy)."""
            ...

        def path(self, name: str) -> Path:
            """The cgroup's directory in the memory hierarchy (for usage and procs)."""
            ...

        def pids(self, name: str) -> list[int]: ...

        def memory_usage(self, name: str) -> int | None: ...

        def oom_killed(self, name: str) -> bool: ...

        def kill(self, name: str) -> None:
            """SIGKILL every process in the cgroup."""
            ...

        def destroy(self, name: str) -> None:
            """Remove the cgroup (idempotent; kills what is left first)."""
            ...

        def setup(self) -> None:
            """Make the parent cgroups (idempotent; once per run, before any instance)."""
            ...

        def parents(self) -> list[Path]:
            """The existing parent directories (one per hierarchy); gc removes them once empty
            and no run is going."""
            ...

        def names(self) -> list[str]:
            """Names of every cgroup under the cvbench parent (for gc)."""
            ...


def new(root: str | Path = "/sys/fs/cgroup", parent: str = PARENT,
        every_controller: bool = False, device_rules: tuple[str, ...] = ()) -> Manager:
    """The manager for this host's cgroup mode. `parent` is the directory the cgroups
    live in; `every_controller` (v1) makes names()/destroy() cover every mounted
    hierarchy, for cgroups another runtime (runc, crun) made in all of them.
    `device_rules` ("c 1:3 rwm"...): the only devices an instance may open or make,
    after a "deny a": in the v1 devices controller, or on v2 as an eBPF device program
    (devices_bpf.py). Where neither can be had (no devices hierarchy; a kernel that
    refuses the program) the manager's `device_rules` is (), its `device_problem` says
    why, and the caller must do without."""
    root = Path(root)
    mode = cgroup_mode(str(root))
    if mode == "v2":
        from runtimes.ns.cgroups.v2 import V2Manager, delegated

        if os.geteuid() != 0 and (own := delegated(root)) is not None:
            return V2Manager(own, parent, device_rules, delegated=True)
        return V2Manager(root, parent, device_rules)
    from runtimes.ns.cgroups.v1 import V1Manager

    return V1Manager(root, mode, parent, every_controller, device_rules)


def favordynmods() -> bool:
    """Whether cgroup migrations skip their RCU wait (a cgroup2 mount with favordynmods,
    see scripts/provision.d/25-ns.sh): every container start moves a task into a cgroup,
    so the host's setting is recorded with the results."""
    try:
        with open("/proc/self/mounts") as f:
            return any(" cgroup2 " in line and "favordynmods" in line for line in f)
    except OSError:
        return False


def may_write(directory: Path) -> bool:
    """`directory` (or, if it does not exist yet, its parent) takes new entries from us."""
    d = directory if directory.exists() else directory.parent
    return os.access(d, os.W_OK | os.X_OK)
