"""`make test-host`: cvbench on a host with systemd, cgroup v2 and current engines.

scripts/testhost builds (or reuses) a Debian 13 image, boots it as a libvirt guest, and
the guest is used as a new user would: the checkout copied in, `scripts/provision` (its
systemd path), `make venv`, then the integration tests of ns (cgroup v2, rootless with a
delegated subtree, escapes, hostile images), Docker and Podman, macvlan and ipvlan on all
three (the kernel has the driver here), with every skip a failure
(CVBENCH_REQUIRE), `bench doctor` (libvirt says why it is left out: a VM inside an
emulated host), `make bench` (the README's command) on host, ns, docker and podman, and
the network study in every mode on ns, docker and podman (one sample a cell).
The results come back to results/testhost/; this machine then runs the same startup
scenario and `bench report` puts the two hosts side by side, the guest's timings marked
as emulated. The guest, its overlay and its network are removed and the test checks
that nothing of them is left. Under TCG this takes a long time (docs/testhost.md): it
is not in `make test`, which runs the lean part (tests/testhost/test_lean.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.testhost._guest import guest, in_guest, run_testhost

pytestmark = pytest.mark.testhost

REQUIRE = ("host,ns,docker,podman,docker:crun,podman:runc,podman:ns,cgroup2,systemd,delegation,"
           "rootless,root,ipvlan")
SUITES = " ".join(f"tests/integration/{t}" for t in (
    "test_cgroups_v2.py", "test_ns.py", "test_escape.py", "test_hostile_paths.py",
    "test_docker.py", "test_podman.py", "test_vlan.py"))


def test_in_debian13_guest(repo: Path, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    out = repo / "results/testhost"
    with guest(repo, timings):
        in_guest(repo, f"CVBENCH_REQUIRE={REQUIRE} .venv/bin/pytest -q -p no:cacheprovider "
                 f"{SUITES}", timings, "integration tests (ns, docker, podman)")
        # wide: rich wraps a table to the terminal's width, 80 columns through a pipe
        in_guest(repo, "mkdir -p results && COLUMNS=250 .venv/bin/bench doctor | "
                 "tee results/doctor.txt", timings, "doctor")
        in_guest(repo, "make bench BACKENDS=host,ns,docker,podman", timings, "make bench")
        # the network study on current engines, every mode, one sample a cell: a cell that
        # fails makes `bench run` exit non-zero (Docker >= 25 hands containers nofile
        # "infinity", Debian 13's netavark needs nft, ns's eth0 name met the host's)
        in_guest(repo, ".venv/bin/bench run network --backends ns,docker,podman "
                 "--min-samples 1 --max-samples 1 --out results/net", timings, "network")
        assert run_testhost(repo, "pull", "/srv/cvbench/results", str(out)).returncode == 0
    doctor = (out / "doctor.txt").read_text()
    # the reason as one line of words (a cell may still wrap: the table's rules and
    # padding between its words taken out)
    assert "emulation inside emulation" in " ".join(re.sub(r"[│┃]", " ", doctor).split()), \
        doctor
    guest_runs = [f for f in (out / "runs").glob("startup-*.json")
                  if not f.name.endswith(".pyperf.json")]
    assert guest_runs, "the guest's make bench wrote no result"
    guest_result = max(guest_runs, key=lambda f: f.stat().st_mtime)
    doc = json.loads(guest_result.read_text())
    assert doc["host"]["cgroup_mode"] == "v2" and doc["host"]["emulated"], doc["host"]
    assert {"host", "ns", "docker", "podman"} <= set(doc["backends"]), doc["backends"].keys()
    assert "libvirt" not in doc["backends"]
    # this machine, the same scenario (fewer samples), then one report of both hosts
    bench = str(repo / ".venv/bin/bench")
    here = subprocess.run([bench, "run", "startup", "--backends", "host,ns,docker,podman",
                           "--warmups", "1", "--min-samples", "3", "--max-samples", "3",
                           "--out", str(tmp_path / "here")], text=True, capture_output=True,
                          check=False)
    assert here.returncode == 0, here.stderr
    mine = next(f for f in (tmp_path / "here").glob("startup-*.json")
                if not f.name.endswith(".pyperf.json"))
    report = subprocess.run([bench, "report", str(mine), str(guest_result), "--out",
                             str(out / "report-two-hosts")], text=True, capture_output=True,
                            check=False)
    assert report.returncode == 0, report.stderr
    md = (out / "report-two-hosts/report.md").read_text()
    assert "testhost" in md and "is itself an emulated machine" in md
    assert "(TCG, emulated)" in md
