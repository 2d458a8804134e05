"""The docker backend against the real dockerd: runc, crun and runsc (engine_cases.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_or_skip
from tests.integration.engine_cases import EngineCases

pytestmark = [pytest.mark.root, pytest.mark.docker]


class TestDocker(EngineCases):
    names = ("docker", "docker:crun", "docker:runsc", "docker:ns")


@pytest.mark.slow
@pytest.mark.podman
def test_startup_run_same_digest_on_every_backend(tmp_path: Path) -> None:
    """`bench run startup` over host, ns, docker and podman records one image digest, and
    the engines' images carry it as their only layer; nothing of the run is left."""
    from runtimes import registry

    for name in ("ns", "docker", "podman"):
        backend_or_skip(name)
    out = tmp_path / "D"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", "startup", "--backends",
                        "host,ns,docker,podman", "--out", str(out), "--warmups", "0",
                        "--min-samples", "3", "--max-samples", "3"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr
    result = next(f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json"))
    doc = json.loads(result.read_text())
    digest = doc["image"]["digest"]
    assert {s["backend"] for s in doc["samples"]} == {"host", "ns", "docker", "podman"}
    for engine in ("docker", "podman"):
        meta = doc["backends"][engine]
        assert meta["prepared"]["diff_id"] == f"sha256:{digest}"
        rt = registry.get(engine)
        info = rt.api.inspect_image(meta["prepared"]["ref"])  # type: ignore[attr-defined]
        assert info["RootFS"]["Layers"] == [f"sha256:{digest}"]
        assert meta["daemons"]
        assert [x for x in rt.leftovers() if x.run_id == doc["run_id"]] == []


def test_warm_run_cold_and_precreated_side_by_side(repo: Path, tmp_path: Path) -> None:
    """`bench run warm` on host, docker and docker:precreated, one sample each: the pool
    flavour's request comes from a slot, its burst starts from the pool; the others are
    cold; nothing of the run is left in dockerd."""
    from runtimes import registry
    from tests.integration._scenario_run import run_one_sample

    p, doc = run_one_sample(repo, tmp_path, "warm", ("host", "docker", "docker:precreated"),
                            params={"pool": 2, "burst": 3})
    assert p.returncode == 0, p.stderr
    got: dict[str, dict[str, list[float]]] = {}
    for s in doc["samples"]:
        got.setdefault(s["backend"], {}).setdefault(s["metric"], []).append(s["value"])
    assert set(got) == {"host", "docker", "docker:precreated"}, doc["events"]
    warm = got["docker:precreated"]
    assert warm["warm.from_slot"] == [1.0]
    # (how many of the burst came cold depends on how fast the filler keeps up: timing)
    assert warm["warm.burst.slots"][0] + warm["warm.burst.cold"][0] == 3
    assert warm["warm.burst.slots"][0] >= 1 and len(warm["warm.burst.to_ready"]) == 3
    assert len(warm["warm.idle.disk"]) == 2 and warm["warm.refill_rate"][0] > 0
    for cold in ("host", "docker"):
        assert got[cold]["warm.from_slot"] == [0.0] and got[cold]["warm.burst.cold"] == [3.0]
        assert "warm.refill_rate" not in got[cold]
    assert doc["backends"]["docker:precreated"]["pool"]
    rt = registry.get("docker")
    assert [x for x in rt.leftovers() if x.run_id == doc["run_id"]] == []
