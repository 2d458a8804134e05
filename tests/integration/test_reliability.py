"""Interrupted runs, killed runs, resume, a full results disk — with real backends.

Each run is a real `bench run` process; kills are real signals at random moments. After
each, `bench gc` must leave nothing of cvbench's, and every result file must load.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness import results
from runtimes import registry
from tests.conftest import backend_or_skip, require

pytestmark = [pytest.mark.root, pytest.mark.slow]

BENCH = [sys.executable, "-m", "harness.cli"]


def leftovers_of(run_id: str) -> list[str]:
    found = []
    for base in registry.base_names():
        rt = registry.get(base)
        if not rt.availability().ok:
            continue
        found += [f"{x.backend} {x.kind} {x.name}" for x in rt.leftovers()
                  if x.run_id == run_id]
    mounts = Path("/proc/mounts").read_text()
    found += [ln for ln in mounts.splitlines() if f"cvbench-{run_id}" in ln]
    return found


def start_run(out: Path, backends: str, samples: int) -> subprocess.Popen[str]:
    return subprocess.Popen([*BENCH, "run", "startup", "--backends", backends, "--out", str(out),
                             "--min-samples", str(samples), "--max-samples", str(samples),
                             "--warmups", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_id_in(out: Path) -> str:
    names = [p.name for p in out.iterdir() if p.suffix in (".journal", ".json")]
    assert names, "the run wrote nothing"
    return names[0].split("-")[-1].split(".")[0]


def wait_for_journal(out: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and any(p.suffix == ".journal" for p in out.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError("no journal appeared")


# (backend, signal, runs, latest kill moment in s): 20 runs killed at random moments.
KILLS = [("ns", signal.SIGINT, 3, 0.6), ("ns", signal.SIGKILL, 3, 0.6),
         ("ns", signal.SIGTERM, 2, 0.6),
         ("docker", signal.SIGINT, 2, 2.0), ("docker", signal.SIGKILL, 3, 2.0),
         ("podman", signal.SIGINT, 2, 1.5), ("podman", signal.SIGKILL, 3, 1.5),
         ("libvirt", signal.SIGINT, 1, 6.0), ("libvirt", signal.SIGKILL, 1, 6.0)]


@pytest.mark.parametrize(("backend", "sig", "runs", "latest"), KILLS,
                         ids=[f"{b}-{s.name}" for b, s, _, _ in KILLS])
def test_killed_runs_leave_nothing_after_gc(tmp_path: Path, backend: str, sig: signal.Signals,
                                            runs: int, latest: float) -> None:
    backend_or_skip(backend)
    rng = random.Random(f"{backend}{sig}")
    for i in range(runs):
        out = tmp_path / f"{sig.name}-{i}"
        proc = start_run(out, backend, 200)
        wait_for_journal(out)
        time.sleep(rng.uniform(0.0, latest))
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        rid = run_id_in(out)
        if sig != signal.SIGKILL:
            assert proc.returncode == 130, err
            assert f"bench run --resume {rid}" in err
        gc = subprocess.run([*BENCH, "gc", "--run", rid], capture_output=True, text=True,
                            check=False)
        assert gc.returncode == 0, gc.stderr
        assert leftovers_of(rid) == []
        for p in out.glob("*.json"):
            if not p.name.endswith(".pyperf.json"):
                results.load_result(p)


def test_resume_after_kill_completes_the_samples(tmp_path: Path) -> None:
    backend_or_skip("ns")
    out = tmp_path / "D"
    proc = start_run(out, "host,ns", 150)
    wait_for_journal(out)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    rid = run_id_in(out)
    res = subprocess.run([*BENCH, "run", "--resume", rid, "--out", str(out)],
                         capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr
    df = results.load(out)
    counts = Counter(zip(df.backend, df.metric, strict=True))
    assert len(counts) == 14 and set(counts.values()) == {150}
    assert leftovers_of(rid) == []


def test_full_results_disk_loses_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "cvbench-test-full", str(small)],
                   check=True)
    try:
        p = subprocess.run([*BENCH, "run", "startup", "--backends", "host", "--out",
                            str(small / "D"), "--min-samples", "40", "--max-samples", "40",
                            "--warmups", "0"], capture_output=True, text=True, check=False,
                           timeout=600)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert p.returncode == 1, p.stderr
    assert "saved as" in p.stderr and "Traceback" not in p.stderr
    saved = Path(p.stderr.split("saved as ")[1].split()[0])
    try:
        doc = results.load_result(saved)
        assert Counter(s.metric for s in doc.samples)["startup.total"] == 40
    finally:
        saved.unlink()


def test_bench_gc_leaves_live_runs_alone(tmp_path: Path) -> None:
    backend_or_skip("ns")
    out = tmp_path / "live"
    proc = start_run(out, "ns", 400)
    try:
        wait_for_journal(out)
        time.sleep(0.3)
        rid = run_id_in(out)
        gc = subprocess.run([*BENCH, "gc"], capture_output=True, text=True, check=False)
        assert gc.returncode == 0 and rid not in gc.stdout
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    doc = json.loads(next(p for p in out.glob("*.json")
                          if not p.name.endswith(".pyperf.json")).read_text())
    assert doc["interrupted"] is True and not [e for e in doc["events"]
                                               if e["kind"] == "sample_failed"]


def test_a_cell_that_never_finishes_fails_alone(tmp_path: Path) -> None:
    backend_or_skip("ns")
    scen = tmp_path / "hang.toml"
    scen.write_text('name = "hang"\nstudy = "startup"\nbackends = ["host", "ns"]\n'
                    '[workload]\nargv = ["true"]\n'
                    '[sampling]\nwarmups = 0\nmin_samples = 5\nmax_samples = 5\ntimeout = 0.5\n'
                    '[variants]\nworkload = { argv = [["true"], ["sleep", "30"]] }\n')
    out = tmp_path / "D"
    p = subprocess.run([*BENCH, "run", str(scen), "--out", str(out)], capture_output=True,
                       text=True, check=False, timeout=300)
    assert p.returncode == 1, p.stderr
    doc = results.load_result(next(f for f in out.glob("*.json")
                                   if not f.name.endswith(".pyperf.json")))
    status = {(c["backend"], c["variant"]): c for c in doc.cells}
    assert status[("ns", "workload.argv=true")]["samples"] == 5
    assert status[("host", "workload.argv=true")]["samples"] == 5
    assert status[("ns", "workload.argv=sleep 30")]["status"] == "failed"
    failures = [e for e in doc.events if e["kind"] == "sample_failed"]
    assert failures and all("did not exit within" in e["error"] for e in failures)
    assert leftovers_of(doc.run_id) == []


def test_a_dying_daemon_fails_its_cell_only(tmp_path: Path) -> None:
    """The podman service is killed mid-run: podman's cell fails (reported), ns goes on,
    and the podman samples taken before stay in the result."""
    backend_or_skip("ns")
    backend_or_skip("podman")
    pidfile = Path("/run/cvbench/podman-service.pid")
    require("podman", None if pidfile.exists() else
            "the podman service was not started by scripts/provision (no pid file)")
    out = tmp_path / "D"
    proc = start_run(out, "ns,podman", 60)
    try:
        wait_for_journal(out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for a few podman samples first
            j = next(out.glob("*.journal"))
            if j.read_text().count('"backend":"podman","variant":"default",'
                                   '"metric":"startup.create"') >= 3:
                break
            time.sleep(0.2)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        subprocess.run(["scripts/provision"], cwd=Path(__file__).resolve().parents[2],
                       capture_output=True, check=True)
    assert proc.returncode == 1, err
    doc = results.load_result(next(f for f in out.glob("*.json")
                                   if not f.name.endswith(".pyperf.json")))
    cells = {c["backend"]: c for c in doc.cells}
    assert cells["podman"]["status"] == "failed" and cells["podman"]["samples"] >= 3
    assert cells["ns"]["samples"] == 60
    kept = [s for s in doc.samples if s.backend == "podman"]
    assert len(kept) == 7 * cells["podman"]["samples"]
    subprocess.run([*BENCH, "gc", "--run", doc.run_id], capture_output=True, check=True)
    assert leftovers_of(doc.run_id) == []
