"""An HAProxy front over single instances of any backend: the scale study's `Replicas`
where the backend does not replicate itself (runtimes.base.ReplicaSets), so that every
backend is measured behind the same kind of front. `Haproxy` is the process part (any
"ip:port" servers its user lists); `Front` makes its own replicas as instances; `Behind`
puts an orchestrator's replicas behind it where the orchestrator has no front of its own
here (docker:swarm on a kernel without IPVS: no routing mesh).

Each replica is an instance made through the Runtime protocol (its own address on the
backend's bridge); HAProxy (Debian's package, run by the study, never as a service) listens
on 127.0.0.1 and round-robins over the replicas listed in its configuration. It runs in
master-worker mode (`-W`): a change of replicas rewrites the configuration and sends the
master SIGUSR2; the master starts a new worker on the new configuration (the listening
socket passed on, no gap) and the old one ends with its connections. A reload counts as
done when the master logs its next "Loading success." (a "Loading failure." fails it).
Connections to a replica that does not answer yet are retried on another
(`option redispatch`): a new replica is listed once its ready line came.

Everything of one front lives in `<state>/haproxy/<run id>-<name>/` (configuration, the
master's pid, its log; the directory's name says the run): `close` kills the master (its
workers end with it) and removes the directory; `Fronts` is what `bench gc` and the end of
a run use to find the fronts of dead runs (a killed `bench`: its HAProxy outlives it, in
a session of its own) and remove them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.core.errors import InstanceError, ReadyTimeout
from harness.core.probes import serving
from harness.studies import _lifecycle as life
from runtimes.base import (
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Replica,
    Replicas,
    Runtime,
    check_run_id,
    remove_each,
    rmtree,
    run_of,
    state_dir,
)

STATE = "haproxy"
RELOADED = "Loading success."
FAILED = "Loading failure."
POLL = 0.01  # seconds between looks at the master's log during a reload
RESEND = 1.0  # seconds without a reload before the master is signalled again


def fronts_dir() -> Path:
    return state_dir() / STATE


def config(port: int, servers: Sequence[tuple[str, str]]) -> str:
    """HAProxy's configuration: HTTP on 127.0.0.1:`port`, round robin over `servers`
    (name, "address:port"); none: every request answered 503 by HAProxy itself."""
    lines = [
        "global",
        "  nbthread 1",  # one thread: the front is as pinned as the load generator
        "  maxconn 4096",  # its fds (2 per connection) stay under a usual limit of 20000
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 60s",
        "  timeout server 60s",
        # A replica listed before its server listens refuses the connection: try another.
        "  retries 3",
        "  option redispatch 1",
        "frontend front",
        f"  bind 127.0.0.1:{port}",
        "  default_backend replicas",
        "backend replicas",
        "  balance roundrobin",
        *(f"  server {name} {addr}" for name, addr in servers),
    ]
    return "\n".join(lines) + "\n"


class Haproxy:
    """One HAProxy process of a run in `<state>/haproxy/cvbench-<run id>-<name>/`,
    listening on 127.0.0.1:`port` over whatever "ip:port" servers its user gives:
    `start` and `reload` with the list, `pids`, `close`. `cpuset`: the CPUs it runs on
    (taskset)."""

    def __init__(self, run_id: str, name: str, port: int, timeout: float,
                 cpuset: str | None = None) -> None:
        self.port, self.timeout, self.cpuset = port, timeout, cpuset
        self.dir = fronts_dir() / f"cvbench-{check_run_id(run_id)}-{name}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cfg(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def log(self) -> Path:
        return self.dir / "haproxy.log"

    def _write(self, servers: Sequence[tuple[str, str]]) -> None:
        tmp = self.dir / "haproxy.cfg.new"
        tmp.write_text(config(self.port, servers))
        os.replace(tmp, self.cfg)  # the master re-reads a whole file, never a half one

    def _loads(self) -> tuple[int, int]:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0, 0
        return text.count(RELOADED), text.count(FAILED)

    def _await_load(self, before: tuple[int, int], resend: bool = False) -> None:
        """Until the master logs one more "Loading success." than `before`. `resend`:
        signal it again every RESEND s meanwhile: a SIGUSR2 that comes while the master
        is still re-executing from the previous one is lost (seen here: a reload that
        never came), and one reload more of the same file changes nothing."""
        deadline = time.monotonic() + self.timeout
        again = time.monotonic() + RESEND
        while True:
            ok, bad = self._loads()
            if bad > before[1]:
                raise InstanceError(f"haproxy: the configuration did not load: "
                                    f"{self._tail()}")
            if ok > before[0]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise InstanceError(f"haproxy exited with {self.proc.returncode}: "
                                    f"{self._tail()}")
            if time.monotonic() > deadline:
                raise InstanceError(f"haproxy: no reload within {self.timeout:g} s: "
                                    f"{self._tail()}")
            if resend and self.proc is not None and time.monotonic() > again:
                self.proc.send_signal(signal.SIGUSR2)
                again = time.monotonic() + RESEND
            time.sleep(POLL)

    def _tail(self) -> str:
        """What HAProxy said went wrong (its ALERT lines, else the end of its log)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(its log: {e})"
        alerts = [line for line in text.splitlines() if "[ALERT]" in line]
        return repr("; ".join(alerts)[-400:] if alerts else text[-400:])

    def start(self, servers: Sequence[tuple[str, str]] = ()) -> str:
        """Start it over `servers` (name, "ip:port"); its address."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write(servers)
        argv = ["haproxy", "-W", "-db", "-f", str(self.cfg), "-p", str(self.dir / "pid")]
        if self.cpuset:
            argv = ["taskset", "-c", self.cpuset, *argv]
        with open(self.log, "ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches bench, which closes
            # the front; a killed bench leaves it to `bench gc` (its directory, the pid).
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        (self.dir / "master").write_text(str(self.proc.pid))
        self._await_load((0, 0))
        return self.address

    def reload(self, servers: Sequence[tuple[str, str]]) -> None:
        """List exactly `servers`, returning once the new configuration is loaded."""
        if self.proc is None:
            raise InstanceError("haproxy: the front is not deployed")
        before = self._loads()
        self._write(servers)
        self.proc.send_signal(signal.SIGUSR2)
        self._await_load(before, resend=True)

    def pids(self) -> list[int]:
        """HAProxy's processes (the master and its workers): the front's own memory."""
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def close(self) -> None:
        if self.proc is not None:
            stop_master(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None
        rmtree(self.dir)


@dataclass
class Member:
    """One replica of the front: its instance and where it serves."""

    id: str
    inst: Instance
    address: str  # "ip:port"


class Front:
    """`Replicas` of `rt`'s instances behind HAProxy. `track`/`untrack`: the sample's
    bookkeeping of live instances (harness.sampling.Context), so that a sample that fails
    midway still has them removed; `cpuset`: the CPUs HAProxy runs on (taskset)."""

    def __init__(self, rt: Runtime, run_id: str, name: str, port: int, timeout: float,
                 track: Callable[[Instance], None] = lambda inst: None,
                 untrack: Callable[[Instance], None] = lambda inst: None,
                 cpuset: str | None = None) -> None:
        self.rt, self.run_id, self.name = rt, check_run_id(run_id), name
        self.timeout = timeout
        self.track, self.untrack = track, untrack
        self.proxy = Haproxy(run_id, name, port, timeout, cpuset)
        self.dir = self.proxy.dir
        self.members: list[Member] = []
        self.spec: InstanceSpec | None = None
        self.prepared: Prepared | None = None
        self.inner_port = 0
        self.made = 0

    def _servers(self) -> list[tuple[str, str]]:
        return [(m.id, m.address) for m in self.members]

    def _start(self) -> None:
        self.proxy.start(self._servers())

    def _reload(self) -> None:
        self.proxy.reload(self._servers())

    # --- replicas -----------------------------------------------------------------------

    def _make(self, prepared: Prepared) -> Member:
        """A new replica started to its ready line (not yet listed by the front)."""
        assert self.spec is not None
        self.made += 1
        rid = f"r{self.made}"
        spec = replace(self.spec, name=f"{self.spec.name}-{rid}", hostname=rid,
                       env={**self.spec.env, "CVBENCH_REPLICA": rid})
        inst = self.rt.create(spec, prepared)
        self.track(inst)
        try:
            self.rt.start(inst)
        except BaseException:
            self._drop(inst)
            raise
        return Member(rid, inst, "")

    def _ready(self, m: Member) -> Member:
        try:
            self.rt.wait_ready(m.inst, self.timeout)
            addr = self.rt.address(m.inst)
            if addr is None:
                raise InstanceError(f"{self.rt.name}: replica {m.id} has no address the "
                                    f"host can reach (network {m.inst.spec.network})")
            # Its ready line comes before nginx listens: a replica is listed (and an old
            # one unlisted in a rolling update) only once its port accepts, so the front
            # never routes to a replica that cannot answer yet. A connect, not a request:
            # the replica's own request count stays the front's and the study's reads.
            probe = serving.Readiness("tcp", port=self.inner_port)
            if serving.poll(probe, addr, 0.01, time.monotonic() + self.timeout,
                            life.ended(self.rt, m.inst)) is None:
                raise InstanceError(f"{self.rt.name}: replica {m.id}: port "
                                    f"{self.inner_port} not accepting within "
                                    f"{self.timeout:g} s")
        except BaseException:
            self._drop(m.inst)
            raise
        return replace(m, address=f"{addr}:{self.inner_port}")

    def _drop(self, inst: Instance) -> None:
        try:
            self.rt.stop(inst, grace=0.5)
            self.rt.remove(inst)
        finally:
            self.untrack(inst)

    def deploy(self, spec: InstanceSpec, prepared: Prepared, port: int) -> str:
        if not spec.name.startswith(f"cvbench-{self.run_id}"):
            raise ValueError(f"{spec.name}: not a name of run {self.run_id}")
        self.spec, self.prepared, self.inner_port = spec, prepared, port
        self._start()
        return self.proxy.address

    def scale(self, n: int) -> None:
        """Up: start the new replicas together, each to its ready line, then list them
        (one reload). Down: unlist the last ones (one reload), then remove them."""
        if self.prepared is None:
            raise InstanceError("haproxy: the front is not deployed")
        if n > len(self.members):
            started: list[Member] = []
            try:
                for _ in range(n - len(self.members)):
                    started.append(self._make(self.prepared))
            except BaseException:
                for m in started:
                    self._drop(m.inst)
                raise
            ready: list[Member] = []
            try:
                for m in started:
                    ready.append(self._ready(m))
            except BaseException:
                for m in started[len(ready) + 1:]:
                    self._drop(m.inst)
                for m in ready:
                    self._drop(m.inst)
                raise
            self.members += ready
            self._reload()
        elif n < len(self.members):
            gone, self.members = self.members[n:], self.members[:n]
            self._reload()
            for m in gone:
                self._drop(m.inst)

    def replicas(self) -> list[Replica]:
        out = []
        for m in self.members:
            try:
                pids = tuple(self.rt.stats(m.inst).pids)
            except Exception:  # its memory is then unread, said by the study
                pids = ()
            out.append(Replica(m.id, "", m.address, pids,
                               {"instance": m.inst.spec.name,
                                "image": m.inst.prepared.image.digest}))
        return out

    def update(self, prepared: Prepared) -> None:
        """Rolling, one replica at a time: start its replacement, list it, unlist the
        old one, remove it."""
        self.prepared = prepared
        for old in list(self.members):
            new = self._ready(self._make(prepared))
            self.members.append(new)
            try:
                self._reload()
            except BaseException:
                self.members.remove(new)
                self._drop(new.inst)
                raise
            self.members.remove(old)
            self._reload()
            self._drop(old.inst)

    def pids(self) -> list[int]:
        return self.proxy.pids()

    def close(self) -> None:
        errors = []
        for m in list(reversed(self.members)):
            try:
                self._drop(m.inst)
            except Exception as e:  # the others are removed all the same
                errors.append(f"{m.inst.spec.name}: {e}")
        self.members = []
        self.proxy.close()
        if errors:
            raise InstanceError(f"the front's replicas not removed: {'; '.join(errors)}")


def accepts(address: str, timeout: float = 0.2) -> bool:
    """Whether "ip:port" accepts a TCP connection now (a connect, not a request: the
    replica's own request count stays the study's)."""
    host, _, port = address.rpartition(":")
    return serving.answers(serving.Readiness("tcp", port=int(port)), host, timeout)


class Behind:
    """An orchestrator's `Replicas` that has no front of its own here (its `deploy`
    returned "": docker:swarm without IPVS) behind an HAProxy of the study's: the
    orchestrator still schedules, scales and rolls its replicas; this lists in HAProxy
    exactly those of `inner.replicas()` whose address accepts a TCP connect, polling
    every `interval` s after `scale` and during `update` until the set is what was asked
    (reloading HAProxy whenever it changes), or `timeout`. `replicas` passes through."""

    def __init__(self, inner: Replicas, proxy: Haproxy, timeout: float,
                 interval: float = 0.05,
                 accepts: Callable[[str], bool] = accepts) -> None:
        self.inner, self.proxy, self.timeout = inner, proxy, timeout
        self.interval, self.accepts = interval, accepts
        self.listed: list[tuple[str, str]] | None = None  # what HAProxy lists now

    def start(self) -> str:
        """Start HAProxy over no server (after `inner.deploy`); the front's address."""
        self.listed = []
        return self.proxy.start([])

    def deploy(self, spec: InstanceSpec, prepared: Prepared, port: int) -> str:
        if self.inner.deploy(spec, prepared, port):
            raise InstanceError(f"{spec.name}: the service has a front of its own")
        return self.start()

    def sync(self, done: Callable[[list[Replica], list[tuple[str, str]]], bool],
             what: str) -> None:
        """Until `done(replicas, accepting)`, keeping HAProxy at the accepting ones."""
        deadline = time.monotonic() + self.timeout
        while True:
            reps = self.inner.replicas()
            up = [(r.id, r.address) for r in reps if r.address and self.accepts(r.address)]
            if up != self.listed:
                self.proxy.reload(up)
                self.listed = up
            if done(reps, up):
                return
            if time.monotonic() > deadline:
                raise ReadyTimeout(f"haproxy front: {what}: not within {self.timeout:g} s "
                                   f"({len(reps)} replicas, {len(up)} accepting)")
            time.sleep(self.interval)

    def scale(self, n: int) -> None:
        self.inner.scale(n)
        self.sync(lambda reps, up: len(reps) == len(up) == n, f"{n} replicas accepting")

    def update(self, prepared: Prepared) -> None:
        # the replicas now: those listed at the end of the last scale (a stable set)
        old = {rid for rid, _ in self.listed or ()}
        n = len(old)
        self.inner.update(prepared)
        self.sync(lambda reps, up: len(reps) == len(up) == n
                  and not old & {r.id for r in reps}, f"{n} replicas replaced")

    def replicas(self) -> list[Replica]:
        return self.inner.replicas()

    def pids(self) -> list[int]:
        return self.proxy.pids()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.listed = None
            self.proxy.close()


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _is_front(pid: int, cfg: Path) -> bool:
    """Whether `pid` is a HAProxy running `cfg` (a pid file outlives its process; the
    number may have gone to another)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(cfg).encode() in argv


def stop_master(pid: int) -> None:
    """End a HAProxy master and its workers: SIGTERM (it stops its workers), then SIGKILL
    to whatever of them is left."""
    group = [pid, *children(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(_alive(p) for p in group):
        time.sleep(0.02)
    for p in group:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Fronts:
    """The HAProxy fronts runs left, for `bench gc` and a run's end (the collect()
    interface of harness.bookkeeping: leftovers and gc by live runs)."""

    name = STATE

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        out: list[Leftover] = []
        d = fronts_dir()
        if not d.is_dir():
            return out
        for entry in sorted(d.iterdir()):
            run_id = run_of(entry.name)  # cvbench-<run id>-<name>: whose, even half made
            if run_id in live_runs:
                continue
            out.append(Leftover(STATE, "front", str(entry), run_id))
        return out

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        def remove(item: Leftover) -> None:
            entry = Path(item.name)
            try:
                pid = int((entry / "master").read_text())
            except (OSError, ValueError):
                pid = 0
            if pid and _is_front(pid, entry / "haproxy.cfg"):
                stop_master(pid)
            rmtree(entry)
        return remove_each(STATE, self.leftovers(live_runs), remove)
