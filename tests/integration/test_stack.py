"""Stacks end to end against the real backends.

make test: a tiny stack of two busybox services (a front whose CGI fetches from a back by
name, after the back's healthcheck passed) on ns, docker and podman, answering through
the front, with nothing of the run left behind; a failing healthcheck fails the sample
with the logs kept and tears the stack down; single-vm refuses a stack that is not made
of Debian packages, with the reason. Slow: the same tiny stack per service on libvirt,
the shipped example stack (nginx -> app -> redis) on every backend and placement with its
timeline chart, and examples/compose.yaml under Debian's docker-compose answering as it
does under cvbench.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness import compose, scenario, session
from harness.studies import stack
from tests.conftest import backend_or_skip, require

pytestmark = [pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
BENCH = [sys.executable, "-m", "harness.cli"]

TINY = (Path(__file__).parent / "data" / "tiny-stack.toml").read_text()


def run(tmp_path: Path, scen: str, backends: str, *extra: str, timeout: float = 900
        ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "out"
    p = subprocess.run([*BENCH, "run", scen, "--backends", backends, "--out", str(out),
                        *extra], capture_output=True, text=True, timeout=timeout,
                       check=False)
    found = [f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json")]
    assert len(found) == 1, (p.returncode, p.stderr[-3000:])
    return p, json.loads(found[0].read_text())


def leftovers(backend: str, run_id: str) -> list[str]:
    """What the backend still holds that is labelled with the run."""
    engine = backend.split(":")[0]
    if engine in ("docker", "podman"):
        names = []
        for what in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
            p = subprocess.run([engine, *what, "--format", "{{.Name}}" if what[0] != "ps"
                                else "{{.Names}}"], capture_output=True, text=True,
                               check=True)
            names += p.stdout.split()
        return [n for n in names if f"cvbench-{run_id}" in n]
    if engine == "libvirt":
        p = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                           capture_output=True, text=True, check=True)
        n = subprocess.run(["virsh", "-c", "qemu:///system", "net-list", "--all", "--name"],
                           capture_output=True, text=True, check=True)
        return [x for x in (p.stdout + n.stdout).split() if f"cvbench-{run_id}" in x]
    p = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return [ln for ln in p.stdout.splitlines() if f"cvbench-{run_id}" in ln]  # aliases


def service_times(doc: dict[str, Any], backend: str, metric: str) -> dict[str, float]:
    return {s["sub"].removeprefix("service="): s["value"] for s in doc["samples"]
            if s["backend"] == backend and s["metric"] == metric and s.get("sub")}


@pytest.mark.parametrize("backend", ["ns", "docker", "podman"])
def test_tiny_stack_answers_through_the_front_by_name(tmp_path: Path, backend: str) -> None:
    backend_or_skip(backend)
    (tmp_path / "tiny.toml").write_text(TINY)
    p, doc = run(tmp_path, str(tmp_path / "tiny.toml"), backend)
    assert p.returncode == 0, p.stderr[-3000:]
    cell = [s for s in doc["samples"] if s["backend"] == backend]
    assert [s["value"] for s in cell if s["metric"] == "stack.start"], doc["events"]
    created = service_times(doc, backend, "stack.service.created")
    healthy = service_times(doc, backend, "stack.service.healthy")
    ready = service_times(doc, backend, "stack.service.ready")
    # dependency order: the front is created only once the back's healthcheck passed
    assert created["back"] < healthy["back"] <= created["front"] < ready["front"]
    start = next(s["value"] for s in cell if s["metric"] == "stack.start")
    assert start == pytest.approx(ready["front"])
    assert {s["metric"] for s in cell} >= {"stack.memory.pss", "stack.memory.daemon",
                                           "stack.disk.image", "stack.teardown"}
    answers = [a["data"] for a in doc["artifacts"] if a["kind"] == "front_response"]
    assert answers and answers[0]["body"].strip() == "back-says-hi"  # fetched by name
    # single-vm is a VM placement: not applicable here, with the reason recorded
    assert any(e["kind"] == "not_applicable" and e["variant"] == "placement=single-vm"
               for e in doc["events"])
    assert leftovers(backend, doc["run_id"]) == []


def test_failing_healthcheck_fails_the_sample_keeps_logs_tears_down(tmp_path: Path) -> None:
    backend_or_skip("docker")
    bad = TINY.replace('"http://127.0.0.1:8000/"], interval = 0.2',
                       '"http://127.0.0.1:9/"], interval = 0.2, retries = 2')
    bad = bad.replace("exec httpd", "echo back-started >&2; exec httpd", 1)
    (tmp_path / "bad.toml").write_text(bad)
    _, doc = run(tmp_path, str(tmp_path / "bad.toml"), "docker")
    assert not [s for s in doc["samples"] if s["metric"] == "stack.start"]
    failed = [e for e in doc["events"] if e["kind"] == "sample_failed"]
    assert failed and "service back is unhealthy" in failed[0]["error"]
    assert "back-started" in failed[0]["logs"]["back"]  # its output, kept
    assert "exit 1" in failed[0]["logs"]["back healthchecks"]
    assert leftovers("docker", doc["run_id"]) == []


@pytest.mark.parametrize("backend", ["docker", "podman"])
def test_a_killed_run_leaves_its_stack_to_bench_gc(tmp_path: Path, backend: str) -> None:
    """The runner is SIGKILLed while its stack waits for a healthcheck that never passes:
    the back's container and the stack's network stay, labelled with the run; `bench gc
    --run` removes them all."""
    backend_or_skip(backend)
    stuck = TINY.replace('"http://127.0.0.1:8000/"], interval = 0.2',
                         '"http://127.0.0.1:9/"], interval = 0.2, retries = 100000')
    (tmp_path / "stuck.toml").write_text(stuck)
    out = tmp_path / "out"
    p = subprocess.Popen([*BENCH, "run", str(tmp_path / "stuck.toml"), "--backends", backend,
                          "--out", str(out)], stdout=subprocess.DEVNULL)
    run_id, deadline = "", time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            journals = list(out.glob("*.journal"))  # <scenario>-<time>-<run id>.journal
            run_id = journals[0].stem.rsplit("-", 1)[1] if journals else ""
            if run_id and len(leftovers(backend, run_id)) >= 2:
                break
            time.sleep(0.5)
    finally:
        p.kill()
        p.wait()
    assert run_id and len(leftovers(backend, run_id)) >= 2, leftovers(backend, run_id)
    gc = subprocess.run([*BENCH, "gc", "--run", run_id], capture_output=True, text=True,
                        timeout=300, check=False)
    assert gc.returncode == 0, gc.stderr[-2000:]
    assert leftovers(backend, run_id) == []


def test_single_vm_refuses_a_stack_not_made_of_debian_packages(tmp_path: Path) -> None:
    backend_or_skip("libvirt")
    (tmp_path / "tiny.toml").write_text(TINY.replace('"per-service", ', ""))
    _, doc = run(tmp_path, str(tmp_path / "tiny.toml"), "libvirt")
    na = [e for e in doc["events"] if e["kind"] == "not_applicable"]
    assert na and "is not made of Debian packages" in na[0]["reason"], doc["events"]
    assert not doc["samples"]


@pytest.mark.slow
def test_tiny_stack_one_vm_per_service(tmp_path: Path) -> None:
    backend_or_skip("libvirt")
    (tmp_path / "tiny.toml").write_text(TINY.replace(', "single-vm"', ""))
    p, doc = run(tmp_path, str(tmp_path / "tiny.toml"), "libvirt")
    assert p.returncode == 0, p.stderr[-3000:]
    created = service_times(doc, "libvirt", "stack.service.created")
    healthy = service_times(doc, "libvirt", "stack.service.healthy")  # exec by the agent
    assert created["back"] < healthy["back"] <= created["front"]
    answers = [a["data"] for a in doc["artifacts"] if a["kind"] == "front_response"]
    assert answers and answers[0]["body"].strip() == "back-says-hi"
    assert leftovers("libvirt", doc["run_id"]) == []


EXAMPLE_BACKENDS = ["ns", "docker", "podman", "libvirt:disk"]


@pytest.mark.slow
def test_example_stack_on_every_backend_and_placement(tmp_path: Path) -> None:
    for b in EXAMPLE_BACKENDS:
        backend_or_skip(b)
    p, doc = run(tmp_path, "stack", ",".join(EXAMPLE_BACKENDS), "--warmups", "0",
                 "--min-samples", "1", "--max-samples", "1", timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = {(s["backend"], s["variant"]) for s in doc["samples"]
             if s["metric"] == "stack.start"}
    want = {(b, "placement=per-service") for b in EXAMPLE_BACKENDS}
    want.add(("libvirt:disk", "placement=single-vm"))
    assert cells == want, doc["events"]
    for a in doc["artifacts"]:
        if a["kind"] == "front_response":
            assert re.fullmatch(r"hits=\d+ \(read from redis\)\n", a["data"]["body"])
    for b in EXAMPLE_BACKENDS:
        assert leftovers(b, doc["run_id"]) == []
    rep = subprocess.run([*BENCH, "report", *(str(f) for f in (tmp_path / "out").glob(
        "stack-*.json") if not f.name.endswith("pyperf.json")), "--out",
        str(tmp_path / "R")], capture_output=True, text=True, timeout=600, check=False)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert (tmp_path / "R" / "stack_timeline.png").stat().st_size > 0


@pytest.mark.slow
def test_compose_file_under_docker_compose_answers_as_under_cvbench(tmp_path: Path) -> None:
    """scripts/stack-images loads the example's Debian images into docker; its compose
    import resolves to the very digests of the TOML scenario; Debian's docker-compose
    runs examples/compose.yaml and its front answers the request with data from redis."""
    backend_or_skip("docker")
    backend_or_skip("podman")
    require("docker-compose", None if shutil.which("docker-compose")
            else "not installed (make provision)")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "stack-images")], check=True,
                   timeout=1800)
    toml = scenario.load("stack")
    composed = compose.read(ROOT / "examples" / "compose.yaml", toml, session.engine_lookup)
    assert stack.resolved(composed, stack.images(composed, session.build_image)) == \
        stack.resolved(toml, stack.images(toml, session.build_image))
    project = f"cvbench-test-{int(time.time())}"
    dc = ["docker-compose", "-p", project, "-f", str(ROOT / "examples" / "compose.yaml")]
    try:
        subprocess.run([*dc, "up", "-d"], check=True, timeout=600, capture_output=True)
        port = subprocess.run([*dc, "port", "proxy", "8080"], check=True, text=True,
                              capture_output=True).stdout.strip().rsplit(":", 1)[1]
        body, deadline = "", time.monotonic() + 120
        while time.monotonic() < deadline:  # depends_on waited for app's health only
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        expect = str(dict(toml.params)["expect"])
        assert re.search(expect, body), body
    finally:
        subprocess.run([*dc, "down", "-v", "--remove-orphans"], timeout=300,
                       capture_output=True, check=False)
