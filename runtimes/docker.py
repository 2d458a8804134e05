"""`docker`: the workload in a container of a real dockerd, through the docker SDK.

Flavours select the OCI runtime dockerd hands the container to: `docker` (runc, the
default), `docker:crun`, `docker:runsc` (gVisor; registered with --network=none and the
ptrace platform by scripts/provision.d/30-docker.sh, so only network "none" is offered),
`docker:ns` (cvbench-ns, ns's OCI command line: scripts/provision.d/27-cvbench-ns.sh),
`docker:swarm` (replicated services of Docker's orchestrator: `runtimes/swarm.py`),
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
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Self, cast

from harness.core.errors import BackendUnavailable
from harness.core.probes.memory import daemon_pid, pids_of
from runtimes import _swarm
from runtimes._engine import _ERRORS, Engine, EnginePool, _short, daemon_rlimits
from runtimes.base import NO_HOOKS, Hooks, Leftover
from runtimes.ns.config import DEFAULT_CAPS


class DockerRuntime(Engine):
    base = "docker"
    name = "docker"
    flavours: ClassVar[tuple[str, ...]] = ("crun", "runsc", "ns", "precreated", "swarm")
    default_runtime = "runc"
    daemon_binary = "dockerd"
    package = "docker.io"
    socket_env = "DOCKER_HOST"
    default_socket = "unix:///run/docker.sock"
    log_hint = "/var/log/cvbench/dockerd.log"
    wait_note = "POST wait (dockerd answers on containerd's exit event)"
    # a swarm's services before the containers they keep and their networks; the swarm
    # a run made last
    gc_order: ClassVar[tuple[str, ...]] = ("service", "container", "image", "network",
                                           "vlan-parent", "volume", "swarm")

    def __new__(cls, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> Self:
        if flavour == "swarm":  # its own class: a ReplicaSets (imported here: it is one)
            from runtimes.swarm import DockerSwarm

            return cast(Self, object.__new__(DockerSwarm))
        return super().__new__(cls, flavour, hooks=hooks)

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """The engine's, plus docker:swarm's: the services of dead runs, and the swarm a
        run made once no run that uses it is live (runtimes/_swarm.py)."""
        found = super().leftovers(live_runs)
        try:
            found += [Leftover(self.base, "service", name, run)
                      for name, run in _swarm.service_leftovers(self.api, live_runs)]
        except _ERRORS as e:
            raise BackendUnavailable(self.base, f"cannot list services: {_short(e)}") from e
        made = _swarm.leftover(live_runs)
        return found + ([made] if made else [])

    def remove_leftover(self, item: Leftover, live_runs: Sequence[str]) -> bool | None:
        if item.kind == "service":
            _swarm.remove_service(self.api, item.name)
            return None
        if item.kind == "swarm":  # False: a run registered meanwhile, kept
            return _swarm.leave(_swarm.ApiDaemon(self.api), live_runs)
        return super().remove_leftover(item, live_runs)

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
