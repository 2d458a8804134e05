"""The Runtime protocol: the only thing the runner talks to.

One module per backend implements it; `runtimes.get(name)` finds them through the
"cvbench.runtimes" entry-point group. Every resource a backend creates carries the
prefix `cvbench-<run id>` (or the label `cvbench.run=<run id>`), so an interrupted run
can always be found and cleaned up by `leftovers()` / `gc()`.

Timestamps are `time.monotonic_ns()` of the host. A backend never reports a guest clock.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from harness.core.image import Image

NetworkMode = Literal["none", "bridge", "host"]
NETWORK_MODES: tuple[str, ...] = ("none", "bridge", "host")
MountType = Literal["bind", "volume", "tmpfs"]
MOUNT_TYPES: tuple[str, ...] = ("bind", "volume", "tmpfs")
Readiness = Literal["marker", "exit"]
READINESS: tuple[str, ...] = ("marker", "exit")

READY_PREFIX = b"CVBENCH-READY "
PREFIX = "cvbench-"
RUN_LABEL = "cvbench.run"
_RUN_ID = re.compile(r"^[0-9a-z]{8,32}$")


def new_run_id() -> str:
    """A short id that is safe in names of cgroups, links, domains and containers."""
    return secrets.token_hex(5)


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return run_id


def not_applied(rt: Runtime) -> set[str]:
    """InstanceSpec fields a backend ignores (its metadata's "not_applied": the host
    backend applies no limits, network or mounts; finer entries like "limits.pids",
    "mounts.bind" or "network.host" name one part); studies skip what would be a lie.

    Other metadata keys the studies read: "volume_formats", the disk formats a volume
    can take, the first being a plain name's and the others asked by naming the volume
    `<name>.<format>` (a VM: ["raw", "qcow2"]).
    """
    return set(rt.metadata().get("not_applied", ()))


def state_dir() -> Path:
    """Where backends keep per-run state (instance dirs, volumes); one tree to clean."""
    return Path(os.environ.get("CVBENCH_STATE", "/var/lib/cvbench" if os.geteuid() == 0
                               else Path.home() / ".local/state/cvbench"))


@dataclass(frozen=True)
class Limits:
    """Resource limits. cpus: CPU time in cores (quota/period); memory, in bytes; pids."""

    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "pids": self.pids}


@dataclass(frozen=True)
class Mount:
    """A mount into the instance.

    bind: `source` is a host path. volume: `source` is a volume name, a directory the
    harness owns under its state dir, kept across instances. tmpfs: `size` in bytes.
    """

    type: MountType
    target: str
    source: str | None = None
    readonly: bool = False
    size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "target": self.target, "source": self.source,
                "readonly": self.readonly, "size": self.size}


@dataclass(frozen=True)
class InstanceSpec:
    """What to run: backend-neutral. Each backend documents how it maps these fields."""

    run_id: str
    name: str  # cvbench-<run id>-<n>; unique per instance
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = Limits()
    network: NetworkMode = "none"
    mounts: tuple[Mount, ...] = ()
    readiness: Readiness = "marker"
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    workdir: str = "/"
    hostname: str = "cvbench"
    capture: bool = False  # keep the workload's stdout/stderr (bench exec), else discard it

    @property
    def ready_line(self) -> bytes:
        return READY_PREFIX + self.nonce.encode()


@dataclass
class Instance:
    """A created instance. `handle` is the backend's own object (pid, container, domain)."""

    spec: InstanceSpec
    prepared: Prepared
    handle: Any = None
    pids: list[int] = field(default_factory=list)
    ready_ns: int | None = None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exit:
    """How an instance ended. `t_ns` is when the harness saw the exit (host clock)."""

    code: int
    t_ns: int
    oom_killed: bool = False
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.oom_killed


@dataclass(frozen=True)
class Stats:
    """Memory of one instance: every host process that belongs to it, and its cgroup.

    `extra` keys starting with "guest_" (numbers, bytes) are the guest's own view of a VM:
    guest_used (what the guest's kernel counts as used: MemTotal - MemAvailable, e.g.
    the balloon's available - usable) and guest_total (MemTotal), plus any others
    (guest_ram: RAM given to it); the memory study records each as `memory.<key>`.
    """

    pids: tuple[int, ...]
    pss: int
    uss: int
    rss: int
    cgroup: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Availability:
    """Whether a backend is usable here; if not, the exact reason and the fix."""

    ok: bool
    reason: str = ""
    fix: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """The image made usable by one backend; `ref` is the backend's name for it.

    `footprint`: bytes on disk, by name; the disk study records each as `disk.<key>`.
    "image" is the image as this backend stores it (what `du -sb`, `docker system df -v`
    or `qemu-img info`'s disk size says); where the store shares data between images,
    "image.shared" and "image.unique" split it; a VM disk adds "image.virtual" (its
    virtual size), and more keys for more files (e.g. "qcow2", "qcow2.virtual").
    """

    image: Image
    backend: str
    ref: str
    footprint: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Leftover:
    """A resource a backend created and a dead run left behind."""

    backend: str
    kind: str  # container, image, cgroup, mount, link, dir, domain, ...
    name: str
    run_id: str | None


@runtime_checkable
class Runtime(Protocol):
    """What every backend implements. `stop` and `remove` are idempotent."""

    name: str

    def availability(self) -> Availability: ...

    def metadata(self) -> dict[str, Any]:
        """Versions and settings recorded in the result (and merged phases, if any).

        Reports read `kind` from here — "process" (no isolation), "container" or "vm" —
        to sort backends and test the seed claims (containers vs VMs) without knowing any
        backend by name; a VM also records `accel` ("kvm" | "tcg") and, under TCG,
        `emulated: True`, which every chart marks.
        """
        ...

    def prepare(self, image: Image) -> Prepared: ...

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance: ...

    def start(self, inst: Instance) -> None: ...

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        """Block until the ready line is seen; return its arrival time (monotonic ns)."""
        ...

    def wait_exit(self, inst: Instance, timeout: float) -> Exit: ...

    def stats(self, inst: Instance) -> Stats: ...

    def stop(self, inst: Instance, grace: float = 2.0) -> None: ...

    def daemons(self) -> dict[str, list[int]]:
        """Host pids of the engine's own long-lived processes (dockerd + containerd, the
        podman service, libvirtd...), by name; {} for daemonless backends. Their memory
        is reported separately from the instances', never hidden in them."""
        ...

    def disk_usage(self, inst: Instance) -> int | None:
        """Bytes the instance itself occupies on disk beyond the shared image (its
        writable layer / upper dir / disk overlay), or None where it has none."""
        ...

    def address(self, inst: Instance) -> str | None:
        """An IP address at which the host reaches sockets the instance listens on:
        127.0.0.1 for network "host", the instance's own address for "bridge" (its veth
        or tap, or the VM's virtio-net), None for "none" (unreachable from the host)."""
        ...

    def remove(self, inst: Instance) -> None: ...

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """Resources of runs not in `live_runs`."""
        ...

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """Remove what `leftovers()` finds; return what was removed."""
        ...
