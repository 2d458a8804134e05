"""stack: a multi-service stack brought up, measured and torn down, once per sample.

Placements (the variant key `placement`):
  per-service  one instance per service on the private networks of the sample its
               service names (`InstanceSpec.network_name`, `more_networks`: one per
               network of the stack, "default" unless the stack names others), each
               reachable by its service name and aliases on the networks it is on, and
               from no other. On docker:swarm the same placement is a swarm stack
               (below): each service is still its own container, so it is the same
               cell's placement under another backend, not a placement of its own
  single-vm    (VM backends) one Debian VM whose image is the union of the services'
               Debian packages; every service is a process of its own user in it,
               started through the backend's exec channel (a stack of several
               networks: not applicable, one network stack cannot keep them apart)

Services start in dependency order as compose starts them: a service is created once
every service it depends on has started (`service_started`: its ready line arrived; in
a single VM: the exec that started it returned), is healthy (`service_healthy`: its
healthcheck passed) or has exited with status 0 (`service_completed_successfully`: a
one-shot service, e.g. a migration; in a single VM its exec is awaited; an exit status
other than 0 fails the sample). Healthchecks run inside the instance through `Exec.exec`, as
`docker exec` runs them, the first one `interval` after the service started (Docker's
rule); a service's readiness (tcp, http: from the host against its address; log: its
output; marker: its ready line) is probed every `probe_interval`. A service that fails
its healthcheck `retries` times after `start_period`, or is not ready within the
sample's timeout, fails the sample with every service's output kept in the event, and
the stack is torn down.

Figures, on the host's monotonic clock, from t0 = the first create call (the first
service's; in a single VM, the VM's; on docker:swarm, the deploy call):
  stack.start              t0 -> the front service answers its readiness probe
  stack.vm_boot            (single VM) t0 -> the VM's ready line, before any service
  stack.service.created    t0 -> that service's create call (sub `service=<name>`)
  stack.service.started    t0 -> its ready line (single VM: its exec returned)
  stack.service.ready      t0 -> its readiness answered
  stack.service.healthy    t0 -> its healthcheck passed (services that have one)
  stack.service.completed  t0 -> it exited with status 0 (services others wait for so)
  stack.teardown           removing every instance and the network
  stack.memory.pss|uss|rss every host process of the stack once all are ready (per
                           service too, where a service has processes of its own), and
                           stack.memory.daemon: the engine's daemons, apart
  stack.disk.image         the distinct images as the backend stores them
  stack.disk.instance      what the instances wrote (writable layers, VM overlays)
  (a front that publishes its readiness port on the host, "8080:80", answers params.request
   there too: the artifact "front_published_response")
  stack.e2e.rps, .lat_p50, .lat_p99
                           with params.load_seconds > 0: wrk from the host (pinned to
                           params.client_cpuset) against params.request at the front, once
                           the stack is up: requests/s and latency end to end, through
                           every service the request crosses

docker:swarm (per-service): the stack deployed at once with `docker stack deploy`
(runtimes.swarm.deploy_document) as `cvbench-<run id>-stack<N>`, one stack per sample,
from the resolved stack written as a compose document (swarm_document): each service the
image every other backend runs, named by its id (`sha256:...`, `--resolve-image never`:
the same digest, no registry), through /bench/init with its resolved command, env, user,
workdir, limits (deploy.resources), mounts and healthcheck (run by dockerd), one replica
on this host's node (a placement constraint: a swarm of several nodes keeps the stack
here, as every other backend's), restart policy on-failure (at most RESTARTS failed
tasks, then the sample fails), on the stack's networks as overlay networks with the
service's aliases (a compose file's container_name and links' aliases among them: names
`docker stack deploy` would ignore in a file still resolve), every service, network and
volume labelled with the run (labelled_stack: `bench gc` finds them). What swarm does
not do: depends_on is ignored (Docker documents it): every service starts at once, and
one whose dependency is not up yet exits and is started again (nginx resolving its
upstream): each service's times are of the task that came up, with the failed ones
before it as `task_restarts` beside them; service_completed_successfully: not applicable
(swarm runs services, not one-shot jobs). A `build:` was built by the run before (its
image id is what the stack names). Where the kernel has IPVS, the front's ports are
published through the routing mesh and the host asks the front there; without IPVS (this
machine's kernel) neither the ingress nor a service's VIP works: every service gets
endpoint mode dnsrr (its name resolves to its task's own address), nothing is published,
and the host asks each service at its task container's address on docker_gwbridge, as
docker:swarm's replicas are reached (stack.start says which in its `front`). The times
are observed by polling dockerd (a round every 50 ms at least, as long as its API calls
take: the times' resolution): started = the task's container seen running, healthy =
dockerd's healthcheck seen passed, ready = its readiness answered from the host (marker,
log: its ready line or pattern seen in the container's output). Memory is read from the
task containers on this host (their shim's and memory cgroup's processes). The event
"stack_figures_absent" says, once per cell, what is absent and why (SWARM_ABSENT):
stack.service.created (one deploy call for all), stack.service.completed, depends_on
ordering, stack.disk.instance. Teardown: remove_stack (the services; their containers
gone, stopped with the same 0.5 s grace; then the networks and volumes). The swarm
itself is the run's (DockerSwarm.join, before t0: a `swarm init` is not in the first
sample's figures) or found and left untouched.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, cast

from harness.core.errors import InstanceError, NotApplicable, ReadyTimeout
from harness.core.image import PATH_ENV, Debian, Image, Source, source_from_dict
from harness.core.probes import loadgen, memory, serving
from harness.core.probes.timing import now_ns
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario, Service, Workload
from harness.studies import Base, Build, Study
from harness.studies import _lifecycle as life
from harness.studies._server import run_tool
from runtimes.base import (
    READY_PREFIX,
    Exec,
    Exit,
    Instance,
    Limits,
    Mount,
    Networks,
    Prepared,
    Runtime,
    publish_address,
)
from runtimes.swarm import (
    TASK_ENDED,
    DockerSwarm,
    StackTask,
    container_logs,
    container_pids,
    deploy_document,
    ipvs_problem,
    published_port,
    remove_stack,
    stack_name,
    stack_tasks,
)
from runtimes.swarm import front as swarm_front

UNION = "@single-vm"  # the name of a single-VM stack's image among a cell's images
LOG_TAIL = 4000  # characters of each service's output kept with a failed sample
SINGLE_VM_SLEEP = ("sleep", "infinity")  # the VM's own workload: it only holds the VM up
STOP_GRACE = 0.5  # seconds a service is given to stop at teardown
RESTARTS = 10  # docker:swarm: failed tasks of a service before the sample fails


class StackRuntime(Runtime, Networks, Exec, Protocol):
    """A backend that runs stacks: private networks with names, and exec."""


def sub(service: str) -> str:
    return f"service={service}"


# --- images ------------------------------------------------------------------------

def debian_of(img: Image) -> Debian | None:
    """The Debian source of an image: its own, or, for an image exported by `bench image
    export` and loaded into an engine, the one it records it was made from."""
    if isinstance(img.source, Debian):
        return img.source
    exported = img.identity.get("exported_from") or {}
    src = exported.get("source") if isinstance(exported, Mapping) else None
    if isinstance(src, Mapping) and src.get("kind") == "debian":
        found = source_from_dict(src)
        return found if isinstance(found, Debian) else None
    return None


def union_source(services: Sequence[Service], images: Mapping[str, Image]
                 ) -> tuple[Debian | None, str]:
    """The Debian image of a single-VM stack (the union of its services' packages) or
    None and why there is none."""
    found: list[Debian] = []
    for s in services:
        d = debian_of(images[s.name])
        if d is None:
            return None, (f"service {s.name}'s image ({images[s.name].source.describe()}) "
                          "is not made of Debian packages: a single VM holds the union of "
                          "the services' packages")
        found.append(d)
    if len({(d.suite, d.mirror) for d in found}) > 1:
        return None, "the services' Debian images are of different suites or mirrors"
    return Debian(suite=found[0].suite, mirror=found[0].mirror,
                  packages=tuple(sorted({p for d in found for p in d.packages}))), ""


def images(scen: Scenario, build: Callable[[Source], Image]) -> dict[str, Image]:
    """Every service's image and, when a variant places the stack in one VM and it can
    be made, the union image (UNION)."""
    out = {s.name: build(s.workload.image) for s in scen.services}
    if any(scen.config(v).placement == "single-vm" for v in scen.variants):
        union, _ = union_source(scen.services, out)
        if union is not None:
            out[UNION] = build(union)
    return out


def wanted(name: str, rt: Runtime, kind: str) -> bool:
    """Whether backend `rt` (of Traits.kind `kind`) prepares image `name`: a stack runs
    only where instances get a private network and exec; the union only in VMs."""
    if not (isinstance(rt, Networks) and isinstance(rt, Exec)):
        return False
    return kind == "vm" if name == UNION else True


def resolved(scen: Scenario, imgs: Mapping[str, Image]) -> dict[str, Any]:
    """The stack as it runs: each service with its image's defaults filled in and the
    digest of what runs, without where the image came from (a compose stack and the
    TOML one it mirrors resolve alike)."""
    out = {}
    for s in scen.services:
        w = s.workload.resolved(imgs[s.name])
        d = replace(s, workload=replace(w, image=Debian())).as_dict()
        d["workload"].pop("image")
        d["image_digest"] = imgs[s.name].digest
        out[s.name] = d
    return {"front": scen.front, "services": out}


# --- the services of one sample ----------------------------------------------------

@dataclass
class Running:
    """One service of the sample being taken: where it runs and when things happened."""

    service: Service
    workload: Workload  # resolved against the image it runs on
    inst: Instance | None = None  # its own instance (per-service placement)
    created: int | None = None
    started: int | None = None
    ready: int | None = None
    healthy: int | None = None
    completed: int | None = None  # exited with status 0 (service_completed_successfully)
    exiting: Future[Exit] | None = None  # the wait for that exit (per-service)
    starting: Future[int] | None = None  # the wait for its ready line (per-service)
    check: Future[tuple[bool, int]] | None = None  # the healthcheck under way
    next_check: float = 0.0
    failures: int = 0
    checks: list[str] = field(default_factory=list)
    task: str = ""  # docker:swarm: the task its times are of
    restarts: int = 0  # docker:swarm: its tasks that failed before that one

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def probe(self) -> serving.Readiness:
        return serving.parse(self.workload.readiness)

    @property
    def done(self) -> bool:
        return self.ready is not None and (self.service.healthcheck is None
                                           or self.healthy is not None)


class Stack:
    """Bring a stack up in one cell, poll it, and take it down; subclassed per placement."""

    def __init__(self, ctx: Context, cell: Cell, rt: StackRuntime, net: str) -> None:
        self.ctx, self.cell, self.rt, self.net = ctx, cell, rt, net
        # the stack's networks (in the order services name them) -> the sample's
        names = dict.fromkeys(n for s in cell.config.services for n in s.networks)
        self.nets = {n: net if i == 0 else f"{net}-{i}" for i, n in enumerate(names)}
        self.services: dict[str, Running] = {}
        self.instances: list[Instance] = []
        # What blocks (a ready line, a healthcheck's exec: seconds in an emulated VM) runs
        # in threads, so no service's times wait on another's; execs into one instance
        # (the single VM's agent) take turns.
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stack")
        self.exec_locks: dict[int, threading.Lock] = {}

    # what a placement provides
    def start(self, r: Running) -> None:
        raise NotImplementedError

    def reach(self, r: Running) -> tuple[str | None, int]:
        """Where the host asks a service on its readiness port: address, port."""
        return self.rt.address(self.where(r)), r.probe.port

    def where(self, r: Running) -> Instance:
        raise NotImplementedError

    def answered(self, r: Running) -> int | None:
        """One readiness attempt; when it answered (monotonic ns) or None."""
        probe = r.probe
        if not probe.serving:
            return r.started
        inst = self.where(r)
        if probe.kind == "log":
            with contextlib.suppress(ReadyTimeout):
                return int(self.rt.wait_output(inst, re.compile(probe.pattern.encode()),
                                               0.0))
            return None
        address, _ = self.reach(r)
        if address is None:
            raise InstanceError(f"{r.name}: {probe}: no address the host can reach")
        if serving.answers(probe, address):
            return time.monotonic_ns()
        if (why := life.ended(self.rt, inst)()) is not None:  # gone: no use waiting
            raise InstanceError(f"service {r.name}: {probe}: the instance {why}, before it "
                                "answered", self.logs())
        return None

    def exec(self, inst: Instance, argv: Sequence[str], w: Workload, timeout: float,
             detach: bool = False) -> Exit:
        with self.exec_locks.setdefault(id(inst), threading.Lock()):
            return self.rt.exec(inst, argv, user=w.user or "", env=dict(w.env),
                                workdir=w.workdir or "/", timeout=timeout, detach=detach)

    def healthcheck(self, r: Running) -> tuple[bool, int]:
        """One check (in a thread): whether it passed, and when it returned."""
        hc = r.service.healthcheck
        assert hc is not None
        try:
            ex = self.exec(self.where(r), hc.test, r.workload, hc.timeout)
        except InstanceError as e:  # a check that timed out failed, as Docker counts it
            r.checks.append(f"no exit: {e}")
            return False, now_ns()
        r.checks.append(f"exit {ex.code}: {ex.stdout[-200:].decode(errors='replace')}")
        return ex.code == 0, now_ns()

    def logs(self) -> dict[str, str]:
        """Every instance's output so far (it is stopped to be read)."""
        out = {}
        for inst in self.instances:
            try:
                self.rt.stop(inst, grace=0.5)
                ex = self.rt.wait_exit(inst, 10.0)
                text = (ex.stdout + ex.stderr).decode(errors="replace")
            except Exception as e:  # the failure is reported all the same
                text = f"(its output could not be read: {e})"
            out[inst.spec.hostname] = text[-LOG_TAIL:]
        for r in self.services.values():
            if r.checks:
                out[f"{r.name} healthchecks"] = "\n".join(r.checks[-5:])
        return out

    def memory(self) -> list[Measurement]:
        raise NotImplementedError

    # the schedule
    def up(self, order: Sequence[Service], t_deadline: float) -> None:
        pending = list(order)
        interval = self.ctx.probe_interval
        while True:
            for s in list(pending):
                if all(self._met(dep, cond) for dep, cond in s.depends_on):
                    pending.remove(s)
                    self.start(self.services[s.name])
            for r in self.services.values():
                if r.started is None and r.starting is not None and r.starting.done():
                    try:
                        r.started = r.starting.result()
                    except InstanceError as e:
                        raise InstanceError(f"service {r.name}: {e}", self.logs()) from e
                if r.started is None:
                    continue
                if r.ready is None:
                    r.ready = self.answered(r)
                self._check(r)
                self._exit(r)
            if not pending and all(r.done for r in self.services.values()):
                return
            if time.monotonic() > t_deadline:
                late = [r.name for r in self.services.values() if not r.done]
                late += [s.name for s in pending if s.name not in late]
                raise InstanceError(f"not ready within {self.ctx.timeout:g} s: "
                                    f"{', '.join(late)}", self.logs())
            time.sleep(interval)

    def _check(self, r: Running) -> None:
        """Docker's rule: the first check `interval` after the start, the next one
        `interval` after the last returned; failures count after `start_period`."""
        hc = r.service.healthcheck
        if hc is None or r.healthy is not None or r.started is None:
            return
        if r.check is None:
            if not r.next_check:
                r.next_check = r.started * 1e-9 + hc.interval
            if time.monotonic() >= r.next_check:
                r.check = self.pool.submit(self.healthcheck, r)
            return
        if not r.check.done():
            return
        ok, t = r.check.result()
        r.check = None
        if ok:
            r.healthy = t
            return
        if (t - r.started) * 1e-9 >= hc.start_period:
            r.failures += 1
        if r.failures >= hc.retries:
            raise InstanceError(f"service {r.name} is unhealthy: its healthcheck failed "
                                f"{r.failures} times ({r.checks[-1]})", self.logs())
        r.next_check = time.monotonic() + hc.interval

    def _exit(self, r: Running) -> None:
        """A service others wait for to complete: its exit, awaited in a thread."""
        if r.exiting is None or not r.exiting.done() or r.completed is not None:
            return
        try:
            ex = r.exiting.result()
        except InstanceError as e:
            raise InstanceError(f"service {r.name} did not exit: {e}", self.logs()) from e
        if ex.code != 0:
            raise InstanceError(f"service {r.name} exited with status {ex.code} (services "
                                "wait for it to complete successfully)", self.logs())
        r.completed = ex.t_ns

    def awaited(self, r: Running) -> bool:
        """Whether a service waits for `r` to complete (service_completed_successfully)."""
        return any(dep == r.name and cond == "service_completed_successfully"
                   for s in self.cell.config.services for dep, cond in s.depends_on)

    def _met(self, dep: str, cond: str) -> bool:
        r = self.services[dep]
        if cond == "service_completed_successfully":
            return r.completed is not None
        return r.healthy is not None if cond == "service_healthy" else r.started is not None

    def down(self) -> None:
        """Remove every instance, then the network. A removal that failed is an event
        ("cleanup_failed", with the reason) and its instance stays tracked: the runner's
        clean-up tries it again, and `bench gc` finds what is left."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        errors = []
        for inst in reversed(self.instances):
            try:
                self.rt.stop(inst, grace=STOP_GRACE)
                self.rt.remove(inst)
            except Exception as e:  # remove the others all the same
                errors.append(f"{inst.spec.name}: {e}")
                continue
            self.ctx.untrack(inst)
        for net in dict.fromkeys([self.net, *self.nets.values()]):
            try:
                self.rt.remove_network(self.ctx.run_id, net)
            except Exception as e:
                errors.append(f"network {net}: {e}")
        if errors:
            self.ctx.event("cleanup_failed", backend=self.cell.backend,
                           variant=self.cell.variant.name, errors=errors)
            raise InstanceError("tearing the stack down: " + "; ".join(errors))

    def volumes(self, mounts: Sequence[Mount]) -> tuple[Mount, ...]:
        """The services' named volumes, fresh for every sample (a stack's first start)."""
        return tuple(replace(m, source=f"{self.net}-{m.source}") if m.type == "volume"
                     else m for m in mounts)


class PerService(Stack):
    def start(self, r: Running) -> None:
        s, w = r.service, r.workload
        nets = [self.nets[n] for n in s.networks]
        spec = self.ctx.spec(
            self.cell, argv=w.command, env=dict(w.env), limits=s.limits, network="bridge",
            network_name=nets[0], more_networks=tuple(nets[1:]), hostname=s.name,
            aliases=(s.name, *s.aliases), publish=published(s),
            mounts=self.volumes(s.mounts), readiness=w.readiness, workdir=w.workdir or "/",
            user=w.user or "", capture=True, agent=s.healthcheck is not None)
        r.created = now_ns()
        inst = self.rt.create(spec, self.cell.images[s.name])
        self.ctx.track(self.cell, inst)
        self.instances.append(inst)
        r.inst = inst
        self.rt.start(inst)
        r.starting = self.pool.submit(self.rt.wait_ready, inst, self.ctx.timeout)
        if self.awaited(r):
            r.exiting = self.pool.submit(self._wait_exit, inst, r.starting)

    def _wait_exit(self, inst: Instance, starting: Future[int]) -> Exit:
        starting.result()  # (its ready line first: one reader of its output at a time)
        return self.rt.wait_exit(inst, self.ctx.timeout)

    def where(self, r: Running) -> Instance:
        assert r.inst is not None
        return r.inst

    def memory(self) -> list[Measurement]:
        out: list[Measurement] = []
        pids: set[int] = set()
        for r in self.services.values():
            if r.completed is not None:  # (exited: no process left to read)
                continue
            st = life.memory_of(self.rt, self.where(r))
            pids.update(st.pids)
            out += [Measurement("stack.memory.pss", st.pss, variant=sub(r.name)),
                    Measurement("stack.memory.uss", st.uss, variant=sub(r.name))]
        return [*out, *_totals(memory.processes_memory(sorted(pids)))]


class SingleVm(Stack):
    """Every service a process of the one VM, started through exec as its own user."""

    def boot(self, order: Sequence[Service]) -> int:
        """Create and boot the VM; when its ready line came (monotonic ns)."""
        union = self.cell.images[UNION]
        mounts = [m for s in order for m in self.volumes(s.mounts)]
        if len({m.target for m in mounts}) != len(mounts):
            raise NotApplicable("two services mount the same path: one VM cannot hold both")
        limits = [s.limits for s in order]
        spec = self.ctx.spec(
            self.cell, argv=SINGLE_VM_SLEEP, env={}, limits=Limits(
                cpus=sum(x.cpus for x in limits if x.cpus) or None
                if all(x.cpus for x in limits) else None,
                memory=sum(x.memory for x in limits if x.memory) or None
                if all(x.memory for x in limits) else None),
            network="bridge", network_name=self.net, hostname=self.cell.config.front,
            aliases=tuple(dict.fromkeys(a for s in order for a in (s.name, *s.aliases))),
            mounts=tuple(mounts), readiness="marker",
            workdir="/", user="", capture=True, agent=True)
        self.vm: Instance = self.rt.create(spec, union)
        self.ctx.track(self.cell, self.vm)
        self.instances.append(self.vm)
        self.rt.start(self.vm)
        return self.rt.wait_ready(self.vm, self.ctx.timeout)

    def start(self, r: Running) -> None:
        w = r.workload
        r.created = now_ns()
        once = self.awaited(r)  # (then its exec is awaited: its exit is its completion)
        ex = self.exec(self.vm, w.command, w, self.ctx.timeout, detach=not once)
        if ex.code != 0:
            raise InstanceError(f"service {r.name} did not {'complete' if once else 'start'}"
                                f" in the VM: exit {ex.code}: {ex.stdout[-300:]!r}",
                                self.logs())
        r.started = now_ns()
        if once:
            r.completed = r.started

    def where(self, r: Running) -> Instance:
        return self.vm

    def memory(self) -> list[Measurement]:
        return _totals(life.memory_of(self.rt, self.vm))


# --- docker:swarm: the stack deployed as a swarm stack ---------------------------------

# What a stack on docker:swarm does not measure, and why (the event "stack_figures_absent")
SWARM_ABSENT = {
    "stack.service.created": "`docker stack deploy` creates every service in one call: "
                             "there is no create call of a service's own",
    "stack.service.completed": "swarm runs services, not one-shot jobs (a stack with "
                               "service_completed_successfully is not applicable)",
    "depends_on": "`docker stack deploy` ignores depends_on (Docker documents it): every "
                  "service starts at once, in no order",
    "stack.disk.instance": "the tasks' containers are swarm's, not instances of the run "
                           "(their writable layers are not read)",
}


def swarm_document(services: Sequence[Service], workloads: Mapping[str, Workload],
                   refs: Mapping[str, str], nonce: str, mesh: bool,
                   node: str = "") -> dict[str, Any]:
    """The stack as a compose document for `docker stack deploy`: each service runs the
    image the other backends run, by its id (`refs`: the prepared refs, `sha256:...`),
    through /bench/init with its resolved workload, one replica, on the stack's networks
    (overlay) with its aliases (container_name and links' aliases among them), its
    limits, mounts and healthcheck (dockerd runs it). Restart policy on-failure (at most
    RESTARTS times, 100 ms apart): swarm starts every service at once, and one whose
    dependency is not up yet (nginx resolving its upstream) exits and is started again,
    as swarm is meant to run a stack; the study counts those restarts. Without the routing mesh
    (`mesh` False: no IPVS) a service VIP does not work either: endpoint mode dnsrr (names
    resolve to the tasks' own addresses) and nothing published. `node`: the swarm node
    every task is placed on (this host's, as every other backend's instances are)."""
    out: dict[str, Any] = {"version": "3.8", "services": {}}
    networks: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for s in services:
        w = workloads[s.name]
        deploy: dict[str, Any] = {"replicas": 1, "restart_policy": {
            "condition": "on-failure", "delay": "100ms", "max_attempts": RESTARTS}}
        if not mesh:
            deploy["endpoint_mode"] = "dnsrr"
        if node:
            deploy["placement"] = {"constraints": [f"node.id == {node}"]}
        lim = {k: v for k, v in (("cpus", None if s.limits.cpus is None else
                                  f"{s.limits.cpus:g}"),
                                 ("memory", None if s.limits.memory is None else
                                  str(s.limits.memory))) if v is not None}
        if lim:
            deploy["resources"] = {"limits": lim}
        svc: dict[str, Any] = {
            "image": refs[s.name], "entrypoint": ["/bench/init"],
            "command": list(w.command),
            "environment": {"PATH": PATH_ENV, "CVBENCH_NONCE": nonce, **dict(w.env)},
            "hostname": s.name, "deploy": deploy,
            # (the other backends' teardown stops with the same grace: swarm's is 10 s)
            "stop_grace_period": _duration(STOP_GRACE),
            "networks": {n: {"aliases": list(s.aliases)} if s.aliases else None
                         for n in s.networks}}
        networks.update({n: {"driver": "overlay"} for n in s.networks})
        if w.user:
            svc["user"] = w.user
        if w.workdir:
            svc["working_dir"] = w.workdir
        if mesh and s.ports:
            svc["ports"] = [{"target": p.container, "protocol": p.protocol, "mode": "ingress",
                             **({"published": p.host} if p.host else {})}
                            for p in s.ports if p.host is not None]
        mounts = []
        for m in s.mounts:
            mount: dict[str, Any] = {"type": m.type, "target": m.target,
                                     "read_only": m.readonly}
            if m.type == "tmpfs":
                mount.pop("read_only")
                if m.size:
                    mount["tmpfs"] = {"size": m.size}
            else:
                mount["source"] = m.source
            if m.type == "volume":
                volumes[str(m.source)] = {}
            mounts.append(mount)
        if mounts:
            svc["volumes"] = mounts
        if hc := s.healthcheck:
            svc["healthcheck"] = {"test": ["CMD", *hc.test], "interval": _duration(hc.interval),
                                  "timeout": _duration(hc.timeout), "retries": hc.retries,
                                  "start_period": _duration(hc.start_period)}
        out["services"][s.name] = svc
    out["networks"] = networks
    if volumes:
        out["volumes"] = volumes
    return out


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class SwarmStack(Stack):
    """The stack deployed at once with `docker stack deploy` (docker:swarm), observed by
    polling dockerd: the services' tasks, their containers and healthchecks."""

    def __init__(self, ctx: Context, cell: Cell, rt: DockerSwarm, net: str) -> None:
        super().__init__(ctx, cell, rt, net)
        self.swarm = rt
        self.stack = stack_name(ctx.run_id, net)  # known before the deploy: down() finds it
        self.mesh = ipvs_problem() is None
        self.front = cell.config.front
        self.tasks: dict[str, StackTask] = {}  # service -> its task, as last seen
        self.nonce = secrets.token_hex(8)  # of the ready line, as an instance's

    @property
    def front_label(self) -> str:
        """How the host reaches the front (labels stack.start)."""
        if self.mesh:
            return "routing mesh (ingress): the front's published port, else its task"
        return ("the front task's own address on docker_gwbridge (" + swarm_front()
                .removeprefix("haproxy (").removesuffix(")") + "; endpoint mode dnsrr)")

    def deploy(self, order: Sequence[Service]) -> None:
        doc = swarm_document(order, {n: r.workload for n, r in self.services.items()},
                             {s.name: self.cell.images[s.name].ref for s in order},
                             self.nonce, self.mesh, self.swarm.used.node
                             if self.swarm.used else "")
        deploy_document(self.swarm, self.ctx.run_id, self.net, doc)

    def up(self, order: Sequence[Service], t_deadline: float) -> None:
        interval = max(self.ctx.probe_interval, 0.05)  # (each round asks dockerd)
        while True:
            for t in stack_tasks(self.swarm, self.stack):
                r = self.services.get(t.service)
                if r is None:
                    continue
                self.tasks[r.name] = t
                if t.failed > RESTARTS or (t.failed == RESTARTS and t.state in TASK_ENDED):
                    raise InstanceError(
                        f"service {r.name}: {t.failed} of its tasks failed, the last one "
                        f"{t.state}" + (f": {t.error}" if t.error else ""), self.logs())
                if t.task != r.task:  # a task of its own again (the last one failed)
                    r.task, r.started, r.ready, r.healthy = t.task, None, None, None
                    r.restarts = t.failed
                if r.started is None and t.running:
                    r.started = now_ns()
                if r.started is None:
                    continue
                if r.ready is None:
                    r.ready = self.answered(r)
                if r.service.healthcheck and r.healthy is None and t.health == "healthy":
                    r.healthy = now_ns()
            if all(r.done for r in self.services.values()):
                return
            if time.monotonic() > t_deadline:
                late = [r.name for r in self.services.values() if not r.done]
                raise InstanceError(f"not ready within {self.ctx.timeout:g} s: "
                                    f"{', '.join(late)}", self.logs())
            time.sleep(interval)

    def reach(self, r: Running) -> tuple[str | None, int]:
        """The front through the routing mesh's published port where the kernel has
        IPVS and the front publishes its readiness port; else (and every other service)
        the task's own address on docker_gwbridge."""
        port = r.probe.port
        if self.mesh and r.name == self.front and \
                (published := published_port(self.swarm, self.stack, r.name, port)):
            return publish_address(), published
        t = self.tasks.get(r.name)
        return (t.address if t else None), port

    def answered(self, r: Running) -> int | None:
        probe = r.probe
        if probe.kind in ("marker", "log"):  # its ready line, or the pattern, in its output
            t = self.tasks[r.name]
            out = container_logs(self.swarm, t.container, tail=None) if t.container else b""
            found = READY_PREFIX + self.nonce.encode() in out if probe.kind == "marker" \
                else re.search(probe.pattern.encode(), out) is not None
            return now_ns() if found else None
        if not probe.serving:
            return r.started
        address, port = self.reach(r)
        if address is None:
            return None  # (no docker_gwbridge endpoint yet)
        return now_ns() if serving.answers(replace(probe, port=port), address) else None

    def logs(self) -> dict[str, str]:
        """Each service's task output, and its task's state and error."""
        out = {}
        with contextlib.suppress(InstanceError):
            for t in stack_tasks(self.swarm, self.stack):
                text = container_logs(self.swarm, t.container).decode(errors="replace") \
                    if t.container else "(no container on this node)"
                out[t.service] = (f"task {t.state}{': ' + t.error if t.error else ''}\n"
                                  + text)[-LOG_TAIL:]
        return out

    def memory(self) -> list[Measurement]:
        out: list[Measurement] = []
        pids: set[int] = set()
        for name, t in self.tasks.items():
            if not t.container:  # (on another node: not this host's memory)
                continue
            found = container_pids(self.swarm, t.container)
            pids.update(found)
            m = memory.processes_memory(sorted(found))
            out += [Measurement("stack.memory.pss", m.pss, variant=sub(name)),
                    Measurement("stack.memory.uss", m.uss, variant=sub(name))]
        return [*out, *_totals(memory.processes_memory(sorted(pids)))]

    def down(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            remove_stack(self.swarm, self.stack)
        except Exception as e:  # `bench gc` finds what is left by the run's labels
            self.ctx.event("cleanup_failed", backend=self.cell.backend,
                           variant=self.cell.variant.name, errors=[str(e)])
            raise InstanceError(f"tearing the stack {self.stack} down: {e}") from e


class StackStudy(Base):
    name = "stack"
    metrics: ClassVar[dict[str, str]] = {
        "stack.start": "s", "stack.service.": "s", "stack.teardown": "s", "stack.vm_boot": "s",
        "stack.memory.": "B", "stack.disk.": "B", "stack.e2e.rps": "req/s",
        "stack.e2e.lat_p50": "s", "stack.e2e.lat_p99": "s"}
    # request: a path GET from the front once the stack is up (on the port of its http
    # readiness); its answer is kept as an artifact ("front_response") and must match
    # `expect` (a regular expression), or the sample fails: the stack answered end to end.
    # load_seconds > 0: wrk with load_connections connections against the request.
    params: ClassVar[dict[str, Any]] = {"request": "", "expect": "", "load_seconds": 0,
                                        "load_connections": 8, "client_cpuset": "0"}

    def __init__(self) -> None:
        super().__init__()
        self._said: set[tuple[str, str, str]] = set()  # cells told what swarm lacks

    def images(self, s: Scenario, build: Build) -> dict[str, Image]:
        return images(s, build) if s.services else {}

    def runs_image(self, name: str, rt: Runtime, kind: str) -> bool:
        return wanted(name, rt, kind)

    def header(self, s: Scenario, images: Mapping[str, Image],
               prepared: Mapping[str, Mapping[str, Prepared]]) -> dict[str, Any]:
        """The resolved stack, each image (the single-VM union too) and how each backend
        prepared it."""
        if not s.services:
            return {}
        return {"stack": {**resolved(s, images), "images": {
            n: {**img.as_dict(), "prepared": {
                b: {"ref": per[n].ref, "footprint": dict(per[n].footprint)}
                for b, per in prepared.items() if n in per}} for n, img in images.items()}}}

    def check_params(self, scen: Scenario) -> list[tuple[str, str]]:
        p = dict(scen.params)
        out = []
        if p.get("request") and not str(p["request"]).startswith("/"):
            out.append(("params.request", "must be a path starting with /"))
        if float(p.get("load_seconds", 0)) > 0 and not p.get("request"):
            out.append(("params.load_seconds", "needs params.request (what wrk asks for)"))
        if float(p.get("load_seconds", 0)) > 0 and shutil.which("wrk") is None:
            out.append(("params.load_seconds", "wrk is not installed (make provision)"))
        if p.get("request") and serving.parse(scen.workload.readiness).kind != "http":
            out.append(("params.request", "needs the front's readiness to be http:PORT/PATH "
                                          "(its port is where the request goes)"))
        with contextlib.suppress(re.error):
            re.compile(str(p.get("expect", "")))
            return out
        return [*out, ("params.expect", "is not a valid regular expression")]

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        cfg = cell.config
        if not (isinstance(cell.runtime, Networks) and isinstance(cell.runtime, Exec)):
            raise NotApplicable(f"{cell.backend} gives its instances no private network "
                                "with names and no exec: a stack needs both")
        rt = cast(StackRuntime, cell.runtime)
        order = cfg.services
        if cfg.placement == "single-vm":
            if cell.traits.kind != "vm":
                raise NotApplicable("single-vm places the whole stack in one virtual "
                                    f"machine; {cell.backend} is a {cell.traits.kind}")
            if UNION not in cell.images:
                _, why = union_source(order, {n: p.image for n, p in cell.images.items()})
                raise NotApplicable(why or "the union image was not prepared")
            if len({n for s in order for n in s.networks}) > 1:
                raise NotApplicable("single-vm runs every service on the VM's one network "
                                    "stack: the stack's networks could not keep services "
                                    "apart")
            stack: Stack = SingleVm(ctx, cell, rt, _net(ctx))
            base = cell.images[UNION].image
            stack.services = {s.name: Running(s, s.workload.resolved(base)) for s in order}
        elif isinstance(cell.runtime, DockerSwarm):
            if any(c == "service_completed_successfully" for s in order
                   for _, c in s.depends_on):
                raise NotApplicable("docker:swarm: " + SWARM_ABSENT["stack.service.completed"])
            stack = SwarmStack(ctx, cell, cell.runtime, _net(ctx))
            self._absent(ctx, cell, stack)
            cell.runtime.join(ctx.run_id)  # (a swarm init, the first time: before t0)
        else:
            stack = PerService(ctx, cell, rt, _net(ctx))
        if not isinstance(stack, SingleVm):
            stack.services = {s.name: Running(s, s.workload.resolved(cell.images[s.name].image))
                              for s in order}
        try:
            # t0: the first create (a single VM's, or the first service's); the deploy call
            t0 = now_ns()
            booted = stack.boot(order) if isinstance(stack, SingleVm) else None
            if isinstance(stack, SwarmStack):
                stack.deploy(order)
            stack.up(order, time.monotonic() + ctx.timeout)
            out = self._times(stack, t0, cfg.front)
            if booted is not None:
                out.append(Measurement("stack.vm_boot", (booted - t0) * 1e-9))
            out += self._load(ctx, stack, cfg.front, self._request(ctx, stack, cfg.front))
            out += stack.memory()
            out.append(Measurement("stack.memory.daemon",
                                   memory.processes_memory(life.daemon_pids(rt)).pss))
            out += self._disk(stack)
        except BaseException as e:
            try:
                stack.down()
            except Exception as down:  # recorded by down(); the first error is the cause
                e.add_note(str(down))
            raise
        t_down = now_ns()
        stack.down()
        out.append(Measurement("stack.teardown", (now_ns() - t_down) * 1e-9))
        return out

    def _absent(self, ctx: Context, cell: Cell, stack: SwarmStack) -> None:
        """Say once per cell which figures docker:swarm does not give and why, and which
        front the host asks (the routing mesh, or the task's own address)."""
        key = (ctx.run_id, cell.backend, cell.variant.name)
        if key in self._said:
            return
        self._said.add(key)
        ctx.event("stack_figures_absent", backend=cell.backend, variant=cell.variant.name,
                  figures=SWARM_ABSENT, front=stack.front_label)

    @staticmethod
    def _load(ctx: Context, stack: Stack, front: str, body: int) -> list[Measurement]:
        """wrk against the front (its answers at least as long as the first one)."""
        seconds = float(ctx.params.get("load_seconds", 0))
        if seconds <= 0:
            return []
        address, port = stack.reach(stack.services[front])
        url = f"http://{address}:{port}{ctx.params['request']}"
        argv = loadgen.wrk_args(url, duration=seconds,
                                connections=int(ctx.params.get("load_connections", 8)))
        text, code = run_tool(ctx, argv, {"client_cpuset": ctx.params.get("client_cpuset", "0")},
                              seconds + 30, "wrk")
        run = loadgen.parse_wrk(text)
        loadgen.check_wrk(run, body)
        if code != 0:
            raise loadgen.LoadFailed("wrk", f"exit status {code}", run.counts)
        return [Measurement("stack.e2e.rps", run.rps),
                Measurement("stack.e2e.lat_p50", run.latency["50"]),
                Measurement("stack.e2e.lat_p99", run.latency["99"])]

    @staticmethod
    def _request(ctx: Context, stack: Stack, front: str) -> int:
        """The end-to-end check: GET params.request from the front, kept, matched; the
        length of the body."""
        path, expect = str(ctx.params.get("request", "")), str(ctx.params.get("expect", ""))
        if not path:
            return 0
        r = stack.services[front]
        address, port = stack.reach(r)
        ask = [("front_response", address or "", port)]
        if isinstance(stack, PerService):  # and where the front publishes that port
            ask += [("front_published_response", publish_address(), host)
                    for host, port in published(r.service) if port == r.probe.port]
        size = 0
        for kind, addr, port in ask:
            status, body = serving.fetch(addr, port, path)
            ctx.artifact(kind, {"path": path, "status": status, "body": body[:LOG_TAIL],
                                "port": port})
            if status != 200 or (expect and not re.search(expect, body)):
                raise InstanceError(f"the front answered {path} at {addr}:{port} with "
                                    f"{status}: {body[:300]!r}"
                                    + (f", not matching {expect!r}" if expect else ""),
                                    stack.logs())
            size = size or len(body.encode())
        return size

    @staticmethod
    def _times(stack: Stack, t0: int, front: str) -> list[Measurement]:
        out = []
        for r in stack.services.values():
            for metric, t in (("created", r.created), ("started", r.started),
                              ("ready", r.ready), ("healthy", r.healthy),
                              ("completed", r.completed)):
                if t is not None:
                    out.append(Measurement(f"stack.service.{metric}", (t - t0) * 1e-9,
                                           variant=sub(r.name), extra={
                                               "task_restarts": r.restarts} if r.task
                                           else None))
        ready = stack.services[front].ready
        assert ready is not None
        label = {"front": stack.front_label} if isinstance(stack, SwarmStack) else None
        return [Measurement("stack.start", (ready - t0) * 1e-9, extra=label), *out]

    @staticmethod
    def _disk(stack: Stack) -> list[Measurement]:
        used = {stack.cell.images[UNION].ref: stack.cell.images[UNION]} \
            if isinstance(stack, SingleVm) else \
            {stack.cell.images[n].ref: stack.cell.images[n] for n in stack.services}
        out = []
        if all("image" in p.footprint for p in used.values()):  # a part unread: no sum
            out.append(Measurement("stack.disk.image",
                                   sum(p.footprint["image"] for p in used.values())))
        sizes = [stack.rt.disk_usage(i) for i in stack.instances]
        if any(s is not None for s in sizes):
            # (None: an instance without a writable layer on disk, by the protocol: 0 bytes)
            out.append(Measurement("stack.disk.instance", sum(s or 0 for s in sizes)))
        return out


def published(s: Service) -> tuple[tuple[int, int], ...]:
    """The service's ports with a host port given ("8080:80"), as (host, container);
    one without (a port the engine would pick) is not published."""
    return tuple((p.host, p.container) for p in s.ports if p.host and p.protocol == "tcp")


def _totals(m: Any) -> list[Measurement]:
    """The stack's memory: PSS, USS and RSS of all its host processes together."""
    return [Measurement(f"stack.memory.{k}", getattr(m, k)) for k in ("pss", "uss", "rss")]


def _net(ctx: Context) -> str:
    """A network name of its own for the sample (fresh DNS, addresses, volumes)."""
    ctx.counter += 1
    return f"stack{ctx.counter}"


STUDY: Study = StackStudy()
