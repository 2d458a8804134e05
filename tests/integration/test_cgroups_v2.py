"""The cgroup v2 manager on a real cgroup2 tree, where this host has one with the memory,
cpu and pids controllers (a v2 or a hybrid host whose controllers are not all bound to
v1 hierarchies); elsewhere it is skipped with the reason (unit tests use a fake tree)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from runtimes.base import Limits
from runtimes.ns.cgroups.v2 import CONTROLLERS, V2Manager
from runtimes.ns.config import DEVICE_RULES
from tests.conftest import require
from tests.integration._nsutil import node_dir

pytestmark = pytest.mark.root


def cgroup2_root() -> tuple[Path | None, str]:
    """A cgroup2 mount offering memory, cpu and pids, or None and why not."""
    seen = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] != "cgroup2":
                continue
            root = Path(left.split()[4])
            have = set((root / "cgroup.controllers").read_text().split())
            if set(CONTROLLERS) <= have:
                return root, ""
            seen.append(f"{root} offers {' '.join(sorted(have)) or 'no controllers'}")
    return None, ("no cgroup2 mount with memory, cpu and pids (" + ("; ".join(seen) or
                  "no cgroup2 mount") + "): they are bound to cgroup v1 hierarchies here")


def test_v2_manager_for_real(run_id: str, tmp_path: Path) -> None:
    require("root", None if os.geteuid() == 0 else "needs root")
    root, why = cgroup2_root()
    require("cgroup2", why or None)
    assert root is not None
    m = V2Manager(root, device_rules=DEVICE_RULES)
    assert m.device_rules == DEVICE_RULES, m.device_problem
    name = f"cvbench-{run_id}-v2"
    m.create(name, Limits(cpus=0.5, memory=32 << 20, pids=16))
    try:
        d = m.path(name)
        assert (d / "memory.max").read_text().strip() == str(32 << 20)
        assert (d / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (d / "pids.max").read_text().strip() == "16"
        procs = m.join_files(name)[0]
        hog = subprocess.run(["sh", "-c", f"echo 0 > {procs} && head -c 100m /dev/zero | tail"],
                             capture_output=True, check=False)
        assert hog.returncode != 0 and m.oom_killed(name)
        # the device program create() attached: /dev/null opens, /dev/kmsg's node does not
        with node_dir(tmp_path) as nodes:
            os.mknod(nodes / "kmsg", stat.S_IFCHR | 0o600, os.makedev(1, 11))
            dev = subprocess.run(["sh", "-c", f"echo 0 > {procs} && head -c 1 /dev/null "
                                  f"&& head -c 1 {nodes}/kmsg"], capture_output=True,
                                 text=True, check=False)
        assert dev.returncode != 0 and "not permitted" in dev.stderr, dev
    finally:
        m.kill(name)
        m.destroy(name)
    assert name not in m.names()
