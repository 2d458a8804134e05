"""cgroup v2 (unified hierarchy).

One directory per instance under /sys/fs/cgroup/cvbench; the controllers must be enabled
in the parents' cgroup.subtree_control first (done once, in check/create). Limits:
  memory -> memory.max, and memory.swap.max = 0 where it exists
  cpus   -> cpu.max = "<cpus * 100000> 100000"
  pids   -> pids.max
  cpuset -> cpuset.cpus (the cpuset controller delegated on first use)
  device rules (if asked) -> an eBPF device program generated from them (devices_bpf.py),
            loaded once per process and attached to each instance's cgroup at create,
            before any process is in it
A process joins by writing 0 into cgroup.procs (or is cloned into it: clone3 with
CLONE_INTO_CGROUP, ns:intocgroup); cgroup.kill (Linux 5.14+) kills them all.

Rootless, the tree is the one systemd delegated to the user (`delegated()`: this process's
own cgroup, e.g. a `systemd-run --user -p Delegate=yes` unit under user@UID.service):
the cvbench parent goes there, and, as cgroup v2 lets a cgroup that hands controllers to
its children hold no process of its own (the root alone is exempt), the processes of that
cgroup first move into a leaf beside it, `runner` (what systemd's DelegateSubgroup= and
crun do). Without a delegated tree a rootless user has no cgroup it may write: ns then runs
without limits and says so.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.core.cgroupfs import cgroup_procs as procs
from runtimes.ns.cgroups import PARENT, may_write
from runtimes.ns.cgroups._common import kill_procs, read_int_field, rmdir, write

TYPE_CHECKING = False  # (see cgroups/__init__.py: only mypy reads these)
if TYPE_CHECKING:
    from runtimes.limits import Limits

CONTROLLERS = ("memory", "cpu", "pids")
RUNNER_LEAF = "runner"  # in a delegated subtree: where the runner's own processes go
PERIOD_US = 100_000


class V2Manager:
    mode = "v2"

    def __init__(self, root: Path, parent: str = PARENT,
                 device_rules: tuple[str, ...] = (), delegated: bool = False) -> None:
        self.root = root
        self.parent = root / parent
        self.delegated = delegated  # root is a subtree delegated to this user
        self._enabled = False
        self.device_rules: tuple[str, ...] = ()
        self.device_problem: str | None = None
        self._program = -1
        if device_rules:
            # (imported only here, with ctypes: cvbench-ns delete and kill have no rules)
            from runtimes.ns.cgroups import devices_bpf

            # Loaded here, once (the kernel's verifier runs before any timing): whether
            # this kernel and this process may have a device program at all.
            try:
                self._program = devices_bpf.loaded(device_rules)
                self.device_rules = device_rules
            except OSError as e:
                self.device_problem = f"the kernel refused the eBPF device program: {e.strerror}"

    def devices(self) -> str:
        from runtimes.ns.cgroups import devices_bpf

        n = len(devices_bpf.program(self.device_rules)) // 8
        return (f"eBPF allow-list (a BPF_PROG_TYPE_CGROUP_DEVICE program of {n} "
                "instructions attached to each instance's cgroup): deny a; allow "
                + ", ".join(self.device_rules))

    def check(self) -> str | None:
        try:
            have = set((self.root / "cgroup.controllers").read_text().split())
        except OSError as e:
            return f"cannot read {self.root}/cgroup.controllers: {e.strerror}"
        missing = [c for c in CONTROLLERS if c not in have]
        if missing:
            return f"cgroup v2 controllers not available at {self.root}: {', '.join(missing)}"
        return None

    def writable(self) -> bool:
        return may_write(self.parent)

    def _enable(self) -> None:
        """Delegate memory, cpu and pids to the cvbench subtree (once per process)."""
        if self._enabled:
            return
        if self.delegated:
            self._vacate()
        self.parent.mkdir(exist_ok=True)
        want = " ".join(f"+{c}" for c in CONTROLLERS)
        for d in (self.root, self.parent):
            have = set((d / "cgroup.subtree_control").read_text().split())
            if not set(CONTROLLERS) <= have:
                write(d / "cgroup.subtree_control", want)
        self._enabled = True

    def _vacate(self) -> None:
        """Move the delegated cgroup's own processes (this runner and what runs beside
        it in its unit) into the leaf `runner`: the cgroup may then enable controllers
        for its children (the no-internal-process rule)."""
        pids = procs(self.root)
        if not pids:
            return
        leaf = self.root / RUNNER_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                write(leaf / "cgroup.procs", str(pid))

    def path(self, name: str) -> Path:
        return self.parent / name

    def create(self, name: str, limits: Limits) -> None:
        self._enable()
        d = self.path(name)
        d.mkdir()
        if self.device_rules:
            from runtimes.ns.cgroups import devices_bpf

            devices_bpf.attach(self._program, d)
        if limits.memory is not None:
            write(d / "memory.max", str(limits.memory))
            if (d / "memory.swap.max").exists():
                write(d / "memory.swap.max", "0")
        if limits.cpus is not None:
            write(d / "cpu.max", f"{max(1000, int(limits.cpus * PERIOD_US))} {PERIOD_US}")
        if limits.pids is not None:
            write(d / "pids.max", str(limits.pids))
        if limits.cpuset is not None:
            for p in (self.root, self.parent):
                if "cpuset" not in (p / "cgroup.subtree_control").read_text().split():
                    write(p / "cgroup.subtree_control", "+cpuset")
            write(d / "cpuset.cpus", limits.cpuset)

    def join_files(self, name: str) -> list[str]:
        return [str(self.path(name) / "cgroup.procs")]

    def pids(self, name: str) -> list[int]:
        return procs(self.path(name))

    def memory_usage(self, name: str) -> int | None:
        try:
            return int((self.path(name) / "memory.current").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def oom_killed(self, name: str) -> bool:
        return read_int_field(self.path(name) / "memory.events", "oom_kill") > 0

    def kill(self, name: str) -> None:
        d = self.path(name)
        if (d / "cgroup.kill").exists():
            try:
                write(d / "cgroup.kill", "1")
            except FileNotFoundError:
                return
        kill_procs(d)

    def destroy(self, name: str) -> None:
        rmdir(self.path(name))

    def setup(self) -> None:
        self._enabled = False  # gc may have removed the parent since: check again
        self._enable()

    def parents(self) -> list[Path]:
        return [self.parent] if self.parent.is_dir() else []

    def names(self) -> list[str]:
        if not self.parent.is_dir():
            return []
        return sorted(p.name for p in self.parent.iterdir() if p.is_dir())


def delegated(mount: Path, cgroup_file: str = "/proc/self/cgroup") -> Path | None:
    """This process's own cgroup (or the one its `runner` leaf sits in) when it is a
    subtree this user may manage: it owns the directory and may write its
    cgroup.subtree_control and cgroup.procs, as systemd arranges for a unit with
    Delegate=yes (man systemd.resource-control: "Delegation"). None otherwise."""
    try:
        with open(cgroup_file) as f:
            own = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if own is None or own == "/":
        return None
    d = mount / own.lstrip("/")
    if d.name == RUNNER_LEAF:  # vacated by an earlier manager in this process
        d = d.parent
    try:
        mine = d.stat().st_uid == os.geteuid()
    except OSError:
        return None
    ok = all(os.access(d / f, os.W_OK) for f in ("cgroup.subtree_control", "cgroup.procs"))
    return d if mine and ok else None
