"""Compose files as the seed writes them, against the real backends (`bench run stack
--compose`): a service built by the engine from a context (FROM a local image, offline)
runs on docker and on ns, its build argument interpolated from the `.env` beside the
compose file and reached by a link's alias and by its container_name; the image built
for the run is gone when the run ends. A stack on two networks: a service on both
reaches each side by name; a service on one reaches nothing on the other, by name or by
address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import session
from harness.core import image
from tests.conftest import backend_or_skip, require

pytestmark = [pytest.mark.root]

DATA = Path(__file__).parent / "data"
BENCH = [sys.executable, "-m", "harness.cli"]

SCENARIO = """
name = "compose-test"
study = "stack"
network = "bridge"
[[services]]
name = "placeholder"
[params]
request = "/cgi-bin/get"
expect = '''EXPECT'''
[sampling]
warmups = 0
min_samples = 1
max_samples = 1
timeout = 120
metric = "stack.start"
"""


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The recipe base image (busybox: sh, httpd, wget) loaded into docker and Podman
    under a tag of this test, removed afterwards."""
    backend_or_skip("docker")
    tag = f"cvbench-test/compose-base:{os.getpid()}"
    img = session.build_image(image.Recipe("base"))
    archive = Path(f"/tmp/cvbench-compose-base-{os.getpid()}.tar")
    image.export(img, archive, tag=tag)
    engines = [e for e in ("docker", "podman") if shutil.which(e)]
    try:
        for engine in engines:
            subprocess.run([engine, "load", "-q", "-i", str(archive)], check=True,
                           capture_output=True)
        yield tag
    finally:
        archive.unlink(missing_ok=True)
        for engine in engines:
            subprocess.run([engine, "rmi", "-f", tag], capture_output=True, check=False)


def bench_run(tmp_path: Path, compose_file: Path, backends: str, expect: str,
              env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    scen = tmp_path / "scenario.toml"
    scen.write_text(SCENARIO.replace("EXPECT", expect))
    out = tmp_path / "out"
    p = subprocess.run([*BENCH, "run", str(scen), "--compose", str(compose_file),
                        "--backends", backends, "--out", str(out)], capture_output=True,
                       text=True, timeout=900, check=False, env={**os.environ, **env})
    found = [f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json")]
    assert len(found) == 1, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    return p, json.loads(found[0].read_text())


def answers(doc: dict[str, Any], kind: str = "front_response") -> dict[str, str]:
    """The front's answer per backend (the front_response artifacts)."""
    return {a["backend"]: a["data"]["body"] for a in doc["artifacts"] if a["kind"] == kind}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def started(doc: dict[str, Any]) -> set[str]:
    return {s["backend"] for s in doc["samples"] if s["metric"] == "stack.start"}


@pytest.mark.parametrize("backends", ["docker,ns", "ns"])
def test_a_built_service_runs_on_docker_and_ns(tmp_path: Path, base: str,
                                               backends: str) -> None:
    """(ns alone: docker builds the image, runs nothing, and still removes it at the
    run's end.)"""
    backend_or_skip("ns")
    shutil.copytree(DATA / "compose-build", tmp_path / "project")
    compose_file = tmp_path / "project" / "compose.yaml"
    (tmp_path / "project" / ".env").write_text("GREETING=from-dotenv\n")
    port = free_port()
    p, doc = bench_run(tmp_path, compose_file, backends,
                       r"(?s)built:from-dotenv\n.*built:from-dotenv\n",
                       {"CVBENCH_TEST_BASE": base, "FRONT_PORT": str(port)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert started(doc) == set(backends.split(",")), doc["events"]
    for backend, body in answers(doc).items():  # by the link's alias, by container_name
        assert body == "built:from-dotenv\nbuilt:from-dotenv\n", backend
    # ...and through the port the front publishes on the host ("${FRONT_PORT}:80")
    assert answers(doc, "front_published_response") == answers(doc)
    built = doc["stack"]["images"]["back"]["source"]
    assert built["engine"] == "docker"
    assert built["build"]["context"] == str((tmp_path / "project" / "back").resolve())
    assert built["ref"].startswith(f"cvbench-{doc['run_id']}-build-")
    # the engine's own word: nothing labelled with the run is left in its store
    left = subprocess.run(["docker", "images", "-q", "--filter",
                           f"label=cvbench.run={doc['run_id']}"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert left == []


def test_a_build_from_an_image_in_no_store_fails_in_one_line(tmp_path: Path,
                                                             base: str) -> None:
    """FROM an image in no local store: the engine is not let pull it; the run stops
    with one line naming the build, before any sample."""
    shutil.copytree(DATA / "compose-build", tmp_path / "project")
    f = tmp_path / "project" / "alone.yaml"
    f.write_text("services:\n  back:\n    build: {context: back, args: "
                 "{BASE: cvbench-test/not-here:never}}\n"
                 "    x-cvbench: {readiness: 'http:80/'}\n")
    scen = tmp_path / "scenario.toml"
    scen.write_text(SCENARIO.replace("EXPECT", "."))
    p = subprocess.run([*BENCH, "run", str(scen), "--compose", str(f), "--backends",
                        "docker", "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=600, check=False)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("bench: error:")]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert "docker build of" in lines[0] and "not-here" in lines[0], lines[0]
    assert not list((tmp_path / "out").glob("*.json"))


@pytest.mark.parametrize("backends", ["docker", "ns", "podman"])
def test_two_networks_reach_by_name_and_stay_apart(tmp_path: Path, base: str,
                                                   backends: str) -> None:
    backend_or_skip(backends)
    expect = (r"db=db-says-hi web=web-says-hi\nweb-to-web=web-says-hi\n"
              r"web-to-db-by-name=unreachable\n"
              r"web-to-db-by-address=unreachable \(\d+\.\d+\.\d+\.\d+\)\n")
    p, doc = bench_run(tmp_path, DATA / "compose-networks.yaml", backends, expect,
                       {"CVBENCH_TEST_BASE": base})
    assert p.returncode == 0, p.stderr[-3000:]
    assert started(doc) == {backends}, doc["events"]
    assert re.fullmatch(expect, answers(doc)[backends]), answers(doc)


def test_two_networks_on_libvirt_are_not_applicable_with_the_reason(tmp_path: Path,
                                                                    base: str) -> None:
    backend_or_skip("libvirt")
    _, doc = bench_run(tmp_path, DATA / "compose-networks.yaml", "libvirt", ".",
                       {"CVBENCH_TEST_BASE": base})
    assert not started(doc)
    why = [e for e in doc["events"] if e["kind"] == "not_applicable"]
    assert why and "configures eth0 alone" in json.dumps(why), doc["events"]


@pytest.mark.slow
def test_the_seed_example_runs_on_docker_and_ns(tmp_path: Path) -> None:
    """examples/seed/compose.yaml (the seed's layout: build:, container_name, links,
    networks, depends_on, ports, top-level networks and volumes) under `bench run stack`:
    the front answers with data read from redis, through the port it publishes too."""
    backend_or_skip("docker")
    backend_or_skip("ns")
    missing = [ref for ref in ("cvbench/stack-redis:bookworm", "cvbench/stack-app:bookworm",
                               "cvbench/stack-proxy:bookworm")
               if session.engine_lookup("docker", ref) is not None]
    require("stack-images", f"{missing} not loaded (scripts/stack-images)" if missing
            else None)
    out = tmp_path / "out"
    p = subprocess.run([*BENCH, "run", "stack", "--compose",
                        str(DATA.parents[2] / "examples" / "seed" / "compose.yaml"),
                        "--backends", "docker,ns", "--out", str(out)], capture_output=True,
                       text=True, timeout=1800, check=False,
                       env={**os.environ, "PROXY_PORT": str(free_port())})
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(next(f for f in out.glob("*.json")
                          if not f.name.endswith(".pyperf.json")).read_text())
    assert started(doc) == {"docker", "ns"}, doc["events"]
    for kind in ("front_response", "front_published_response"):
        got = answers(doc, kind)
        assert set(got) == {"docker", "ns"}, kind
        assert all(re.fullmatch(r"hits=\d+ \(read from redis\)\n", b) for b in got.values())


def test_podman_builds_and_the_run_removes_it(tmp_path: Path, base: str, run_id: str) -> None:
    """A build named for Podman (a scenario's `engine = "podman"`): its classic builder
    from the local image, the argument's word in the flattened tree; the run's end
    (bookkeeping.collect, as `finish` calls it) removes the image, as Podman lists."""
    backend_or_skip("podman")
    from harness.bookkeeping import collect
    from runtimes import registry

    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nARG G=unset\nRUN echo \"$G\" > /greeting\n"
        "RUN [ \"$(ip -o link | grep -vc ': lo:')\" = 0 ]\n")  # (offline: lo alone)
    src = image.EngineRef("podman", "", image.EngineBuild(
        str(tmp_path / "ctx"), "Dockerfile", (("BASE", base), ("G", "from-podman"))))
    img = session.build_image(src, None, run_id)
    assert (img.rootfs / "greeting").read_text() == "from-podman\n"

    def labelled() -> list[str]:
        return subprocess.run(["podman", "images", "-aq", "--filter",
                               f"label=cvbench.run={run_id}"], capture_output=True,
                              text=True, check=True).stdout.split()

    assert labelled()
    collect(registry.get("podman"), [], run_id)
    assert labelled() == []


ONE_SHOT = r"""
services:
  migrate:
    image: ${CVBENCH_TEST_BASE}
    command: ["sh", "-c", "sleep 1; exit ${MIGRATE_STATUS}"]
  web:
    image: ${CVBENCH_TEST_BASE}
    command:
      - sh
      - -c
      - |
        mkdir -p /tmp/w/cgi-bin && cd /tmp/w/cgi-bin
        printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho migrated\n' > get
        chmod +x get
        exec httpd -f -p 80 -h /tmp/w
    depends_on:
      migrate: {condition: service_completed_successfully}
    x-cvbench: {readiness: "http:80/cgi-bin/get"}
"""


@pytest.mark.parametrize("backend", ["docker", "ns"])
def test_a_service_waits_for_another_to_complete(tmp_path: Path, base: str,
                                                 backend: str) -> None:
    """depends_on: service_completed_successfully: web is created once migrate exited
    with status 0 (its exit, as the backend reports it); a status other than 0 fails
    the sample, with that status."""
    backend_or_skip(backend)
    f = tmp_path / "compose.yaml"
    f.write_text(ONE_SHOT)
    p, doc = bench_run(tmp_path / "ok", f, backend, "migrated",
                       {"CVBENCH_TEST_BASE": base, "MIGRATE_STATUS": "0"})
    assert p.returncode == 0, p.stderr[-3000:]
    times = {(s["metric"], s["sub"]): s["value"] for s in doc["samples"] if s.get("sub")}
    completed = times[("stack.service.completed", "service=migrate")]
    assert times[("stack.service.started", "service=migrate")] + 0.9 < completed  # sleep 1
    assert completed <= times[("stack.service.created", "service=web")]
    _, doc = bench_run(tmp_path / "bad", f, backend, "migrated",
                       {"CVBENCH_TEST_BASE": base, "MIGRATE_STATUS": "3"})
    assert not started(doc)
    failed = [e for e in doc["events"] if e["kind"] == "sample_failed"]
    assert failed and "service migrate exited with status 3" in failed[0]["error"]
