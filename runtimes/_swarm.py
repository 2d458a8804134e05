"""docker:swarm's bookkeeping: which swarm a run made, which runs use it, and what `bench
gc` may take away (services of dead runs, and the swarm only if a run made it).

A daemon that is not a swarm member when a run asks for a replicated service is made a
single-node swarm by that run (`docker swarm init`); the state file
`<state dir>/docker-swarm/made.json` records the run, the node id `init` gave, the
address and whether `docker_gwbridge` was made with it. Every later run that uses this
swarm while it exists adds `users/<run id>`. Once none of those runs is live the swarm is
a leftover: gc leaves it (`swarm leave --force`, only if the daemon's node id is still
the recorded one) and removes `docker_gwbridge` if the swarm made it, so the daemon is
as it was found. A daemon that already was a manager is used as it is: no state file,
nothing but the run's labelled services and networks is ever removed from it; a worker
(or a swarm in another state) is refused. All of it under one flock, so two runs never
both `init`, and gc never leaves while a run registers.

One window stays open: a run that starts using a made swarm after `bench gc` listed the
live runs but before it took the lock is not in gc's list; gc only counts it live if its
`users/` entry is younger than the gc (`since`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker

from harness.core.errors import BackendUnavailable, InstanceError
from runtimes._engine import _ERRORS, _short
from runtimes.base import RUN_LABEL, Leftover, check_run_id, state_dir

GWBRIDGE = "docker_gwbridge"
GONE_TIMEOUT = 60.0  # seconds for a removed service's containers to go


@dataclass(frozen=True)
class Membership:
    """The daemon's swarm state as `docker info` says it (.Swarm)."""

    state: str  # inactive | pending | active | error | locked
    node: str = ""
    manager: bool = False
    nodes: int = 0


class Daemon(Protocol):
    """What the bookkeeping asks of a dockerd (a fake in the unit tests)."""

    def membership(self) -> Membership: ...

    def init(self, addr: str) -> str:
        """`docker swarm init` advertising and listening on `addr`; the new node id."""
        ...

    def leave(self) -> None: ...

    def has_network(self, name: str) -> bool: ...

    def remove_network(self, name: str) -> None: ...


@dataclass(frozen=True)
class Use:
    """How a run uses the daemon's swarm: `made` by this run, else found (by another
    cvbench run, `maker`, or by someone else: maker None)."""

    made: bool
    node: str
    maker: str | None = None


def state_path() -> Path:
    return state_dir() / "docker-swarm"


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    d = state_path()
    (d / "users").mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield d


def _made(d: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((d / "made.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _forget(d: Path) -> None:
    (d / "made.json").unlink(missing_ok=True)
    for p in (d / "users").iterdir():
        p.unlink(missing_ok=True)


def use(daemon: Daemon, run_id: str, addr: str) -> Use:
    """Make sure the daemon is a swarm manager for `run_id`: init one (recorded) if it
    is in no swarm, else use the one it is in. BackendUnavailable for a worker or a
    swarm that is not active."""
    check_run_id(run_id)
    with _locked() as d:
        m = daemon.membership()
        made = _made(d)
        if made is not None and (m.state != "active" or made.get("node") != m.node):
            _forget(d)  # our swarm was left (by hand): the record is stale
            made = None
        if m.state == "active":
            if not m.manager:
                raise BackendUnavailable(
                    "docker:swarm", "this dockerd is a swarm worker: services are made "
                    "on a manager", "run bench on a manager, or `docker swarm leave` here")
            if made is not None:
                (d / "users" / run_id).touch()
                return Use(made=str(made.get("run")) == run_id, node=m.node,
                           maker=str(made.get("run")))
            return Use(made=False, node=m.node)
        if m.state != "inactive":
            raise BackendUnavailable(
                "docker:swarm", f"this dockerd's swarm state is {m.state!r}",
                "see `docker info` (Swarm:); unlock or leave it by hand")
        had_gwbridge = daemon.has_network(GWBRIDGE)
        node = daemon.init(addr)
        (d / "made.json").write_text(json.dumps(
            {"run": run_id, "node": node, "addr": addr, "gwbridge_made": not had_gwbridge}))
        return Use(made=True, node=node, maker=run_id)


def _users(d: Path, made: dict[str, object]) -> dict[str, float]:
    """The runs that use the made swarm (the maker included), with when they said so."""
    out = {str(made.get("run")): 0.0}
    for p in (d / "users").iterdir():
        with contextlib.suppress(FileNotFoundError):
            out[p.name] = max(out.get(p.name, 0.0), p.stat().st_mtime)
    return out


def leftover(live_runs: Sequence[str]) -> Leftover | None:
    """The swarm a run made, once no run that uses it is live."""
    d = state_path()
    made = _made(d) if (d / "users").is_dir() else None
    if made is None or set(_users(d, made)) & set(live_runs):
        return None
    return Leftover("docker", "swarm", str(made.get("node")), str(made.get("run")))


def leave(daemon: Daemon, live_runs: Sequence[str], since: float | None = None) -> bool:
    """Leave the swarm a run made, if no run that uses it is live (checked again under
    the lock; a run registered after `since` counts as live), and remove the
    docker_gwbridge it made. False if it was kept (a run uses it)."""
    since = time.time() if since is None else since
    with _locked() as d:
        made = _made(d)
        if made is None:
            return True
        users = _users(d, made)
        if set(users) & set(live_runs) or any(t > since for t in users.values()):
            return False
        m = daemon.membership()
        if m.state != "inactive" and m.node == made.get("node"):
            daemon.leave()
            if made.get("gwbridge_made") and daemon.has_network(GWBRIDGE):
                daemon.remove_network(GWBRIDGE)
        # else: left by hand, or another swarm now: nothing of ours on the daemon
        _forget(d)
        return True


class ApiDaemon:
    """_swarm.Daemon on a docker APIClient."""

    def __init__(self, api: docker.APIClient) -> None:
        self.api = api

    def membership(self) -> Membership:
        s = self.api.info().get("Swarm") or {}
        return Membership(state=str(s.get("LocalNodeState") or "inactive"),
                                 node=str(s.get("NodeID") or ""),
                                 manager=bool(s.get("ControlAvailable")),
                                 nodes=int(s.get("Nodes") or 0))

    def init(self, addr: str) -> str:
        try:
            return str(self.api.init_swarm(advertise_addr=addr, listen_addr=f"{addr}:2377"))
        except _ERRORS as e:
            raise InstanceError(f"docker:swarm: swarm init on {addr}: {_short(e)}") from e

    def leave(self) -> None:
        self.api.leave_swarm(force=True)

    def has_network(self, name: str) -> bool:
        return bool(self.api.networks(names=[name]))

    def remove_network(self, name: str) -> None:
        # the ingress sandbox's endpoint goes a moment after the leave
        for attempt in range(20):
            try:
                self.api.remove_network(name)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                if attempt == 19:
                    raise
                time.sleep(0.5)


def service_leftovers(api: Any, live_runs: Sequence[str]) -> list[tuple[str, str]]:
    """(name, run) of the labelled services of runs not live; none if the daemon is no
    swarm manager (it has no services to list)."""
    m = ApiDaemon(api).membership()
    if m.state != "active" or not m.manager:
        return []
    out = []
    for s in api.services(filters={"label": RUN_LABEL}):
        run = ((s.get("Spec") or {}).get("Labels") or {}).get(RUN_LABEL)
        if run not in live_runs:
            out.append((str(s["Spec"]["Name"]), str(run)))
    return out


def remove_service(api: Any, name: str, timeout: float = GONE_TIMEOUT) -> None:
    """Remove a service and wait until its containers on this node are gone (the
    network it is on can only go after them)."""
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_service(name)
    deadline = time.monotonic() + timeout
    while api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={name}"}):
        if time.monotonic() > deadline:
            raise InstanceError(f"service {name}: its containers are still there after "
                                f"{timeout:g} s")
        time.sleep(0.2)
