"""The lean part of the test host, in `make test`: boot the Debian 13 guest (systemd,
cgroup v2 alone), provision it through its systemd path, run ns's cgroup v2 tests there
(real controllers: memory.max with the OOM count from memory.events, cpu.max, pids.max,
cpuset, cgroup.kill, a runner in a systemd unit, rootless in a delegated subtree) and one
`bench run startup --backends ns`; the guest is removed after. The whole of it is
`make test-host` (test_testhost.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.testhost._guest import QUICK_SETUP, guest, in_guest, run_testhost

REQUIRE = "ns,cgroup2,systemd,delegation,root"


def test_lean_debian13_guest(repo: Path, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    with guest(repo, timings, QUICK_SETUP):
        in_guest(repo, f"CVBENCH_REQUIRE={REQUIRE} .venv/bin/pytest -q -p no:cacheprovider "
                 "tests/integration/test_cgroups_v2.py", timings, "cgroup v2 tests")
        in_guest(repo, "rm -rf results/lean && .venv/bin/bench run startup --backends ns "
                 "--warmups 1 --min-samples 3 --max-samples 3 --out results/lean",
                 timings, "bench run startup --backends ns")
        pulled = run_testhost(repo, "pull", "/srv/cvbench/results/lean", str(tmp_path))
        assert pulled.returncode == 0
    result = next(f for f in tmp_path.glob("startup-*.json")
                  if not f.name.endswith(".pyperf.json"))
    doc = json.loads(result.read_text())
    assert doc["host"]["cgroup_mode"] == "v2", doc["host"]
    assert doc["backends"]["ns"]["limits_applied"] is True
    assert [s for s in doc["samples"] if s["metric"] == "startup.total"]
