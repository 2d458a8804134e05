"""`bench run startup --backends host,ns` end to end, as issue 2's acceptance asks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_startup_host_ns(tmp_path: Path) -> None:
    backend_or_skip("ns")
    out = tmp_path / "D"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", "startup", "--backends",
                        "host,ns", "--out", str(out), "--max-samples", "12"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr
    result = next(f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json"))
    doc = json.loads(result.read_text())
    for backend in ("host", "ns"):
        counts: dict[str, int] = {}
        for s in doc["samples"]:
            if s["backend"] == backend:
                counts[s["metric"]] = counts.get(s["metric"], 0) + 1
        assert len(counts) == 7 and min(counts.values()) >= 10, (backend, counts)
    digest = doc["image"]["digest"]
    tar = Path(doc["backends"]["ns"]["prepared"]["ref"]).parent / "image.tar"
    assert hashlib.sha256(tar.read_bytes()).hexdigest() == digest
    pp = result.with_name(result.stem + ".pyperf.json")
    s = subprocess.run([sys.executable, "-m", "pyperf", "stats", str(pp)], capture_output=True,
                       text=True, check=False)
    assert s.returncode == 0, s.stderr
    run_id = doc["run_id"]
    from runtimes import registry

    assert [x for x in registry.get("ns").leftovers() if x.run_id == run_id] == []
