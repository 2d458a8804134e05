"""Issue 2's checks of the first ns version: real namespaces, cgroups and mounts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.core import image
from runtimes.base import Exit, InstanceSpec, Limits
from tests.conftest import backend_or_skip

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ns():  # type: ignore[no-untyped-def]
    return backend_or_skip("ns")


@pytest.fixture(scope="module")
def prepared(ns):  # type: ignore[no-untyped-def]
    return ns.prepare(image.build(image.Recipe()))


def run(ns, prepared, run_id: str, argv: list[str], **kw: object) -> Exit:  # type: ignore[no-untyped-def]
    spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-{time.monotonic_ns()}",
                        argv=tuple(argv), capture=True, **kw)  # type: ignore[arg-type]
    inst = ns.create(spec, prepared)
    try:
        ns.start(inst)
        ns.wait_ready(inst, 30)
        return ns.wait_exit(inst, 30)
    finally:
        ns.remove(inst)
        assert not Path(ns.cg.path(spec.name)).exists()
        assert not (ns.root() / spec.name).exists()


def test_own_pid_1_and_hostname(ns, prepared, run_id: str) -> None:  # type: ignore[no-untyped-def]
    ex = run(ns, prepared, run_id, ["sh", "-c", "echo $$; hostname; ps -o pid | wc -l"])
    pid, host, nprocs = ex.stdout.decode().split()
    assert pid == "1" and host == "cvbench"
    assert int(nprocs) <= 4  # header + sh + ps (+ wc): nothing of the host


def test_no_host_network_interfaces(ns, prepared, run_id: str) -> None:  # type: ignore[no-untyped-def]
    ex = run(ns, prepared, run_id, ["sh", "-c", "ls /sys/class/net"])
    assert ex.stdout.split() == [b"lo"]


def test_cannot_see_host_files(ns, prepared, run_id: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "host-secret"
    secret.write_text("x")
    ex = run(ns, prepared, run_id, ["sh", "-c", f"ls {secret} {os.getcwd()} /work 2>&1; "
                                                "cat /etc/hostname; ls /"])
    out = ex.stdout.decode()
    assert "No such file" in out and "host-secret\n" not in out
    assert "bench" in out.split()


def test_limits_written_and_memory_enforced(ns, prepared, run_id: str) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(cpus=0.5, memory=32 << 20, pids=20)
    name = f"cvbench-{run_id}-limits"
    spec = InstanceSpec(run_id=run_id, name=name, argv=("sleep", "30"), limits=limits)
    inst = ns.create(spec, prepared)
    try:
        cg = ns.cg
        if cg.mode == "v2":
            d = cg.path(name)
            assert (d / "memory.max").read_text().strip() == str(32 << 20)
            assert (d / "cpu.max").read_text().split() == ["50000", "100000"]
            assert (d / "pids.max").read_text().strip() == "20"
        else:
            roots = cg.roots  # type: ignore[attr-defined]
            base = Path("cvbench") / name
            assert int((roots["memory"] / base / "memory.limit_in_bytes").read_text()) == 32 << 20
            assert int((roots["cpu"] / base / "cpu.cfs_quota_us").read_text()) == 50000
            assert (roots["pids"] / base / "pids.max").read_text().strip() == "20"
        ns.start(inst)
        ns.wait_ready(inst, 30)
        st = ns.stats(inst)
        assert st.pids and st.pss > 0 and st.cgroup and st.cgroup > 0
    finally:
        ns.remove(inst)
    ex = run(ns, prepared, run_id,
             ["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived"],
             limits=Limits(memory=32 << 20))
    assert ex.oom_killed and b"survived" not in ex.stdout
    ex = run(ns, prepared, run_id, ["sh", "-c", "for i in $(seq 30); do sleep 5 & done; wait"],
             limits=Limits(pids=10))
    assert b"can't fork" in ex.stderr or b"Resource temporarily unavailable" in ex.stderr


def test_nothing_left_after_a_test(ns, run_id: str) -> None:  # type: ignore[no-untyped-def]
    assert [x for x in ns.leftovers() if x.run_id == run_id] == []
