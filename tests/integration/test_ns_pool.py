"""`ns:pool`: a pooled instance is a cold ns instance made ahead, nothing less.

Checked against the kernel, never against cvbench's own records: /proc/PID/status and
/proc/PID/limits inside, the cgroup files of the instance's process (found through
/proc/PID/cgroup on the host), the host's links (/sys/class/net, `ip link`), its mount
table (/proc/self/mountinfo), /proc/PID. The escape tests (test_escape.py) and the
hostile image paths (test_hostile_paths.py) run on ns:pool too. No timing is asserted:
readiness of slots is polled with a generous timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.base import Instance, Limits, state_dir
from runtimes.ns import network
from tests.integration._nsutil import (
    Env,
    close_env,
    gc_run,
    is_alive,
    mounts_of,
    open_env,
    pooled_create,
    wait_ready_slots,
)

pytestmark = pytest.mark.root
LIMITS = Limits(memory=64 << 20, pids=40, cpus=0.5)
STATUS = ("NoNewPrivs", "Seccomp", "Seccomp_filters", "CapInh", "CapPrm", "CapEff", "CapBnd",
          "CapAmb")
# What the instance prints about itself: its protections as the kernel shows them, its
# limits, its network (the address apart, printed on a line of its own), then DONE.
SCRIPT = ("grep -E '^(" + "|".join(STATUS) + "):' /proc/self/status; cat /proc/self/limits; "
          "ip -4 -o addr show eth0 | awk '{print \"ADDR\", $4}'; "
          "ip -4 route | sed 's/ src .*//'; ip -o link | awk '{print $2}' | sed 's/@.*//'; "
          "id; pwd; umask; echo FDS; ls /proc/$$/fd; echo DONE; exec sleep 300")


@pytest.fixture(scope="module")
def cold() -> Iterator[Env]:
    e, lock = open_env("ns")
    yield e
    assert close_env(e, lock) == []


@pytest.fixture(scope="module")
def pool() -> Iterator[Env]:
    e, lock = open_env("ns:pool")
    yield e
    e.rt.drain()
    assert close_env(e, lock) == []


def kernel_limits(pid: int) -> dict[str, str]:
    """The limit files of process `pid`'s cgroups, as the kernel has them (v1: one
    directory per hierarchy; v2: the one directory)."""
    names = ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us",
             "cpu.cfs_period_us", "cpu.max")
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        d = Path("/sys/fs/cgroup", *(controllers.split(",")[:1] if controllers else []),
                 path.lstrip("/"))
        if controllers.startswith("name="):
            continue
        for name in names:
            if (d / name).is_file() and path != "/":
                out[name] = (d / name).read_text().strip()
    return out


def cgroup_dirs(pid: int) -> list[Path]:
    """Every cgroup directory process `pid` is in (outside the root)."""
    out = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if path != "/" and not controllers.startswith("name="):
            first = controllers.split(",")[:1] if controllers else []
            out.append(Path("/sys/fs/cgroup", *first, path.lstrip("/")))
    return out


def host_links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                          check=True).stdout


def traces(keys: list[str], pids: list[int], dirs: list[Path], run_id: str) -> list[str]:
    """What the kernel and the state dir still hold of these slots: a live process, a
    cgroup directory, a host link naming one, a mount of the run, an instance dir or
    address lease of one."""
    left = [f"process {p}" for p in pids if is_alive(p)]
    left += [f"cgroup {d}" for d in dirs if d.exists()]
    links = host_links()
    left += [f"link of {k}" for k in keys if k in links or network.link_name(k) in links]
    left += [f"mount {m.strip()}" for m in mounts_of(run_id)]
    left += [f"dir {k}" for k in keys if (state_dir() / "ns" / k).exists()]
    ipam = state_dir() / "ns" / "ipam"
    owners = [p.read_text() for p in ipam.iterdir()] if ipam.is_dir() else []
    left += [f"lease of {k}" for k in keys if k in owners]
    return left


def run_until_done(env: Env, inst: Instance) -> tuple[str, str]:
    """Start `inst`, wait for its DONE; (its output but the address line, the address)."""
    env.rt.start(inst)
    env.rt.wait_ready(inst, 60)
    env.rt.wait_output(inst, re.compile(rb"^DONE$", re.M), 60)
    text = bytes(inst.out.data).decode()  # type: ignore[attr-defined]
    addr = next(line.split()[1] for line in text.splitlines() if line.startswith("ADDR "))
    return "\n".join(line for line in text.splitlines() if not line.startswith("ADDR ")), addr


def host_status(pid: int) -> list[str]:
    """The STATUS lines of process `pid`'s /proc/PID/status, read on the host."""
    return [line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.split(":")[0] in STATUS]


@pytest.mark.parametrize("user", ["", "1000:1000"])
def test_pooled_instance_is_a_cold_one(cold: Env, pool: Env, user: str) -> None:
    """The same spec, cold on ns and from a slot of ns:pool, as root and as another
    user: the same protections in /proc/self/status (inside, and the process's
    /proc/PID/status on the host), /proc/self/limits, the same umask and open
    descriptors, the same cgroup limits in the kernel's files, the same network (an
    address of the bridge's subnet, the same routes and links inside; the host end a
    port of cvbench0). The slot waits confined (seccomp, bounding set...) and is handed
    its user after: what the kernel shows must still be exactly the cold one's."""
    seen = {}
    for env in (cold, pool):
        spec = env.spec(("sh", "-c", SCRIPT), limits=LIMITS, network="bridge", user=user)
        inst = env.create(spec)
        try:
            out, addr = run_until_done(env, inst)
            assert addr == f"{env.rt.address(inst)}/16", (addr, env.rt.address(inst))
            link = network.link_name(inst.key)  # type: ignore[attr-defined]
            master = Path(f"/sys/class/net/{link}/master").resolve().name
            seen[env.rt.name] = (out, host_status(inst.pids[0]), kernel_limits(inst.pids[0]),
                                 master)
        finally:
            env.rt.stop(inst, grace=0)
            env.rt.remove(inst)
    assert seen["ns"] == seen["ns:pool"]
    out, status, limits, master = seen["ns"]
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out, out
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status, status
    assert "\nFDS\n0\n1\n2\nDONE" in out, out  # (the slot's go pipe closed too)
    if user:
        assert "CapEff:\t0000000000000000" in status, status
    assert master == network.BRIDGE
    assert limits.get("memory.limit_in_bytes", limits.get("memory.max")) == str(64 << 20)
    assert limits["pids.max"] == "40"
    assert limits.get("cpu.cfs_quota_us", limits.get("cpu.max", "").split(" ")[0]) == "50000"


def test_handed_over_user_env_and_nonce(pool: Env) -> None:
    """A slot filled for one command (in a workdir the image lacks: made by the slot's
    set-up) runs another one's argv, env and user there, and prints its own nonce."""
    fill = pool.spec(("true",), workdir="/made/here")
    spec = pool.spec(("sh", "-c", "id -u; id -g; pwd; echo $X; echo $CVBENCH_NONCE"),
                     env={"X": "handed"}, user="1000:1001", workdir="/made/here")
    inst = pooled_create(pool.rt, spec, pool.prepared, fill=fill)
    try:
        pool.rt.start(inst)
        pool.rt.wait_ready(inst, 60)
        ex = pool.rt.wait_exit(inst, 60)
    finally:
        pool.rt.remove(inst)
    assert ex.code == 0, ex
    assert ex.stdout.decode().split() == ["1000", "1001", "/made/here", "handed", spec.nonce]


def test_a_failed_hand_over_is_reported(pool: Env) -> None:
    """A hand-over the slot's waiter refuses (a workdir not the slot's, which create
    never hands it: forged here in the instance's config): start fails naming the step,
    as a cold instance's set-up does, runs nothing, and leaves nothing."""
    import dataclasses

    from harness.core.errors import InstanceError

    inst = pooled_create(pool.rt, pool.spec(("true",)), pool.prepared)
    key, pid = inst.key, inst.child.pid  # type: ignore[attr-defined]
    dirs = cgroup_dirs(pid)
    inst.config = dataclasses.replace(inst.config, workdir="/etc")  # type: ignore[attr-defined]
    try:
        with pytest.raises(InstanceError, match=r"setting up .*workdir /etc"):
            pool.rt.start(inst)
    finally:
        pool.rt.remove(inst)
    assert dirs and traces([key], [pid], dirs, pool.run_id) == []


def test_fill_reaches_its_size_and_slots_are_what_they_say(pool: Env) -> None:
    spec = pool.spec(("true",), limits=LIMITS)
    pool.rt.fill(spec, pool.prepared, 3)
    try:
        wait_ready_slots(pool.rt, 3)
        slots = pool.rt.slots()
        assert len(slots) == 3
        pids = [s.pids[0] for s in slots]
        assert len(set(pids)) == 3 and all(is_alive(p) for p in pids)
        for s in slots:
            pid = s.pids[0]
            # its cgroup, by the kernel: the process is in the directory named, limited
            assert Path(s.cgroup) in cgroup_dirs(pid), (s.cgroup, cgroup_dirs(pid))
            lim = kernel_limits(pid)
            assert lim.get("memory.limit_in_bytes", lim.get("memory.max")) == str(64 << 20)
            # mnt, pid, uts, ipc, net, cgroup: none of them the runner's
            ours = {e: os.stat(f"/proc/self/ns/{e}").st_ino for e in
                    ("mnt", "pid", "uts", "ipc", "net", "cgroup")}
            assert all(os.stat(f"/proc/{pid}/ns/{e}").st_ino != ino for e, ino in ours.items())
            assert s.namespaces == 6
        # Filled again: the old slots are removed, the new size reached.
        pool.rt.fill(spec, pool.prepared, 1)
        assert not any(is_alive(p) for p in pids)
        wait_ready_slots(pool.rt, 1)
    finally:
        pool.rt.drain()
    assert pool.rt.ready() == 0 and pool.rt.slots() == []


def test_a_slot_is_used_once(pool: Env) -> None:
    spec = pool.spec(("sleep", "300"))
    pool.rt.fill(spec, pool.prepared, 2)
    taken: list[Instance] = []
    try:
        wait_ready_slots(pool.rt, 2)
        for _ in range(2):
            inst = pool.rt.create(pool.spec(("sleep", "300")), pool.prepared)
            taken.append(inst)
            assert inst.warm == "slot"
        keys = [i.key for i in taken]  # type: ignore[attr-defined]
        assert len(set(keys)) == 2
        for inst in taken:
            pool.rt.start(inst)
            pool.rt.wait_ready(inst, 60)
        assert taken[0].pids[0] != taken[1].pids[0]
        wait_ready_slots(pool.rt, 2)  # refilled, with new slots only
        assert not {s.details["name"] for s in pool.rt.slots()} & set(keys)
        first_cgroups = cgroup_dirs(taken[0].pids[0])
        pool.rt.remove(taken[0])
        assert not any(d.exists() for d in first_cgroups)
        assert not {s.details["name"] for s in pool.rt.slots()} & set(keys)
        pool.rt.drain()
        inst = pool.rt.create(pool.spec(("true",)), pool.prepared)  # empty pool: cold
        taken.append(inst)
        assert inst.warm == "cold"
        other = pool.spec(("true",), network="host")  # a spec the pool is not for: cold
        pool.rt.fill(spec, pool.prepared, 1)
        wait_ready_slots(pool.rt, 1)
        inst = pool.rt.create(other, pool.prepared)
        taken.append(inst)
        assert inst.warm == "cold" and pool.rt.ready() == 1
    finally:
        pool.rt.drain()
        for inst in taken:
            pool.rt.remove(inst)


def test_drain_leaves_nothing(pool: Env) -> None:
    pool.rt.fill(pool.spec(("true",), limits=LIMITS, network="bridge"), pool.prepared, 2)
    try:
        wait_ready_slots(pool.rt, 2)
        slots = pool.rt.slots()
        keys = [str(s.details["name"]) for s in slots]
        pids = [p for s in slots for p in s.pids]
        dirs = [d for p in pids for d in cgroup_dirs(p)]
        links = host_links()
        assert all(network.link_name(k) in links for k in keys)
        assert all((state_dir() / "ns" / k).is_dir() for k in keys)
    finally:
        pool.rt.drain()
    assert traces(keys, pids, dirs, pool.run_id) == []
    pool.rt.drain()  # idempotent


RUNNER = """\
import json, sys, time
from harness.bookkeeping import RunLock
from harness.core import image
from runtimes.base import InstanceSpec, Limits, new_run_id
from runtimes import registry
rt = registry.get("ns:pool"); rid = new_run_id(); RunLock(rid, "test")
p = rt.prepare(image.build(image.Recipe()))
rt.fill(InstanceSpec(run_id=rid, name=f"cvbench-{rid}-1", argv=("true",),
                     limits=Limits(memory=64 << 20, pids=40), network="bridge"), p, 2)
deadline = time.monotonic() + 300
while rt.ready() < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"rid": rid, "slots": [[s.details["name"], list(s.pids)]
                                        for s in rt.slots()]}), flush=True)
sys.stdin.read()
"""


def test_killed_runner_leaves_no_slot_after_gc(tmp_path: Path) -> None:
    """A runner SIGKILLed with a full pool: its slots' processes die with it, and
    `bench gc --run` removes their cgroups, leases and dirs (a veth dies with its
    network namespace)."""
    from harness.bookkeeping import live_runs, runs_dir
    from runtimes import registry

    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    with subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        state = json.loads(proc.stdout.readline())
        rid = state["rid"]
        keys = [k for k, _ in state["slots"]]
        pids = [p for _, ps in state["slots"] for p in ps]
        dirs = [d for p in pids for d in cgroup_dirs(p)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    try:
        assert len(keys) == 2 and dirs
        deadline = time.monotonic() + 30  # PR_SET_PDEATHSIG: they die with the runner
        while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        rt = registry.get("ns")
        assert rid not in live_runs()
        kinds = {x.kind for x in rt.leftovers(live_runs()) if x.run_id == rid}
        assert {"cgroup", "dir", "lease"} <= kinds, kinds  # (veths die with their netns)
        res = subprocess.run([sys.executable, "-m", "harness.cli", "gc", "--run", rid],
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert gc_run(rt, rid) == []
        assert traces(keys, pids, dirs, rid) == []
    finally:
        (runs_dir() / f"{rid}.lock").unlink(missing_ok=True)


def test_fill_refuses_what_ns_refuses(pool: Env) -> None:
    from harness.core.errors import UsageError

    with pytest.raises(UsageError, match="workdir"):
        pool.rt.fill(pool.spec(("true",), workdir="relative"), pool.prepared, 1)
    assert pool.rt.ready() == 0

