"""Density on real backends: a small ramp on `ns` end to end, then `bench capacity` on
it; a Ctrl-C in the middle of a ramp, which must leave nothing behind; and two or three
instances on each engine and VM backend, which must all be removed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import backend_or_skip, require

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCENARIO = """
name = "density-test"
study = "density"
backends = ["ns"]
[workload]
argv = ["sleep", "3600"]
[limits]
memory = "64M"
[sampling]
warmups = 0
min_samples = 2
max_samples = 2
timeout = 60
metric = "density.start_latency"
[params]
max_instances = {n}
concurrency = {c}
settle = {settle}
min_mem_available = "2G"
"""


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def result_of(out: Path) -> tuple[Path, dict[str, Any]]:
    path = next(f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json"))
    return path, json.loads(path.read_text())


def ns_leftovers(run_id: str) -> list[Any]:
    from runtimes import registry

    return [x for x in registry.get("ns").leftovers() if x.run_id == run_id]


def test_small_ns_ramp_then_capacity(tmp_path: Path) -> None:
    backend_or_skip("ns")
    toml = tmp_path / "density-test.toml"
    toml.write_text(SCENARIO.format(n=6, c=2, settle=0.1))
    out = tmp_path / "D"
    p = bench("run", str(toml), "--out", str(out))
    assert p.returncode == 0, p.stderr
    path, doc = result_of(out)
    counts = sorted({(s["round"], s["instance"]) for s in doc["samples"]
                     if s["metric"] == "density.pss_total"})
    assert counts == [(r, n) for r in (1, 2) for n in (0, 2, 4, 6)]  # batches of 2
    lat = [s for s in doc["samples"] if s["metric"] == "density.start_latency"]
    assert sorted(s["instance"] for s in lat) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert all(0 < s["value"] < 60 for s in lat)
    pss = {(s["round"], s["instance"]): s["value"] for s in doc["samples"]
           if s["metric"] == "density.pss_total"}
    assert all(pss[(r, 6)] > pss[(r, 2)] > 0 for r in (1, 2))
    stops = [e for e in doc["events"] if e["kind"] == "ramp_stopped"]
    assert [e["reason"] for e in stops] == ["max_instances"] * 2
    assert all(e["cleanup_errors"] == [] for e in stops)
    assert ns_leftovers(doc["run_id"]) == []

    args = ("capacity", str(path), "--host-memory", "64G", "--host-cpus", "16",
            "--slo-start", "5s", "--json")
    c = bench(*args)  # 6 instances measured cannot carry a 64 GiB plan
    assert c.returncode == 2 and "--allow-extrapolation" in c.stderr, c.stderr
    c = bench(*args, "--allow-extrapolation")
    assert c.returncode == 0, c.stderr
    plan = json.loads(c.stdout)
    ns = next(b for b in plan["backends"] if b["backend"] == "ns")
    lo, hi = ns["marginal_ci_mib"]
    assert lo <= ns["marginal_mib"] <= hi
    assert 0 < ns["memory"]["pss"]["marginal_mib"] < 16  # an idle sleep, not a VM
    # Each live instance holds 3 of the runner's descriptors (its pipes and pidfd): at
    # 64 GiB the runner's RLIMIT_NOFILE binds before memory.
    per_host = ns["instances_per_host"]
    assert per_host["first_limit"] == "nofile" and per_host["binding"].startswith("nofile")
    assert 0 < per_host["max"] == per_host["by_first_limit"] < per_host["by_memory"]
    assert "EXTRAPOLATED" in c.stderr
    # The kernel's counters were read with the memory: a pid and a network namespace
    # per instance at least.
    lims = {x["name"]: x for x in ns["limits"]}
    assert lims["pid_max"]["per_instance"] >= 0.9 or lims["pid_max"]["binds_at"] is None
    tasks = {(s["round"], s["instance"]): s["value"] for s in doc["samples"]
             if s["metric"] == "density.tasks"}
    assert all(tasks[(r, 6)] >= tasks[(r, 0)] + 6 for r in (1, 2))


def _nofile(soft: int, hard: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ramp_stops_at_the_descriptor_limit_it_names(tmp_path: Path) -> None:
    """A runner whose hard RLIMIT_NOFILE is 400 (each live ns instance holds its pipes and
    pidfd): the soft limit is raised to it, and the ramp stops at the limit, by name,
    before any instance fails for want of a descriptor; nothing is left behind."""
    backend_or_skip("ns")
    toml = tmp_path / "density-test.toml"
    toml.write_text(SCENARIO.format(n=1000, c=1, settle=0.0))
    out = tmp_path / "D"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(toml), "--out",
                        str(out), "--max-samples", "1", "--min-samples", "1"],
                       capture_output=True, text=True, timeout=600, check=False,
                       preexec_fn=lambda: _nofile(200, 400))
    assert p.returncode == 0, p.stderr
    _, doc = result_of(out)
    raised = next(e for e in doc["events"] if e["kind"] == "rlimit_nofile")
    assert (raised["soft_before"], raised["soft"], raised["hard"]) == (200, 400, 400)
    stop = next(e for e in doc["events"] if e["kind"] == "ramp_stopped")
    assert stop["reason"].startswith("limit nofile: runner_fds"), stop["reason"]
    assert 50 < stop["instances"] < 400 // 2 and stop["limits"]["nofile"] == 400
    assert stop["usage_top"]["runner_fds"] <= 400 * 0.95
    assert not stop["cleanup_errors"] and ns_leftovers(doc["run_id"]) == []


def test_ns_ramp_past_a_thousand_descriptors(tmp_path: Path) -> None:
    """1,100 ns instances hold over 3,000 descriptors: no select() limit, no error of the
    harness's own; memory measured every k-th count; nothing left behind."""
    import resource

    backend_or_skip("ns")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    require("nofile", None if hard >= 4000 else
            f"the hard RLIMIT_NOFILE ({hard}) cannot hold 1,100 instances")
    toml = tmp_path / "density-test.toml"
    toml.write_text(SCENARIO.format(n=1100, c=1, settle=0.0) + "measure_every = 100\n")
    out = tmp_path / "D"
    p = bench("run", str(toml), "--out", str(out), "--max-samples", "1", "--min-samples", "1",
              timeout=1800)
    assert p.returncode == 0, p.stderr
    _, doc = result_of(out)
    stop = next(e for e in doc["events"] if e["kind"] == "ramp_stopped")
    assert stop["reason"] == "max_instances" and stop["instances"] == 1100, stop["reason"]
    assert stop["usage_top"]["runner_fds"] > 3 * 1000
    measured = sorted(s["instance"] for s in doc["samples"] if s["metric"] == "density.pss_total")
    assert measured[-1] == stop["instances"] and len(measured) < 80
    assert not stop["cleanup_errors"] and ns_leftovers(doc["run_id"]) == []


def test_ctrl_c_mid_ramp_keeps_the_steps_and_removes_every_instance(tmp_path: Path) -> None:
    backend_or_skip("ns")
    toml = tmp_path / "density-test.toml"
    toml.write_text(SCENARIO.format(n=40, c=1, settle=0.5))
    out = tmp_path / "D"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(toml), "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(6)  # some instances up, the ramp (40 x >= 0.5 s) far from done
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    _, doc = result_of(out)
    stops = [e for e in doc["events"] if e["kind"] == "ramp_stopped"]
    assert stops and stops[0]["reason"] == "interrupted", stops
    top = max(s["instance"] for s in doc["samples"] if s["metric"] == "density.pss_total")
    assert 0 < top < 40
    assert ns_leftovers(doc["run_id"]) == []


@pytest.mark.parametrize("backend, count", [("docker", 3), ("podman", 3), ("libvirt", 2)])
def test_small_ramp_on_engines_and_vms(tmp_path: Path, backend: str, count: int) -> None:
    from runtimes import registry

    require(backend, None if registry.known(backend) else "backend not registered here")
    rt: Any = backend_or_skip(backend)
    toml = tmp_path / "density-test.toml"
    toml.write_text(SCENARIO.format(n=count, c=1, settle=0.2).replace('["ns"]',
                                                                      f'["{backend}"]'))
    out = tmp_path / "D"
    p = bench("run", str(toml), "--out", str(out), "--max-samples", "1", "--min-samples", "1")
    assert p.returncode == 0, p.stderr
    _, doc = result_of(out)
    pss = {s["instance"]: s["value"] for s in doc["samples"]
           if s["metric"] == "density.pss_total"}
    assert sorted(pss) == list(range(count + 1))
    assert pss[count] > pss[1] > 0
    lat = [s["instance"] for s in doc["samples"] if s["metric"] == "density.start_latency"]
    assert sorted(lat) == list(range(1, count + 1))
    daemon = [s["value"] for s in doc["samples"] if s["metric"] == "density.daemon_pss"]
    assert len(daemon) == count + 1
    stops = [e for e in doc["events"] if e["kind"] == "ramp_stopped"]
    assert [e["reason"] for e in stops] == ["max_instances"] and not stops[0]["cleanup_errors"]
    assert [x for x in rt.leftovers() if x.run_id == doc["run_id"]] == []
