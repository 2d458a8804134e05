"""`docker`: the workload in a container of a real dockerd, through the docker SDK.

Flavours select the OCI runtime dockerd hands the container to: `docker` (runc, the
default), `docker:crun`, `docker:runsc` (gVisor; registered with --network=none and the
ptrace platform by scripts/provision.d/30-docker.sh, so only network "none" is offered),
`docker:ns` (cvbench-ns, ns's OCI command line: scripts/provision.d/27-cvbench-ns.sh),
and `docker:precreated`: runc with a pool of containers created (and attached) ahead, so
that `start` is the timed path (`runtimes/_engine.py` EnginePool: the Pool protocol the
warm study fills).
The mapping of the InstanceSpec, the image import and the phases are those of
`runtimes/_engine.py`; dockerd creates the OCI container in start, not at attach.

Host processes of an instance: its containerd-shim-runc-v2 (one per container, found by
`-id <container id>` on its command line) and everything below it, plus the container's
memory cgroup (/sys/fs/cgroup/memory/docker/<id> with cgroupfs); dockerd and the
containerd it supervises are the daemons, reported apart: each found by the process that
listens on its socket (the client's socket; /run/docker/containerd/containerd.sock for a
containerd dockerd runs itself, else /run/containerd/containerd.sock), else its systemd
unit's MainPID (docker.service, containerd.service: a socket-activated dockerd's socket
is systemd's), else its pid file (/run/docker.pid, /run/docker/containerd/containerd.pid).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from harness.core.probes.memory import daemon_pid, pids_of
from runtimes._engine import Engine, EnginePool, daemon_rlimits
from runtimes.ns.config import DEFAULT_CAPS


class DockerRuntime(Engine):
    base = "docker"
    name = "docker"
    flavours: ClassVar[tuple[str, ...]] = ("crun", "runsc", "ns", "precreated")
    default_runtime = "runc"
    daemon_binary = "dockerd"
    package = "docker.io"
    socket_env = "DOCKER_HOST"
    default_socket = "unix:///run/docker.sock"
    log_hint = "/var/log/cvbench/dockerd.log"
    wait_note = "POST wait (dockerd answers on containerd's exit event)"

    def _runtime_fix(self) -> str:
        return ("scripts/provision.d/30-docker.sh registers crun, runsc and cvbench-ns in "
                "/etc/docker/daemon.json and reloads dockerd: run `make provision`")

    def wait(self, cid: str, timeout: float) -> int:
        return int(self.api.wait(cid, timeout=math.ceil(timeout))["StatusCode"])

    def shim_pids(self, cid: str) -> list[int]:
        return pids_of("containerd-shim", f" -id {cid}")

    def daemons(self) -> dict[str, list[int]]:
        dockerd = daemon_pid([self.socket_path], ["docker.service"], ["/run/docker.pid"])
        containerd = daemon_pid(
            ["/run/docker/containerd/containerd.sock", "/run/containerd/containerd.sock"],
            ["containerd.service"], ["/run/docker/containerd/containerd.pid"])
        return {"dockerd": [dockerd] if dockerd else [],
                "containerd": [containerd] if containerd else []}

    def security(self) -> list[str]:
        # dockerd's defaults (moby oci/caps/defaults.go, oci/defaults.go): not in its API
        return [f"capabilities: {', '.join(DEFAULT_CAPS)} (moby's default set)",
                "seccomp: dockerd's built-in default (profile=default)",
                "no_new_privs: no", "user namespace: no (no userns-remap)",
                f"devices: {self.runtime}'s device cgroup from dockerd's default allow-list",
                *(f"rlimits: none set, containerd's (pid {p}) inherited: {daemon_rlimits(p)}"
                  for p in self.daemons()["containerd"][:1])]


class DockerPrecreated(EnginePool, DockerRuntime):
    """`docker:precreated`: containers created ahead, `start` timed (EnginePool)."""

    cold = DockerRuntime


DockerRuntime.pooled = DockerPrecreated


if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from harness.core.image import EngineStore
    from runtimes.base import Exec, Networks, Pool, Runtime, RuntimeClass

    _instance: Runtime = DockerRuntime()
    _class: RuntimeClass = DockerRuntime
    _store: EngineStore = DockerRuntime()  # it lends its store to EngineRef image sources
    _networks: Networks = DockerRuntime()  # it runs stacks: private networks with names, exec
    _exec: Exec = DockerRuntime()
    _pool: Pool = DockerPrecreated("precreated")
