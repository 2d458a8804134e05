"""overlay: what a swarm's overlay network (VXLAN) costs between two docker daemons,
against the same two hosts over their plain network.

Two daemons: this host's dockerd (`docker:swarm`, the manager) and a second host's, the
worker, reached over ssh (`params.worker`: an ssh destination, `user@host` or `host`,
checked strictly: scenarios are untrusted). Every worker-side step is `ssh -o
BatchMode=yes [-F $CVBENCH_SSH_CONFIG] <worker> docker ...`; CVBENCH_SSH_CONFIG (an ssh
configuration file: key, known hosts) is the user's environment, never the scenario's.
Without a worker every cell is not applicable ("needs a second docker daemon:
params.worker"); a backend other than docker:swarm too.

One sample, from nothing to nothing (the study framework has no per-cell set-up or
tear-down, so the worker joins and leaves in every sample):

  1. the worker's dockerd must be in no swarm (else the sample fails: leave it by hand);
     its CPU model is read (/proc/cpuinfo) and it is labelled TCG when emulated (QEMU's
     "QEMU TCG CPU" model, or systemd-detect-virt --vm saying "qemu": hostinfo's rule)
  2. the workload image goes to the worker (`docker save | ssh docker load`) unless it
     holds that very image id already; loaded by the sample, removed by it at the end
  3. this dockerd made (or found) a swarm manager (DockerSwarm.join: a swarm it makes is
     recorded and left at the end of the run, as `bench gc` does; a found one is left
     as found), made on `advertise[0]`; the worker joins it with the worker token,
     advertising `advertise[1]`; a found swarm with other nodes is refused (replicas
     must land on exactly these two), and one running services besides the run's (the
     worker would take some of their tasks)
  4. a service of 2 replicas, at most one per node (Placement.MaxReplicas 1), on the
     run's overlay network, each running the sockperf and iperf3 servers
  5. path=overlay: from the replica on this host (`docker exec`), sockperf ping-pong and
     iperf3 against the worker's replica's overlay address
  6. path=plain: the same servers on the worker (a container with network host), the
     same clients and binaries (the image's, in a container with network host here)
     against the worker's address `advertise[1]`
  7. always (also on failure and a second Ctrl-C): the service and its network removed
     (the network tried again once the worker left, if its task still held it),
     the plain server removed, the worker leaves (`docker swarm leave --force`), the
     image it loaded removed, the docker_gwbridge its join made removed, its node removed
     from the manager; then the worker is checked to be in no swarm and without that
     docker_gwbridge (else the sample fails saying so)

  overlay.lat_p50, overlay.lat_p99   sockperf's one-way latency percentiles (s)
  overlay.bw                         iperf3's received bytes/s

each of sub-variant `path=overlay` or `path=plain`; every figure carries the worker's
CPU model (`worker_cpu`), `worker_tcg`, its node name and both addresses. The raw tool
outputs are kept as artifacts. Ports 11111 (sockperf) and 15201 (iperf3; Debian runs an
iperf3 service on 5201) must be free on the worker's host network.

A run killed with SIGKILL (no `finally`) leaves on the worker: its swarm membership
(and docker_gwbridge), the plain server `cvbench-<run>-plain<N>` and the loaded image.
`bench gc` here leaves the run's swarm (only this host is in its reach); on the worker:
`docker swarm leave --force`, `docker network rm docker_gwbridge` (if it was not there
before), `docker rm -f $(docker ps -aq --filter label=cvbench.run=<run>)` and `docker
image rm <image id>` (the result's header:
backends.docker:swarm.prepared.ref).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from harness.core.errors import InstanceError, NotApplicable, ReadyTimeout
from harness.core.probes.io import parse_json
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from harness.studies.network import iperf3_bandwidth, sockperf_latency
from runtimes._swarm import GWBRIDGE
from runtimes.base import RUN_LABEL, InstanceSpec
from runtimes.swarm import DockerSwarm, SwarmService, swarm_addr

METRICS = {"overlay.lat_p50": "s", "overlay.lat_p99": "s", "overlay.bw": "B/s"}
PATHS = ("overlay", "plain")
NEEDS_WORKER = "needs a second docker daemon: params.worker"
SSH_CONFIG = "CVBENCH_SSH_CONFIG"
LAT_PORT, BW_PORT = 11111, 15201  # (Debian 13 runs an iperf3 service on 5201)
# sockperf allocates a slot per possible descriptor (RLIMIT_NOFILE): under a daemon's
# unlimited default (about 2^30) it fails with ENOMEM on a small host
ULIMIT = "ulimit -n 65536; "
SERVERS = (f"{ULIMIT}sockperf sr --tcp -p {LAT_PORT} >/dev/null 2>&1 & "
           f"exec iperf3 -s -p {BW_PORT} >/dev/null 2>&1")
# user@host or host: no option (leading '-'), no space, nothing a shell or ssh's own
# tokens (%) would read
_DEST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


def check_worker(dest: str) -> str | None:
    """Why `dest` is not an ssh destination the study accepts, or None."""
    if not _DEST.fullmatch(dest):
        return (f"must be an ssh destination user@host or host (letters, digits, '.', "
                f"'_', '-', ':'; no leading '-', no spaces), not {dest!r}")
    return None


def host_of(dest: str) -> str:
    return dest.rpartition("@")[2]


def addresses(p: dict[str, Any]) -> tuple[str, str]:
    """(manager's, worker's) address: `advertise`, else CVBENCH_SWARM_ADDR or the
    default route's source address here, and the worker destination's host (an IP
    address: check_params refuses a name without `advertise`)."""
    adv = [str(a) for a in p["advertise"]]
    return (adv[0] if adv else swarm_addr()), (adv[1] if adv else host_of(str(p["worker"])))


def is_tcg(cpu_model: str, detect_virt: str) -> bool:
    """hostinfo.emulated_cpu's rule, on the worker's answers."""
    return "QEMU TCG CPU" in cpu_model or detect_virt.strip() == "qemu"


def figures(lat_text: str, bw_json: str) -> dict[str, float]:
    """The path's figures from sockperf's and iperf3's raw outputs."""
    lat = sockperf_latency(lat_text)
    return {"overlay.lat_p50": lat["50.000"], "overlay.lat_p99": lat["99.000"],
            "overlay.bw": iperf3_bandwidth(parse_json(bw_json))}


class Worker:
    """The second daemon, over ssh (see the module doc)."""

    def __init__(self, dest: str, timeout: float) -> None:
        if (why := check_worker(dest)) is not None:  # (validated before: never trusted)
            raise InstanceError(f"overlay: params.worker {why}")
        self.dest = dest
        self.timeout = timeout

    def argv(self, cmd: str) -> list[str]:
        cfg = os.environ.get(SSH_CONFIG)
        return ["ssh", "-o", "BatchMode=yes", *(["-F", cfg] if cfg else []), self.dest, cmd]

    def run(self, cmd: str, *, check: bool = True, stdin: int | None = None) -> str:
        try:
            res = subprocess.run(self.argv(cmd), capture_output=True, text=True, stdin=stdin,
                                 timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise InstanceError(f"overlay: on the worker {self.dest}: {cmd}: no answer "
                                f"within {self.timeout:g} s") from e
        if check and res.returncode != 0:
            raise InstanceError(f"overlay: on the worker {self.dest}: {cmd}: exit "
                                f"{res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}")
        return res.stdout

    def swarm_state(self) -> str:
        return self.run("docker info --format '{{.Swarm.LocalNodeState}}'").strip()

    def has_image(self, ref: str) -> bool:
        return self.run(f"docker image inspect -f '{{{{.Id}}}}' {shlex.quote(ref)}",
                        check=False).strip() == ref

    def has_network(self, name: str) -> bool:
        return bool(self.run(f"docker network ls -q --filter name=^{name}$").strip())

    def load(self, docker: list[str], ref: str) -> None:
        """`docker save ref` here into `docker load` there."""
        save = subprocess.Popen([*docker, "save", ref], stdout=subprocess.PIPE)
        assert save.stdout is not None
        try:
            self.run("docker load", stdin=save.stdout.fileno())
        finally:
            save.stdout.close()
            code = save.wait()
        if code != 0:
            raise InstanceError(f"overlay: docker save {ref} exited with {code}")
        if not self.has_image(ref):
            raise InstanceError(f"overlay: the worker {self.dest} holds no image {ref} "
                                "after docker load")


def _until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5
           ) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ReadyTimeout(f"overlay: {what}: not within {timeout:g} s")
        time.sleep(interval)


class Overlay(Base):
    name = "overlay"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {"worker": "", "advertise": [], "duration": 2,
                                        "message": 64}
    tools: ClassVar[dict[str, str]] = {"ssh": "openssh-client", "docker": "docker.io"}

    def __init__(self) -> None:
        self.cpu: dict[str, tuple[str, bool]] = {}  # worker -> (CPU model, TCG)

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        p = {**self.params, **dict(s.params)}
        out = []
        worker, adv = str(p["worker"]), p["advertise"]
        if worker and (why := check_worker(worker)) is not None:
            out.append(("params.worker", why))
        if adv:
            if len(adv) != 2 or not all(isinstance(a, str) for a in adv):
                out.append(("params.advertise", "must be two addresses: [manager's, "
                            f"worker's], not {adv!r}"))
            else:
                for a in adv:
                    try:
                        ipaddress.ip_address(a)
                    except ValueError:
                        out.append(("params.advertise", f"{a!r} is not an IP address"))
        elif worker and check_worker(worker) is None:
            try:
                ipaddress.ip_address(host_of(worker))
            except ValueError:
                out.append(("params.advertise", "needed when params.worker's host is not "
                            f"an IP address ({host_of(worker)!r}): [manager's, worker's]"))
        for k in ("duration", "message"):
            if not isinstance(p[k], int) or isinstance(p[k], bool) or p[k] < 1:
                out.append((f"params.{k}", f"must be a whole number ≥ 1, not {p[k]!r}"))
        return out

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        if not p["worker"]:
            raise NotApplicable(NEEDS_WORKER)
        rt = cell.runtime
        if not isinstance(rt, DockerSwarm):
            raise NotApplicable(f"{cell.backend}: the overlay study runs on docker:swarm "
                                "(a swarm's overlay network between two daemons)")
        ref = cell.prepared.ref
        if not _IMAGE_ID.fullmatch(ref):
            raise InstanceError(f"overlay: {cell.backend} prepared {ref!r}, not an image id")
        worker = Worker(str(p["worker"]), ctx.timeout)
        manager_addr, worker_addr = addresses(p)
        state = worker.swarm_state()
        if state != "inactive":
            raise InstanceError(f"overlay: the worker {worker.dest}'s dockerd is in a swarm "
                                f"already (state {state!r}): the study makes it join and "
                                "leave; `docker swarm leave --force` there if a killed run "
                                "left it")
        if worker.dest not in self.cpu:
            model = worker.run("grep -m1 'model name' /proc/cpuinfo || true")
            virt = worker.run("systemd-detect-virt --vm || true")
            cpu = model.split(":", 1)[-1].strip() or "?"
            self.cpu[worker.dest] = (cpu, is_tcg(cpu, virt))
        cpu, tcg = self.cpu[worker.dest]
        spec = ctx.spec(cell, argv=("sh", "-c", SERVERS), network="bridge")
        rs = rt.replica_set(ctx.run_id, f"overlay{ctx.counter}")
        assert isinstance(rs, SwarmService)
        s = Steps(rt, rs, worker, ref, worker_addr, f"cvbench-{ctx.run_id}-plain{ctx.counter}")
        extra: dict[str, Any] = {"worker_cpu": cpu, "worker_tcg": tcg,
                                 "manager_addr": manager_addr, "worker_addr": worker_addr}
        try:
            out = self._measure(ctx, p, cell, s, spec, manager_addr, extra)
        except BaseException as e:
            if problems := s.teardown():  # the sample's own error is the one to report
                ctx.event("overlay_cleanup_failed", problems=problems, after=str(e))
            raise
        if problems := s.teardown():
            raise InstanceError("overlay: clean-up: " + "; ".join(problems))
        return [Measurement(m.metric, m.value, variant=m.variant, extra=extra) for m in out]

    def _measure(self, ctx: Context, p: dict[str, Any], cell: Cell, s: Steps,
                 spec: InstanceSpec, manager_addr: str, extra: dict[str, Any]
                 ) -> list[Measurement]:
        rt, rs, worker, ref = s.rt, s.rs, s.worker, s.ref
        docker = ["docker", "-H", f"unix://{rt.socket_path}"]
        label = f"{RUN_LABEL}={ctx.run_id}"
        if not worker.has_image(ref):
            s.loaded = True
            worker.load(docker, ref)
        use = rt.join(ctx.run_id, manager_addr)
        extra["swarm"] = "made by the run" if use.made else "found"
        here = str(rt.api.info()["Swarm"]["NodeID"])
        others = [str(nd["Description"].get("Hostname")) for nd in rt.api.nodes()
                  if nd["ID"] != here and nd["Status"].get("Addr") != s.worker_addr]
        if others:
            raise InstanceError(f"overlay: this host's swarm ({extra['swarm']}) has nodes "
                                f"besides this one ({', '.join(others)}): the replicas must "
                                "land on this host and the worker only")
        # a service of someone else's (another run's scale study on a swarm it made)
        # would spread its tasks onto the worker
        foreign = [str(sv["Spec"]["Name"]) for sv in cast(Any, rt.api).services()
                   if (sv["Spec"].get("Labels") or {}).get(RUN_LABEL) != ctx.run_id]
        if foreign:
            raise InstanceError(f"overlay: this host's swarm ({extra['swarm']}) runs "
                                f"services besides this run's ({', '.join(foreign[:5])}): "
                                "the worker would take some of their tasks")
        managers = rt.api.info()["Swarm"].get("RemoteManagers") or ()
        remote = next((str(m["Addr"]) for m in managers if m.get("NodeID") == here),
                      f"{manager_addr}:2377")
        token = str(rt.api.inspect_swarm()["JoinTokens"]["Worker"])
        s.gwbridge = not worker.has_network(GWBRIDGE)  # made by the join, if not there
        s.joined = True  # (a join that fails half-way is left too)
        worker.run(f"docker swarm join --token {shlex.quote(token)} --advertise-addr "
                   f"{shlex.quote(s.worker_addr)} {shlex.quote(remote)}")
        _until("the worker ready", lambda: sum(
            1 for nd in rt.api.nodes() if nd["Status"]["State"] == "ready") >= 2, ctx.timeout)
        rs.max_per_node = 1
        rs.deploy(spec, cell.prepared, BW_PORT)
        rs.scale(2)
        _until("a replica on each node", lambda: sorted(
            r.node == "" for r in rs.replicas()) == [False, True], ctx.timeout)
        reps = rs.replicas()
        local = next(r for r in reps if r.node == "")
        far = next(r for r in reps if r.node != "")
        extra["worker_node"] = far.node
        nets = far.details.get("overlay")
        addrs = nets.get(rs.name) if isinstance(nets, dict) else None
        if not isinstance(addrs, list) or not addrs:
            raise InstanceError(f"overlay: the worker's replica has no address on "
                                f"{rs.name}: {far.details}")
        out = self._path(ctx, p, "overlay", [*docker, "exec", str(local.details["container"]),
                                             "sh", "-c"], str(addrs[0]).split("/")[0])
        worker.run(f"docker run -d --rm --name {s.plain} --label {label} --network host "
                   f"--entrypoint /bin/sh {ref} -c {shlex.quote(SERVERS)}")
        client = [*docker, "run", "--rm", "--network", "host", "--label", label,
                  "--entrypoint", "/bin/sh", ref, "-c"]
        return out + self._path(ctx, p, "plain", client, s.worker_addr)

    def _path(self, ctx: Context, p: dict[str, Any], path: str, argv: list[str],
              addr: str) -> list[Measurement]:
        """sockperf, then iperf3, by `argv + [shell command]` against `addr`; each tried
        again until its server answers (slow to start on an emulated worker)."""
        dur, msg = int(p["duration"]), int(p["message"])
        lat = _retry([*argv, f"{ULIMIT}sockperf pp --tcp -i {addr} -p {LAT_PORT} -t {dur} "
                             f"-m {msg} 2>&1"], ctx.timeout, sockperf_latency)
        bw = _retry([*argv, f"iperf3 -c {addr} -p {BW_PORT} -t {dur} -J"], ctx.timeout,
                    lambda t: iperf3_bandwidth(parse_json(t)))
        sub = f"path={path}"
        ctx.artifact("sockperf", lat, variant=sub, address=addr)
        ctx.artifact("iperf3", parse_json(bw), variant=sub, address=addr)
        return [Measurement(m, v, variant=sub) for m, v in figures(lat, bw).items()]


def _retry(argv: list[str], timeout: float, ok: Callable[[str], object]) -> str:
    """The output of the first run of `argv` that `ok` accepts (it raises InstanceError
    on output without figures: a server not listening yet), until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            raise InstanceError(f"overlay: {argv[-1]}: not done within {timeout:g} s") from e
        try:
            ok(proc.stdout)
            return proc.stdout
        except InstanceError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@dataclass
class Steps:
    """What a sample made, on both nodes, to be undone whatever failed."""

    rt: DockerSwarm
    rs: SwarmService
    worker: Worker
    ref: str
    worker_addr: str
    plain: str  # the plain path's server container on the worker
    joined: bool = False
    loaded: bool = False
    gwbridge: bool = False  # the worker's docker_gwbridge was made by its join

    def teardown(self) -> list[str]:
        """Undo every step (each tried whatever the others did), then check that the
        worker is in no swarm: the problems."""
        problems: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # go on with the rest
                problems.append(f"{what}: {e}")

        try:
            self.rs.close()
            closed = True
        except Exception:  # its network, while the worker's task still holds it: again below
            closed = False
        gone = f"label=com.docker.swarm.service.name={self.rs.name}"
        steps = [f"docker rm -f {self.plain} >/dev/null 2>&1",
                 # the service's task container goes before the node leaves
                 f"for i in $(seq 120); do [ -z \"$(docker ps -aq --filter {gone})\" ] "
                 "&& break; sleep 0.5; done"]
        if self.joined:
            steps.append("docker swarm leave --force >/dev/null 2>&1")
        if self.gwbridge:  # (its ingress endpoint goes a moment after the leave)
            steps.append(f"for i in $(seq 20); do docker network rm {GWBRIDGE} >/dev/null "
                         "2>&1 && break; sleep 0.5; done")
        # (the script's status: the image's removal, where the sample loaded it)
        steps.append(f"docker image rm {self.ref} >/dev/null" if self.loaded else "true")
        attempt("on the worker", lambda: self.worker.run("; ".join(steps)))
        if self.joined:
            api = self.rt.api
            attempt("the worker's node", lambda: [
                api.remove_node(nd["ID"], force=True) for nd in api.nodes()
                if nd["Status"].get("Addr") == self.worker_addr
                and nd["Spec"].get("Role") == "worker"])
        if not closed:  # the worker's task gone with it
            attempt("service", lambda: _again(self.rs.close))
        attempt("the worker's swarm state", lambda: _left(self.worker, self.gwbridge))
        return problems


def _again(fn: Callable[[], object], tries: int = 20) -> None:
    """fn() until it does not raise, every 0.5 s; the last error after `tries`."""
    for i in range(tries):
        try:
            fn()
            return
        except Exception:
            if i == tries - 1:
                raise
            time.sleep(0.5)


def _left(worker: Worker, gwbridge: bool) -> None:
    state = worker.swarm_state()
    if state != "inactive":
        raise InstanceError(f"the worker {worker.dest} is still in a swarm ({state!r}): "
                            "`docker swarm leave --force` there")
    if gwbridge and worker.has_network(GWBRIDGE):
        raise InstanceError(f"the worker {worker.dest} still has the {GWBRIDGE} its join "
                            f"made: `docker network rm {GWBRIDGE}` there")


STUDY: Study = Overlay()
