"""A fleet of two: this machine (`localhost`, ansible_connection=local) and the Debian 13
test host (scripts/testhost, over SSH on its libvirt network), from fleet/example.yml.

`bench fleet run startup --backends host,ns` must finish on both; the results that come
back carry two fingerprints, and the guest's are the guest's own (its kernel and cgroup
v2, asked over SSH, not this machine's); `bench report` of the fleet directory shows the
two hosts side by side and `bench history` keeps a series per machine. The guest is
removed at the end and nothing of it is left. Run by `make test-host` (marker testhost),
or alone:  .venv/bin/pytest -q -m testhost tests/testhost/test_fleet_testhost.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import results
from harness.core import hostinfo
from tests.conftest import require

pytestmark = pytest.mark.testhost

BENCH = str(Path(sys.executable).parent / "bench")


def _testhost(repo: Path, *args: str, capture: bool = False
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / "scripts/testhost"), *args], text=True, check=False,
                          capture_output=capture)


def test_fleet_of_this_machine_and_the_test_host(repo: Path, tmp_path: Path) -> None:
    require("root", None if os.geteuid() == 0 else "needs root (debootstrap, libvirt)")
    # the example inventory as it is, but no provision here: make test-host has just
    # run it on this machine (the test host is provisioned through Ansible, on systemd)
    inv = yaml.safe_load((repo / "fleet/example.yml").read_text())
    inv["all"]["hosts"]["localhost"]["cvbench_provision"] = False
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    assert _testhost(repo, "build").returncode == 0
    try:
        assert _testhost(repo, "up").returncode == 0
        guest_kernel = _testhost(repo, "ssh", "uname -r", capture=True).stdout.strip()
        guest_fs = _testhost(repo, "ssh", "stat -fc %T /sys/fs/cgroup",
                             capture=True).stdout.strip()
        assert guest_kernel and guest_fs == "cgroup2fs"
        proc = subprocess.run(
            [BENCH, "fleet", "run", "startup", "--inventory", str(tmp_path / "hosts.yml"),
             "--backends", "host,ns", "--warmups", "1", "--min-samples", "5",
             "--max-samples", "5", "--out", str(tmp_path / "fleet")],
            text=True, capture_output=True, check=False, cwd=repo,
            env={**os.environ, "COLUMNS": "200"})
        print(proc.stderr)
        assert proc.returncode == 0, proc.stderr
        stats = _testhost(repo, "ssh", "ls /var/lib/cvbench-fleet/venv", capture=True)
        assert stats.returncode == 0 and stats.stdout.strip(), "no virtualenv in the guest"
    finally:
        assert _testhost(repo, "down").returncode == 0
    status = _testhost(repo, "status", capture=True).stdout
    assert "domain:  cvbench.testhost absent" in status, status
    assert "network: cvbench.testhost absent" in status, status

    (fdir,) = [p.parent for p in (tmp_path / "fleet").glob("*/fleet.json")]
    manifest = json.loads((fdir / "fleet.json").read_text())
    assert {h: s["state"] for h, s in manifest["hosts"].items()} == \
        {"localhost": "ok", "testhost": "ok"}
    docs = {Path(p).parent.name: d for p, d in results.load_all(fdir)}
    assert set(docs) == {"localhost", "testhost"}
    here, guest = docs["localhost"].host, docs["testhost"].host
    assert here["kernel"] == os.uname().release
    assert guest["kernel"] == guest_kernel != here["kernel"]
    assert guest["cgroup_mode"] == "v2" and here["cgroup_mode"] == hostinfo.cgroup_mode()
    assert hostinfo.hardware_id(guest) != hostinfo.hardware_id(here)
    assert docs["localhost"].image_digest == docs["testhost"].image_digest

    rep = subprocess.run([BENCH, "report", str(fdir), "--out", str(tmp_path / "report"),
                          "--format", "png"], text=True, capture_output=True, check=False)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "2 different hosts" in md and "## Side by side" in md
    hist = subprocess.run([BENCH, "history", str(fdir), "--out", str(tmp_path / "history"),
                           "--metric", "startup.total", "--min-runs", "1"],
                          text=True, capture_output=True, check=False)
    assert hist.returncode == 0, hist.stderr
    h = json.loads((tmp_path / "history" / "history.json").read_text())
    # a series per machine x backend: 2 machines x (host, ns), one run each
    assert (h["runs"], h["series"]) == (2, 4), h
