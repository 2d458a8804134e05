"""docker:swarm against the real dockerd: a service of busybox httpd replicas behind the
routing mesh, scaled, updated to another image and removed; the swarm the run made is
left by the end of the run (`bench gc`'s path), and the daemon is as it was found.

The routing mesh needs IPVS in the kernel; on a kernel without it (this machine's) the
service has no front of its own (dnsrr, nothing published, `deploy` returns "") and the
front checked is the scale study's HAProxy over the replicas' own addresses
(harness.studies._haproxy.Behind), as `bench run scale` uses it.

Each replica serves a random id of its own at /id, so the front's answers tell the
replicas apart without cvbench's own bookkeeping; the counts are checked against
dockerd's own container list (the containers of the service), and the daemon's state
against `docker info` and `docker network ls`, read with the docker CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.bookkeeping import collect, live_runs
from harness.core import image
from harness.studies._haproxy import Behind, Haproxy
from harness.studies._server import free_ports
from runtimes.base import InstanceSpec, Replicas, new_run_id
from runtimes.swarm import DockerSwarm, ipvs_problem
from tests.conftest import backend_or_skip, require

pytestmark = [pytest.mark.root, pytest.mark.docker]
SERVE = ("sh", "-c", "mkdir -p /tmp/w && head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
         " > /tmp/w/id && exec httpd -f -p 8080 -h /tmp/w")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout


def _daemon_state() -> tuple[str, list[str]]:
    """`docker info`'s swarm state and the daemon's network names (docker CLI), but for
    runs' networks (cvbench-*: other tests' come and go meanwhile; ours are checked
    by name)."""
    state = json.loads(_docker("info", "--format", "{{json .Swarm}}"))["LocalNodeState"]
    return state, sorted(n for n in _docker("network", "ls", "--format", "{{.Name}}").split()
                         if not n.startswith("cvbench-"))


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read()).decode()
    except OSError:
        return None


def _until(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.3)


def _containers(service: str, image_id: str | None = None) -> list[str]:
    """Running containers of the service, as dockerd lists them (optionally of an image)."""
    ids = _docker("ps", "-q", "--no-trunc", "--filter",
                  f"label=com.docker.swarm.service.name={service}").split()
    if image_id is None:
        return ids
    return [c for c in ids if _docker("inspect", "-f", "{{.Image}}", c).strip() == image_id]


def _swarm() -> DockerSwarm:
    backend_or_skip("docker")
    rt = DockerSwarm("swarm")
    state, _ = _daemon_state()
    require("docker", None if state == "inactive" else
            f"the daemon is already in a swarm ({state}): the test makes its own")
    return rt


def _haproxy_of(run_id: str) -> list[int]:
    """Processes whose command line names a front directory of the run (HAProxy's)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if f"cvbench-{run_id}-".encode() in argv and b"haproxy" in argv:
                out.append(int(d.name))
    return out


def test_service_scale_update_and_the_swarm_left(run_id: str) -> None:
    """Two replicas answer through the front — the routing mesh where the kernel has
    IPVS, else the scale study's HAProxy over the replicas' own addresses (swarm's
    service in dnsrr mode, nothing published) — and each through its own address; a
    rolling update replaces both; nothing is left."""
    rt = _swarm()
    before = _daemon_state()
    first = rt.prepare(image.build(image.Recipe()))
    second = rt.prepare(image.build(image.Recipe(name="swarm2", binaries=("true",))))
    assert first.ref != second.ref
    rs: Replicas = rt.replica_set(run_id, "web")
    service = f"cvbench-{run_id}-web"
    mesh = ipvs_problem() is None
    try:
        front = rs.deploy(InstanceSpec(run_id=run_id, name=service, argv=SERVE,
                                       network="bridge"), first, 8080)
        assert rt.used is not None and rt.used.made
        assert _daemon_state()[0] == "active"
        said = rt.traits().settings["swarm"]["front"]  # type: ignore[index]
        mode = json.loads(_docker("service", "inspect", "-f", "{{json .Spec.EndpointSpec}}",
                                  service))
        if mesh:
            assert front and said == "routing mesh (ingress)"
        else:  # no routing mesh: no front of its own, labelled; dnsrr, nothing published
            assert front == "" and said.startswith("haproxy (no IPVS")
            assert mode.get("Mode") == "dnsrr" and not mode.get("Ports"), mode
            (port,) = free_ports(1)
            rs = Behind(rs, Haproxy(run_id, "web", port, 120), 120)
            front = rs.start()
        assert rs.replicas() == [] and _containers(service) == []
        rs.scale(2)
        seen: set[str] = set()

        def both_answer() -> bool:
            body = _get(f"http://{front}/id")
            if body:
                seen.add(body)
            return len(seen) == 2 and len(_containers(service)) == 2 \
                and len(rs.replicas()) == 2

        _until("2 replicas running and answering through the front", both_answer)
        reps = rs.replicas()
        assert all(r.node == "" for r in reps)
        # each replica's own address answers with its own id: the two the front gave
        direct = {_get(f"http://{r.address}/id") for r in reps}
        assert None not in direct and len(direct) == 2, [r.details for r in reps]
        assert direct == seen, (direct, seen)
        for r in reps:
            comms = {Path(f"/proc/{p}/comm").read_text().strip() for p in r.pids}
            assert "httpd" in comms and any(c.startswith("containerd-shim") for c in comms)

        old = set(_containers(service))
        rs.update(second)
        _until("both replicas replaced by ones of the second image",
               lambda: len(_containers(service, second.ref)) == 2
               and _containers(service) == _containers(service, second.ref))
        assert not old & set(_containers(service))
        reps = rs.replicas()
        assert [r.details["image"] for r in reps] == [second.ref] * 2
        new = {_get(f"http://{r.address}/id") for r in reps}
        assert None not in new and len(new) == 2 and not new & seen
        after: set[str] = set()

        def both_new_answer() -> bool:
            body = _get(f"http://{front}/id")
            if body:
                after.add(body)
            return after >= new

        _until("the new replicas answering through the front", both_new_answer)
        assert after <= new | seen  # (an old one may answer while it is drained)

        rs.scale(1)
        _until("scaled down to 1", lambda: len(_containers(service)) == 1
               and len(rs.replicas()) == 1)
    finally:
        rs.close()
    assert _containers(service) == []
    assert service not in _docker("service", "ls", "--format", "{{.Name}}").split()
    assert service not in _docker("network", "ls", "--format", "{{.Name}}").split()
    assert _haproxy_of(run_id) == []
    # the end of the run (harness.bookkeeping.finish): its leftovers, the swarm it made
    gone = collect(rt, [r for r in live_runs() if r != run_id], run_id)
    assert [(x.kind, x.run_id) for x in gone] == [("swarm", run_id)]
    assert _daemon_state() == before


def test_gc_of_a_dead_run_leaves_its_swarm(run_id: str) -> None:
    """A run that died (no lock) with a service up: `bench gc --run` removes the service,
    its network and the swarm it made; the daemon is as it was found."""
    rt = _swarm()
    before = _daemon_state()
    dead = new_run_id()  # never locked: dead from the start
    prepared = rt.prepare(image.build(image.Recipe()))
    rs = rt.replica_set(dead, "web")
    try:
        rs.deploy(InstanceSpec(run_id=dead, name="x", argv=SERVE, network="bridge"),
                  prepared, 8080)
        rs.scale(1)
        _until("a replica running", lambda: len(_containers(f"cvbench-{dead}-web")) == 1)
    except BaseException:
        rs.close()
        raise
    bench = str(Path(sys.executable).parent / "bench")
    out = subprocess.run([bench, "gc", "--run", dead], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    for kind in ("service", "network", "swarm"):
        assert f"docker {kind} " in out.stdout, out.stdout
    assert _containers(f"cvbench-{dead}-web") == []
    assert _daemon_state() == before


def test_stack_deploy_labelled_and_removed(run_id: str, tmp_path: Path) -> None:
    """A compose file deployed as a stack: its service and network carry the run's label
    (so gc finds them), the service runs, remove_stack takes both away."""
    from runtimes.swarm import deploy_stack, remove_stack

    rt = _swarm()
    before = _daemon_state()
    ref = rt.prepare(image.build(image.Recipe())).ref
    compose = tmp_path / "compose.yml"
    compose.write_text(f"""services:
  web:
    image: {ref}
    entrypoint: ["sh", "-c", "exec sleep 600"]
    networks: [back]
networks:
  back: {{}}
""")
    stack = deploy_stack(rt, run_id, "st", compose)
    try:
        assert stack == f"cvbench-{run_id}-st"
        labels = _docker("service", "inspect", "-f", "{{json .Spec.Labels}}", f"{stack}_web")
        assert json.loads(labels)["cvbench.run"] == run_id
        net = _docker("network", "inspect", "-f", "{{json .Labels}}", f"{stack}_back")
        assert json.loads(net)["cvbench.run"] == run_id
        _until("the stack's service running", lambda: len(_containers(f"{stack}_web")) == 1)
    finally:
        remove_stack(rt, stack)
    assert _containers(f"{stack}_web") == []
    assert f"{stack}_back" not in _docker("network", "ls", "--format", "{{.Name}}").split()
    gone = collect(rt, [r for r in live_runs() if r != run_id], run_id)
    assert [(x.kind, x.run_id) for x in gone] == [("swarm", run_id)]
    assert _daemon_state() == before


def test_overlay_without_a_worker_is_not_applicable(repo: Path, tmp_path: Path) -> None:
    """`bench run overlay` with no params.worker: the cell closes as not applicable with
    the reason, no figure, and this dockerd's swarm state is as it was (no swarm made)."""
    from tests.integration._scenario_run import run_one_sample

    before = _daemon_state()
    p, doc = run_one_sample(repo, tmp_path, "overlay", ("docker:swarm",))
    assert p.returncode == 0, p.stderr
    reasons = [e["reason"] for e in doc["events"] if e["kind"] == "not_applicable"]
    assert reasons == ["needs a second docker daemon: params.worker"]
    assert doc["samples"] == []
    assert _daemon_state() == before
