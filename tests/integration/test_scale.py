"""The scale study's HAProxy front against the real thing: HAProxy from Debian, replicas
of the http image on ns and docker, each replica's own nginx counter as the witness; and
a rolling update; `bench gc` removing the front a killed run left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.core import image
from harness.studies import _haproxy, scale
from harness.studies._server import free_ports
from runtimes.base import InstanceSpec, Runtime, new_run_id
from tests.conftest import backend_or_skip, require

HTTP_IMAGE = image.Debian("bookworm", ("nginx-light",))  # the http and scale scenarios'


def haproxy_or_skip() -> None:
    import shutil
    require("haproxy", None if shutil.which("haproxy") else "not installed (make provision)")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("backend", ["ns", "docker"])
def test_two_replicas_answer_through_the_front_by_their_own_counters(
        root: None, run_id: str, backend: str) -> None:
    haproxy_or_skip()
    rt = backend_or_skip(backend)
    assert isinstance(rt, Runtime)
    prepared = rt.prepare(image.build(HTTP_IMAGE))
    port, front_port = free_ports(2)
    spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", argv=scale.server_argv(port),
                        network="bridge", readiness="marker")
    front = _haproxy.Front(rt, run_id, "t", front_port, 120)
    try:
        addr = front.deploy(spec, prepared, port)
        front.scale(2)
        reps = front.replicas()
        assert len(reps) == 2 and all(r.address and r.pids for r in reps)
        direct = {}
        for r in reps:
            got = scale.get(str(r.address), "/id")
            assert got is not None and got[0] == 200
            direct[scale.parse_id(got[1])[0]] = r
        assert len(direct) == 2  # two replicas, two markers
        answered, seen = 0, set()
        for _ in range(20):  # round robin: both within a few requests
            got = scale.get(addr, "/id")
            assert got is not None and got[0] == 200, got
            answered += 1
            seen.add(scale.parse_id(got[1])[0])
        assert seen == set(direct)
        # Each nginx's own count: our /id read and this /status read, plus what the
        # front sent it; together exactly the front's answers (no health checks).
        counts = {}
        for m, r in direct.items():
            got = scale.get(str(r.address), "/status")
            assert got is not None and got[0] == 200
            counts[m] = scale.requests_of(got[1]) - 2
        assert all(c >= 1 for c in counts.values()), counts
        assert sum(counts.values()) == answered
        # A rolling update: two new replicas, and the front answers from those only.
        front.update(prepared)
        now = front.replicas()
        assert len(now) == 2 and not {r.id for r in now} & {r.id for r in reps}
        fresh = set()
        for r in now:
            got = scale.get(str(r.address), "/id")
            assert got is not None and got[0] == 200
            fresh.add(scale.parse_id(got[1])[0])
        through = set()
        for _ in range(10):
            got = scale.get(addr, "/id")
            assert got is not None and got[0] == 200, got
            through.add(scale.parse_id(got[1])[0])
        assert through == fresh
        master = front.pids()[0]
    finally:
        front.close()
    assert not alive(master)
    assert not front.dir.exists()
    assert not [x for x in rt.leftovers([]) if x.run_id == run_id and x.kind == "container"]


CHILD = textwrap.dedent("""
    import sys, time
    from harness.bookkeeping import RunLock
    from harness.studies._haproxy import Front
    from runtimes import registry
    from runtimes.base import InstanceSpec
    rid, port = sys.argv[1], int(sys.argv[2])
    lock = RunLock(rid, "test")
    front = Front(registry.get("ns"), rid, "gc", port, 30)
    # no replica: what is left is the front itself (a backend's own gc removes instances)
    front.deploy(InstanceSpec(run_id=rid, name=f"cvbench-{rid}-1", argv=("true",)), None, 80)
    print(front.pids()[0], flush=True)
    time.sleep(600)
""")


def test_bench_gc_removes_the_front_of_a_killed_run(root: None, repo: Path) -> None:
    haproxy_or_skip()
    rid = new_run_id()
    (port,) = free_ports(1)
    child = subprocess.Popen([sys.executable, "-c", CHILD, rid, str(port)], cwd=repo,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        master = int(child.stdout.readline())
        d = _haproxy.fronts_dir() / f"cvbench-{rid}-gc"
        assert alive(master) and d.is_dir()
    finally:
        os.kill(child.pid, signal.SIGKILL)  # a killed bench: its HAProxy lives on
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert alive(master)
    gc = subprocess.run([sys.executable, "-m", "harness.cli", "gc", "--run", rid],
                        capture_output=True, text=True, timeout=300, check=False)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert f"removed haproxy front {d}" in " ".join(gc.stdout.split())
    deadline = time.monotonic() + 5
    while alive(master) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(master)
    assert not d.exists()
