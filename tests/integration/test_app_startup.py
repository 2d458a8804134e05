"""`bench run app-startup` end to end (slow: builds nginx-light once, boots TCG VMs): every
listed backend available here serves nginx's default page from the same image digest,
`startup.to_serving` per backend is in the table and in the report's chart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes import registry
from tests.conftest import require

pytestmark = [pytest.mark.root, pytest.mark.slow]

BENCH = [sys.executable, "-m", "harness.cli"]
BACKENDS = ["host", "ns", "docker", "podman", "libvirt:disk"]


def test_app_startup_on_every_backend(tmp_path: Path) -> None:
    for b in BACKENDS:
        a = registry.get(b).availability()
        require(b.split(":")[0], None if a.ok else f"{a.reason} (fix: {a.fix})")
    out = tmp_path / "out"
    p = subprocess.run([*BENCH, "run", "app-startup", "--out", str(out), "--warmups", "0",
                        "--min-samples", "2", "--max-samples", "2"],
                       capture_output=True, text=True, timeout=3000, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    table = [line.split() for line in p.stdout.splitlines()]
    assert {row[0] for row in table if len(row) > 1 and row[1] == "startup.to_serving"} == \
        set(BACKENDS)
    path = next(f for f in out.glob("app-startup-*.json") if not f.name.endswith("pyperf.json"))
    result = json.loads(path.read_text())
    digest = result["image"]["digest"]
    assert result["image"]["source"]["packages"] == ["nginx-light"]
    assert "nginx-light" in result["image"]["identity"]["packages"]
    for b in BACKENDS:  # every backend ran that digest
        prepared = json.dumps(result["backends"][b]["prepared"])
        assert digest in prepared, (b, prepared[:300])
    served = {s["backend"] for s in result["samples"] if s["metric"] == "startup.to_serving"}
    assert served == set(BACKENDS)
    assert result["scenario"]["workload"]["probe_interval"] == 0.01
    rep = subprocess.run([*BENCH, "report", str(path), "--out", str(tmp_path / "R")],
                         capture_output=True, text=True, timeout=600, check=False)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert (tmp_path / "R" / "startup_serving.png").stat().st_size > 0
    md = (tmp_path / "R" / "report.md").read_text()
    lines = md.splitlines()
    at = next(i for i, line in enumerate(lines)
              if line.startswith("| backend |") and "to_serving" in line)
    col = lines[at].split("|").index(" to_serving ")
    rows = {}
    for line in lines[at + 2:]:  # the startup summary: one row per backend
        if not line.startswith("| "):
            break
        cells = line.split("|")
        rows[cells[1].strip().split(" (")[0]] = cells[col].strip()
    assert all(rows.get(b, "—") not in ("", "—") for b in BACKENDS), rows
    csv = (tmp_path / "R" / "startup.csv").read_text()
    assert all(f"app-startup,{b},default,startup.to_serving," in csv for b in BACKENDS)
