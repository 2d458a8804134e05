"""Application studies refuse what cannot work before anything is created: a missing
load generator (named, with its package), a cpuset naming CPUs the host lacks, a
network mode the study does not measure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import scenario, studies, validate
from harness.core.errors import ScenarioError

REPO = Path(__file__).resolve().parents[2]


def test_a_missing_generator_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "wrk" else real(n))
    assert studies.missing_tools(studies.get("http")) == {"wrk": "wrk"}
    with pytest.raises(ScenarioError, match=r"study: .*wrk.*Debian package wrk"):
        validate.check(scenario.load(str(REPO / "scenarios" / "http.toml")))


def test_every_generator_is_listed_for_doctor() -> None:
    tools = studies.all_tools()
    assert tools["wrk"] == ("wrk", ["http", "scale"])
    assert tools["haproxy"] == ("haproxy", ["scale"])
    assert tools["redis-benchmark"] == ("redis-tools", ["kv"])


def test_a_cpuset_beyond_the_host_is_refused(tmp_path: Path) -> None:
    text = (REPO / "scenarios" / "kv.toml").read_text().replace('cpuset = "1"',
                                                                 'cpuset = "4096"')
    path = tmp_path / "kv.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"limits.cpuset: '4096' names CPUs"):
        validate.check(scenario.load(str(path)))


def test_a_malformed_cpuset_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "kv.toml"
    path.write_text((REPO / "scenarios" / "kv.toml").read_text().replace(
        'cpuset = "1"', 'cpuset = "2-1"'))
    with pytest.raises(ScenarioError, match=r"limits.cpuset: must be a CPU list"):
        scenario.load(str(path))
