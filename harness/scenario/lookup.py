"""Where a scenario comes from: a name (looked up in the scenario directories), a path,
or the header of a result or journal (to resume the run it was)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.core.errors import ScenarioError
from harness.scenario.model import Sampling, Scenario
from harness.scenario.parser import parse


def scenario_dirs() -> list[Path]:
    """Where named scenarios are looked up, first match first: $CVBENCH_SCENARIOS (a
    colon-separated list), ./scenarios, then the ones shipped with cvbench (package data;
    in a checkout, harness/scenarios links to scenarios/)."""
    dirs = [Path(p) for p in os.environ.get("CVBENCH_SCENARIOS", "").split(":") if p]
    dirs.append(Path.cwd() / "scenarios")
    dirs.append(Path(__file__).resolve().parents[1] / "scenarios")
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in out:
            out.append(d.resolve())
    return out


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in scenario_dirs():
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise ScenarioError(name_or_path, "", "no such scenario file")
        return p
    known = available()
    if name_or_path not in known:
        raise ScenarioError(name_or_path, "", "no scenario of that name; known: "
                            + (", ".join(sorted(known)) or "none"))
    return known[name_or_path]


def load(name_or_path: str) -> Scenario:
    """Load a scenario by name (scenarios/<name>.toml) or path."""
    path = resolve(name_or_path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ScenarioError(source, "", f"cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScenarioError(source, "", f"not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(source, "", f"invalid TOML: {e}") from None
    return parse(data, source)


def from_header(header: Mapping[str, Any]) -> Scenario:
    """The scenario a result or journal was run with (for --resume): its TOML as parsed,
    with the sampling actually used (command-line overrides included)."""
    try:
        scen = parse(header["scenario_toml"], header["scenario"]["source"], resumed=True)
        return replace(scen, sampling=Sampling(**header["scenario"]["sampling"]))
    except (KeyError, TypeError) as e:
        raise ScenarioError(str(header.get("scenario", {}).get("source", "?")), "",
                            f"the run's scenario cannot be restored: {e}") from None
