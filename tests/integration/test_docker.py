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
