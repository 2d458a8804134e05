"""Docker and Podman through one implementation: the docker SDK's low-level APIClient.

Both engines speak Docker's Engine API on a unix socket (dockerd natively, Podman's REST
service through its "compat" endpoints), so one class drives both; `runtimes/docker.py`
and `runtimes/podman.py` only say where the socket is, what the daemons are called, how
a container's shim is found and how its exit is awaited.

Mapping of the InstanceSpec to the Engine API (POST /containers/create):
  argv, env        -> Entrypoint ["/bench/init"], Cmd argv; Env, plus CVBENCH_NONCE
  workdir/hostname -> WorkingDir, Hostname
  user             -> User ("uid:gid"; unset: root)
  limits.cpus      -> HostConfig.NanoCpus = cpus * 1e9 (`--cpus`: CFS quota per 100 ms)
  limits.memory    -> HostConfig.Memory and MemorySwap, both the limit (no swap: as `ns`
                      writes memory.limit_in_bytes and memory.memsw.limit_in_bytes)
  limits.pids      -> HostConfig.PidsLimit
  limits.rlimits   -> HostConfig.Ulimits (unset ones: the daemon's, inherited)
  network          -> HostConfig.NetworkMode none | host | bridge (the engine's default
                      bridge: docker0, or Podman's netavark "podman" network)
  network macvlan, -> a network of that driver, `cvbench-<run id>-<engine>-<mode>`
          ipvlan     (labelled with the run, made on first use) on the run's own parent
                      link with the run's /24 (runtimes/_vlan.py: a veth pair, never the
                      host's uplink, and the host's shim holding the gateway address);
                      docker: -o parent=, macvlan_mode=bridge | ipvlan_mode=l2; Podman:
                      the same parent (its network_interface), mode=bridge | l2. An
                      engine without the driver (Podman 4.3's netavark has no ipvlan)
                      makes the cell not applicable
  network_name     -> a user-defined bridge network `cvbench-<run id>-<name>` (labelled
                      with the run, made on first use), the container on it with
                      `aliases` (and its hostname) answered by the engine's DNS
                      (dockerd's embedded resolver; Podman's aardvark-dns)
  more_networks    -> the same networks, the container connected to each before it starts
                      (POST /networks/{id}/connect with the same aliases)
  publish          -> ExposedPorts + HostConfig.PortBindings on publish_address() (`-p
                      ADDR:HOST:PORT`: the engine's NAT, and its proxy where it runs one)
  limits.cpuset    -> HostConfig.CpusetCpus (`--cpuset-cpus`)
  mounts bind      -> Mount{Type: bind, Source, Target, ReadOnly}
  mounts volume    -> Mount{Type: volume}; the engine volume is `cvbench-<run id>-<name>`,
                      labelled with the run, created on first use and kept for the run
                      (removed by `bench gc` once the run is over)
  mounts tmpfs     -> Mount{Type: tmpfs, TmpfsOptions.SizeBytes}
  flavour          -> HostConfig.Runtime (docker:crun, docker:runsc); Podman ignores
                      it, so podman:runc is a second service whose default is runc;
                      `precreated` is no OCI runtime: the engine's default with a pool
                      of containers created ahead (EnginePool, below)
  every container  -> Name = the instance name (cvbench-<run id>-<n>), label
                      cvbench.run=<run id>
The image is imported once per digest as `cvbench/<name>:<digest[:12]>` with the labels
cvbench.digest=sha256:<digest> and cvbench.name, ENTRYPOINT /bench/init; its only
layer's diff_id must equal sha256:<digest> (an uncompressed tar is stored as it is), and
`prepare` refuses an image whose layer does not.

Phases (no phase is merged):
  create = POST /containers/create + the attach (hijacked) connection, so the ready line
           cannot be missed; Podman initializes the container (conmon + OCI create) when
           an attach arrives, Docker does it in start
  start  = POST /containers/{id}/start
  ready  = the ready line arrives on the attach stream (host monotonic clock)
  exit   = the attach stream ends and the engine's wait call returns the exit status
           (the engine's word, not an earlier hint: timestamped when wait returns)
  remove = DELETE /containers/{id}?force=1
A non-zero status is followed by an inspect for OOMKilled (and, for a SIGKILL under a
memory limit the engine did not flag, the kernel log: see kernel_oom_killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import select
import shutil
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import docker
import requests
from docker.types import IPAMConfig, IPAMPool, Ulimit
from docker.types import Mount as DockerMount
from dockerfile_parse import DockerfileParser

from harness.core.errors import (
    BackendUnavailable,
    BadImage,
    CleanupError,
    ImageError,
    InstanceError,
    NotApplicable,
    Unreadable,
)
from harness.core.image import PATH_ENV, EngineBuild, Image
from harness.core.probes import memory
from runtimes import _oci_host, _proc, _vlan
from runtimes._oci_host import PROVISION
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    RUN_LABEL,
    VLAN_MODES,
    Availability,
    Component,
    Exit,
    Hooks,
    Instance,
    InstanceSpec,
    Json,
    Leftover,
    Prepared,
    Slot,
    Stats,
    Traits,
    check_networks,
    check_publish,
    own,
    publish_address,
    remove_each,
    run_of,
    state_dir,
)

DIGEST_LABEL = "cvbench.digest"
PRECREATED = "precreated"  # the flavour with a pool of containers created ahead
NAME_LABEL = "cvbench.name"
_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class AttachStream(_proc.Stream):
    """A container's stdout, read from the engine's attach connection; stderr goes to `err`.

    Without a tty the engine multiplexes both streams on one connection: each chunk comes
    after an 8-byte header (stream id: 1 stdout, 2 stderr; three zero bytes; big-endian
    length). It is a `_proc.Stream`, so `_proc.wait_line` reads the ready line from it
    exactly as it does from a pipe.
    """

    def __init__(self, attached: Any, keep_all: bool) -> None:
        # APIClient.attach_socket returns, on a unix socket, the SocketIO under the HTTP
        # response; the socket itself is under it.
        self.io = attached
        sock = getattr(attached, "_sock", attached)
        if not isinstance(sock, socket.socket):
            raise InstanceError(f"unexpected attach socket type {type(attached).__name__}")
        sock.setblocking(False)
        super().__init__(sock.fileno(), keep_all)
        self.sock = sock
        self.err = _proc.Stream(-1, keep_all)
        self.raw = bytearray()

    def read_some(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not chunk:
            self.eof = True
            return False
        self.raw += chunk
        while len(self.raw) >= 8:
            kind, size = struct.unpack_from(">BxxxL", self.raw)
            if len(self.raw) < 8 + size:
                break
            (self.err if kind == 2 else self).feed(bytes(self.raw[8:8 + size]))
            del self.raw[:8 + size]
        return True

    def drain(self, deadline: float) -> None:
        """Read until the engine closes the stream (the container's stdio is gone)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self.eof:
            left = deadline - time.monotonic()
            if poller.poll(max(0, math.ceil(left * 1000))):
                self.read_some()
            elif left <= 0:  # (a deadline now: one look, as wait_exit(inst, 0) polls)
                raise InstanceError("the container's output did not end within the timeout")

    def close(self) -> None:
        if self.fd >= 0:
            # shutdown ends the connection even while the HTTP response still holds a
            # reference to the socket (close alone would only drop ours).
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            # The fd closes once every file made from the socket is closed: the HTTP
            # response docker-py keeps on the SocketIO (its reader), then the SocketIO.
            response = getattr(self.io, "_response", None)
            if response is not None:
                response.close()
            if self.io is not self.sock:
                self.io.close()
            self.sock.close()
            self.fd = -1


@dataclass(eq=False, slots=True)
class EngineInstance(Instance):
    """A container: its id, the attach stream its output arrives on, and its memory
    cgroup and shim once looked up (finding a shim scans every process on the host: per
    container and per measurement, a density ramp of hundreds spent minutes on it)."""

    cid: str = ""
    out: AttachStream | None = None
    cgroup: Path | None = None
    shims: list[int] | None = None
    exited: bool = False

    def stream(self) -> AttachStream:
        if self.out is None:
            raise InstanceError(f"{self.spec.name}: not attached")
        return self.out


def kernel_oom_killed(cid: str) -> bool:
    """Whether the kernel log records an OOM kill in the memory cgroup of container `cid`.

    Podman 4.3's conmon misses OOM kills on this cgroup v1 host (inspect says OOMKilled
    false after a SIGKILL by the memcg OOM killer); the kernel's own line,
    "oom-kill:constraint=CONSTRAINT_MEMCG,...,task_memcg=/libpod_parent/libpod-<id>,...",
    does not. /dev/kmsg, opened afresh, reads from the oldest record still buffered.
    """
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            if not record:
                return False
            if b"oom-kill:" in record and b"task_memcg=" in record and cid.encode() in record:
                return True
    finally:
        os.close(fd)


def environment(spec: InstanceSpec) -> dict[str, str]:
    return {"PATH": PATH_ENV, "CVBENCH_NONCE": spec.nonce, **spec.env}


def host_config(spec: InstanceSpec, volumes: dict[str, str],
                runtime: str | None) -> dict[str, Any]:
    """APIClient.create_host_config keywords for `spec` (the mapping in the docstring);
    `volumes` maps the spec's volume names to the engine's (and "" to its network's)."""
    lim = spec.limits
    mounts = []
    for m in spec.mounts:
        if m.type == "tmpfs":
            mounts.append(DockerMount(m.target, None, type="tmpfs", read_only=m.readonly,
                                      tmpfs_size=m.size))
        else:
            source = volumes[m.source or ""] if m.type == "volume" else m.source
            mounts.append(DockerMount(m.target, source, type=m.type, read_only=m.readonly))
    # (a private network of the run: its engine name, under the key "" of `volumes`)
    named = spec.network_name or spec.network in VLAN_MODES
    hc: dict[str, Any] = {"network_mode": volumes[""] if named else spec.network,
                          "mounts": mounts}
    if spec.publish:
        addr = publish_address()
        hc["port_bindings"] = {port: (addr, host_port) for host_port, port in spec.publish}
    if lim.cpuset is not None:
        hc["cpuset_cpus"] = lim.cpuset
    if lim.cpus is not None:
        hc["nano_cpus"] = int(lim.cpus * 1e9)
    if lim.memory is not None:
        hc["mem_limit"] = lim.memory
        hc["memswap_limit"] = lim.memory
    if lim.pids is not None:
        hc["pids_limit"] = lim.pids
    if lim.rlimits:
        hc["ulimits"] = [Ulimit(name=n, soft=s, hard=h) for n, s, h in lim.rlimits]
    if runtime:
        hc["runtime"] = runtime
    return hc


class Engine:
    """One engine behind its Engine-API socket. Subclasses fill in the class attributes
    and the hooks at the bottom."""

    base: ClassVar[str]
    flavours: ClassVar[tuple[str, ...]] = ()
    default_runtime: ClassVar[str]
    daemon_binary: ClassVar[str]  # what must be installed for the daemon to run
    socket_env: ClassVar[str]  # environment variable overriding the default socket
    default_socket: ClassVar[str]
    flavour_sockets: ClassVar[dict[str, str]] = {}  # a flavour served by its own daemon
    per_container_runtime: ClassVar[bool] = True  # else the daemon's default is the flavour
    # a flavour whose OCI runtime is registered under another name (ns: cvbench-ns)
    flavour_runtimes: ClassVar[dict[str, str]] = {"ns": "cvbench-ns"}
    log_hint: ClassVar[str]  # where the daemon's log is when provision started it
    # The class of the flavour `precreated` (an EnginePool of this engine), set by the
    # engine's module.
    pooled: ClassVar[type[Engine] | None] = None

    def __new__(cls, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> Self:
        # `<engine>:precreated` is an object of its own class, so that isinstance(rt,
        # Pool) tells the pool from the plain engine (a runtime_checkable Protocol sees
        # methods, never a flavour).
        target = cls.pooled if flavour == PRECREATED and cls.pooled is not None else cls
        return cast(Self, object.__new__(target))

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        self.flavour = flavour
        self.name = f"{self.base}:{flavour}" if flavour else self.base
        # the flavour naming an OCI runtime (`precreated` runs the engine's default)
        self.oci_flavour = None if flavour == PRECREATED else flavour
        self.runtime = self.flavour_runtimes.get(self.oci_flavour, self.oci_flavour) \
            if self.oci_flavour else self.default_runtime
        self._client: docker.APIClient | None = None
        self._server: dict[str, Any] = {}
        self._volumes: set[str] = set()
        self._networks: set[str] = set()

    # --- connection and availability ----------------------------------------------------

    @property
    def socket_path(self) -> str:
        if self.flavour in self.flavour_sockets:
            url = self.flavour_sockets[self.flavour]
        else:
            url = os.environ.get(self.socket_env) or self.default_socket
        return url.removeprefix("unix://")

    @property
    def api(self) -> docker.APIClient:
        """The client, connected on first use; BackendUnavailable if the daemon is not."""
        if self._client is None:
            reason, fix = self._connect_problem()
            if reason:
                raise BackendUnavailable(self.name, reason, fix)
        assert self._client is not None
        return self._client

    def _connect_problem(self) -> tuple[str, str]:
        """Connect; on failure, why (binary, daemon, socket permission) and the fix."""
        path = self.socket_path
        if not shutil.which(self.daemon_binary, path=os.environ.get("PATH", "") +
                            ":/usr/sbin:/usr/bin:/sbin:/bin"):
            return (f"{self.daemon_binary} is not installed",
                    f"{PROVISION} (installs Debian's {self.package})")
        if not os.path.exists(path):
            return (f"{self.daemon_binary} is not running: no socket at {path}",
                    f"{PROVISION}; it starts the daemon (log: {self.log_hint})")
        try:
            # A plain connect first: it tells permission from a dead daemon (a stale
            # socket file), and docker-py leaks the socket of a refused connection.
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(10)
                probe.connect(path)
        except PermissionError:
            return (f"no permission on {path} (uid {os.geteuid()})",
                    "run as root, or give this user access to the socket")
        except OSError as e:
            return (f"{path} exists but the daemon does not answer ({e.strerror})",
                    f"the daemon died or is stuck: see {self.log_hint}; {PROVISION}")
        try:
            client = docker.APIClient(base_url=f"unix://{path}", version="auto", timeout=60)
            self._server = client.version()
        except _ERRORS as e:
            return (f"{path} exists but the daemon does not answer ({_short(e)})",
                    f"the daemon died or is stuck: see {self.log_hint}; {PROVISION}")
        self._client = client
        return "", ""

    def availability(self) -> Availability:
        reason, fix = ("", "") if self._client is not None else self._connect_problem()
        if reason:
            return Availability(ok=False, reason=reason, fix=fix)
        try:
            info = self.api.info()
        except _ERRORS as e:
            return Availability(ok=False, reason=f"the daemon fails `info`: {_short(e)}",
                                fix=f"see {self.log_hint}")
        versions = {self.base: str(self._server.get("Version", "?")),
                    "api": str(self._server.get("ApiVersion", "?")),
                    "sdk": f"docker-py {docker.__version__}"}
        # The engine lists its runtimes by name with a path (a bare name is looked up on
        # PATH, as the engine does); Podman lists candidates that may not be installed.
        entry = (info.get("Runtimes") or {}).get(self.runtime) or {}
        runtime_path = shutil.which(entry["path"]) if entry.get("path") else None
        details = {"cgroup": f"v{info.get('CgroupVersion', '?')} "
                             f"{info.get('CgroupDriver', '?')}",
                   "storage": str(info.get("Driver", "?"))}
        if runtime_path is None:
            return Availability(
                ok=False, versions=versions, details=details,
                reason=f"OCI runtime {self.runtime!r} is not registered with {self.base}",
                fix=self._runtime_fix())
        versions[self.runtime] = _oci_host.version_line(runtime_path).split()[-1]
        default = info.get("DefaultRuntime")
        if not self.per_container_runtime and default != self.runtime:
            return Availability(
                ok=False, versions=versions, details=details,
                reason=f"the {self.base} service on {self.socket_path} runs {default}, not "
                       f"{self.runtime} (its API cannot choose the runtime per container)",
                fix=f"{PROVISION}; it starts a service with --runtime {self.runtime} there")
        if self.runtime == "cvbench-ns" and info.get("CgroupDriver") == "systemd":
            # the engine would pass --systemd-cgroup (cgroups made by systemd's D-Bus API),
            # which cvbench-ns refuses: it makes its cgroups itself
            return Availability(
                ok=False, versions=versions, details=details,
                reason=f"the {self.base} service uses the systemd cgroup driver, which "
                       "cvbench-ns does not support (it makes its cgroups itself)",
                fix=f"run {self.base} with the cgroupfs driver (dockerd: exec-opts "
                    "native.cgroupdriver=cgroupfs; podman: --cgroup-manager cgroupfs)")
        refusal = _oci_host.crun_refusal() if "crun" in Path(runtime_path).name else None
        if refusal:
            return Availability(ok=False, versions=versions, details=details,
                                reason=refusal[0], fix=refusal[1])
        problem = self._host_problem()
        if problem:
            return Availability(ok=False, versions=versions, details=details,
                                reason=problem[0], fix=problem[1])
        return Availability(ok=True, versions=versions, details=details, parts=self._parts())

    def _parts(self) -> tuple[Component, ...]:
        """The components the engine itself reports (`docker version`'s list: containerd,
        runc, docker-init; Podman's conmon and OCI runtime), named as elsewhere."""
        out = []
        for c in self._server.get("Components") or ():
            name = str(c.get("Name", "")).lower()
            if "engine" in name:
                name = self.base
            elif name.startswith("oci runtime (") and name.endswith(")"):
                name = name[len("oci runtime ("):-1]
            if name and c.get("Version"):
                out.append(Component.parse(name, str(c["Version"])))
        return tuple(out)

    def traits(self) -> Traits:
        daemons: dict[str, Json] = {}
        for name, pids in self.daemons().items():
            try:
                if not pids:
                    raise Unreadable("not found by its socket, unit or pid file")
                m = memory.processes_memory(pids)
            except Unreadable as e:  # metadata: said, not a zero
                daemons[name] = {"pids": list(pids), "error": str(e)}
                continue
            daemons[name] = {"pids": list(pids), "pss": m.pss, "uss": m.uss, "rss": m.rss}
        return Traits(kind="container", protections=self.protections(), settings={
            "engine": self.base, "oci_runtime": self.runtime, "socket": self.socket_path,
            "client": f"docker-py {docker.__version__} APIClient ({self.client_note})",
            "phases": {"create": "POST create + attach" + self.attach_note,
                       "start": "POST start", "ready": "ready line on the attach stream",
                       "exit": "attach stream ends + " + self.wait_note,
                       "remove": "DELETE ?force=1"},
            "merged_phases": [],
            "network_mapping": "none|host|bridge -> HostConfig.NetworkMode; "
                               "macvlan|ipvlan -> a network of the driver on the run's "
                               "own parent link",
            "limits_mapping": "cpus -> NanoCpus; memory -> Memory = MemorySwap; "
                              "pids -> PidsLimit",
            "daemons": daemons,
        })

    def protections(self) -> tuple[str, ...]:
        """What the engine says it applies by default (its `info`), and the rlimits its
        containers inherit (their shims', so the daemon's); the report lists them next to
        ns's. Nothing the engine does not report is claimed."""
        try:
            opts = [str(o) for o in self.api.info().get("SecurityOptions") or []]
        except _ERRORS as e:
            return (f"(the engine did not answer `info`: {_short(e)})",)
        return (f"engine security options: {'; '.join(opts) or 'none'}", *self.security())

    def security(self) -> list[str]:
        """Engine-specific lines for protections(): the capability set, the profile, the
        rlimits its containers get."""
        return []

    # --- image ----------------------------------------------------------------------------

    def prepare(self, image: Image) -> Prepared:
        """Import the image tar once per digest (under a lock: two runs importing the same
        digest at once would leave an untagged duplicate behind)."""
        lock_path = state_dir() / "locks" / f"{self.base}-import.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            info = self._find_image(image.digest)
            imported = info is None
            if info is None:
                changes = [f"LABEL {DIGEST_LABEL}=sha256:{image.digest}",
                           f"LABEL {NAME_LABEL}={image.name}",
                           'ENTRYPOINT ["/bench/init"]', f"ENV PATH={PATH_ENV}"]
                t0 = time.monotonic()
                try:
                    # repository "name:tag" (Podman's compat import ignores `tag`)
                    self.api.import_image_from_file(str(image.tar),
                                                    repository=self.image_prefix + image.tag,
                                                    changes=changes)
                except _ERRORS as e:
                    raise ImageError(f"{self.base}: cannot import {image.tar}: "
                                     f"{_short(e)}") from e
                import_s = time.monotonic() - t0
                info = self._find_image(image.digest)
                if info is None:
                    raise ImageError(f"{self.base}: the imported image {image.tag} does not "
                                     f"have the single layer sha256:{image.digest}")
        details: dict[str, Json] = {"image_id": info["Id"], "diff_id": info["RootFS"]["Layers"][0],
                                   "tags": info.get("RepoTags") or [], "imported": imported}
        if imported:
            details["import_seconds"] = round(import_s, 3)
        return Prepared(image=image, backend=self.name, ref=info["Id"],
                        footprint=self._footprint(info), details=details)

    def _footprint(self, info: dict[str, Any]) -> dict[str, int]:
        """The image's size as the engine stores it, split into what it shares with other
        images and what is its own, as `docker/podman system df -v` reports them."""
        if info.get("Size") is None:  # not reported: absent, never a 0
            return {}
        size = int(info["Size"])
        out = {"image": size}
        want = str(info["Id"]).removeprefix("sha256:")
        try:
            rows = self.api.df().get("Images") or []
        except docker.errors.APIError:
            return out
        for row in rows:
            if str(row.get("Id", "")).removeprefix("sha256:") == want:
                total = int(row.get("Size") or size)
                out["image"] = total
                # SharedSize -1 (or none): the engine did not compute it: no split, not 0
                if (shared := row.get("SharedSize")) is not None and int(shared) >= 0:
                    out.update({"image.shared": int(shared),
                                "image.unique": total - int(shared)})
                break
        return out

    def _find_image(self, digest: str) -> dict[str, Any] | None:
        """The engine's image labelled with `digest` whose only layer is that digest."""
        try:
            found = self.api.images(filters={"label": f"{DIGEST_LABEL}=sha256:{digest}"})
            for img in found:
                info: dict[str, Any] = self.api.inspect_image(img["Id"])  # type: ignore[no-untyped-call]
                if info.get("RootFS", {}).get("Layers") == [f"sha256:{digest}"]:
                    return info
        except _ERRORS as e:
            raise ImageError(f"{self.base}: cannot list images: {_short(e)}") from e
        return None

    # --- the engine's own store (an EngineStore for image sources) ---------------------

    def image_id(self, ref: str) -> str:
        try:
            info: dict[str, Any] = self.api.inspect_image(ref)  # type: ignore[no-untyped-call]
        except docker.errors.NotFound:
            raise BadImage(f"{self.base} image {ref}: not in {self.base}'s store (`{self.base} "
                           "images` lists what is; no registry is asked)") from None
        except _ERRORS as e:
            raise ImageError(f"{self.base}: cannot inspect image {ref}: {_short(e)}") from e
        return str(info["Id"])

    def save_image(self, ref: str, dest: Path) -> None:
        """GET /images/{ref}/get: the `docker save` archive (Podman: docker-archive)."""
        try:
            with open(dest, "wb") as f:
                for chunk in self.api.get_image(ref):
                    f.write(chunk)
        except docker.errors.NotFound:
            raise BadImage(f"{self.base} image {ref}: not in {self.base}'s store") from None
        except _ERRORS as e:
            raise ImageError(f"{self.base}: cannot export image {ref}: {_short(e)}") from e

    def build_image(self, build: EngineBuild, tag: str, labels: Mapping[str, str]) -> str:
        """Build offline, no network for its RUN steps. Every FROM image must be in the
        local store, checked first (with pull=False, Docker's classic builder still
        pulls a FROM image it does not find)."""
        ref = self.image_prefix + tag
        for base in self._bases(build):
            try:
                self.image_id(base)
            except BadImage:
                raise BadImage(f"{self.base} build of {build.context}: FROM {base}: not in "
                               f"{self.base}'s store (no registry is asked: load or build "
                               "it first)") from None
        self._build(build, ref, labels)
        return self.image_id(ref)

    def _build(self, build: EngineBuild, ref: str, labels: Mapping[str, str]) -> None:
        """POST /build, Docker's classic builder, network none. The context is sent as
        docker-py tars it, symlinks as symlinks (never followed on the host). (A build
        that fails leaves the layers of its steps that passed in the build cache,
        untagged, as `docker build` does.)"""
        try:
            for chunk in self.api.build(
                    path=build.context, dockerfile=build.dockerfile, tag=ref,
                    buildargs=dict(build.args), labels=dict(labels), pull=False, rm=True,
                    forcerm=True, network_mode="none", decode=True):
                if "error" in chunk:
                    raise BadImage(f"{self.base} build of {build.context}: "
                                   f"{str(chunk['error']).strip().splitlines()[-1]}")
        except (docker.errors.BuildError, docker.errors.APIError) as e:
            raise BadImage(f"{self.base} build of {build.context}: {_short(e)}") from e
        except _ERRORS as e:
            raise ImageError(f"{self.base}: cannot build {build.context}: {_short(e)}") from e

    @staticmethod
    def _bases(build: EngineBuild) -> list[str]:
        """The images the Dockerfile's stages start FROM (build arguments substituted;
        not `scratch`, nor an earlier stage's name)."""
        path = Path(build.context) / build.dockerfile
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                parsed = DockerfileParser(fileobj=f, build_args=dict(build.args))
                froms = parsed.parent_images
                values = [i["value"].split() for i in parsed.structure
                          if i["instruction"] == "FROM"]
        except OSError as e:
            raise BadImage(f"{path}: cannot read: {e.strerror}") from None
        stages = {v[-1].lower() for v in values if len(v) >= 3 and v[-2].lower() == "as"}
        return [b for b in froms if b != "scratch" and b.lower() not in stages]

    # --- lifecycle --------------------------------------------------------------------------

    def _volume(self, run_id: str, name: str) -> str:
        """The engine volume behind the spec's volume `name`: one per run, labelled (a
        name that already carries the run's prefix is kept as it is)."""
        prefix = f"{PREFIX}{run_id}-"
        full = name if name.startswith(prefix) else prefix + name
        if full not in self._volumes:
            try:
                self.api.inspect_volume(full)
            except docker.errors.NotFound:
                self.api.create_volume(full, labels={RUN_LABEL: run_id})
            self._volumes.add(full)
        return full

    def _network(self, run_id: str, name: str) -> str:
        """The user-defined network behind the spec's `network_name`, made on first use."""
        full = f"{PREFIX}{run_id}-{name}"
        if full not in self._networks:
            try:
                self.api.inspect_network(full)
            except docker.errors.NotFound:
                self.api.create_network(full, driver="bridge", labels={RUN_LABEL: run_id})
            self._networks.add(full)
        return full

    def _vlan_network(self, run_id: str, mode: str) -> str:
        """The engine's macvlan or ipvlan network on the run's own segment, made on first
        use (NotApplicable where the engine has no such driver)."""
        seg = _vlan.segment(run_id, self.base, mode)
        if seg.name not in self._networks:
            try:
                self.api.inspect_network(seg.name)
            except docker.errors.NotFound:
                try:
                    self.api.create_network(
                        seg.name, driver=mode, labels={RUN_LABEL: run_id},
                        options={"parent": seg.parent,
                                 self.vlan_mode_key.format(mode=mode):
                                     _vlan.LINK_TYPE[mode][3]},
                        ipam=IPAMConfig(pool_configs=[IPAMPool(
                            subnet=str(seg.subnet), gateway=seg.gateway)]))
                except docker.errors.APIError as e:
                    if "unsupported driver" in str(e):
                        raise NotApplicable(f"{self.name}: network {mode}: "
                                            f"{e.explanation or e}") from None
                    raise
            self._networks.add(seg.name)
        return seg.name

    def remove_network(self, run_id: str, name: str) -> None:
        full = f"{PREFIX}{run_id}-{name}"
        self._networks.discard(full)
        with contextlib.suppress(docker.errors.NotFound), \
                _instance_errors(self.name, "remove network"):
            self.api.remove_network(full)

    def exec(self, inst: Instance, argv: Sequence[str], *, user: str = "",
             env: Mapping[str, str] | None = None, workdir: str = "/",
             timeout: float = 30.0, detach: bool = False) -> Exit:
        """POST /containers/{id}/exec and /exec/{id}/start (`docker exec`); the output
        is read from the hijacked connection, as the attach stream is."""
        cid = own(inst, EngineInstance).cid
        with _instance_errors(self.name, "exec"):
            eid = self.api.exec_create(
                cid, list(argv), user=user, workdir=workdir,
                environment=[f"{k}={v}" for k, v in env.items()] if env else None)["Id"]
            if detach:
                self.api.exec_start(eid, detach=True)
                return Exit(code=0, t_ns=time.monotonic_ns())
            out = AttachStream(self.api.exec_start(eid, socket=True), keep_all=True)
        try:
            out.drain(time.monotonic() + timeout)
        except InstanceError:
            raise InstanceError(f"{self.name}: exec {argv[0]}: still running after "
                                f"{timeout:g} s") from None
        finally:
            out.close()
        with _instance_errors(self.name, "exec inspect"):
            code = self.api.exec_inspect(eid)["ExitCode"]
        return Exit(code=int(code if code is not None else -1), t_ns=time.monotonic_ns(),
                    stdout=(bytes(out.data) + bytes(out.err.data))[-4096:])

    def check(self, spec: InstanceSpec) -> None:
        """Refuse what this engine/flavour cannot do here, before anything is created."""
        check_publish(self.name, spec)
        check_networks(self.name, spec)
        problem = _oci_host.runsc_network_problem(self.name, spec.network) \
            if self.runtime == "runsc" else None
        if problem:
            raise NotApplicable(problem)

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        self.check(spec)
        api = self.api
        with _instance_errors(self.name, "create"):
            volumes = {m.source or "": self._volume(spec.run_id, m.source or "")
                       for m in spec.mounts if m.type == "volume"}
            if spec.network_name:
                volumes[""] = self._network(spec.run_id, spec.network_name)
            elif spec.network in VLAN_MODES:
                volumes[""] = self._vlan_network(spec.run_id, spec.network)
            more = [self._network(spec.run_id, n) for n in spec.more_networks]
            cid = self.create_container(spec, prepared.ref, volumes)
        inst = EngineInstance(spec=spec, prepared=prepared, cid=cid)
        try:
            for net in more:
                with _instance_errors(self.name, "connect"):
                    self.api.connect_container_to_network(
                        cid, net, aliases=list(spec.aliases))
            with _instance_errors(self.name, "attach"):
                attached = api.attach_socket(
                    cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
            inst.out = AttachStream(attached, spec.capture)
        except BaseException:
            self.remove(inst)
            raise
        return inst

    def start(self, inst: Instance) -> None:
        with _instance_errors(self.name, "start"):
            self.api.start(own(inst, EngineInstance).cid)

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        return _proc.ready(inst, own(inst, EngineInstance).stream(), timeout)

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        out = own(inst, EngineInstance).stream()
        return _proc.wait_match([out], pattern, time.monotonic() + timeout, [out, out.err])

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        inst = own(inst, EngineInstance)
        deadline = time.monotonic() + timeout
        out = inst.stream()
        out.drain(deadline)
        with _instance_errors(self.name, "wait"):
            code = self.wait(inst.cid, max(1.0, deadline - time.monotonic()))
        t = time.monotonic_ns()
        inst.exited = True
        oom = False
        if code != 0:  # only then is the extra inspect worth it
            with _instance_errors(self.name, "inspect"):
                oom = bool(self.api.inspect_container(inst.cid)["State"].get("OOMKilled"))
            if not oom and code == 128 + 9 and inst.spec.limits.memory is not None:
                oom = kernel_oom_killed(inst.cid)
        return Exit(code=code, t_ns=t, oom_killed=oom, stdout=bytes(out.data),
                    stderr=bytes(out.err.data))

    def stats(self, inst: Instance) -> Stats:
        """The container's host processes: its shim (containerd-shim, conmon) and every
        process below it, plus whatever its memory cgroup holds (runsc's sandbox)."""
        inst = own(inst, EngineInstance)
        cg = inst.cgroup
        if cg is None:
            with _instance_errors(self.name, "inspect"):
                pid = int(self.api.inspect_container(inst.cid)["State"].get("Pid") or 0)
            cg = inst.cgroup = memory.memory_cgroup(pid) if pid else None
        shims = inst.shims or self.shim_pids(inst.cid)
        if shims:  # a container keeps its shim for life
            inst.shims = shims
        pids = set(memory.cgroup_procs(cg)) if cg else set()
        for shim in shims:
            pids.update(memory.descendants(shim))
        m = memory.processes_memory(pids)
        return Stats(pids=tuple(sorted(pids)), pss=m.pss, uss=m.uss, rss=m.rss,
                     cgroup=memory.cgroup_usage(cg) if cg else None,
                     extra={"shim_pids": shims, "cgroup_path": str(cg) if cg else None})

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        inst = own(inst, EngineInstance)
        if not inst.cid or inst.exited:
            return
        # Engine stop: SIGTERM, then SIGKILL after whole seconds (0: SIGKILL at once; a
        # workload that is PID 1 ignores SIGTERM unless it handles it).
        with contextlib.suppress(docker.errors.NotFound), \
                _instance_errors(self.name, "stop"):
            self.api.stop(inst.cid, timeout=int(grace))

    def daemons(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def disk_usage(self, inst: Instance) -> int | None:
        """The container's writable layer: SizeRw of GET /containers/json?size=1."""
        with _instance_errors(self.name, "list"):
            found = self.api.containers(all=True, filters={"id": own(inst, EngineInstance).cid},
                                        size=True)
        # dockerd omits SizeRw when the layer is empty
        return int(found[0].get("SizeRw") or 0) if found else None

    def address(self, inst: Instance) -> str | None:
        if inst.spec.network == "host":
            return "127.0.0.1"
        if inst.spec.network == "none":
            return None
        info = self.api.inspect_container(own(inst, EngineInstance).cid)
        for n in (info["NetworkSettings"].get("Networks") or {}).values():
            if n.get("IPAddress"):
                return str(n["IPAddress"])
        return info["NetworkSettings"].get("IPAddress") or None

    def remove(self, inst: Instance) -> None:
        inst = own(inst, EngineInstance)
        if inst.out is not None:
            inst.out.close()
            inst.out = None
        if not inst.cid:
            return
        with contextlib.suppress(docker.errors.NotFound), \
                _instance_errors(self.name, "remove"):
            self.api.remove_container(inst.cid, force=True)
        inst.exited = True

    # --- leftovers ---------------------------------------------------------------------------

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        found = []
        try:
            for c in self.api.containers(all=True, filters={"label": RUN_LABEL}):
                run = (c.get("Labels") or {}).get(RUN_LABEL)
                if run not in live_runs:
                    name = (c.get("Names") or [c["Id"]])[0].lstrip("/")
                    found.append(Leftover(self.base, "container", name, run))
            for v in self.api.volumes(filters={"label": RUN_LABEL}).get("Volumes") or []:
                run = (v.get("Labels") or {}).get(RUN_LABEL)
                if run not in live_runs:
                    found.append(Leftover(self.base, "volume", v["Name"], run))
            for n in self.api.networks(filters={"label": RUN_LABEL}):
                run = (n.get("Labels") or {}).get(RUN_LABEL)
                if run not in live_runs:
                    found.append(Leftover(self.base, "network", n["Name"], run))
            for i in self.api.images(filters={"label": RUN_LABEL}):  # a compose build's
                run = (i.get("Labels") or {}).get(RUN_LABEL)
                if run not in live_runs:
                    found.append(Leftover(self.base, "image", i["Id"], run))
        except _ERRORS as e:
            raise BackendUnavailable(self.base, f"cannot list leftovers: {_short(e)}") from e
        # (after its networks: gc removes by kind, containers, networks, then these)
        found += [Leftover(self.base, "vlan-parent", link, run_of(name))
                  for link, name in _vlan.parents(self.base).items()
                  if run_of(name) not in live_runs]
        return found

    # gc's order: what uses a resource goes before it (a swarm service before its
    # containers' network; the swarm itself last)
    gc_order: ClassVar[tuple[str, ...]] = ("container", "image", "network", "vlan-parent",
                                             "volume")

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        order = {k: i for i, k in enumerate(self.gc_order)}
        found = sorted(self.leftovers(live_runs), key=lambda x: order.get(x.kind, len(order)))
        return remove_each(self.name, found, lambda item: self.remove_leftover(item, live_runs))

    def remove_leftover(self, item: Leftover, live_runs: Sequence[str]) -> bool | None:
        """Remove one leftover (gone already: removed)."""
        with contextlib.suppress(docker.errors.NotFound):
            if item.kind == "container":
                self.api.remove_container(item.name, force=True)
            elif item.kind == "network":
                self.api.remove_network(item.name)
            elif item.kind == "vlan-parent":
                _vlan.remove(item.name)
            elif item.kind == "image":
                self.api.remove_image(item.name, force=True)
            else:
                self.api.remove_volume(item.name, force=True)
        return None

    # --- hooks ---------------------------------------------------------------------------------

    package: ClassVar[str]
    image_prefix: ClassVar[str] = ""  # Podman's compat API would default to docker.io/
    client_note: ClassVar[str] = ""
    attach_note: ClassVar[str] = ""
    wait_note: ClassVar[str] = "POST wait"
    # The option naming a macvlan's or ipvlan's mode ({mode}: the driver), as the
    # engine's `network create -o` takes it.
    vlan_mode_key: ClassVar[str] = "{mode}_mode"

    def _runtime_fix(self) -> str:
        raise NotImplementedError

    def _host_problem(self) -> tuple[str, str] | None:
        return None

    def create_container(self, spec: InstanceSpec, ref: str, volumes: dict[str, str]) -> str:
        """POST /containers/create; the container's id."""
        api = self.api
        cid: str = api.create_container(
            ref, list(spec.argv), entrypoint=["/bench/init"],
            environment=[f"{k}={v}" for k, v in environment(spec).items()], name=spec.name,
            hostname=spec.hostname, working_dir=spec.workdir, labels={RUN_LABEL: spec.run_id},
            user=spec.user or None, ports=[port for _h, port in spec.publish] or None,
            host_config=api.create_host_config(**host_config(
                spec, volumes, self.runtime if self.oci_flavour and self.per_container_runtime
                else None)),
            networking_config=api.create_networking_config({  # type: ignore[arg-type]
                volumes[""]: api.create_endpoint_config(aliases=list(spec.aliases))})
            if spec.network_name else None,
        )["Id"]
        return cid

    def wait(self, cid: str, timeout: float) -> int:
        """Block until the container has exited; its exit status."""
        raise NotImplementedError

    def shim_pids(self, cid: str) -> list[int]:
        raise NotImplementedError


@contextlib.contextmanager
def _instance_errors(backend: str, what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound:
        raise
    except _ERRORS as e:
        raise InstanceError(f"{backend}: {what} failed: {_short(e)}") from e


def daemon_rlimits(pid: int) -> str:
    """The soft:hard limits of `pid` that Docker's --ulimit names, from /proc/PID/limits:
    a container gets its shim's, and so its daemon's, where the engine sets none."""
    names = {"Max core file size": "core", "Max open files": "nofile",
             "Max processes": "nproc", "Max locked memory": "memlock",
             "Max stack size": "stack"}
    try:
        lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    except OSError:
        return "?"
    out = []
    for line in lines:
        for label, name in names.items():
            if line.startswith(label):
                soft, hard = line[len(label):].split()[:2]
                out.append(f"{name}={soft}:{hard}")
    return " ".join(out)


def _short(e: BaseException) -> str:
    if isinstance(e, docker.errors.APIError) and e.explanation:
        return str(e.explanation)
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


FILL_FAILURES = 3  # creates failing in a row before the filler gives up (a daemon gone)


def _like(a: InstanceSpec, b: InstanceSpec) -> bool:
    """Whether an instance of `b` may be a slot prepared for `a`: the same spec but for
    the name and nonce, which every slot has its own."""
    return replace(a, name="", nonce="") == replace(b, name="", nonce="")


class EnginePool(Engine):
    """The flavour `precreated`: the engine's own warm path, what a user of the engine can
    do today. `fill` keeps `size` containers created ahead (POST /containers/create with
    the spec's argv, env, limits, network, labels, as a cold instance is made) and
    attached, in a background thread with a client of its own, refilled as they are
    taken; `create` takes one (the timed path is then `start` and the ready line), or
    makes a cold one when none is ready for that spec (`Instance.warm` says which).

    A slot's name and nonce are its own, fixed when it is created: the container's name
    is given at create and the ready line's nonce is in its environment (CVBENCH_NONCE).
    So an instance taken from a slot carries the slot's spec: the spec asked for with the
    slot's `name` and `nonce` (`cvbench-<run id>-slot-<hex>`); callers read both from
    `inst.spec`, never from the spec they passed.

    Podman initializes a container (conmon + the OCI runtime's create) when the attach
    arrives, so a Podman slot is what `podman create` + `podman init` leave: conmon and a
    created container waiting, with their processes and cgroup (Slot.pids, Slot.cgroup).
    Docker creates the OCI container in start: its slot holds no process, only the
    engine's records and the writable layer (Slot.disk_bytes, the layer's SizeRw).

    Slots are containers of the spec's run like any other (label cvbench.run), so
    `leftovers()`/`gc()` find those a dead run left. `ready()` raises InstanceError once
    the filler gave up (FILL_FAILURES creates failed in a row), with the last reason.
    """

    cold: ClassVar[type[Engine]]  # the plain engine: its own client for the filler

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        super().__init__(flavour, hooks=hooks)
        self._cond = threading.Condition()
        self._slots: deque[EngineInstance] = deque()
        self._want: tuple[InstanceSpec, Prepared] | None = None
        self._size = 0
        self._gen = 0  # bumped by drain: a filler of an older generation stops
        self._filler: threading.Thread | None = None
        self._failed: str | None = None

    def traits(self) -> Traits:
        t = super().traits()
        before = t.settings.get("phases")
        phases = dict(before) if isinstance(before, Mapping) else {}
        phases["create"] = ("take a slot: a container created and attached ahead, outside "
                            "the timed path (none ready: POST create + attach, cold)")
        return replace(t, settings={**t.settings, "phases": phases,
                                    "pool": "containers created ahead (docker/podman create"
                                            "; Podman also initializes them at attach)"})

    def _wanted(self, spec: InstanceSpec, prepared: Prepared) -> bool:
        return self._want is not None and _like(self._want[0], spec) \
            and self._want[1].ref == prepared.ref

    def fill(self, spec: InstanceSpec, prepared: Prepared, size: int) -> None:
        self.check(spec)
        with self._cond:
            if size > 0 and self._wanted(spec, prepared) and self._filler is not None \
                    and self._filler.is_alive():
                self._size = size
                self._cond.notify_all()
                return
        self.drain()
        if size <= 0:
            return
        maker = self.cold()  # the plain engine, with a client of its own for the thread
        with self._cond:
            self._want, self._size = (spec, prepared), size
            self._filler = threading.Thread(
                target=self._fill_loop, args=(self._gen, maker, spec, prepared),
                name=f"{self.name} pool", daemon=True)
            self._filler.start()

    def _fill_loop(self, gen: int, maker: Engine, spec: InstanceSpec,
                   prepared: Prepared) -> None:
        failures = 0
        while True:
            with self._cond:
                while gen == self._gen and len(self._slots) >= self._size:
                    self._cond.wait()
                if gen != self._gen:
                    return
            slot = replace(spec, name=f"{PREFIX}{spec.run_id}-slot-{secrets.token_hex(4)}",
                           nonce=secrets.token_hex(8))
            try:
                inst = own(maker.create(slot, prepared), EngineInstance)
            except Exception as e:  # said by ready(), never lost
                failures += 1
                if failures >= FILL_FAILURES:
                    with self._cond:
                        if gen == self._gen:
                            self._failed = f"{self.name}: the pool cannot be filled: {e}"
                    return
                continue
            failures = 0
            with self._cond:
                if gen == self._gen:
                    self._slots.append(inst)
                    continue
            with contextlib.suppress(Exception):  # drained meanwhile (gc finds it else)
                maker.remove(inst)
            return

    def ready(self) -> int:
        with self._cond:
            if self._failed:
                raise InstanceError(self._failed)
            return len(self._slots)

    def slots(self) -> list[Slot]:
        with self._cond:
            taken = list(self._slots)
        if not taken:
            return []
        with _instance_errors(self.name, "list"):
            found = self.api.containers(
                all=True, size=True, filters={"label": f"{RUN_LABEL}={taken[0].spec.run_id}"})
        # dockerd omits SizeRw when the layer is empty (a true 0); Podman always says it
        sizes = {c["Id"]: int(c.get("SizeRw") or 0) for c in found}
        out = []
        for inst in taken:
            with _instance_errors(self.name, "inspect"):
                state = self.api.inspect_container(inst.cid)["State"]
            pid = int(state.get("Pid") or 0)
            cg = memory.memory_cgroup(pid) if pid else None
            pids = set(memory.cgroup_procs(cg)) if cg else set()
            for shim in self.shim_pids(inst.cid):
                pids.update(memory.descendants(shim))
            out.append(Slot(pids=tuple(sorted(pids)), cgroup=str(cg) if cg else None,
                            disk_bytes=sizes.get(inst.cid),
                            details={"container": inst.spec.name, "id": inst.cid[:12],
                                     "status": str(state.get("Status", "?"))}))
        return out

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        taken = None
        with self._cond:
            if self._slots and self._wanted(spec, prepared):
                taken = self._slots.popleft()
                self._cond.notify_all()  # the filler makes the next one
        if taken is None:
            inst = super().create(spec, prepared)
            inst.warm = "cold"
            return inst
        taken.warm = "slot"
        taken.prepared = prepared
        return taken

    def drain(self) -> None:
        with self._cond:
            self._gen += 1
            self._size, self._want, self._failed = 0, None, None
            filler, self._filler = self._filler, None
            slots = list(self._slots)
            self._slots.clear()
            self._cond.notify_all()
        if filler is not None:
            filler.join()  # a create in flight ends first (the filler removes its slot)
        failed = []
        for inst in slots:
            try:
                self.remove(inst)
            except InstanceError as e:  # still labelled: gc removes it
                failed.append(f"container {inst.spec.name}: {e}")
        if failed:
            raise CleanupError(self.name, failed)
