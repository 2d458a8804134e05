"""cgroup v1 (and hybrid hosts, where the controllers are v1 hierarchies).

Each controller is its own hierarchy, so an instance is one directory per controller
(memory, cpu, pids), all named alike; a process joins by writing 0 (= "me") into the
cgroup.procs of each. Limits:
  memory -> memory.limit_in_bytes, and memory.memsw.limit_in_bytes where swap accounting
            exists (so the limit cannot be dodged by swapping)
  cpus   -> cpu.cfs_quota_us = cpus * cpu.cfs_period_us (the default 100 ms)
  pids   -> pids.max
  cpuset -> cpuset.cpus, in the cpuset hierarchy where one is mounted; every instance
            joins it as runc's do (the parent's CPUs when none are asked), since a v1
            cpuset cgroup takes no process while its cpus or mems are empty
  device rules (if asked) -> devices.deny "a", then one devices.allow write per rule,
            in a fourth hierarchy (devices) the process joins as well
"""

from __future__ import annotations

from pathlib import Path

from harness.core.cgroupfs import cgroup_procs as procs
from runtimes.ns.cgroups import PARENT, may_write
from runtimes.ns.cgroups._common import kill_procs, read_int_field, rmdir, write

TYPE_CHECKING = False  # (see cgroups/__init__.py: only mypy reads these)
if TYPE_CHECKING:
    from runtimes.limits import Limits

CONTROLLERS = ("memory", "cpu", "pids")
PERIOD_US = 100_000


def _mounts() -> dict[str, Path]:
    """controller -> mount point of its v1 hierarchy, from /proc/self/mountinfo."""
    out: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) < 3 or fields[0] != "cgroup":
            continue
        mountpoint = Path(left.split()[4])
        for opt in fields[2].split(","):
            out.setdefault(opt, mountpoint)
    return out


class V1Manager:
    def __init__(self, root: Path, mode: str = "v1", parent: str = PARENT,
                 every_controller: bool = False, device_rules: tuple[str, ...] = ()) -> None:
        self.mode = mode
        self.parent = parent
        self._swap_accounting: bool | None = None
        mounts = _mounts()
        # Prefer the real mount table; fall back to root/<controller> (tests use a fake tree).
        if not all(str(mounts.get(c, "")).startswith(str(root)) for c in CONTROLLERS):
            mounts = {c: root / c for c in (*CONTROLLERS, "devices")}
        devices = bool(device_rules) and (mounts.get("devices", root / "devices") /
                                          "devices.deny").exists()
        self.device_rules = device_rules if devices else ()
        self.device_problem = "no cgroup v1 devices hierarchy is mounted" \
            if device_rules and not devices else None
        self.controllers = (*CONTROLLERS, "devices") if devices else CONTROLLERS
        self.roots = {c: mounts[c] for c in self.controllers}
        self.cpuset_root = mounts.get("cpuset")
        # Hierarchies names()/destroy() look in: ours, or every mounted one.
        hierarchies = set(mounts.values()) if every_controller else \
            set(self.roots.values()) | ({self.cpuset_root} if self.cpuset_root else set())
        if every_controller and mode == "hybrid" and (root / "unified").is_dir():
            hierarchies.add(root / "unified")  # crun and runc make a cgroup there too
        self.hierarchies = sorted(hierarchies)

    def devices(self) -> str:
        return f"cgroup v1 devices: deny a; allow {', '.join(self.device_rules)}"

    def check(self) -> str | None:
        for c, p in self.roots.items():
            if not (p / "cgroup.procs").exists():
                return f"the cgroup v1 {c} controller is not mounted at {p}"
        return None

    def writable(self) -> bool:
        return all(may_write(r / self.parent) for r in self.roots.values())

    def _dir(self, controller: str, name: str) -> Path:
        return self.roots[controller] / self.parent / name

    def path(self, name: str) -> Path:
        return self._dir("memory", name)

    def create(self, name: str, limits: Limits) -> None:
        for c in self.controllers:
            self._dir(c, name).mkdir(parents=True)
        if self.device_rules:
            # A new cgroup copies its parent's list: deny everything, then allow the few.
            dev = self._dir("devices", name)
            write(dev / "devices.deny", "a")
            for rule in self.device_rules:
                write(dev / "devices.allow", rule)
        mem = self._dir("memory", name)
        if limits.memory is not None:
            write(mem / "memory.limit_in_bytes", str(limits.memory))
            if self._swap_accounting is None:  # the same for every cgroup: look once
                self._swap_accounting = (mem / "memory.memsw.limit_in_bytes").exists()
            if self._swap_accounting:
                swap = limits.memory if limits.swap is None else limits.swap
                write(mem / "memory.memsw.limit_in_bytes", str(swap))
        if limits.cpus is not None:
            # A new cgroup's cfs_period_us is the kernel default, 100 ms: only the quota.
            cpu = self._dir("cpu", name)
            write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * PERIOD_US))))
        if limits.pids is not None:
            write(self._dir("pids", name) / "pids.max", str(limits.pids))
        if self.cpuset_root is not None:
            d = self.cpuset_root / self.parent / name
            _cpuset_dir(d)
            if limits.cpuset is not None:
                write(d / "cpuset.cpus", limits.cpuset)
        elif limits.cpuset is not None:
            raise OSError("no cpuset cgroup hierarchy is mounted")

    def join_files(self, name: str) -> list[str]:
        cpuset = [self.cpuset_root / self.parent / name] if self.cpuset_root else []
        return [str(d / "cgroup.procs") for d in
                [*(self._dir(c, name) for c in self.controllers), *cpuset]]

    def pids(self, name: str) -> list[int]:
        return procs(self._dir("memory", name))

    def memory_usage(self, name: str) -> int | None:
        try:
            return int((self._dir("memory", name) / "memory.usage_in_bytes").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def oom_killed(self, name: str) -> bool:
        return read_int_field(self._dir("memory", name) / "memory.oom_control", "oom_kill") > 0

    def kill(self, name: str) -> None:
        kill_procs(self._dir("memory", name))

    def destroy(self, name: str) -> None:
        for h in self.hierarchies:
            rmdir(h / self.parent / name)

    def setup(self) -> None:
        # (the parent may be nested: cvbench-ns takes it from an OCI bundle's cgroupsPath)
        for c in self.controllers:
            (self.roots[c] / self.parent).mkdir(parents=True, exist_ok=True)
        if self.cpuset_root is not None:
            # Before any instance: a child holds a handle on every parent it will join
            # from the moment it is forked, before the runner makes its own cgroup.
            # Each level in turn: a cpuset cgroup's CPUs come from its parent's.
            d = self.cpuset_root
            for part in Path(self.parent).parts:
                d = d / part
                _cpuset_dir(d)

    def parents(self) -> list[Path]:
        return [h / self.parent for h in self.hierarchies if (h / self.parent).is_dir()]

    def names(self) -> list[str]:
        found: set[str] = set()
        for h in self.hierarchies:
            parent = h / self.parent
            if parent.is_dir():
                found.update(p.name for p in parent.iterdir() if p.is_dir())
        return sorted(found)


def _cpuset_dir(d: Path) -> None:
    """Make the cpuset cgroup `d` with its parent's CPUs and memory nodes: a v1 cpuset
    cgroup takes no process while either is empty."""
    d.mkdir(exist_ok=True)
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not (d / f).read_text().strip():
            write(d / f, (d.parent / f).read_text().strip())
