"""The application section and `bench capacity` on a real run (slow: a short `http` run on
host and ns, three samples per cell, then `bench report` and `bench capacity`).

Checks against the run's own samples: the overhead CSV's medians and ratios, the report's
table and claim, and the capacity plan's counts by CPU (the recorded cpuset) and memory
(the PSS under load)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import tomllib
from pathlib import Path
from statistics import median

import pytest

from tests.conftest import backend_or_skip
from tests.integration.test_apps import BENCH, TINY
from tests.integration.test_studies_run import _toml

pytestmark = [pytest.mark.root, pytest.mark.slow]
GiB = 2**30


def values(doc: dict[str, object], backend: str, variant: str, metric: str) -> list[float]:
    samples = doc["samples"]
    assert isinstance(samples, list)
    v = [float(s["value"]) for s in samples
         if (s["backend"], s["variant"], s["metric"]) == (backend, variant, metric)]
    assert v, (backend, variant, metric)
    return v


def test_report_and_capacity_from_a_real_http_run(repo: Path, tmp_path: Path) -> None:
    backend_or_skip("ns")
    data = tomllib.loads((repo / "scenarios" / "http.toml").read_text())
    data["backends"] = ["host", "ns"]
    data["params"] = {**data["params"], **{k: v for k, v in TINY.items()
                                           if k in data["params"]}}
    path = tmp_path / "http.toml"
    path.write_text(_toml(data))
    p = subprocess.run([*BENCH, "run", str(path), "--out", str(tmp_path / "R"), "--warmups",
                        "0", "--min-samples", "3", "--max-samples", "3"],
                       capture_output=True, text=True, timeout=1800, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    result = next(f for f in (tmp_path / "R").glob("*.json")
                  if not f.name.endswith(".pyperf.json"))
    doc = json.loads(result.read_text())

    out = tmp_path / "report"
    p = subprocess.run([*BENCH, "report", str(result), "--out", str(out), "--format", "svg"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    with (out / "overhead.csv").open() as f:
        rows = list(csv.DictReader(f))
    host = median(values(doc, "host", "network=host,small", "http.rps"))
    for mode in ("bridge", "publish", "host"):
        ns = median(values(doc, "ns", f"network={mode},small", "http.rps"))
        row = next(r for r in rows if (r["backend"], r["network"], r["metric"], r["sub"])
                   == ("ns", mode, "http.rps", "small"))
        assert float(row["host_median"]) == pytest.approx(host)
        assert float(row["ratio"]) == pytest.approx(ns / host)
        assert float(row["ratio_lo"]) <= float(row["ratio"]) <= float(row["ratio_hi"])
    md = (out / "report.md").read_text()
    assert "### Overhead against the bare host" in md
    assert "| ns [publish] |" in md  # the claim's verdict row for the published port
    assert "http: host of" in md and "instance cpuset 1" in md
    assert (out / "apps_http.svg").exists()

    p = subprocess.run([*BENCH, "capacity", str(result), "--host-memory", "8G",
                        "--host-cpus", "4", "--json"], capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    plan = json.loads(p.stdout)
    cell = next(c for c in plan["cells"] if c["label"] == "ns [publish, small]")
    assert cell["cores"] == 1  # the recorded cpuset "1"
    assert cell["by_cpu"] == 4  # no --rate: one saturated instance per core
    pss = median(values(doc, "ns", "network=publish", "http.pss_loaded"))
    daemons = median(values(doc, "ns", "network=publish", "http.daemon_pss_loaded"))
    assert cell["by_memory"] == math.floor((8 * GiB * 0.9 - daemons) / pss)
    assert cell["binding"] == ("CPU" if cell["by_cpu"] <= cell["by_memory"] else "memory")
