"""Run a scenario of scenarios/ end to end through the CLI, with overrides, one sample
per cell; the result document."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

from tests.conftest import backend_or_skip
from tests.integration.test_studies_run import run_once


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
    return run_once(data, tmp_path)
