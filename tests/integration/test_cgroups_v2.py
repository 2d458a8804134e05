"""The cgroup v2 manager on a real cgroup2 tree, where this host has one with the memory,
cpu and pids controllers (a v2 or a hybrid host whose controllers are not all bound to
v1 hierarchies); elsewhere it is skipped with the reason (unit tests use a fake tree)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runtimes.base import Limits
from runtimes.ns.cgroups.v2 import CONTROLLERS, V2Manager
from runtimes.ns.config import DEVICE_RULES
from tests.conftest import require
from tests.integration._nsutil import node_dir

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


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


def test_v2_limits_seen_by_the_kernel(run_id: str) -> None:
    """pids.max, cpuset and cgroup.kill as the kernel enforces them, and the cgroup gone
    after destroy (each checked by the kernel's own files, not the manager's reading)."""
    require("root", None if os.geteuid() == 0 else "needs root")
    root, why = cgroup2_root()
    require("cgroup2", why or None)
    assert root is not None
    m = V2Manager(root)
    name = f"cvbench-{run_id}-v2k"
    m.create(name, Limits(pids=4, cpuset="0"))
    d = m.path(name)
    try:
        assert (d / "cpuset.cpus.effective").read_text().strip() == "0"
        procs = m.join_files(name)[0]
        # eight sleepers asked, four pids allowed: the kernel refuses the rest, and
        # counts the refusals in pids.events
        bomb = subprocess.Popen(["sh", "-c", f"echo 0 > {procs}; for i in 1 2 3 4 5 6 7 8; "
                                 "do sleep 30 & done; wait"], stderr=subprocess.DEVNULL)
        for _ in range(200):
            if int(dict(line.split() for line in
                        (d / "pids.events").read_text().splitlines()).get("max", 0)) > 0:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert int((d / "pids.current").read_text()) <= 4
        assert "max 0" not in (d / "pids.events").read_text()  # refusals were counted
        assert (d / "cgroup.kill").exists()
        m.kill(name)
        assert bomb.wait(timeout=10) != 0  # SIGKILLed through cgroup.kill
        assert (d / "cgroup.procs").read_text().split() == []
    finally:
        m.kill(name)
        m.destroy(name)
    assert not d.exists()


def _systemd() -> str | None:
    if not os.path.isdir("/run/systemd/system"):
        return "systemd is not PID 1 here"
    if not shutil.which("systemd-run"):
        return "systemd-run is missing"
    return None


def test_runner_in_a_systemd_unit(tmp_path: Path) -> None:
    """As a service would run it: the runner in a leaf (a transient unit under
    system.slice), its instances in their own subtree; limits applied, every instance's
    cgroup removed after its sample."""
    require("root", None if os.geteuid() == 0 else "needs root")
    root, why = cgroup2_root()
    require("cgroup2", why or None)
    require("systemd", _systemd())
    scenario = tmp_path / "unit.toml"
    scenario.write_text('name = "unit"\nstudy = "startup"\nbackends = ["ns"]\n'
                        '[workload]\nimage = { recipe = "base" }\nargv = ["true"]\n'
                        '[limits]\ncpus = 0.5\nmemory = "64M"\npids = 64\n'
                        '[sampling]\nwarmups = 0\nmin_samples = 3\nmax_samples = 3\n')
    res = subprocess.run(["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                          f"--working-directory={REPO}", "--",
                          sys.executable, "-c", _UNIT_PROBE, str(scenario), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr + res.stdout
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["runner"].startswith("/system.slice/") and seen["runner"].endswith(".service")
    meta = json.loads(next(f for f in (tmp_path / "out").glob("*.json")
                           if not f.name.endswith(".pyperf.json")).read_text())
    assert meta["backends"]["ns"]["limits_applied"] is True
    assert [c for c in (root / "cvbench").glob(f"cvbench-{meta['run_id']}-*")] == []


_UNIT_PROBE = """\
import json, subprocess, sys
runner = open("/proc/self/cgroup").read().strip().split("::")[1]
subprocess.run([sys.executable, "-m", "harness.cli", "run", sys.argv[1], "--out",
                sys.argv[2] + "/out"], check=True, stdout=subprocess.DEVNULL)
print(json.dumps({"runner": runner}))
"""


def _user_manager() -> tuple[str, int] | None:
    """A user (name, uid) whose systemd manager runs (user@UID.service)."""
    import pwd

    for p in sorted(Path("/sys/fs/cgroup/user.slice").glob("user-*.slice/user@*.service")):
        uid = int(p.name.removeprefix("user@").removesuffix(".service"))
        if uid != 0 and Path(f"/run/user/{uid}/bus").exists():
            return pwd.getpwuid(uid).pw_name, uid
    return None


def test_rootless_in_a_delegated_subtree() -> None:
    """A user without root, in a unit systemd delegated to it (Delegate=yes under its
    user@UID.service): ns applies limits there. The hog is killed by the kernel's OOM
    killer, counted in the instance's memory.events, its cgroup lies under the user's
    service and is gone after."""
    require("root", None if os.geteuid() == 0 else "needs root (to become the user)")
    _, why = cgroup2_root()
    require("cgroup2", why or None)
    require("delegation", _systemd())
    user = _user_manager()
    require("delegation", None if user else "no user with a running systemd user manager "
            "and bus (loginctl enable-linger USER; dbus-user-session)")
    assert user is not None
    name, uid = user
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # pytest's tmp_path is root's only
        _delegated(name, uid, Path(tmp))


def _delegated(name: str, uid: int, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    probe = tmp_path / "probe.py"
    probe.write_text(_ROOTLESS_PROBE)
    probe.chmod(0o644)
    res = subprocess.run(["runuser", "-u", name, "--", "env", f"XDG_RUNTIME_DIR=/run/user/{uid}",
                          f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus",
                          "systemd-run", "--user", "--wait", "--pipe", "--quiet", "--collect",
                          "-p", "Delegate=yes", f"--working-directory={REPO}",
                          "-E", f"CVBENCH_STATE={tmp_path}/state", "-E",
                          f"CVBENCH_CACHE={tmp_path}/cache", "--",
                          sys.executable, str(probe)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr + res.stdout
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert f"/user@{uid}.service/" in seen["cgroup"], seen
    assert seen["memory.max"] == str(32 << 20)
    assert seen["oom_kill"] >= 1 and seen["code"] != 0
    assert seen["gone"] is True
    assert "delegated to this user" in seen["limits"]


_ROOTLESS_PROBE = """\
import json
from pathlib import Path
from harness.core import image
from harness.bookkeeping import RunLock
from runtimes.base import InstanceSpec, Limits, new_run_id
from runtimes.ns.runtime import NsRuntime

rt, rid = NsRuntime(), new_run_id()
lock = RunLock(rid, "test")
limits = rt.availability().details.get("limits", "")
prepared = rt.prepare(image.build(image.Recipe()))
name = f"cvbench-{rid}-1"
inst = rt.create(InstanceSpec(run_id=rid, name=name, argv=(
    "sh", "-c", "head -c 100m /dev/zero | tail"), limits=Limits(memory=32 << 20)), prepared)
d = rt.cg.path(name)
try:
    rt.start(inst)
    end = rt.wait_exit(inst, 120)
    events = dict(line.split() for line in (d / "memory.events").read_text().splitlines())
    seen = {"cgroup": str(d), "memory.max": (d / "memory.max").read_text().strip(),
            "oom_kill": int(events["oom_kill"]), "code": end.code, "limits": limits}
finally:
    rt.stop(inst, grace=0)
    rt.remove(inst)
    lock.release()
seen["gone"] = not d.exists()
print(json.dumps(seen))
"""
