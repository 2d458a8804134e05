"""The CLI from the outside, as real `bench` processes: exit codes, one-line errors, files
written (host backend only, which needs no privileges)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)


@pytest.mark.parametrize("text", [
    "name = \n",
    'name = "x"\nstudy = "startup"\n[limits]\nmemory = -1\n',
    'name = "x"\nstudy = "startup"\nbackends = ["warp-drive"]\n',
    'name = "x"\nstudy = "startup"\nunknown_key = 1\n',
    'name = "x"\nstudy = "startup"\n[workload]\nargv = 5\n',
])
def test_malformed_scenario_one_line_exit_2(tmp_path: Path, text: str) -> None:
    scen = tmp_path / "bad.toml"
    scen.write_text(text)
    out = tmp_path / "out"
    p = bench("run", str(scen), "--out", str(out))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert str(scen) in lines[0]
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_unknown_backend_and_missing_file(tmp_path: Path) -> None:
    p = bench("run", "startup", "--backends", "nope", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "known backends" in p.stderr
    p = bench("run", str(tmp_path / "missing.toml"))
    assert p.returncode == 2 and "missing.toml" in p.stderr
    p = bench("report", str(tmp_path / "nothing.json"))
    assert p.returncode == 2 and "nothing.json" in p.stderr


def test_run_report_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "D"
    p = bench("run", "startup", "--backends", "host", "--out", str(out), "--max-samples", "10",
              "--seed", "1")
    assert p.returncode == 0, p.stderr
    files = sorted(out.glob("*.json"))
    assert len(files) == 2  # the result and its pyperf companion
    result = next(f for f in files if not f.name.endswith(".pyperf.json"))
    doc = json.loads(result.read_text())
    assert doc["schema"] == 1 and doc["image"]["digest"]
    counts: dict[str, int] = {}
    for s in doc["samples"]:
        counts[s["metric"]] = counts.get(s["metric"], 0) + 1
    assert set(counts) == {"startup.create", "startup.start", "startup.ready", "startup.exit",
                           "startup.remove", "startup.to_ready", "startup.total"}
    assert min(counts.values()) >= 10
    assert "took" in p.stderr and f"result: {result}" in p.stdout
    pp = bench_pyperf = subprocess.run([sys.executable, "-m", "pyperf", "stats",
                                        str(result.with_name(result.stem + ".pyperf.json"))],
                                       capture_output=True, text=True, check=False)
    assert bench_pyperf.returncode == 0, pp.stderr
    rep = tmp_path / "R"
    p = bench("report", *map(str, files), "--out", str(rep))
    assert p.returncode == 0, p.stderr
    assert (rep / "report.md").exists()
    assert (rep / "startup.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (rep / "startup.svg").read_bytes()[:500]


def test_exec_passes_output_and_status_through() -> None:
    p = bench("exec", "host", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert p.returncode == 4
    assert p.stdout == "out\n" and p.stderr == "err\n"


def test_list_and_doctor(repo: Path) -> None:
    """Every shipped scenario is listed with its study (none unreadable), and doctor has a
    row for every registered backend, saying yes or no."""
    import os

    from runtimes import registry

    env = {**os.environ, "COLUMNS": "250"}
    p = subprocess.run([sys.executable, "-m", "harness.cli", "list"], capture_output=True,
                       text=True, env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    rows = {ln.split("│")[1].strip(): ln.split("│")[2].strip()
            for ln in p.stdout.splitlines() if ln.count("│") >= 4}
    shipped = {f.stem for f in (repo / "scenarios").glob("*.toml")}
    assert shipped <= set(rows), rows
    assert all(rows[s] != "?" for s in shipped), rows
    assert p.stdout.split("backends: ")[1].split() != []
    p = subprocess.run([sys.executable, "-m", "harness.cli", "doctor"], capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    # the backends' table: the first one (the tools' table after it has rows such as
    # "docker" too, a command's path in their second column)
    first = p.stdout.split("└", 1)[0]
    answers = {ln.split("│")[1].strip(): ln.split("│")[2].strip()
               for ln in first.splitlines()
               if ln.count("│") >= 4 and ln.split("│")[1].strip()}
    assert set(registry.all_names()) <= set(answers), answers
    assert {answers[n] for n in registry.all_names()} <= {"yes", "no"}
    assert answers["host"] == "yes"


def test_host_stop_kills_the_workloads_children() -> None:
    import os
    import time

    from harness.core import image
    from runtimes.base import InstanceSpec
    from runtimes.host import HostRuntime

    rt = HostRuntime()
    prep = rt.prepare(image.build(image.Recipe()))
    spec = InstanceSpec(run_id="0123456789", name="cvbench-0123456789-1",
                        argv=("sh", "-c", "sleep 300 & sleep 300 & echo started; wait"))
    inst = rt.create(spec, prep)
    rt.start(inst)
    rt.wait_ready(inst, 10)
    deadline = time.monotonic() + 10
    while len(rt.stats(inst).pids) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = rt.stats(inst).pids
    assert len(pids) >= 3
    rt.stop(inst, grace=0.2)
    rt.remove(inst)
    time.sleep(0.1)
    alive = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().split(")")[1].split()[0] != "Z":
                    alive.append(p)
        except FileNotFoundError:
            continue
    assert alive == [], f"left behind: {alive} (me: {os.getpid()})"
