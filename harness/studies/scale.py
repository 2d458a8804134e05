"""scale: a service of N replicas behind one front address: how fast it goes from 0 to N
serving, what each replica costs, what the front delivers at each N, how fast it comes
back down, and how fast a rolling update replaces every replica.

The replicas are the http study's nginx (its site and configuration, the same image),
each also serving two files of its own: /id ("<marker> <revision>": a random marker
drawn when it starts, and the image's revision, 1, or what /etc/cvbench-revision says:
2 in the update's image) and /status (nginx's stub_status: its own request count).

Where the backend replicates services itself (runtimes.base.ReplicaSets: `docker:swarm`)
its Replicas are used: the orchestrator's service and front. Its replicas run the spec
given to `deploy` (the command above, so each serves /id and /status on `port`), and
each Replica's `address` is where this host reaches that port on the replica itself
("ip:port"; None on another node: its marker is then counted through the front only).
Every other backend (ns, docker, podman, libvirt:disk) runs N single instances, each on
its own address (network bridge), behind HAProxy on the host (harness.studies._haproxy:
its configuration lists the running replicas and is reloaded as they come and go).
`host` has no own address per replica and is not applicable.

An orchestrator whose `deploy` returns "" has no front of its own here (`docker:swarm`
on a kernel without IPVS: no routing mesh; its traits say so in settings.swarm.front):
its replicas are put behind the same HAProxy as the other backends
(harness.studies._haproxy.Behind: HAProxy lists exactly those of its replicas whose
address accepts a TCP connect, re-read every 50 ms after a scale and during an update
until the set is what was asked). Its figures then mean "swarm's scheduler and
containers behind the same HAProxy as the other backends", not the routing mesh: each
sample says so in its extra `front` ("haproxy over the orchestrator's replicas", else
"haproxy" or "orchestrator"), the result's backend traits record the reason, and the
report labels such cells "(HAProxy front: no routing mesh)". `scale.front_pss` is then
measured too; the time of `scale.to_serving` includes the front's polling.

For each N of `replicas` (ascending), from 0 replicas:

  scale.to_serving  scale(N) asked → every one of the N replicas has answered through
                    the front (their markers, read from each replica directly, seen in
                    the front's answers to GET /id)
  scale.spread      scale(N) asked → every replica's own request count (stub_status,
                    read from the replica itself, our own reads of it subtracted) shows
                    requests that came through the front: an independent check of the
                    front's balancing, not HAProxy's own statistics
  scale.pss         each replica's PSS (its host processes: instance=index), a replica
                    on another node has none here: absent, with a `scale_pss_absent`
                    event saying why; scale.daemon_pss the backend's daemons apart,
                    scale.front_pss the HAProxy front's own processes (HAProxy only)
  scale.rps         wrk through the front (`connections`, `duration` s after `warmup`
  scale.lat_p50/99  s, on the small file), pinned as the http study pins it: the
                    replicas on the scenario's cpuset, wrk and HAProxy on client_cpuset
  scale.update      at the largest N (`update`): a rolling update to the second image
                    (the workload image with /etc/cvbench-revision added: another
                    digest) → every replica listed is of revision 2, and each has
                    answered through the front
  scale.down        N → 1 (for N > 1): until one replica is listed and the front's
                    answers all come from it

then back to 0 (untimed). Every figure of N is of sub-variant "replicas=N". A step that
fails (a replica that never answers, a wrk error, a memory that cannot be read) fails the
sample with its reason: no figure is ever made 0.

Times are on the host clock (time.monotonic_ns), probed every `probe_interval` of the
scenario's workload. A 2-core host has one core for the replicas: throughput does not
grow with N there (the replicas share CPU 1; the front and wrk share CPU 0), and the
figure says what the front and replication cost, not how capacity scales. VMs under TCG
boot in tens of seconds each and the host emulates them all on one core: N = 1, 2 fit
in the sampling timeout (shipped scenario); 4 takes minutes per sample.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.core.errors import InstanceError, ReadyTimeout, Unreadable
from harness.core.image import Image, derive
from harness.core.probes import loadgen, memory, serving
from harness.core.probes.timing import now_ns
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from harness.studies import Base, Build, Study
from harness.studies import _lifecycle as life
from harness.studies._haproxy import Behind, Front, Haproxy
from harness.studies._server import free_ports, run_tool
from harness.studies.http import CONF, SITE
from runtimes.base import Replica, Replicas, ReplicaSets, Runtime

METRICS = {"scale.to_serving": "s", "scale.spread": "s", "scale.down": "s",
           "scale.update": "s", "scale.pss": "B", "scale.daemon_pss": "B",
           "scale.front_pss": "B", "scale.rps": "req/s", "scale.lat_p50": "s",
           "scale.lat_p99": "s"}
UPDATE = "update"  # the further image: the workload's, revision 2
# a sample's extra "front": which front its figures were measured through
BEHIND = "haproxy over the orchestrator's replicas"


def front_kind(own: Front | Behind | None) -> str:
    return "orchestrator" if own is None else "haproxy" if isinstance(own, Front) else BEHIND
REVISION_FILE = "etc/cvbench-revision"
# What each replica serves besides the http study's site: its marker and revision, and
# its own request count (stub_status) at /status.
ID_SCRIPT = ("mkdir -p /srv/cvbench && echo \"$(cat /proc/sys/kernel/random/uuid) "
             "$(cat /etc/cvbench-revision 2>/dev/null || echo 1)\" > /srv/cvbench/id && ")
STATUS = "location = /status { stub_status; } "
SMALL = 512  # the http study's small file
_REQUESTS = re.compile(r"^\s*\d+\s+\d+\s+(\d+)\s*$", re.M)  # accepts handled requests


def server_argv(port: int) -> tuple[str, ...]:
    """The replica's command: the http study's site and nginx, with /id and /status."""
    conf = CONF.replace("{port}", str(port)).replace("location / {", STATUS + "location / {")
    return ("sh", "-c", ID_SCRIPT + SITE.format(conf=conf))


def get(address: str, path: str, timeout: float = 2.0) -> tuple[int, str] | None:
    """GET http://address/path on a new connection (serving.fetch): (status, body), None
    when nothing answered (refused, reset, timed out)."""
    host, _, port = address.rpartition(":")
    status, body = serving.fetch(host, int(port), path, timeout)
    return (status, body) if status else None


def parse_id(body: str) -> tuple[str, str]:
    """(marker, revision) of an /id answer."""
    parts = body.split()
    if len(parts) != 2:
        raise InstanceError(f"scale: /id answered {body[:80]!r}, not '<marker> <revision>'")
    return parts[0], parts[1]


def requests_of(body: str) -> int:
    """The request count of nginx's stub_status page."""
    m = _REQUESTS.search(body)
    if m is None:
        raise InstanceError(f"scale: /status answered {body[:120]!r}, not nginx's stub_status")
    return int(m.group(1))


@dataclass
class Seen:
    """What the study knows of one replica: its marker and revision (read from it
    directly), the requests it made to it itself (subtracted from its count), when its
    marker first came through the front, when its own count first showed front traffic."""

    replica: Replica
    marker: str | None = None
    revision: str | None = None
    own: int = 0
    via_front: int | None = None
    reached: int | None = None


@dataclass
class Watch:
    """Polls a front and its replicas from time t0 on (see the module docstring)."""

    reps: Replicas
    front: str
    t0: int
    interval: float
    deadline: float
    seen: dict[str, Seen] = field(default_factory=dict)  # by Replica.id
    # through the front: marker -> (first seen, monotonic ns; its revision)
    markers: dict[str, tuple[int, str]] = field(default_factory=dict)
    last: list[str] = field(default_factory=list)  # the front's recent answers' markers

    def listed(self) -> list[Replica]:
        now = self.reps.replicas()
        for r in now:
            self.seen.setdefault(r.id, Seen(r))
        ids = {r.id for r in now}
        for rid in list(self.seen):
            if rid not in ids:
                del self.seen[rid]
        return now

    def direct(self, s: Seen, counts: bool) -> None:
        """Read a replica's marker (once) and, with `counts`, its request count. One
        without an address here (on another node) is read through the front only."""
        addr = s.replica.address
        if addr is None:
            return
        if s.marker is None:
            got = get(addr, "/id")
            if got is not None:
                s.own += 1
                if got[0] == 200:
                    s.marker, s.revision = parse_id(got[1])
        if counts and s.reached is None and s.marker is not None:
            got = get(addr, "/status")
            if got is not None:
                s.own += 1
                if got[0] == 200 and requests_of(got[1]) > s.own:
                    s.reached = now_ns()

    def through_front(self, k: int) -> None:
        for _ in range(max(1, k)):
            got = get(self.front, "/id")
            if got is None or got[0] != 200:
                continue
            marker, revision = parse_id(got[1])
            self.markers.setdefault(marker, (now_ns(), revision))
            self.last = [*self.last[-63:], marker]

    def answered(self, rs: list[Seen], revision: str | None = None) -> int | None:
        """When the last of `rs` first answered through the front (monotonic ns), None
        while one has not. A replica read directly is known by its marker; those without
        an address here count as answered by as many other markers (of `revision`, when
        given) as there are of them."""
        known = [s.marker for s in rs if s.replica.address]
        if None in known or any(m not in self.markers for m in known):
            return None
        times = [self.markers[str(m)][0] for m in known]
        remote = len(rs) - len(known)
        others = sorted(t for m, (t, rev) in self.markers.items()
                        if m not in known and revision in (None, rev))
        if len(others) < remote:
            return None
        times += others[:remote]
        return max(times, default=None)

    def tick(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise ReadyTimeout(f"scale: {what}: not within the timeout "
                               f"({self.state()})")
        time.sleep(self.interval)

    def state(self) -> str:
        answered = sum(1 for s in self.seen.values() if s.marker in self.markers)
        return (f"{len(self.seen)} listed, {answered} answered through the front, "
                f"{sum(1 for s in self.seen.values() if s.reached)} with front traffic")

    def up(self, n: int) -> tuple[int, int | None]:
        """Until all of N replicas answered through the front and each one's own count
        shows front traffic: (to_serving, spread) in ns since t0; spread None when a
        replica has no address here (another node): its count cannot be read."""
        while True:
            rs = list(self.seen.values()) if len(self.seen) >= n else \
                [self.seen[r.id] for r in self.listed()]
            for s in rs:
                self.direct(s, counts=True)
            self.through_front(max(1, n - len(self.markers)))
            reachable = [s for s in rs if s.replica.address]
            done = self.answered(rs) if len(rs) >= n else None
            if done is not None and all(s.reached for s in reachable):
                spread = max(int(s.reached or 0) for s in rs) - self.t0 \
                    if len(reachable) == len(rs) else None
                return done - self.t0, spread
            self.tick(f"{n} replicas serving")

    def updated(self, n: int, revision: str) -> int:
        """Until N replicas are listed, each of `revision` (read from it directly, or
        through the front for one on another node) and each has answered through the
        front: ns since t0."""
        while True:
            rs = [self.seen[r.id] for r in self.listed()]
            for s in rs:
                self.direct(s, counts=False)
            self.through_front(n)
            done = self.answered(rs, revision) if len(rs) == n and all(
                s.revision == revision for s in rs if s.replica.address) else None
            if done is not None:
                return done - self.t0
            self.tick(f"{n} replicas of revision {revision}")

    def down(self, k: int) -> int:
        """Until one replica is listed and the front's last `k` answers all came from it:
        ns since t0."""
        self.last = []
        while True:
            rs = [self.seen[r.id] for r in self.listed()]
            for s in rs:
                self.direct(s, counts=False)
            self.through_front(1)
            if len(rs) == 1 and len(self.last) >= k and len(set(self.last[-k:])) == 1 and \
                    (rs[0].replica.address is None or set(self.last[-k:]) == {rs[0].marker}):
                return now_ns() - self.t0
            self.tick("down to 1 replica")

    def gone(self) -> None:
        while self.listed():
            self.tick("down to 0 replicas")


def replica_memory(ctx: Context, reps: list[Replica]) -> list[tuple[int, float]]:
    """(index, PSS) of each replica on this host; one on another node is absent, and an
    event says so."""
    out = []
    for i, r in enumerate(reps):
        if r.node:
            ctx.event("scale_pss_absent", replica=r.id, node=r.node,
                      reason="on another node: its processes are not on this host")
            continue
        if not r.pids:
            raise Unreadable(f"scale: replica {r.id}: no host process of it was found: its "
                             "memory cannot be read")
        out.append((i, float(memory.processes_memory(r.pids).pss)))
    return out


class Scale(Base):
    name = "scale"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {
        "replicas": [1, 2], "update": True, "warmup": 1.0, "duration": 2.0,
        "connections": 16, "timeout": 2, "client_cpuset": "0", "emulated_scale": 5.0}
    tools: ClassVar[dict[str, str]] = {"wrk": "wrk", "taskset": "util-linux",
                                       "haproxy": "haproxy"}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        p = {**self.params, **dict(s.params)}
        n = p["replicas"]
        out = []
        if not isinstance(n, list) or not n or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in n):
            out.append(("params.replicas", f"must be a list of whole numbers ≥ 1, not {n!r}"))
        elif len(set(n)) != len(n):
            out.append(("params.replicas", f"lists a number twice: {n!r}"))
        for k in ("duration", "connections", "timeout"):
            if not p[k] > 0:
                out.append((f"params.{k}", f"must be more than 0, not {p[k]!r}"))
        if p["warmup"] < 0:
            out.append(("params.warmup", f"must be 0 or more, not {p['warmup']!r}"))
        return out

    def images(self, s: Scenario, build: Build) -> dict[str, Image]:
        """The update's image: the workload's with /etc/cvbench-revision (another
        digest)."""
        if not {**self.params, **dict(s.params)}["update"]:
            return {}
        return {UPDATE: derive(build(s.workload.image), {REVISION_FILE: b"2\n"}, "rev2")}

    def runs_image(self, name: str, rt: Runtime, kind: str) -> bool:
        return name == UPDATE

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        t_scale = float(p["emulated_scale"]) if cell.traits.emulated else 1.0
        life.network_applicable(cell, cell.config.network, ("bridge",))
        rt = cell.runtime
        port, front_port = free_ports(2)
        spec = ctx.spec(cell, argv=server_argv(port), readiness="marker")
        reps: Replicas
        own: Front | Behind | None = None
        name = f"scale{ctx.counter}"
        steps = sorted(int(n) for n in p["replicas"])
        if isinstance(rt, ReplicaSets):
            reps = rt.replica_set(ctx.run_id, name)
        else:
            reps = own = Front(rt, ctx.run_id, name, front_port,
                               ctx.timeout, track=lambda inst: ctx.track(cell, inst),
                               untrack=ctx.untrack, cpuset=str(p["client_cpuset"]))
        out: list[Measurement] = []
        try:
            front = reps.deploy(spec, cell.prepared, port)
            if not front:  # the orchestrator has no front here: the same HAProxy
                reps = own = Behind(reps, Haproxy(ctx.run_id, name, front_port,
                                                  ctx.timeout, str(p["client_cpuset"])),
                                    ctx.timeout * max(1.0, steps[-1] * t_scale))
                front = own.start()
            daemons = life.daemon_pids(rt)
            for n in steps:
                sub = f"replicas={n}"
                out += self._at(ctx, cell, reps, own, front, n, sub, p, t_scale, daemons)
                if n == steps[-1] and p["update"]:
                    new = cell.images.get(UPDATE)
                    if new is None:
                        raise InstanceError(f"scale: {cell.backend} has no update image "
                                            "prepared")
                    w = self._watch(ctx, reps, front, n * t_scale)
                    reps.update(new)
                    out.append(Measurement("scale.update", w.updated(n, "2") * 1e-9,
                                           variant=sub))
                if n > 1:
                    w = self._watch(ctx, reps, front, n * t_scale)
                    reps.scale(1)
                    out.append(Measurement("scale.down", w.down(2 * n) * 1e-9, variant=sub))
                reps.scale(0)
                self._watch(ctx, reps, front, 1).gone()
        except BaseException as e:
            try:
                reps.close()
            except Exception as gone:  # the sample's own error is the one to report
                ctx.event("scale_close_failed", error=str(gone), after=str(e))
            raise
        reps.close()
        extra: dict[str, Any] = {"cpuset": cell.config.limits.cpuset,
                                 "client_cpuset": str(p["client_cpuset"]),
                                 "front": front_kind(own)}
        if t_scale != 1:
            extra["time_scale"] = t_scale
        return [Measurement(m.metric, m.value, m.instance, m.unit, m.variant,
                            {**extra, **(m.extra or {})}) for m in out]

    def _watch(self, ctx: Context, reps: Replicas, front: str, weight: float) -> Watch:
        """A watch from now, allowed the sample timeout (a VM's boot: per replica)."""
        return Watch(reps, front, now_ns(), ctx.probe_interval,
                     time.monotonic() + ctx.timeout * max(1.0, weight))

    def _at(self, ctx: Context, cell: Cell, reps: Replicas, own: Front | Behind | None,
            front: str, n: int, sub: str, p: dict[str, Any], t_scale: float,
            daemons: list[int]) -> list[Measurement]:
        """0 → n: its times, the replicas' memory, the front's throughput."""
        w = self._watch(ctx, reps, front, n * t_scale)
        reps.scale(n)
        serving, spread = w.up(n)
        out = [Measurement("scale.to_serving", serving * 1e-9, variant=sub)]
        if spread is None:
            ctx.event("scale_spread_absent", replicas=n, reason="a replica on another "
                      "node: its own request count is not reachable from this host")
        else:
            out.append(Measurement("scale.spread", spread * 1e-9, variant=sub))
        listed = reps.replicas()
        out += [Measurement("scale.pss", v, instance=i, variant=sub,
                            extra={"replica": listed[i].id, "node": listed[i].node})
                for i, v in replica_memory(ctx, listed)]
        out.append(Measurement("scale.daemon_pss",
                               float(memory.processes_memory(daemons).pss), variant=sub))
        if own is not None:
            out.append(Measurement("scale.front_pss",
                                   float(memory.processes_memory(own.pids()).pss),
                                   variant=sub))
        url = f"http://{front}/small"
        timeout = max(1, round(int(p["timeout"]) * t_scale))
        for warm, secs in ((True, float(p["warmup"])), (False, float(p["duration"]))):
            if secs <= 0:
                continue
            secs *= t_scale
            argv = loadgen.wrk_args(url, duration=secs, connections=int(p["connections"]),
                                    timeout=timeout)
            text, code = run_tool(ctx, argv, p, secs + 30, "wrk", variant=sub, warmup=warm)
            run = loadgen.parse_wrk(text)
            loadgen.check_wrk(run, SMALL)
            if code != 0:
                raise loadgen.LoadFailed("wrk", f"exit status {code}", run.counts)
            if not warm:
                out += [Measurement("scale.rps", run.rps, variant=sub),
                        Measurement("scale.lat_p50", run.latency["50"], variant=sub),
                        Measurement("scale.lat_p99", run.latency["99"], variant=sub)]
        return out


STUDY: Study = Scale()
