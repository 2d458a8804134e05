"""Application studies end to end (`bench run <study>` with short durations): on ns,
docker and podman in `make test`, libvirt:disk (a TCG VM here) under the slow marker.

Every cell of every network mode the backend has gives its figures, each equal to the
one the tool printed in the raw output kept with the sample (parsed again here), with
the CPU placement recorded.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness.core.probes import loadgen
from tests.conftest import backend_or_skip
from tests.integration.test_studies_run import run_once

pytestmark = pytest.mark.root
BENCH = [sys.executable, "-m", "harness.cli"]
TINY = {"warmup": 0, "duration": 1, "requests": 5000}
FAST = ["ns", "docker", "podman"]


def run(repo: Path, tmp_path: Path, study: str, backends: list[str], *,
        params: dict[str, Any] | None = None, variants: dict[str, Any] | None = None,
        **workload: Any
        ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    data = tomllib.loads((repo / "scenarios" / f"{study}.toml").read_text())
    data["backends"] = backends
    keys = set(data.get("params", {}))
    data["params"] = {**data.get("params", {}),
                      **{k: v for k, v in TINY.items() if k in keys}, **(params or {})}
    data["workload"] = {**data["workload"], **workload}
    data["variants"] = variants or data["variants"]
    data["sampling"] = {**data["sampling"], "time_budget": 900,
                        **({"timeout": 5} if "image" in workload else {})}
    return run_once(data, tmp_path)


def check_figures(doc: dict[str, Any], backend: str, modes: set[str]) -> None:
    """Every mode has its figures, each the tool's own (parsed again from the artifact)."""
    study = doc["scenario"]["study"]
    samples = [s for s in doc["samples"] if s["backend"] == backend]
    assert {s["variant"].split(",")[0] for s in samples} == {f"network={m}" for m in modes}
    for s in samples:
        assert (s["cpuset"], s["client_cpuset"]) == ("1", "0"), s
        assert s["value"] > 0 or s["metric"].endswith("daemon_pss_loaded"), s
    arts = [a for a in doc["artifacts"] if a["backend"] == backend and not a.get("warmup")]
    assert arts and not any(a.get("failed") for a in arts)
    for a in arts:
        cell = [s for s in samples if s["variant"] == a["variant"]]
        if study == "http":
            wrk = loadgen.parse_wrk(a["data"])
            got = {s["metric"]: s["value"] for s in cell}
            assert got["http.rps"] == wrk.rps and got["http.lat_p99"] == wrk.latency["99"]
            assert got["http.bw"] == wrk.transfer
        else:  # one run: both tests, the sub-variants of the cell
            tests = loadgen.parse_redis(a["data"])
            cell = [s for s in samples if s["variant"].startswith(a["variant"] + ",")]
            assert {s["sub"] for s in cell if s["metric"] == "kv.ops"} == {"GET", "SET"}
            for s in cell:
                if s["metric"] == "kv.ops":
                    assert s["value"] == tests[s["sub"]].rps


@pytest.mark.parametrize("study", ["http", "kv"])
@pytest.mark.parametrize("backend", FAST)
def test_study_on_a_container(repo: Path, tmp_path: Path, study: str, backend: str) -> None:
    backend_or_skip(backend)
    p, doc = run(repo, tmp_path, study, [backend])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    check_figures(doc, backend, {"bridge", "publish", "host"})


@pytest.mark.slow
@pytest.mark.parametrize("study", ["http", "kv"])
def test_study_on_a_vm(repo: Path, tmp_path: Path, study: str) -> None:
    backend_or_skip("libvirt")
    p, doc = run(repo, tmp_path, study, ["libvirt:disk"])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    check_figures(doc, "libvirt:disk", {"bridge", "publish"})  # host: not applicable



def test_a_server_that_never_answers_fails_its_cell_with_the_probes_reason(
        repo: Path, tmp_path: Path) -> None:
    """An image without nginx: the server cannot start, so the http probe stops at once
    with how the instance ended (not at its timeout); the cell fails with the probe's
    reason, no figure is recorded for it, and the run still ends with a result (the
    other cells, here the host's, go on the same way)."""
    backend_or_skip("ns")
    p, doc = run(repo, tmp_path, "http", ["ns"], variants={"network": ["bridge", "host"]},
                 image={"recipe": "base"})
    assert doc, p.stdout[-2000:] + p.stderr[-2000:]
    failed = [e for e in doc["events"] if e["kind"] == "cell_failed"]
    assert failed and all("http:" in e["error"] and "exited with status" in e["error"]
                          and "before it answered" in e["error"] for e in failed), failed
    assert not [s for s in doc["samples"] if s["metric"].startswith("http.rps")]
