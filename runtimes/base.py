"""The Runtime protocol: the only thing the orchestration talks to.

One module per backend implements it, and ends with a static check that mypy --strict
holds it to the protocol. `runtimes.registry.get(name)` finds them through the
"cvbench.runtimes" entry-point group. Every resource a backend creates carries the
prefix `cvbench-<run id>` (or the label `cvbench.run=<run id>`), so an interrupted run
can always be found and cleaned up by `leftovers()` / `gc()`.

Timestamps are `time.monotonic_ns()` of the host. A backend never reports a guest clock.
This module sits on the core layer only (harness.core): what a backend needs from the
orchestration (a run lock) is lent to it through `Hooks`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

from harness.core.errors import CleanupError, UsageError
from harness.core.records import Component
from runtimes.limits import Limits as Limits

if TYPE_CHECKING:
    from harness.core.image import Image

# Re-exported: the record backends report their parts with; the limits (limits.py).
__all__ = ["Component", "Limits"]

# What a backend records about itself: JSON values, typed.
Json = str | int | float | bool | None | Sequence["Json"] | Mapping[str, "Json"]
Kind = Literal["process", "container", "vm"]

NetworkMode = Literal["none", "bridge", "host", "macvlan", "ipvlan"]
NETWORK_MODES: tuple[str, ...] = ("none", "bridge", "host", "macvlan", "ipvlan")
# An interface of the driver on a parent link the run makes (runtimes/_vlan.py), never
# the host's uplink; the host reaches the instance through a shim on the same parent.
VLAN_MODES: tuple[str, ...] = ("macvlan", "ipvlan")
MountType = Literal["bind", "volume", "tmpfs"]
MOUNT_TYPES: tuple[str, ...] = ("bind", "volume", "tmpfs")

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


def run_of(name: str) -> str | None:
    """The run id in a resource name `cvbench-<run id>-<rest>`, or None for other names."""
    parts = name.split("-")
    return parts[1] if len(parts) >= 3 and name.startswith(PREFIX) else None


def state_dir() -> Path:
    """Where backends keep per-run state (instance dirs, volumes); one tree to clean."""
    return Path(os.environ.get("CVBENCH_STATE", "/var/lib/cvbench" if os.geteuid() == 0
                               else Path.home() / ".local/state/cvbench"))


@dataclass(frozen=True)
class Traits:
    """What a backend is, can do and reports about itself; recorded in every result.

    kind: "process" (no isolation), "container" or "vm": reports sort backends and test
    the seed claims (containers vs VMs) by it, never by name. A VM says how it is
    accelerated (`accel` "kvm" | "tcg"); under TCG `emulated` is True and every chart
    marks it. `not_applied`: the InstanceSpec parts this backend ignores ("limits",
    "network", "mounts", or one part: "limits.pids", "mounts.bind", "network.host");
    studies skip what would be a lie. `volume_formats`: the disk formats a volume can
    take, the first a plain name's, the others asked by naming the volume
    `<name>.<format>` (a VM: raw, qcow2). `protections`: the isolation measures applied
    (capabilities, seccomp, ...). `settings`: anything else worth recording (versions of
    its parts, how it maps the spec, the daemons' memory).
    """

    kind: Kind
    accel: str | None = None
    emulated: bool = False
    not_applied: frozenset[str] = frozenset()
    volume_formats: tuple[str, ...] = ()
    protections: tuple[str, ...] = ()
    settings: Mapping[str, Json] = field(default_factory=dict)

    def enforces(self, limit: str) -> bool:
        """Whether a limit ("cpus", "memory", "pids") asked in the spec is applied."""
        return not {"limits", f"limits.{limit}"} & self.not_applied

    def as_dict(self) -> dict[str, Json]:
        """The result file's backend metadata (the keys reports have always read)."""
        out: dict[str, Json] = {"kind": self.kind, **self.settings}
        if self.accel is not None:
            out.update(accel=self.accel, emulated=self.emulated)
        if self.not_applied:
            out["not_applied"] = sorted(self.not_applied)
        if self.volume_formats:
            out["volume_formats"] = list(self.volume_formats)
        if self.protections:
            out["protections"] = list(self.protections)
        return out


RLIMIT_NAMES = ("core", "nofile", "nproc", "memlock", "stack")  # as `ulimit`/--ulimit say
RLIM_INFINITY = -1  # "unlimited", as Docker's API and Python's resource module spell it


def cpu_list(cpuset: str) -> set[int]:
    """The CPUs of a cpuset list ("0-2,5" -> {0, 1, 2, 5}); ValueError if malformed."""
    out: set[int] = set()
    for part in cpuset.split(","):
        lo, _, hi = part.strip().partition("-")
        first, last = int(lo), int(hi or lo)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        out.update(range(first, last + 1))
    return out


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

    def as_dict(self) -> dict[str, Json]:
        return {"type": self.type, "target": self.target, "source": self.source,
                "readonly": self.readonly, "size": self.size}


@dataclass(frozen=True)
class InstanceSpec:
    """What to run: backend-neutral. Each backend documents how it maps these fields.

    argv is the whole command (the image's Entrypoint + Cmd, or the scenario's), run by
    cvbench's init (/bench/init argv...). env, workdir and user come resolved (the
    image's defaults with the scenario's overrides); `user` is numeric "uid:gid" ("" =
    root). `readiness` is the scenario's kind (harness.core.probes.serving): a backend
    only ever waits for the ready line or the exit; the orchestration probes services.
    New fields get defaults, so a backend that does not know one keeps working.
    """

    run_id: str
    name: str  # cvbench-<run id>-<n>; unique per instance
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = Limits()
    network: NetworkMode = "none"
    mounts: tuple[Mount, ...] = ()
    readiness: str = "marker"
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    workdir: str = "/"
    hostname: str = "cvbench"
    capture: bool = False  # keep the workload's stdout/stderr (bench exec), else discard it
    user: str = ""
    # A private network of the run (a stack's) instead of the backend's default bridge
    # (network "bridge" only): `cvbench-<run id>-<network_name>`, made by the first
    # instance that names it and removed with `Networks.remove_network` (or by gc when the
    # run ends). The instances on it reach each other by `hostname` and `aliases`.
    network_name: str = ""
    # Further private networks of the run it is also on (a compose service on several),
    # reached by the same names; its default route stays on `network_name`'s. A backend
    # that cannot join one instance to several refuses (NotApplicable), never joins one.
    more_networks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    # Commands will be run in it (`Exec.exec`): a VM then starts cvbench's guest agent,
    # which costs its boot a driver and a process; containers need nothing for it.
    agent: bool = False
    # Published ports: (host port, instance port), TCP, as `docker run -p` publishes
    # them: reachable at publish_address() on the host, forwarded by NAT to the
    # instance's own address (network bridge only).
    publish: tuple[tuple[int, int], ...] = ()

    @property
    def ready_line(self) -> bytes:
        return READY_PREFIX + self.nonce.encode()


def publish_address() -> str:
    """The host address published ports are bound to: the source address of the host's
    default route (not loopback: the kernel only NATs loopback traffic with
    route_localnet, a host-wide switch, so a client on the host goes to this address as
    a client elsewhere would). OSError on a host without a default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: a route lookup, nothing is sent
        return str(s.getsockname()[0])


def check_publish(backend: str, spec: InstanceSpec) -> None:
    """Published ports forward to the instance's own address: network bridge only."""
    if spec.publish and spec.network != "bridge":
        raise UsageError(f"{backend}: published ports need network bridge, not "
                         f"{spec.network!r}")


def check_networks(backend: str, spec: InstanceSpec) -> None:
    """Further networks come after a first one (network_name), never in its stead."""
    if spec.more_networks and not spec.network_name:
        raise UsageError(f"{backend}: more_networks {list(spec.more_networks)} without a "
                         "network_name to come after")


def uid_gid(user: str) -> tuple[int, int]:
    """InstanceSpec.user ("uid:gid", "" = root) as numbers."""
    uid, _, gid = user.partition(":")
    return (int(uid or 0), int(gid or 0))


@dataclass(eq=False, slots=True)
class Instance:
    """A created instance. Each backend subclasses it with its own typed handles (a
    process and its pipes, a container id, a domain) and gets them back with `own()`."""

    spec: InstanceSpec
    prepared: Prepared
    pids: list[int] = field(default_factory=list)
    ready_ns: int | None = None
    # How a Pool flavour made it: "slot" (taken from the pool), "cold" (the pool was
    # empty), "template" (libvirt:restore's pool was empty: cloned from its template
    # there and then); None for a backend without a pool.
    warm: str | None = None


InstanceT = TypeVar("InstanceT", bound=Instance)


def own(inst: Instance, cls: type[InstanceT]) -> InstanceT:
    """`inst` as the backend's own instance type (one backend never gets another's)."""
    if not isinstance(inst, cls):
        raise TypeError(f"{cls.__name__} expected, got {type(inst).__name__}")
    return inst


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
    extra: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True)
class Availability:
    """Whether a backend is usable here; if not, the exact reason and the fix.

    `versions`: the headline versions `bench doctor` shows (name -> what the tool says);
    `parts`: further components it runs on (the containerd and runc under a dockerd).
    `components` is both as one typed list, the same for every backend.
    """

    ok: bool
    reason: str = ""
    fix: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, str] = field(default_factory=dict)
    parts: tuple[Component, ...] = ()

    @property
    def components(self) -> tuple[Component, ...]:
        """Every component with its version, a name once (the headline's first)."""
        seen: dict[str, Component] = {}
        for c in (*(Component.parse(k, v) for k, v in self.versions.items()), *self.parts):
            seen.setdefault(c.name, c)
        return tuple(seen.values())


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
    details: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True)
class Leftover:
    """A resource a backend created and a dead run left behind."""

    backend: str
    kind: str  # container, image, cgroup, mount, link, dir, domain, ...
    name: str
    run_id: str | None


def remove_each(backend: str, found: Sequence[Leftover],
                remove: Callable[[Leftover], bool | None]) -> list[Leftover]:
    """gc()'s loop: remove every leftover, going on past a failure; the ones removed
    (`remove` returns False for one left on purpose, e.g. a shared directory another run
    uses again). Once all were tried, failures raise CleanupError naming each leftover
    and why: it is still there, and leftovers() lists it for the next `bench gc`."""
    removed: list[Leftover] = []
    failed: list[str] = []
    for item in found:
        try:
            if remove(item) is not False:
                removed.append(item)
        except Exception as e:  # the others are removed all the same; this one reported
            failed.append(f"{item.kind} {item.name}: {e}")
    if failed:
        raise CleanupError(backend, failed, list(removed))
    return removed


def rmtree(path: Path | str) -> None:
    """Remove a directory tree, gone already being fine; OSError if any of it is left
    (a tree half removed is still a leftover, never reported as removed)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


@runtime_checkable
class Runtime(Protocol):
    """What every backend implements. `stop` and `remove` are idempotent."""

    name: str

    def availability(self) -> Availability: ...

    def traits(self) -> Traits:
        """What it is and does, recorded in the result (see Traits)."""
        ...

    def prepare(self, image: Image) -> Prepared: ...

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance: ...

    def start(self, inst: Instance) -> None: ...

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        """Block until the ready line is seen; return its arrival time (monotonic ns)."""
        ...

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        """Block until the workload exits; how it ended. InstanceError if it still runs
        at the timeout; timeout 0 polls (a readiness probe asks whether the server is
        gone). Asked again after the exit, the same end."""
        ...

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        """Block until a line of the workload's output (stdout or stderr; a VM's console)
        matches `pattern`; return when the read that brought it returned (monotonic ns).
        Output that arrived earlier counts. Raises InstanceError if the output ends first,
        ReadyTimeout at the timeout."""
        ...

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
        or tap, or the VM's virtio-net) and for "macvlan" and "ipvlan" (on the run's
        segment, reached through the host's shim), None for "none" (unreachable from
        the host)."""
        ...

    def remove(self, inst: Instance) -> None: ...

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """Resources of runs not in `live_runs`."""
        ...

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """Remove what `leftovers()` finds; return what was removed. What could not be
        removed raises CleanupError once the rest is removed (remove_each)."""
        ...


@runtime_checkable
class Networks(Protocol):
    """A backend whose instances can share a private network of the run
    (`InstanceSpec.network_name`), on which they reach each other by name: a stack's."""

    def remove_network(self, run_id: str, name: str) -> None:
        """Remove the network `name` of `run_id` once no instance is on it (idempotent)."""
        ...


@runtime_checkable
class Exec(Protocol):
    """A backend that runs a further command inside a running instance, as `docker exec`
    does (a compose healthcheck; a service of a single-VM stack)."""

    def exec(self, inst: Instance, argv: Sequence[str], *, user: str = "",
             env: Mapping[str, str] | None = None, workdir: str = "/",
             timeout: float = 30.0, detach: bool = False) -> Exit:
        """Run `argv` in `inst` (its root, namespaces or guest) as `user` ("uid:gid", ""
        = root) with `env` (None: the instance's own); its exit status and output (stdout
        and stderr together in `stdout`, at most the last 4 KiB). `detach`: start it and
        return at once (code 0), its output kept in the instance. InstanceError if the
        command cannot be run at all or outlives `timeout`."""
        ...


@dataclass(frozen=True)
class Slot:
    """One prepared instance waiting in a pool, as the warm study reads its idle cost:
    the host processes it holds (their PSS), its cgroup (kernel memory, counted once),
    the namespaces it holds open, and the files it keeps on disk (a VM template's saved
    memory). A field a backend cannot tell is None, never 0."""

    pids: tuple[int, ...] = ()
    cgroup: str | None = None  # a path under /sys/fs/cgroup (v2) or the memory hierarchy
    namespaces: int | None = None
    disk_bytes: int | None = None
    details: Mapping[str, Json] = field(default_factory=dict)


@runtime_checkable
class Pool(Protocol):
    """A flavour that prepares instances ahead of the request, each technology's best
    start: a warm pool of ns slots (SOCK), containers created ahead by the engine, VMs
    restored from a template's saved memory. `create` takes a prepared slot for a spec
    the pool was filled for and makes a cold one when none is ready (the burst past the
    pool's size); the instance says which in `Instance.warm`. A slot is used once.

    A slot may have its own name and nonce, fixed when it was prepared (an engine's
    container is named at create and gets the ready line's nonce in its environment):
    the instance taken from it then carries them in `inst.spec` (the spec asked for with
    the slot's `name` and `nonce`), so callers read both from the instance, never from
    the spec they passed."""

    def fill(self, spec: InstanceSpec, prepared: Prepared, size: int) -> None:
        """Keep `size` slots ready for instances like `spec` (its argv, env, user,
        limits, network; not its name or nonce, which `create` sets per instance).
        Returns at once: slots are prepared in the background and refilled as they are
        taken. Filling again with another spec or size replaces the pool; size 0 empties
        it. Every slot is a resource of `spec.run_id` (labelled, found by gc)."""
        ...

    def ready(self) -> int:
        """How many slots are ready to be taken now. InstanceError (with the backend's
        reason) once the pool has given up filling (e.g. its daemon is gone), rather
        than a count that never grows."""
        ...

    def slots(self) -> list[Slot]:
        """The ready slots, for their idle cost (a template VM: one Slot with its
        saved memory's disk_bytes and no process)."""
        ...

    def drain(self) -> None:
        """Stop refilling and remove every slot (idempotent)."""
        ...


@dataclass(frozen=True)
class Replica:
    """One running copy of a replicated service, as the scale study reads it: where it
    runs (`node`: "" for this host, else the node's name), its own address
    ("host:port", reached directly, not through the front: for its access count), and
    its processes on this host (for PSS; empty on another node, where the study says
    so instead of counting 0)."""

    id: str
    node: str = ""
    address: str | None = None
    pids: tuple[int, ...] = ()
    details: Mapping[str, Json] = field(default_factory=dict)


@runtime_checkable
class Replicas(Protocol):
    """N copies of one service behind one front address (`bench run scale`): an
    orchestrator's service (`docker:swarm`: a swarm service and its routing mesh), or
    the scale study's own HAProxy front over a backend's instances. Made per run and
    labelled with its run id; `close` removes all of it, also after an error.

    Readiness is the caller's: `scale` and `update` return once the change is asked for
    (the orchestrator accepted it, the instances were started); the study times until
    the front answers from every replica."""

    def deploy(self, spec: InstanceSpec, prepared: Prepared, port: int) -> str:
        """Make the service with 0 replicas for instances like `spec` serving on `port`
        inside each replica; the front's address ("host:port") reached from this host,
        or "" when it has no front of its own here (docker:swarm without IPVS: no
        routing mesh): the caller then fronts the replicas' own `address`es itself
        (the scale study: the same HAProxy as for single instances), and the backend's
        traits say so."""
        ...

    def scale(self, n: int) -> None:
        """Ask for `n` replicas (up or down)."""
        ...

    def replicas(self) -> list[Replica]:
        """The replicas running now."""
        ...

    def update(self, prepared: Prepared) -> None:
        """Replace every replica by one of `prepared` (another image digest), rolling."""
        ...

    def close(self) -> None:
        """Remove the service, its front and what it made (idempotent)."""
        ...


@runtime_checkable
class ReplicaSets(Protocol):
    """A backend that replicates services itself (an orchestrator): the scale study
    uses its Replicas instead of its own HAProxy front over single instances."""

    def replica_set(self, run_id: str, name: str) -> Replicas:
        """A new, empty replicated service `name` of `run_id`."""
        ...


class RuntimeClass(Protocol):
    """What the registry loads from an entry point: a backend class, its flavours (a
    backend name is `<base>` or `<base>:<flavour>`) and its constructor."""

    flavours: tuple[str, ...]

    def __call__(self, flavour: str | None = None, *, hooks: Hooks = ...) -> Runtime: ...


@contextlib.contextmanager
def _unguarded(run_id: str, what: str) -> Iterator[None]:
    yield


@dataclass(frozen=True)
class Hooks:
    """What the orchestration lends a backend (DESIGN: passed in, never imported).

    hold_run(run_id, what): a context in which `run_id` counts as a live run, so that no
    concurrent `bench gc` removes what a backend creates under it outside a run (the
    libvirt KVM probe boots a VM of its own).
    """

    hold_run: Callable[[str, str], contextlib.AbstractContextManager[None]] = _unguarded


NO_HOOKS = Hooks()  # a backend used outside a run (tests, `bench doctor`)
