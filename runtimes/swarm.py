"""`docker:swarm`: replicated services of Docker's orchestrator on this dockerd.

A Runtime that is also a `ReplicaSets` (runtimes.base): the scale study asks it for a
service of N replicas behind one front, the routing mesh's where the kernel has IPVS.
Without IPVS (this machine's kernel) the routing mesh cannot work (neither the ingress
nor a service VIP): the service is made with endpoint mode `dnsrr` and no published
port, `deploy` returns "" (no front of its own) and the scale study puts the replicas
behind its own HAProxy; swarm still schedules, scales and rolls them, and the traits
say which front it is (settings.swarm.front). Single instances are not
what it is for: `create` raises NotApplicable (a study of one container measures
`docker`), so every other study closes its cells with that reason, but for the stack
study, which deploys its stacks as swarm stacks (below); `prepare` imports the image
as `docker` does.

Swarm state (runtimes/_swarm.py): the first replica set of a run makes this daemon a
single-node swarm if it is in none (`docker swarm init`, listening and advertising on
publish_address(), the source address of the default route; CVBENCH_SWARM_ADDR
overrides it), recorded in a state file so that `bench gc` leaves it (`swarm leave
--force`, and removes the docker_gwbridge the init made) once the run is over, also
after Ctrl-C; a daemon that already is a manager is used as it is and only the run's
labelled services and networks are removed from it. A worker is refused (availability).

A replica set `name` of run R:
  deploy  -> an overlay network `cvbench-R-<name>` (label cvbench.run=R) and the service
             `cvbench-R-<name>` (same label) with 0 replicas: ContainerSpec image =
             the image's id (`sha256:...`: a node never asks a registry for an id, and
             runs only the very image; a node without it fails the task: `docker
             service ps` says why), command /bench/init + argv, env (with
             CVBENCH_NONCE), workdir, hostname, user; limits cpus -> NanoCPUs, memory ->
             MemoryBytes (pids, cpuset and rlimits are not in a swarm task's resources
             here: not applied); with IPVS, the spec's port published through the
             ingress with a port swarm picks (30000-32767), else endpoint mode dnsrr
             and nothing published; `max_per_node` (set before deploy) is
             Placement.MaxReplicas, to spread replicas over nodes. The front:
             publish_address():published, or "" without IPVS. docker-py's low-level client sends the
             spec as it is, so, as `--no-resolve-image`, nothing resolves the image
             against a registry (the CLI's resolving is its own, client-side).
  scale   -> service update Mode.Replicated.Replicas = n
  update  -> service update of ContainerSpec.Image (the new id), UpdateConfig
             parallelism 1, order start-first (also set at deploy)
  replicas-> the service's tasks in state running (details: the task, the container, the
             image, its overlay addresses by network): node ("" for this node, else its
             hostname), the container's processes on this node (its shim and the
             processes of its memory cgroup), and an address the host reaches: its
             endpoint on docker_gwbridge (each task container on an overlay has one; the
             overlay address itself is not routed from the host), or None on another
             node, `details` saying why
  close   -> remove the service, wait until its containers are gone, remove the network

A compose document deploys as a stack (`deploy_document`, `deploy_stack` for a file:
`docker stack deploy --resolve-image never`, as `cvbench-<run id>-<name>`, its services,
networks (the implicit `default` one too) and volumes labelled with the run in a copy;
the stack study writes the document from the resolved stack). `stack_tasks` reads each
service's newest task and its container (running, health, docker_gwbridge address);
`remove_stack` removes the services, waits until their containers are gone and removes
the networks and volumes; `bench gc` finds what a dead run left by the labels (services,
then networks and volumes, then the swarm the run made).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import docker
import yaml
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Placement,
    Resources,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)

from harness.core.errors import InstanceError, NotApplicable, UsageError
from harness.core.probes import memory
from runtimes import _swarm
from runtimes._engine import _ERRORS, _short, environment
from runtimes._swarm import ApiDaemon, remove_service
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    RUN_LABEL,
    Availability,
    Hooks,
    Instance,
    InstanceSpec,
    Json,
    Prepared,
    Replica,
    Replicas,
    Traits,
    check_run_id,
    publish_address,
)
from runtimes.docker import DockerRuntime


def ipvs_problem(proc: Path = Path("/proc"), modules: Path = Path("/lib/modules")) -> str | None:
    """Why this kernel cannot balance the routing mesh (IPVS, which dockerd programs in
    the ingress sandbox; without it a published port is never answered and dockerd only
    logs "Could not get ipvs family information"), or None: IPVS loaded
    (/proc/net/ip_vs) or there to load (built in or a module of the running kernel)."""
    if (proc / "net/ip_vs").exists():
        return None
    release = os.uname().release
    mods = modules / release
    with contextlib.suppress(OSError):
        if "ip_vs.ko" in (mods / "modules.builtin").read_text() or \
                any(mods.glob("kernel/net/netfilter/ipvs/ip_vs.ko*")):
            return None
    return (f"the kernel ({release}) has no IPVS (CONFIG_IP_VS): the routing mesh's "
            "ingress never answers a published port")


def front() -> str:
    """What fronts a service here: the routing mesh, or (no IPVS) the scale study's
    HAProxy over the replicas' own addresses."""
    if ipvs_problem() is None:
        return "routing mesh (ingress)"
    return "haproxy (no IPVS on this kernel: swarm's routing mesh unavailable)"


def swarm_addr() -> str:
    return os.environ.get("CVBENCH_SWARM_ADDR") or publish_address()


class SwarmService:
    """One replicated service of a run (the Replicas protocol); see the module doc."""

    def __init__(self, rt: DockerSwarm, run_id: str, name: str) -> None:
        self.rt = rt
        self.run_id = check_run_id(run_id)
        self.name = f"{PREFIX}{run_id}-{name}"
        self.sid: str | None = None
        self.port = 0  # published through the ingress (0: none, no routing mesh)
        self.target = 0  # the replicas' own port
        # at most this many replicas on one node (0: no limit): replicas spread over
        # the nodes of a swarm of several (Placement.MaxReplicas), set before deploy
        self.max_per_node = 0

    @property
    def api(self) -> Any:  # docker-py's service and task calls are untyped
        return self.rt.api

    def deploy(self, spec: InstanceSpec, prepared: Prepared, port: int) -> str:
        self.rt.check(spec)
        self.rt.join(self.run_id)
        labels = {RUN_LABEL: self.run_id}
        lim = spec.limits
        resources = Resources(
            cpu_limit=int(lim.cpus * 1e9) if lim.cpus is not None else None,
            mem_limit=lim.memory)
        template = TaskTemplate(
            ContainerSpec(prepared.ref, command=["/bench/init"], args=list(spec.argv),
                          env=[f"{k}={v}" for k, v in environment(spec).items()],
                          workdir=spec.workdir, hostname=spec.hostname,
                          user=spec.user or None),
            resources=resources,
            placement=Placement(maxreplicas=self.max_per_node or None),
            restart_policy=docker.types.RestartPolicy(condition="on-failure"))
        self.target = port
        mesh = ipvs_problem() is None
        # no PublishedPort: swarm picks a free one (30000-32767). Without IPVS neither
        # the ingress nor a VIP works: DNS round robin, nothing published, no front
        endpoint = EndpointSpec(ports=cast(Any, [{"Protocol": "tcp", "TargetPort": port}])) \
            if mesh else EndpointSpec(mode="dnsrr")
        with _errors("deploy"):
            try:
                self.api.inspect_network(self.name)
            except docker.errors.NotFound:
                self.api.create_network(self.name, driver="overlay", labels=labels)
            self.sid = str(self.api.create_service(
                template, name=self.name, labels=labels, mode=ServiceMode("replicated", 0),
                networks=[self.name],
                update_config=UpdateConfig(parallelism=1, order="start-first"),
                endpoint_spec=endpoint)["ID"])
            ports = self.api.inspect_service(self.sid)["Endpoint"].get("Ports") or []
        if not mesh:
            return ""
        self.port = int(ports[0]["PublishedPort"])
        return f"{publish_address()}:{self.port}"

    def _update(self, what: str, **kw: Any) -> None:
        if self.sid is None:
            raise InstanceError(f"{self.name}: not deployed")
        for attempt in range(5):  # another update between inspect and ours: again
            with _errors(what):
                version = self.api.inspect_service(self.sid)["Version"]["Index"]
                try:
                    self.api.update_service(self.sid, version, fetch_current_spec=True, **kw)
                    return
                except docker.errors.APIError as e:
                    if "out of sequence" not in str(e) or attempt == 4:
                        raise

    def scale(self, n: int) -> None:
        self._update("scale", mode=ServiceMode("replicated", n))

    def update(self, prepared: Prepared) -> None:
        # (docker-py merges ContainerSpec keys into the current spec: only the image)
        template = cast(TaskTemplate, {"ContainerSpec": {"Image": prepared.ref}})
        self._update("update", task_template=template,
                     update_config=UpdateConfig(parallelism=1, order="start-first"))

    def replicas(self) -> list[Replica]:
        if self.sid is None:
            return []
        with _errors("tasks"):
            tasks = self.api.tasks(filters={"service": self.sid, "desired-state": "running"})
            here = _swarm_node(self.api)
            gw = _gwbridge(self.api)
        out = []
        names: dict[str, str] = {}
        for t in tasks:
            status = t.get("Status") or {}
            if status.get("State") != "running":
                continue
            node = str(t.get("NodeID") or "")
            cid = str((status.get("ContainerStatus") or {}).get("ContainerID") or "")
            details: dict[str, Json] = {"task": str(t["ID"]), "container": cid[:12],
                                        "image": str(t["Spec"]["ContainerSpec"]["Image"]),
                                        "overlay": _overlay_addresses(t)}
            if node != here:
                if node not in names:
                    with _errors("node"):
                        names[node] = str(self.api.inspect_node(node)["Description"]
                                          ["Hostname"])
                details["address"] = ("on another node: its overlay address is not "
                                      "routed from this host")
                out.append(Replica(id=str(t["ID"]), node=names[node], details=details))
                continue
            ip = gw.get(cid)
            if ip is None:
                details["address"] = "no docker_gwbridge endpoint found for the container"
            else:
                details["address"] = ("its docker_gwbridge endpoint (the overlay address "
                                      "is not routed from the host)")
            out.append(Replica(id=str(t["ID"]), node="",
                               address=f"{ip}:{self.target}" if ip else None,
                               pids=container_pids(self.rt, cid), details=details))
        return out

    def close(self) -> None:
        with _errors("close"):
            remove_service(self.api, self.name)
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_network(self.name)
        self.sid = None


def _gwbridge(api: Any) -> dict[str, str]:
    """Container id -> its address on docker_gwbridge (this node's containers)."""
    try:
        found = api.inspect_network(_swarm.GWBRIDGE).get("Containers") or {}
    except docker.errors.NotFound:
        return {}
    return {cid: str(c.get("IPv4Address", "")).split("/")[0]
            for cid, c in found.items() if c.get("IPv4Address")}


def container_pids(rt: DockerSwarm, cid: str) -> tuple[int, ...]:
    """A task container's processes on this node: its shim's and its memory cgroup's."""
    try:
        pid = int(cast(Any, rt.api).inspect_container(cid)["State"].get("Pid") or 0)
    except docker.errors.NotFound:
        return ()
    cg = memory.memory_cgroup(pid) if pid else None
    pids = set(memory.cgroup_procs(cg)) if cg else set()
    for shim in rt.shim_pids(cid):
        pids.update(memory.descendants(shim))
    return tuple(sorted(pids))


def _overlay_addresses(task: dict[str, Any]) -> dict[str, Json]:
    """The task's addresses ("ip/prefix") by overlay network (ingress, the run's)."""
    return {str(n["Network"]["Spec"]["Name"]): [str(a) for a in n.get("Addresses") or ()]
            for n in task.get("NetworksAttachments") or ()}


def _swarm_node(api: docker.APIClient) -> str:
    return str((api.info().get("Swarm") or {}).get("NodeID") or "")


@contextlib.contextmanager
def _errors(what: str) -> Any:
    try:
        yield
    except _ERRORS as e:
        raise InstanceError(f"docker:swarm: {what} failed: {_short(e)}") from e


def labelled_stack(doc: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A compose document with every service (deploy.labels), network and volume
    (labels) labelled cvbench.run=<run id>, so `bench gc` finds what `docker stack
    deploy` makes from it like any service, network and volume of a run. The `default`
    network a service without `networks` is put on is declared, to be labelled too."""
    out = dict(doc)
    services = {}
    implicit = False  # a service on the stack's default network without naming it
    for name, svc in (doc.get("services") or {}).items():
        svc = dict(svc or {})
        implicit = implicit or not svc.get("networks")
        deploy = dict(svc.get("deploy") or {})
        deploy["labels"] = {**_mapping(deploy.get("labels")), RUN_LABEL: run_id}
        svc["deploy"] = deploy
        services[name] = svc
    out["services"] = services
    for top in ("networks", "volumes"):
        declared = dict(doc.get(top) or {})
        if top == "networks" and implicit:
            declared.setdefault("default", None)
        labelled = {}
        for name, opts in declared.items():
            opts = dict(opts or {})
            if not opts.get("external"):
                opts["labels"] = {**_mapping(opts.get("labels")), RUN_LABEL: run_id}
            labelled[name] = opts
        if labelled:
            out[top] = labelled
    return out


def _mapping(labels: Any) -> dict[str, Any]:
    """Compose labels as a mapping (they may be a list of "k=v")."""
    if isinstance(labels, list):
        return dict(str(x).partition("=")[::2] for x in labels)
    return dict(labels or {})


def stack_name(run_id: str, name: str) -> str:
    return f"{PREFIX}{check_run_id(run_id)}-{name}"


def deploy_stack(rt: DockerSwarm, run_id: str, name: str, compose: Path) -> str:
    """`docker stack deploy` of a compose file as the stack `cvbench-<run id>-<name>`
    (deploy_document); the swarm made or found as for a replica set. The stack's name."""
    try:
        doc = yaml.safe_load(compose.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{compose}: cannot read the compose file: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise UsageError(f"{compose}: services: a compose file needs a services mapping")
    rt.join(run_id)
    return deploy_document(rt, run_id, name, doc, compose.parent, str(compose))


def deploy_document(rt: DockerSwarm, run_id: str, name: str, doc: dict[str, Any],
                    where: Path | None = None, what: str = "the stack") -> str:
    """`docker stack deploy` of a compose document, its services, networks and volumes
    labelled with the run (labelled_stack), images never resolved against a registry
    (`--resolve-image never`: local images only), on a daemon that already is a swarm
    manager (DockerSwarm.join). The labelled copy is written in `where` (relative paths
    in it, env_file or configs, stay relative to the same directory), else in a
    temporary directory. A deploy that failed is removed again (InstanceError with the
    CLI's message)."""
    stack = stack_name(run_id, name)
    with tempfile.TemporaryDirectory(prefix="cvbench-stack-") as tmp, \
            tempfile.NamedTemporaryFile("w", suffix=".yml", dir=where or tmp,
                                        prefix=".cvbench-stack-") as f:
        yaml.safe_dump(labelled_stack(doc, run_id), f)
        f.flush()
        res = subprocess.run(["docker", "-H", f"unix://{rt.socket_path}", "stack", "deploy",
                              "--resolve-image", "never", "-c", f.name, stack],
                             capture_output=True, text=True, check=False)
    if res.returncode != 0:
        remove_stack(rt, stack)
        raise InstanceError(f"docker:swarm: stack deploy of {what}: "
                            f"{(res.stderr or res.stdout).strip()[-400:]}")
    return stack


def remove_stack(rt: DockerSwarm, stack: str, timeout: float = _swarm.GONE_TIMEOUT) -> None:
    """Remove a stack's services, wait until their containers on this node are gone,
    then remove its networks and volumes (`docker stack rm` leaves volumes: these are
    the run's, fresh for each stack)."""
    api = cast(Any, rt.api)
    ns = {"label": f"{STACK_LABEL}={stack}"}
    with _errors("stack rm"):
        for svc in api.services(filters=ns):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_service(svc["ID"])
        deadline = time.monotonic() + timeout
        while api.containers(all=True, filters=ns):
            if time.monotonic() > deadline:
                raise InstanceError(f"stack {stack}: its containers are still there after "
                                    f"{timeout:g} s")
            time.sleep(0.1)
        daemon = ApiDaemon(api)  # (its removal waits for endpoints that are going)
        for net in api.networks(filters=ns):
            daemon.remove_network(net["Id"])
        for vol in api.volumes(filters=ns).get("Volumes") or []:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(vol["Name"], force=True)


STACK_LABEL = "com.docker.stack.namespace"
TASK_ENDED = ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")


@dataclass(frozen=True)
class StackTask:
    """The current task of one service of a stack, as dockerd shows it."""

    service: str  # the stack's name for it (without the stack's prefix)
    task: str
    state: str  # swarm's task state (new ... starting, running, complete, failed...)
    error: str  # the task's error (Status.Err), if any
    container: str  # its container on this node ("" not yet, or on another node)
    running: bool  # the container is running (dockerd's state)
    health: str  # its healthcheck's status ("" without one): starting|healthy|unhealthy
    address: str | None  # its docker_gwbridge address (the host reaches it there)
    failed: int = 0  # the service's earlier tasks that failed (the restart policy's turns)


def stack_tasks(rt: DockerSwarm, stack: str) -> list[StackTask]:
    """Each service's newest task (one replica each) with its container's state."""
    api = cast(Any, rt.api)
    out = []
    with _errors("stack tasks"):
        here = _swarm_node(api)
        gw = _gwbridge(api)
        for svc in api.services(filters={"label": f"{STACK_LABEL}={stack}"}):
            tasks = api.tasks(filters={"service": svc["ID"]})
            if not tasks:
                continue
            t = max(tasks, key=_newest)
            status = t.get("Status") or {}
            cid = str((status.get("ContainerStatus") or {}).get("ContainerID") or "")
            running, health = False, ""
            if cid and str(t.get("NodeID") or "") == here:
                with contextlib.suppress(docker.errors.NotFound):
                    state = api.inspect_container(cid)["State"]
                    running = bool(state.get("Running"))
                    health = str((state.get("Health") or {}).get("Status") or "")
            else:
                cid = ""
            out.append(StackTask(
                service=str(svc["Spec"]["Name"]).removeprefix(f"{stack}_"),
                task=str(t["ID"]), state=str(status.get("State") or ""),
                error=str(status.get("Err") or ""), container=cid, running=running,
                health=health, address=gw.get(cid),
                failed=sum(1 for x in tasks if x is not t and
                           (x.get("Status") or {}).get("State") in ("failed", "rejected"))))
    return out


def _newest(task: dict[str, Any]) -> tuple[bool, str, str]:
    """A task's order among its service's: the one swarm wants running, then the last
    created (CreatedAt's fraction has as many digits as it needs: padded to compare)."""
    head, _, frac = str(task.get("CreatedAt", "")).rstrip("Z").partition(".")
    return task.get("DesiredState") == "running", head, frac.ljust(9, "0")


def published_port(rt: DockerSwarm, stack: str, service: str, target: int) -> int | None:
    """The port the routing mesh publishes a stack service's `target` port on."""
    with _errors("service inspect"):
        try:
            spec = cast(Any, rt.api).inspect_service(f"{stack}_{service}")
        except docker.errors.NotFound:
            return None
    for p in (spec.get("Endpoint") or {}).get("Ports") or ():
        if p.get("TargetPort") == target and p.get("PublishedPort"):
            return int(p["PublishedPort"])
    return None


def container_logs(rt: DockerSwarm, cid: str, tail: int | None = 200) -> bytes:
    """A task container's output (stdout and stderr), its last `tail` lines (None: all)."""
    with contextlib.suppress(docker.errors.NotFound):
        return bytes(cast(Any, rt.api).logs(cid, stdout=True, stderr=True,
                                            tail="all" if tail is None else tail))
    return b""


class DockerSwarm(DockerRuntime):
    """`docker:swarm` (see the module doc)."""

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        super().__init__(flavour, hooks=hooks)
        self.oci_flavour = None  # the daemon's default runtime: swarm is no OCI runtime
        self.runtime = self.default_runtime
        self.used: _swarm.Use | None = None

    def availability(self) -> Availability:
        a = super().availability()
        if not a.ok:
            return a
        m = ApiDaemon(self.api).membership()
        if m.state == "active" and not m.manager:
            return Availability(ok=False, versions=a.versions, details=a.details,
                                reason="this dockerd is a swarm worker (services are "
                                       "made on a manager)",
                                fix="run bench on a manager, or `docker swarm leave` here")
        if m.state not in ("active", "inactive"):
            return Availability(ok=False, versions=a.versions, details=a.details,
                                reason=f"this dockerd's swarm state is {m.state!r}",
                                fix="see `docker info` (Swarm:)")
        return a

    def traits(self) -> Traits:
        t = super().traits()
        m = ApiDaemon(self.api).membership()
        made = _swarm.leftover(())  # the record of a swarm a run made, whoever uses it
        swarm: dict[str, Json] = {
            "state": m.state, "nodes": m.nodes if m.state == "active" else 1,
            "daemon_version": str(self._server.get("Version", "?")),
            "made_by_run": self.used.made if self.used else m.state == "inactive",
            "maker": made.run_id if made else None,
            "front": front()}
        return Traits(kind="container", protections=t.protections,
                      not_applied=frozenset({"limits.pids", "limits.cpuset",
                                             "limits.rlimits", "mounts", "network.none",
                                             "network.host"}),
                      settings={**t.settings, "swarm": swarm,
                                "single_instances": "not applicable: docker:swarm runs "
                                                    "replicated services (scale) and "
                                                    "swarm stacks (stack)"})

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        raise NotApplicable("docker:swarm runs replicated services only (`bench run "
                            "scale`); one container is measured as `docker`")

    def join(self, run_id: str, addr: str | None = None) -> _swarm.Use:
        """The daemon made (or found) a swarm manager for `run_id` (see _swarm.use); a
        swarm it makes listens on `addr` (default: swarm_addr())."""
        with _errors("swarm"):
            self.used = _swarm.use(ApiDaemon(self.api), run_id, addr or swarm_addr())
        return self.used

    def replica_set(self, run_id: str, name: str) -> Replicas:
        return SwarmService(self, run_id, name)


if TYPE_CHECKING:  # mypy holds the backend to the protocols
    from runtimes.base import ReplicaSets, Runtime

    _instance: Runtime = DockerSwarm("swarm")
    _sets: ReplicaSets = DockerSwarm("swarm")
    _replicas: Replicas = SwarmService(DockerSwarm("swarm"), "0000000000", "x")
