"""bench fleet with real Ansible (ansible-runner) on this machine: `localhost` with
ansible_connection=local as the fleet's working host, and a host that cannot be reached.
The fleet installs the wheel of this tree into a virtualenv of its own (under the test's
directory), imports the image file and runs `bench run startup --backends host,ns` there.

What is checked against something other than the fleet's own word: the fetched files
byte for byte against the files the host's run wrote, the commit against git, the image
digest against the layer inside the shipped archive, the host's processes (/proc) and
Ansible's async job files after Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from harness import results
from tests.conftest import require

pytestmark = [pytest.mark.root]

BENCH = str(Path(sys.executable).parent / "bench")
ASYNC_DIR = Path.home() / ".ansible_async"


@pytest.fixture(autouse=True)
def _ansible() -> None:
    found = (Path(sys.executable).parent / "ansible-playbook").exists()
    require("ansible", None if found else "needs Ansible (make venv: pip install '.[fleet]')")


def _inventory(tmp_path: Path, hosts: dict[str, dict[str, object]]) -> Path:
    import yaml

    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return inv


def _local(root: Path) -> dict[str, object]:
    # provision is off: this machine is provisioned, and the test must not change it
    return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "cvbench_provision": False, "cvbench_root": str(root), "cvbench_poll": 2}


def _fleet(tmp_path: Path, *args: str, timeout: float = 1500
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BENCH, "fleet", "run", *args], cwd=tmp_path, text=True,
                          capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, "COLUMNS": "200"})


def _fleet_dir(proc: subprocess.CompletedProcess[str], cwd: Path) -> Path:
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("fleet: ")]
    return cwd / line.removeprefix("fleet: ")


def _host_lines(stderr: str, host: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith(f"{host}: ")]


def test_fleet_runs_here_and_reports_the_unreachable_host(tmp_path: Path, repo: Path) -> None:
    root = tmp_path / "host-root"
    before = set(ASYNC_DIR.glob("*")) if ASYNC_DIR.is_dir() else set()
    inv = _inventory(tmp_path, {
        "localhost": _local(root),
        # nothing listens on port 1: ssh is refused at once
        "unreachable": {"ansible_host": "127.0.0.1", "ansible_port": 1,
                        "ansible_user": "root"}})
    proc = _fleet(tmp_path, "startup", "--inventory", str(inv), "--backends", "host,ns",
                  "--warmups", "0", "--min-samples", "3", "--max-samples", "3",
                  "--out", "fleet")
    assert proc.returncode == 1, proc.stderr  # not every host succeeded
    (bad,) = _host_lines(proc.stderr, "unreachable")
    assert "failed: unreachable:" in bad and "Connection refused" in bad, proc.stderr
    (good,) = _host_lines(proc.stderr, "localhost")
    assert "localhost: ok" in good, proc.stderr

    fdir = _fleet_dir(proc, tmp_path)
    manifest = json.loads((fdir / "fleet.json").read_text())
    assert manifest["hosts"]["localhost"]["state"] == "ok"
    assert manifest["hosts"]["unreachable"]["state"] == "failed"
    assert not (fdir / "unreachable").exists()

    # the fetched files are the host's own, byte for byte
    ran = root / "runs" / manifest["fleet_id"]
    remote = sorted(p.name for p in (ran / "results").iterdir())
    fetched = sorted(p.name for p in (fdir / "localhost").iterdir())
    assert fetched == sorted([*remote, "bench.log"])
    for name in remote:
        assert (fdir / "localhost" / name).read_bytes() == (ran / "results" / name).read_bytes()

    (result,) = results.expand(fdir)
    doc = json.loads(result.read_text())
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True,
                          capture_output=True, check=True).stdout.strip()
    # installed from the wheel (no checkout to ask git in): its build recorded the commit
    assert (doc["tool"]["commit"], doc["tool"]["commit_from"]) == (head, "build")
    counts: dict[str, int] = {}
    for s in doc["samples"]:
        if s["metric"] == "startup.total":
            counts[s["backend"]] = counts.get(s["backend"], 0) + 1
    assert counts == {"host": 3, "ns": 3}

    # the run's image is the shipped file's: its one layer hashes to the image digest
    (archive,) = ran.glob("*.tar")
    with tarfile.open(archive) as t:
        manifest_doc = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = t.extractfile(manifest_doc[0]["Layers"][0])
        assert layer is not None
        layer_sha = hashlib.sha256(layer.read()).hexdigest()
    assert doc["image"]["rootfs_digest"] == layer_sha
    assert doc["image"]["digest"] == archive.stem == manifest["image_digest"]

    # the host's run is over: its process gone, Ansible's async job file removed
    pid = int((ran / "bench.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()
    after = set(ASYNC_DIR.glob("*")) if ASYNC_DIR.is_dir() else set()
    assert after <= before, f"async job files left: {after - before}"

    rep = subprocess.run([BENCH, "report", str(fdir), "--out", str(tmp_path / "report"),
                          "--format", "png"], text=True, capture_output=True, check=False)
    assert rep.returncode == 0, rep.stderr
    assert str(result) in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_the_host_and_resume_finishes_it_only(tmp_path: Path) -> None:
    """Two fleet members on this machine, one at a time (--serial 1): Ctrl-C while the
    second one runs stops its `bench run` (an async task), leaves nothing running or
    behind, and --resume continues that host only, with its own `bench run --resume`."""
    inv = _inventory(tmp_path, {"a-first": _local(tmp_path / "a"),
                                "b-second": _local(tmp_path / "b")})
    before = set(ASYNC_DIR.glob("*")) if ASYNC_DIR.is_dir() else set()
    argv = [BENCH, "fleet", "run", "startup", "--inventory", str(inv), "--serial", "1",
            "--backends", "host,ns", "--warmups", "0", "--min-samples", "3000",
            "--max-samples", "3000", "--time-budget", "30", "--out", "fleet"]
    driver = subprocess.Popen(argv, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    pidfile = None
    deadline = time.monotonic() + 1200
    while pidfile is None and time.monotonic() < deadline and driver.poll() is None:
        found = list((tmp_path / "b" / "runs").glob("*/bench.pid"))
        if found and Path(f"/proc/{found[0].read_text().strip()}").exists():
            pidfile = found[0]
        time.sleep(1)
    assert pidfile is not None, "b-second's bench run never started"
    time.sleep(5)  # a few samples in
    pid = int(pidfile.read_text())
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 130, err
    assert "a-first: ok" in err and "b-second: interrupted" in err, err
    assert not Path(f"/proc/{pid}").exists()  # the host's run was stopped
    after = set(ASYNC_DIR.glob("*")) if ASYNC_DIR.is_dir() else set()
    assert after <= before, f"async job files left: {after - before}"

    fdir = tmp_path / "fleet" / json.loads(
        next((tmp_path / "fleet").glob("*/fleet.json")).read_text())["fleet_id"]
    (interrupted,) = results.expand(fdir / "b-second")
    doc = results.load_result(interrupted)
    assert doc.interrupted
    gc = subprocess.run([BENCH, "gc", "--dry-run"], text=True, capture_output=True,
                        check=True)
    assert doc.run_id not in gc.stdout, gc.stdout  # nothing of its run left
    first = {p.name: p.read_bytes() for p in (fdir / "a-first").iterdir()}

    resumed = _fleet(tmp_path, "--resume", fdir.name, "--out", "fleet")
    assert resumed.returncode == 0, resumed.stderr
    (line,) = [x for x in resumed.stderr.splitlines() if "resuming" in x]
    assert line.endswith("resuming b-second"), resumed.stderr
    assert {p.name: p.read_bytes() for p in (fdir / "a-first").iterdir()} == first
    current = results.load_all(fdir / "b-second")
    (final,) = [d for _, d in current]
    assert final.run_id == doc.run_id and final.supersedes == interrupted.name
    assert not final.interrupted
