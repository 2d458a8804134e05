"""docker:swarm against the real dockerd: a service of busybox httpd replicas behind the
routing mesh, scaled, updated to another image and removed; the swarm the run made is
left by the end of the run (`bench gc`'s path), and the daemon is as it was found.

The routing mesh needs IPVS in the kernel; on a kernel without it (this machine's) the
service has no front of its own (dnsrr, nothing published, `deploy` returns "") and the
front checked is the scale study's HAProxy over the replicas' own addresses
(harness.studies._haproxy.Behind), as `bench run scale` uses it.

The stack study on docker:swarm (`bench run` of tests/integration/data/tiny-stack.toml,
deployed with `docker stack deploy`) is checked against dockerd's own event stream and
the docker CLI's listings: the stack's services made, run and removed, the front
answering with the back's page; after Ctrl-C and, for a killed run, after `bench gc`,
nothing labelled with the run is left and the swarm state is as it was found.

Each replica serves a random id of its own at /id, so the front's answers tell the
replicas apart without cvbench's own bookkeeping; the counts are checked against
dockerd's own container list (the containers of the service), and the daemon's state
against `docker info` and `docker network ls`, read with the docker CLI.
"""

from __future__ import annotations

import json
import signal
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


TINY_STACK = Path(__file__).parent / "data" / "tiny-stack.toml"


def _bench_run(tmp_path: Path, scen: str) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "tiny.toml").write_text(scen)
    out = tmp_path / "out"
    bench = str(Path(sys.executable).parent / "bench")
    with open(tmp_path / "stderr", "wb") as err:  # (the child holds its own copy)
        return subprocess.Popen([bench, "run", str(tmp_path / "tiny.toml"), "--backends",
                                 "docker:swarm", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=err), out


def _run_of(out: Path) -> str:
    journals = list(out.glob("*.journal"))  # <scenario>-<time>-<run id>.journal
    return journals[0].stem.rsplit("-", 1)[1] if journals else ""


def _labelled(run: str) -> tuple[list[str], list[str]]:
    """The services and networks labelled with the run, as the docker CLI lists them
    (no services: the daemon is no swarm manager, it has none)."""
    label = f"label=cvbench.run={run}"
    nets = _docker("network", "ls", "--filter", label, "--format", "{{.Name}}").split()
    if _daemon_state()[0] != "active":
        return [], nets
    return _docker("service", "ls", "--filter", label, "--format", "{{.Name}}").split(), nets


def test_stack_study_deploys_the_stack_on_swarm(tmp_path: Path) -> None:
    """`bench run` of the tiny stack on docker:swarm: dockerd's own event stream (`docker
    events`, read while the run runs) shows the stack's two services created and
    removed and their task containers started; the front answers with the back's own
    page, fetched by the back's name over the stack's overlay network; afterwards
    nothing labelled with the run is left and the swarm state is as it was found."""
    _swarm()
    before = _daemon_state()
    with open(tmp_path / "events", "wb") as sink:
        events = subprocess.Popen(["docker", "events", "--filter", "type=service",
                                   "--filter", "type=container", "--format", "{{json .}}"],
                                  stdout=sink)
    try:
        p, out = _bench_run(tmp_path, TINY_STACK.read_text())
        p.wait(timeout=300)
        time.sleep(1)  # (the last events on their way)
    finally:
        events.terminate()
        events.wait()
    assert p.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
    doc = json.loads(next(f for f in out.glob("*.json")
                          if not f.name.endswith(".pyperf.json")).read_text())
    run = doc["run_id"]
    seen: dict[tuple[str, str], set[str]] = {}
    for line in (tmp_path / "events").read_text().splitlines():
        e = json.loads(line)
        attrs = e["Actor"]["Attributes"]
        name = attrs.get("name", "") if e["Type"] == "service" else \
            attrs.get("com.docker.swarm.service.name", "")
        if name.startswith(f"cvbench-{run}-"):  # `<stack>_<service>`, the stack the run's
            seen.setdefault((e["Type"], e["Action"]), set()).add(name.rpartition("_")[2])
    assert seen.get(("service", "create")) == {"back", "front"}, seen
    assert seen.get(("service", "remove")) == {"back", "front"}, seen
    assert seen.get(("container", "start")) == {"back", "front"}, seen
    assert "back" in seen.get(("container", "health_status: healthy"), set()), seen
    cell = [s for s in doc["samples"] if s["backend"] == "docker:swarm"]
    start = [s for s in cell if s["metric"] == "stack.start"]
    assert start and start[0]["front"], doc["events"]
    answers = [a["data"] for a in doc["artifacts"] if a["kind"] == "front_response"]
    assert answers and answers[0]["body"].strip() == "back-says-hi"
    assert {s["metric"] for s in cell} >= {"stack.service.started", "stack.service.ready",
                                           "stack.service.healthy", "stack.teardown",
                                           "stack.memory.pss"}
    absent = [e for e in doc["events"] if e["kind"] == "stack_figures_absent"]
    assert absent and "depends_on" in absent[0]["figures"]
    assert not {s["metric"] for s in cell} & {"stack.service.created", "stack.disk.instance"}
    assert _labelled(run) == ([], [])
    assert _daemon_state() == before


def _stuck() -> str:
    """The tiny stack, its back's healthcheck never passing: the stack waits."""
    return TINY_STACK.read_text().replace(
        '"http://127.0.0.1:8000/"], interval = 0.2',
        '"http://127.0.0.1:9/"], interval = 0.2, retries = 100000')


def _until_stack_up(p: subprocess.Popen[bytes], out: Path) -> str:
    """The run's id once its stack's two services and its network exist."""
    run = ""

    def stack_up() -> bool:
        nonlocal run
        run = _run_of(out)
        services, nets = _labelled(run) if run else ([], [])
        return (len(services) == 2 and len(nets) == 1) or p.poll() is not None

    _until("the stack's services and network made", stack_up, timeout=240)
    return run


def test_ctrl_c_during_a_stack_sample_removes_the_stack(tmp_path: Path) -> None:
    """Ctrl-C twice (SIGINT, as a terminal sends it) while the stack waits: the run
    stops, and nothing labelled with it is left (docker CLI); the swarm is as found."""
    _swarm()
    before = _daemon_state()
    p, out = _bench_run(tmp_path, _stuck())
    try:
        run = _until_stack_up(p, out)
        assert run and len(_labelled(run)[0]) == 2, (tmp_path / "stderr").read_text()
        p.send_signal(signal.SIGINT)
        time.sleep(1)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (tmp_path / "stderr").read_text()[-2000:]
    assert _labelled(run) == ([], [])
    assert _daemon_state() == before


def test_a_killed_stack_run_is_left_to_bench_gc(tmp_path: Path) -> None:
    """The runner is SIGKILLed while its stack waits for a healthcheck that never
    passes: the stack's services and its network stay, labelled with the run (docker CLI);
    `bench gc --run` removes them and leaves the swarm the run made."""
    _swarm()
    before = _daemon_state()
    p, out = _bench_run(tmp_path, _stuck())
    try:
        run = _until_stack_up(p, out)
    finally:
        p.kill()
        p.wait()
    services, nets = _labelled(run)
    assert len(services) == 2 and len(nets) == 1, (services, nets)  # (the default one)
    bench = str(Path(sys.executable).parent / "bench")
    gc = subprocess.run([bench, "gc", "--run", run], capture_output=True, text=True,
                        timeout=300, check=False)
    assert gc.returncode == 0, gc.stderr[-2000:]
    assert "docker service " in gc.stdout and "docker swarm " in gc.stdout, gc.stdout
    assert _labelled(run) == ([], [])
    assert _daemon_state() == before
