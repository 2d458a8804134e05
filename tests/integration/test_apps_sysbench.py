"""`bench run cpu|mem` end to end: sysbench inside a fresh instance of the Debian image
on ns, docker and podman (short: one sample, 1 s jobs), libvirt:disk under `slow`.

Checks: every backend gives the study's figures, each equal to the figure in sysbench's
own output kept as the sample's artifact; a sysbench that fails in the instance (its
buffer beyond the memory limit) fails the sample with sysbench's reason and records no
figure.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.core.probes import sysbench
from tests.integration._scenario_run import run_one_sample

pytestmark = [pytest.mark.root]

CONTAINERS = ("ns", "docker", "podman")
SHORT: dict[str, dict[str, Any]] = {
    "cpu": {"duration": 1.0, "warmup": 0.0},
    "mem": {"duration": 1.0, "warmup": 0.0, "block_size": "64M"},
}
FIGURE = {"cpu": ("cpu.events", "events_per_s"), "mem": ("mem.bw", "bytes_per_s")}


def run(repo: Path, tmp_path: Path, study: str, backends: tuple[str, ...],
        **tables: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    params = {**SHORT[study], **tables.pop("params", {})}
    return run_one_sample(repo, tmp_path, study, backends, params=params, **tables)


def check_figures(study: str, doc: dict[str, Any], backends: tuple[str, ...]) -> None:
    metric, field = FIGURE[study]
    subs = [None] if study == "cpu" else ["read", "write"]
    samples = {(s["backend"], s.get("sub")): s for s in doc["samples"]}
    raw = {(a["backend"], a["variant"] if study == "mem" else None): a["data"]
           for a in doc["artifacts"] if a["kind"] == "sysbench"}
    for b in backends:
        for sub in subs:
            s = samples[(b, sub)]
            assert (s["metric"], s["unit"]) == (metric, "events/s" if study == "cpu" else "B/s")
            # the figure is sysbench's own, read from the output kept in the result
            assert s["value"] == getattr(sysbench.parse(raw[(b, sub)]), field) > 0, (b, sub)
            assert s["cpuset"] == "1"


@pytest.mark.parametrize("study", ["cpu", "mem"])
def test_containers(repo: Path, tmp_path: Path, study: str) -> None:
    p, doc = run(repo, tmp_path, study, CONTAINERS)
    assert p.returncode == 0, p.stderr[-3000:]
    check_figures(study, doc, CONTAINERS)
    assert doc["image"]["source"]["packages"] == ["sysbench"]


def test_a_failing_sysbench_fails_its_sample_without_a_figure(repo: Path,
                                                              tmp_path: Path) -> None:
    _p, doc = run(repo, tmp_path, "mem", ("ns",), params={"block_size": "512M"},
                 limits={"memory": "128M"})
    assert not [s for s in doc["samples"] if s["metric"] == "mem.bw"]
    failed = [e for e in doc["events"] if e.get("event", e.get("kind")) == "sample_failed"]
    assert failed and "sysbench" in failed[0]["error"], doc["events"]


@pytest.mark.slow
@pytest.mark.libvirt
@pytest.mark.parametrize("study", ["cpu", "mem"])
def test_libvirt_disk(repo: Path, tmp_path: Path, study: str) -> None:
    p, doc = run(repo, tmp_path, study, ("libvirt:disk",))
    assert p.returncode == 0, p.stderr[-3000:]
    check_figures(study, doc, ("libvirt:disk",))
