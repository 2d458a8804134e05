"""The db, cpu and mem studies refuse what cannot work before a run (a missing pgbench,
named with its package; unknown pgbench modes), and sysbench's script marks each job's
output so that one job's failure is told apart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import scenario, studies, validate
from harness.core.errors import ScenarioError
from harness.core.probes.io import sections
from harness.studies import _sysbench

REPO = Path(__file__).resolve().parents[2]


def test_a_missing_pgbench_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "pgbench" else real(n))
    with pytest.raises(ScenarioError, match=r"study: .*pgbench.*postgresql-client"):
        validate.check(scenario.load(str(REPO / "scenarios" / "db.toml")))
    assert studies.all_tools()["pgbench"] == ("postgresql-client", ["db"])


def test_unknown_modes_are_refused(tmp_path: Path) -> None:
    text = (REPO / "scenarios" / "db.toml").read_text().replace('"tpcb-like"]', '"tpcc"]')
    path = tmp_path / "db.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"params.modes: unknown modes \['tpcc'\]"):
        validate.check(scenario.load(str(path)))


@pytest.mark.parametrize("name", ["cpu", "mem", "db"])
def test_the_shipped_scenarios_validate(name: str) -> None:
    validate.check(scenario.load(str(REPO / "scenarios" / f"{name}.toml")))


def test_sysbench_script_marks_each_job_and_its_exit() -> None:
    script = _sysbench.script({"read": ["sysbench", "memory", "run"],
                               "write": ["sysbench", "memory", "--x=y z", "run"]},
                              ["sysbench", "warm"])
    assert script.splitlines()[0] == "sysbench warm >/dev/null || exit 1"
    assert "sysbench memory '--x=y z' run 2>&1" in script
    out = (f"{_sysbench.BEGIN} read\nA\n{_sysbench.END} read rc=0\n"
           f"{_sysbench.BEGIN} write\nFATAL: x\n{_sysbench.END} write rc=1\n")
    assert sections(out, _sysbench.BEGIN, _sysbench.END) == {
        "read": ("", "A", "rc=0"), "write": ("", "FATAL: x", "rc=1")}
