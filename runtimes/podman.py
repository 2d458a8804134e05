"""`podman`: the workload in a container of Podman's REST service (rootful, `podman system
service`), through the docker SDK on its socket.

Why the docker SDK and not podman-py: one implementation serves Docker and Podman
(`runtimes/_engine.py`: the same InstanceSpec mapping, image import, phases, stats), and
it is not slower. Measured on this machine (2 vCPU VM, Podman 4.3.1, crun, `true` with
--network none, create + attach + start + wait + remove, medians of 18 interleaved
rounds): podman-py 143 ms; the docker SDK on the compat API with libpod's wait 143 ms;
`podman run --rm` 149 ms. Creating through libpod's endpoint instead of the compat one
made no difference (30 interleaved rounds: 323 vs 326 ms on a loaded host).

One compat call is slow: Podman 4.3 serves Docker's wait by polling the container's state
every 250 ms (~300 ms per run instead of ~50). The exit is awaited on Podman's own
endpoint, POST /v<version>/libpod/containers/{id}/wait, with the poll interval given
(`WAIT_INTERVAL`), as podman-py's wait(interval=...) sends it, through the same SDK
session and connection pool.

Flavours: Podman 4.3's API cannot choose the OCI runtime per container (the compat create
ignores HostConfig.Runtime and libpod's create its `oci_runtime`: Podman issue #28429,
fixed long after 4.3), so each flavour talks to its own service whose default runtime is
the flavour's: `podman` (crun) on /run/podman/podman.sock, `podman:runc` on
/run/podman/podman-runc.sock (`podman --runtime runc system service`), `podman:ns` on
/run/podman/podman-ns.sock (`--runtime cvbench-ns`, ns's OCI command line, registered in
containers.conf), all started by scripts/provision.d/40-podman.sh. availability() checks
the service's default runtime. `podman:precreated` is `podman` (crun) with a pool of
containers created ahead and attached, so initialized as `podman init` leaves them
(conmon waiting): `start` is the timed path (`runtimes/_engine.py` EnginePool).

Podman initializes the container (conmon + OCI create) when the attach arrives, so its
create phase holds what Docker does in start. The rootful default ulimits
(nofile=1048576) cannot be applied where root lacks CAP_SYS_RESOURCE; provision sets them
in a containers.conf.d drop-in, and availability() says so when none is configured.

Host processes of an instance: its conmon (found by `-c <container id>`) and everything
below it, plus the container's memory cgroup (libpod_parent/libpod-<id> with cgroupfs);
the service process is the daemon, reported apart.
"""

from __future__ import annotations

import glob
import os
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import requests

from harness.core.errors import BackendUnavailable, BadImage, ImageError, InstanceError
from harness.core.image import EngineBuild
from harness.core.probes.memory import daemon_pid, pids_of
from runtimes._engine import Engine, EnginePool, daemon_rlimits
from runtimes.base import RUN_LABEL, Leftover

WAIT_INTERVAL = "10ms"
CAP_SYS_RESOURCE = 24


def _has_cap(cap: int) -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def containers_conf_files() -> list[str]:
    """The containers.conf files Podman 4.3 reads as root, in order (CONTAINERS_CONF
    replaces them all)."""
    if os.environ.get("CONTAINERS_CONF"):
        return [os.environ["CONTAINERS_CONF"]]
    files = []
    for d in ("/usr/share/containers", "/etc/containers"):
        files.append(f"{d}/containers.conf")
        files.extend(sorted(glob.glob(f"{d}/containers.conf.d/*.conf")))
    return [f for f in files if os.path.isfile(f)]


def default_ulimits() -> list[str]:
    """containers.conf's default_ulimits ("nofile=20000:20000"...), as Podman reads them."""
    found: list[str] = []
    for path in containers_conf_files():
        try:
            with open(path, "rb") as f:
                ulimits = tomllib.load(f).get("containers", {}).get("default_ulimits")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if ulimits is not None:  # a later file replaces the list
            found = [str(u) for u in ulimits]
    return found


def nofile_configured() -> bool:
    return any(u.startswith("nofile=") for u in default_ulimits())


class PodmanRuntime(Engine):
    base = "podman"
    name = "podman"
    flavours: ClassVar[tuple[str, ...]] = ("runc", "ns", "precreated")
    default_runtime = "crun"
    per_container_runtime = False
    daemon_binary = "podman"
    package = "podman"
    socket_env = "CONTAINER_HOST"
    default_socket = "unix:///run/podman/podman.sock"
    flavour_sockets: ClassVar[dict[str, str]] = {"runc": "unix:///run/podman/podman-runc.sock",
                                                  "ns": "unix:///run/podman/podman-ns.sock"}
    log_hint = "/var/log/cvbench/podman-service*.log"
    image_prefix = "localhost/"  # where `podman import` puts it
    client_note = "compat API; libpod wait"
    attach_note = " (Podman runs conmon + OCI create at attach)"
    wait_note = f"POST libpod wait?interval={WAIT_INTERVAL}"
    vlan_mode_key = "mode"  # (`podman network create -o mode=`; the parent is its own)

    def _runtime_fix(self) -> str:
        return f"install it (apt-get install {self.runtime}) or run `make provision`"

    def _host_problem(self) -> tuple[str, str] | None:
        if _has_cap(CAP_SYS_RESOURCE) or nofile_configured():
            return None
        return ("root lacks CAP_SYS_RESOURCE here and no containers.conf sets "
                "default_ulimits: every container fails with \"setrlimit RLIMIT_NOFILE: "
                "Operation not permitted\"",
                "`make provision` writes /etc/containers/containers.conf.d/50-cvbench.conf "
                "and restarts the services it started")

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        try:
            return super().leftovers(live_runs)
        except BackendUnavailable as e:
            # A service killed while it removed a container leaves it "Removing" in the
            # store, and the REST list then fails on it ("container not known") until the
            # CLI, which reads the store itself, removes it: only ours, then list again.
            if "container not known" not in str(e):
                raise
            ids = subprocess.run(
                ["podman", "ps", "-aq", "--filter", f"label={RUN_LABEL}",
                 "--filter", "status=removing"],
                capture_output=True, text=True, timeout=60, check=False).stdout.split()
            if not ids:
                raise
            subprocess.run(["podman", "rm", "--force", *ids], capture_output=True,
                           timeout=120, check=False)
            return super().leftovers(live_runs)

    def _build(self, build: EngineBuild, ref: str, labels: Mapping[str, str]) -> None:
        """`podman build` (buildah), not the compat API: there its network mode "none"
        is not applied (RUN steps saw the host's interfaces). --pull=never, no network,
        --layers=false (no intermediate images left by a failed build); the CLI reads
        the context itself, its symlinks as symlinks."""
        argv = ["podman", "build", "--pull=never", "--network=none", "--layers=false",
                "--force-rm", "-q", "-f", str(Path(build.context) / build.dockerfile),
                "-t", ref, *(f"--label={k}={v}" for k, v in labels.items()),
                *(f"--build-arg={k}={v}" for k, v in build.args), build.context]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=3600,
                               check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ImageError(f"podman: cannot build {build.context}: {e}") from e
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
            raise BadImage(f"podman build of {build.context}: {last}")

    def libpod(self, method: str, path: str, timeout: float | None = None,
               **kw: Any) -> requests.Response:
        """Call Podman's own API through the SDK's session (same connection pool)."""
        version = self._server.get("Version", "4.0.0")
        resp = self.api.request(method, f"{self.api.base_url}/v{version}/libpod{path}",
                                timeout=timeout or 60, **kw)
        if not resp.ok:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise InstanceError(f"{self.name}: {path}: {resp.status_code} {message}")
        return resp

    def wait(self, cid: str, timeout: float) -> int:
        resp = self.libpod("POST", f"/containers/{cid}/wait", timeout=timeout,
                           params={"condition": ["stopped", "exited"],
                                   "interval": WAIT_INTERVAL})
        return int(resp.text.strip().strip('"'))

    def shim_pids(self, cid: str) -> list[int]:
        return pids_of("conmon", f" -c {cid}")

    def security(self) -> list[str]:
        # libpod's info says what the compat `info` does not: the profile and the caps
        try:
            sec = self.libpod("GET", "/info").json()["host"]["security"]
        except (InstanceError, KeyError, ValueError) as e:
            return [f"(libpod info: {e})"]
        return [f"capabilities: {sec.get('capabilities', '?').replace(',', ', ')}",
                f"seccomp: {sec.get('seccompProfilePath') or 'none'}"
                + ("" if sec.get("seccompEnabled") else " (disabled)"),
                f"user namespace: {'yes (rootless)' if sec.get('rootless') else 'no'}",
                f"rlimits: {' '.join(default_ulimits()) or 'none'} (containers.conf "
                "default_ulimits), the others inherited from the service"
                + "".join(f" (pid {p}): {daemon_rlimits(p)}"
                          for p in self.daemons()["podman service"][:1])]

    def daemons(self) -> dict[str, list[int]]:
        # The process listening on the socket; a socket-activated service's socket is
        # systemd's (podman.service's MainPID); the pid file scripts/provision.d/40-podman.sh
        # writes for the service it starts (podman-service[-runc].pid for podman[-runc].sock).
        stem = Path(self.socket_path).stem
        pid = daemon_pid([self.socket_path],
                         ["podman.service"] if stem == "podman" else [],
                         [f"/run/cvbench/podman-service{stem.removeprefix('podman')}.pid"])
        return {"podman service": [pid] if pid else []}


class PodmanPrecreated(EnginePool, PodmanRuntime):
    """`podman:precreated`: containers created and initialized ahead, `start` timed."""

    cold = PodmanRuntime


PodmanRuntime.pooled = PodmanPrecreated


if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from harness.core.image import EngineStore
    from runtimes.base import Exec, Networks, Pool, Runtime, RuntimeClass

    _instance: Runtime = PodmanRuntime()
    _class: RuntimeClass = PodmanRuntime
    _store: EngineStore = PodmanRuntime()  # it lends its store to EngineRef image sources
    _networks: Networks = PodmanRuntime()  # it runs stacks: private networks with names, exec
    _exec: Exec = PodmanRuntime()
    _pool: Pool = PodmanPrecreated("precreated")
