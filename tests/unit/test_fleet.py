"""bench fleet without hosts: the inventory's host names, the scenario as shipped, the
fleet directory (its manifest, what to resume, its result files for report and history)
and how ansible-runner's events become each host's state."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from harness import data, history, results, scenario
from harness import fleet as fl
from harness.core import hostinfo
from harness.core.errors import UsageError
from tests.unit import report_synth

LISTING = {"_meta": {"hostvars": {"b.example": {"x": 1}}},
           "all": {"children": ["ungrouped", "web"]},
           "ungrouped": {"hosts": ["localhost"]},
           "web": {"hosts": ["b.example", "a.example"]}}


def test_host_names_from_every_group_sorted_once() -> None:
    assert fl.names_of(LISTING, "inv.yml") == ["a.example", "b.example", "localhost"]


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a/b", "", "x..y", "a b"])
def test_a_host_name_that_is_no_plain_directory_name_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match=r"inv\.yml: host"):
        fl.names_of({"all": {"hosts": [name]}}, "inv.yml")


def test_no_host_is_a_usage_error_naming_the_limit() -> None:
    with pytest.raises(UsageError, match=r"inv\.yml: no hosts match --limit web"):
        fl.names_of({"_meta": {"hostvars": {}}, "all": {"children": []}}, "inv.yml", "web")


@pytest.mark.skipif(shutil.which("ansible-inventory") is None and
                    not (Path(sys.executable).parent / "ansible-inventory").exists(),
                    reason="needs ansible-inventory (pip install -e '.[fleet]')")
def test_hosts_as_ansible_reads_the_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    one:\n      ansible_connection: local\n"
                   "  children:\n    web:\n      hosts:\n        two:\n        three:\n")
    assert fl.hosts(inv) == ["one", "three", "two"]
    assert fl.hosts(inv, "web:!three") == ["two"]
    with pytest.raises(UsageError, match="no hosts match"):
        fl.hosts(inv, "nothere")
    with pytest.raises(UsageError, match="no such inventory"):
        fl.hosts(tmp_path / "missing.yml")


@pytest.mark.parametrize("name", sorted(scenario.available()))
def test_the_shipped_scenario_reads_back_as_the_original(name: str, tmp_path: Path) -> None:
    """to_toml of a scenario's table parses (tomllib, not our code) to that table, and
    the scenario it gives is the original one."""
    path = scenario.available()[name]
    original = tomllib.loads(path.read_text())
    text = fl.to_toml(scenario.load(str(path)).raw)
    assert tomllib.loads(text) == original
    copy = tmp_path / path.name
    copy.write_text(text)
    shipped, orig = scenario.load(str(copy)).as_dict(), scenario.load(str(path)).as_dict()
    assert shipped.pop("source") == str(copy)
    orig.pop("source")
    assert shipped == orig


def test_to_toml_keeps_strings_that_need_escapes() -> None:
    raw = {"name": 'a "quoted" \\ name — ünïcode 🙂\n', "n": [1, 2.5, True],
           "t": {"k y": {"inner": "x"}}}
    assert tomllib.loads(fl.to_toml(raw)) == raw


def _wheel(path: Path, files: dict[str, bytes], when: tuple[int, ...]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, body in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=when), body)  # type: ignore[arg-type]
    return path


def test_wheel_digest_is_its_contents_not_its_build_times(tmp_path: Path) -> None:
    files = {"harness/__init__.py": b"x = 1\n", "cvbench-0.1.0.dist-info/RECORD": b"r\n"}
    a = _wheel(tmp_path / "a.whl", files, (2026, 1, 1, 0, 0, 0))
    b = _wheel(tmp_path / "b.whl", files, (2026, 2, 2, 2, 2, 2))
    c = _wheel(tmp_path / "c.whl", {**files, "harness/__init__.py": b"x = 2\n"},
               (2026, 1, 1, 0, 0, 0))
    assert a.read_bytes() != b.read_bytes()
    assert fl.wheel_digest(a) == fl.wheel_digest(b) != fl.wheel_digest(c)


# --- the fleet directory ---------------------------------------------------------------

def _fleet(tmp_path: Path) -> fl.Fleet:
    fid = fl.new_id()
    f = fl.Fleet(fid, tmp_path / fid, "hosts.yml",
                 {"alpha": fl.HostState(), "beta": fl.HostState()},
                 {"cvbench_scenario_name": "startup", "cvbench_commit": "c" * 40,
                  "cvbench_image_digest": "d" * 64, "cvbench_scenario_toml": 'name = "x"\n'})
    f.save()
    return f


def test_the_manifest_reads_back(tmp_path: Path) -> None:
    f = _fleet(tmp_path)
    f.hosts["alpha"] = fl.HostState(fl.OK, "", "Done", "abcdef1234")
    f.hosts["beta"] = fl.HostState(fl.FAILED, "unreachable: no route", "Check", "")
    f.save()
    back = fl.open_fleet(tmp_path, f.id)
    assert back.hosts == f.hosts and back.extravars == f.extravars
    assert back.failed() == ["beta"]
    doc = json.loads((f.dir / "fleet.json").read_text())
    assert doc["hosts"]["beta"]["reason"] == "unreachable: no route"


@pytest.mark.parametrize("bad", ["../../etc", "20260101T000000-zzzz", "x"])
def test_resume_takes_only_a_fleet_id(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="not a fleet run id"):
        fl.open_fleet(tmp_path, bad)


def test_resume_of_a_directory_without_a_manifest_is_a_usage_error(tmp_path: Path) -> None:
    fid = fl.new_id()
    (tmp_path / fid).mkdir()
    with pytest.raises(UsageError, match=r"fleet\.json: not a fleet run"):
        fl.open_fleet(tmp_path, fid)


def test_a_manifest_naming_a_host_outside_is_refused(tmp_path: Path) -> None:
    f = _fleet(tmp_path)
    doc = json.loads((f.dir / "fleet.json").read_text())
    doc["hosts"]["../outside"] = {"state": "failed"}
    (f.dir / "fleet.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=r"'\.\./outside'"):
        fl.open_fleet(tmp_path, f.id)


def _result(out: Path, host: str, *, interrupted: bool = False, run_id: str | None = None,
            cpu: str = "Synthetic CPU", kernel: str = "6.1.0-test",
            created: str = "2026-01-10T10:00:00+00:00") -> Path:
    import numpy as np

    p = report_synth.write_result(out, "startup",
                                  report_synth.startup_samples(np.random.default_rng(1), 5),
                                  report_synth.BACKENDS, host=host, run_id=run_id,
                                  created=created)
    doc = json.loads(p.read_text())
    doc["interrupted"] = interrupted
    doc["host"].update(cpu_model=cpu, kernel=kernel)
    doc["checksum"] = results.checksum(doc)
    p.write_text(json.dumps(doc))
    return p


def _journal(out: Path, run_id: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"startup-20260110T100000Z-{run_id}.journal"
    p.write_text(json.dumps({"header": {"run_id": run_id}}) + "\n{\"samples\": [")
    return p


def test_resume_point_is_the_newest_unfinished_run(tmp_path: Path) -> None:
    d = tmp_path / "host"
    assert fl.resume_point(d) == ""  # nothing came back: a fresh run
    old = _result(d, "h", interrupted=True, run_id="aaaaaaaa01")
    assert fl.resume_point(d) == "aaaaaaaa01"
    done = _result(d, "h", run_id="bbbbbbbb02", created="2026-01-11T10:00:00+00:00")
    os.utime(old, (time.time() - 100, time.time() - 100))
    assert fl.resume_point(d) == ""  # the newest run finished: start afresh
    os.utime(done, (time.time() - 50, time.time() - 50))
    _journal(d, "cccccccc03")  # a run killed hard, newer than both
    assert fl.resume_point(d) == "cccccccc03"
    assert fl.host_run_id(d) == "bbbbbbbb02"


def test_a_fleet_directory_gives_every_hosts_results(tmp_path: Path) -> None:
    """report, capacity and history read results/fleet/<id>/: each host's files, not
    fleet.json or vars.yml; two machines give two series and two datasets."""
    f = _fleet(tmp_path)
    a = _result(f.dir / "alpha", "alpha", cpu="Synthetic CPU A", kernel="6.1.0-a")
    b = _result(f.dir / "beta", "beta", cpu="Synthetic CPU B", kernel="6.12.0-b")
    (f.dir / "beta" / "bench.log").write_text("result: ...\n")
    assert results.expand(f.dir) == [a, b]
    docs = results.load_all(f.dir)
    assert {d.host["hostname"] for _, d in docs} == {"alpha", "beta"}
    assert len(data.latest(docs)) == 2  # the newest of each scenario *per host*
    hw = {hostinfo.hardware_id(d.host) for _, d in docs}
    assert len(hw) == 2
    loaded = history.load([f.dir])
    assert not loaded.skipped and len(loaded.runs) == 2
    h = history.history(loaded, metrics=["startup.total"], backends=["ns"], threshold=0.05,
                        alpha=0.01, min_runs=1)
    assert {s.key.hardware for s in h.series} == hw


def test_a_plain_directory_is_read_as_before(tmp_path: Path) -> None:
    a = _result(tmp_path, "alpha")
    (tmp_path / "sub").mkdir()
    _result(tmp_path / "sub", "beta")
    assert results.expand(tmp_path) == [a]


# --- events -> host states ---------------------------------------------------------------

class _Seen:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def host(self, host: str, stage: str) -> None:
        self.lines.append((host, stage))

    def info(self, text: str) -> None:
        self.lines.append(("", text))


def _ev(kind: str, host: str, task: str, **res: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "res": res}}


def test_events_give_each_host_its_stage_and_ending(tmp_path: Path) -> None:
    f = _fleet(tmp_path)
    seen = _Seen()
    t = fl._Tracker(f, seen)
    for e in [
        _ev("runner_on_start", "alpha", "Install - cvbench and its dependencies"),
        _ev("runner_on_start", "beta", "Check the Python version of python3"),
        _ev("runner_on_unreachable", "beta", "Check the Python version of python3",
            msg="Failed to connect to the host via ssh: Connection refused"),
        _ev("runner_on_ok", "alpha", "Run bench run", ansible_job_id="j1.2"),
        _ev("runner_retry", "alpha", "Wait for bench run to end", attempts=3),
        _ev("runner_on_failed", "alpha", "Provision - scripts/provision", rc=1,
            stderr="apt-get: one\nE: Unable to locate package x\n", msg="non-zero return code"),
        _ev("runner_on_ok", "gamma", "Done"),  # not a host of this fleet
    ]:
        assert t(e)
    assert f.hosts["beta"].state == fl.FAILED
    assert f.hosts["beta"].reason == ("unreachable: Failed to connect to the host via ssh: "
                                      "Connection refused")
    assert f.hosts["alpha"].state == fl.FAILED
    assert f.hosts["alpha"].reason == ("Provision - scripts/provision: E: Unable to locate "
                                       "package x (exit 1)")
    assert t.jobs == {"alpha": "j1.2"}
    assert ("alpha", "Wait for bench run to end (poll 3)") in seen.lines
    assert "gamma" not in f.hosts
    t(_ev("runner_on_ok", "alpha", "Done"))
    assert (f.hosts["alpha"].state, f.hosts["alpha"].reason) == (fl.OK, "")
