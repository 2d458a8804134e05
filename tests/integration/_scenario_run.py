"""Run a scenario of scenarios/ end to end through the CLI, with overrides, one sample
per cell; the result document."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.conftest import backend_or_skip
from tests.integration.test_studies_run import _toml

BENCH = [sys.executable, "-m", "harness.cli"]


def run_one_sample(repo: Path, tmp_path: Path, study: str, backends: tuple[str, ...],
                   **tables: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str],
                                                      dict[str, Any]]:
    """`bench run` of scenarios/<study>.toml on `backends` (each skipped, or failed under
    CVBENCH_REQUIRE, if unavailable), each of `tables` merged into the scenario's table
    of that name ([params], [limits], ...)."""
    for b in backends:
        backend_or_skip(b)
    data = tomllib.loads((repo / "scenarios" / f"{study}.toml").read_text())
    data["backends"] = list(backends)
    for name, values in tables.items():
        data[name] = {**data.get(name, {}), **values}
    path = tmp_path / f"{study}.toml"
    path.write_text(_toml(data))
    out = tmp_path / "out"
    p = subprocess.run([*BENCH, "run", str(path), "--out", str(out), "--warmups", "0",
                        "--min-samples", "1", "--max-samples", "1"],
                       capture_output=True, text=True, timeout=1800, check=False)
    result = next(f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json"))
    doc: dict[str, Any] = json.loads(result.read_text())
    return p, doc
