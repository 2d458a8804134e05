"""Checks shared by the Docker and Podman backends, against the real daemons.

test_docker.py and test_podman.py subclass `EngineCases` with their backend names. Each
test tracks what it creates under its own run id (the `run_id` fixture holds the run's
lock) and removes it; `own_leftovers` proves nothing of the run is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from harness.bookkeeping import collect
from harness.core import image
from runtimes import _proc, registry
from runtimes._engine import Engine, EngineInstance, EnginePool
from runtimes.base import (
    RUN_LABEL,
    Exit,
    Instance,
    InstanceSpec,
    Limits,
    Mount,
    Pool,
    Prepared,
    own,
)
from tests.conftest import backend_or_skip, require

_counter = iter(range(1, 1_000_000))


def spec(run_id: str, argv: list[str], **kw: Any) -> InstanceSpec:
    return InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-{next(_counter)}",
                        argv=tuple(argv), capture=True, **kw)


def run(rt: Engine, prepared: Prepared, s: InstanceSpec,
        check: Any = None) -> tuple[Exit, Instance]:
    """One instance through its whole life; `check(inst)` runs while it exists."""
    inst = rt.create(s, prepared)
    try:
        rt.start(inst)
        rt.wait_ready(inst, 60)
        ex = rt.wait_exit(inst, 60)
        if check is not None:
            check(inst)
    finally:
        rt.stop(inst, grace=0)
        rt.remove(inst)
    return ex, inst


def own_leftovers(rt: Engine, run_id: str) -> list[str]:
    return [f"{x.kind} {x.name}" for x in rt.leftovers() if x.run_id == run_id]


def gc_own(rt: Engine, run_id: str) -> list[str]:
    """rt.gc() limited to `run_id` (as `bench gc --run`): other runs' are not ours."""
    return [f"{x.kind} {x.name}" for x in collect(rt, [], run_id)]


class EngineCases:
    names: ClassVar[tuple[str, ...]]  # the base backend first
    missing: ClassVar[dict[str, str]] = {}  # flavours this host cannot run, and why

    def oci_runtime(self, rt: Engine, inspect: dict[str, Any]) -> str:
        """The OCI runtime the engine ran the container with."""
        return str(inspect["HostConfig"].get("Runtime"))

    @pytest.fixture(scope="class")
    @classmethod
    def prepared_all(cls) -> dict[str, tuple[Engine, Prepared]]:
        img = image.build(image.Recipe())
        out = {}
        cls.missing = {}  # this class's own (the base class's dict is shared)
        for n in cls.names:
            if n != cls.names[0]:
                # a flavour the host cannot run (docker:ns under a systemd cgroup driver)
                # leaves the others their tests: its reason is asked for where it is used
                rt = registry.get(n)
                if not (a := rt.availability()).ok:
                    cls.missing[n] = f"{a.reason} (fix: {a.fix})"
                    continue
            else:
                rt = backend_or_skip(n)
            assert isinstance(rt, Engine)
            out[n] = (rt, rt.prepare(img))
        return out

    @pytest.fixture
    def engine(self, prepared_all: dict[str, tuple[Engine, Prepared]]
               ) -> tuple[Engine, Prepared]:
        return prepared_all[self.names[0]]

    @pytest.fixture
    def clean(self, engine: tuple[Engine, Prepared], run_id: str) -> Iterator[str]:
        """The run id; afterwards, nothing labelled with it may be left."""
        yield run_id
        # Remove what a failed test left before failing on it, so no test leaks.
        assert gc_own(engine[0], run_id) == []

    def test_image_imported_once_with_its_digest(
            self, prepared_all: dict[str, tuple[Engine, Prepared]]) -> None:
        rt, prepared = prepared_all[self.names[0]]
        digest = prepared.image.digest
        assert prepared.details["diff_id"] == f"sha256:{digest}"
        again = rt.prepare(prepared.image)
        assert again.ref == prepared.ref and again.details["imported"] is False
        info = rt.api.inspect_image(prepared.ref)  # type: ignore[no-untyped-call]
        assert info["Config"]["Labels"]["cvbench.digest"] == f"sha256:{digest}"
        assert info["RootFS"]["Layers"] == [f"sha256:{digest}"]
        assert prepared.footprint["image"] > 0

    def test_every_flavour_runs_output_and_status_pass_through(
            self, prepared_all: dict[str, tuple[Engine, Prepared]], clean: str) -> None:
        for name in self.names:
            if name not in prepared_all:
                continue
            rt, prepared = prepared_all[name]
            seen: dict[str, Any] = {}

            def check(inst: Instance, rt: Engine = rt, seen: dict[str, Any] = seen) -> None:
                seen.update(rt.api.inspect_container(own(inst, EngineInstance).cid))  # type: ignore[no-untyped-call]
                seen["oci"] = self.oci_runtime(rt, seen)

            s = spec(clean, ["sh", "-c", "echo out; echo err >&2; exit 3"])
            ex, inst = run(rt, prepared, s, check)
            assert (ex.code, ex.stdout, ex.stderr) == (3, b"out\n", b"err\n"), name
            assert inst.ready_ns is not None and inst.ready_ns <= ex.t_ns
            assert seen["Name"].lstrip("/") == s.name
            assert seen["Config"]["Labels"][RUN_LABEL] == clean
            assert seen["oci"] == rt.runtime, name
        for name, why in self.missing.items():  # each flavour is a capability of its own
            require(name, why)

    def test_limits_network_and_mounts(self, engine: tuple[Engine, Prepared], clean: str,
                                       tmp_path: Path) -> None:
        rt, prepared = engine
        (tmp_path / "hello").write_text("from the host\n")
        mounts = (Mount("bind", "/host", str(tmp_path), readonly=True),
                  Mount("tmpfs", "/scratch", size=8 << 20),
                  Mount("volume", "/vol", "data"))
        seen: dict[str, Any] = {}

        def check(inst: Instance) -> None:
            seen.update(rt.api.inspect_container(own(inst, EngineInstance).cid)["HostConfig"])  # type: ignore[no-untyped-call]

        s = spec(clean, ["sh", "-c", "ls /sys/class/net; cat /host/hello; "
                                     "touch /host/x 2>/dev/null || echo ro; "
                                     "df -k /scratch | tail -1; echo kept > /vol/f"],
                 limits=Limits(cpus=0.5, memory=64 << 20, pids=50), mounts=mounts)
        ex, _ = run(rt, prepared, s, check)
        lines = ex.stdout.decode().splitlines()
        assert ex.code == 0, ex.stderr
        assert lines[:3] == ["lo", "from the host", "ro"]
        assert lines[3].split()[1] == str(8 << 10)  # tmpfs size in KiB
        assert (seen["Memory"], seen["NanoCpus"], seen["PidsLimit"]) == \
            (64 << 20, 500_000_000, 50)
        # the volume outlives the instance, within the run
        ex, _ = run(rt, prepared, spec(clean, ["cat", "/vol/f"], mounts=mounts))
        assert ex.stdout == b"kept\n"
        assert f"volume cvbench-{clean}-data" in own_leftovers(rt, clean)
        rt.api.remove_volume(f"cvbench-{clean}-data")

    def test_memory_limit_oom_killed(self, engine: tuple[Engine, Prepared], clean: str) -> None:
        rt, prepared = engine
        s = spec(clean, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                 limits=Limits(memory=16 << 20))
        ex, _ = run(rt, prepared, s)
        assert ex.oom_killed and ex.code == 137, ex

    def test_stats_daemons_disk_and_stop(self, engine: tuple[Engine, Prepared],
                                         clean: str) -> None:
        rt, prepared = engine
        s = spec(clean, ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=3 2>/dev/null; "
                                     "echo written; exec sleep 60"])
        inst = rt.create(s, prepared)
        try:
            rt.start(inst)
            rt.wait_ready(inst, 60)
            _proc.wait_line(own(inst, EngineInstance).stream(), b"written", time.monotonic() + 60)
            st = rt.stats(inst)
            assert st.extra["shim_pids"] and set(st.extra["shim_pids"]) <= set(st.pids)
            assert len(st.pids) >= 2 and st.pss > 0 and st.uss > 0
            assert st.cgroup is not None and st.cgroup > 0
            assert (rt.disk_usage(inst) or 0) >= 3 << 20
            t0 = time.monotonic()
            rt.stop(inst, grace=0)
            assert time.monotonic() - t0 < 5  # no 10 s stop timeout on a PID 1
            rt.stop(inst, grace=0)  # idempotent
        finally:
            rt.remove(inst)
            rt.remove(inst)  # idempotent
        daemons = rt.daemons()
        assert daemons and all(daemons.values()), daemons
        for name, pids in daemons.items():  # found by socket or pid file: the real binary
            exe = Path(os.readlink(f"/proc/{pids[0]}/exe")).name
            assert exe == name.split()[0], (name, pids, exe)
        assert rt.traits().settings["daemons"]

    def test_leftovers_and_gc_of_a_dead_run(self, engine: tuple[Engine, Prepared],
                                            clean: str) -> None:
        rt, prepared = engine
        inst = rt.create(spec(clean, ["true"]), prepared)
        own(inst, EngineInstance).stream().close()  # as a killed runner: the container stays
        assert own_leftovers(rt, clean) == [f"container {inst.spec.name}"]
        assert all(x.run_id != clean for x in rt.leftovers(live_runs=[clean]))
        assert gc_own(rt, clean) == [f"container {inst.spec.name}"]

    def test_bench_exec(self, engine: tuple[Engine, Prepared]) -> None:
        rt = engine[0]
        p = subprocess.run([sys.executable, "-m", "harness.cli", "exec", rt.name, "--",
                            "sh", "-c", "echo out; echo err >&2; exit 7"],
                           capture_output=True, timeout=300, check=False)
        assert (p.returncode, p.stdout, p.stderr) == (7, b"out\n", b"err\n")


    # --- `<engine>:precreated`: the engine's warm path, a Pool of created containers ----

    @pytest.fixture
    def pool(self, prepared_all: dict[str, tuple[Engine, Prepared]], clean: str
             ) -> Iterator[tuple[EnginePool, Prepared]]:
        """The engine's precreated flavour, drained afterwards (before `clean` checks that
        nothing of the run is left)."""
        rt = registry.get(f"{self.names[0]}:precreated")
        assert isinstance(rt, EnginePool) and isinstance(rt, Pool)
        prepared = rt.prepare(prepared_all[self.names[0]][1].image)
        try:
            yield rt, prepared
        finally:
            rt.drain()

    def test_precreated_runs_as_a_cold_one(self, engine: tuple[Engine, Prepared],
                                           pool: tuple[EnginePool, Prepared],
                                           clean: str) -> None:
        """A slot runs the workload with the limits, network and output of a cold
        instance; the ready line carries the slot's own nonce, which its spec says."""
        cold_rt, cold_prepared = engine
        rt, prepared = pool
        script = ("echo $CVBENCH_NONCE; ls /sys/class/net; "
                  "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
                  "|| cat /sys/fs/cgroup/memory.max; "
                  "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
        s = spec(clean, ["sh", "-c", script],
                 limits=Limits(cpus=0.5, memory=64 << 20, pids=50))
        rt.fill(s, prepared, 1)
        wait_pool(rt, 1)
        configs: list[dict[str, Any]] = []

        def check(inst: Instance, rt: Engine) -> None:
            configs.append(rt.api.inspect_container(own(inst, EngineInstance).cid)["HostConfig"])

        asked = spec(clean, list(s.argv), limits=s.limits)
        warm_inst = rt.create(asked, prepared)
        assert warm_inst.warm == "slot"
        assert warm_inst.spec.name.startswith(f"cvbench-{clean}-slot-")
        assert warm_inst.spec.nonce != asked.nonce
        try:
            rt.start(warm_inst)
            rt.wait_ready(warm_inst, 60)  # the slot's nonce: the asked one never comes
            warm_exit = rt.wait_exit(warm_inst, 60)
            check(warm_inst, rt)
        finally:
            rt.remove(warm_inst)
        cold_exit, cold_inst = run(cold_rt, cold_prepared, spec(clean, list(s.argv),
                                                                limits=s.limits),
                                   lambda i: check(i, cold_rt))
        warm_lines = warm_exit.stdout.decode().splitlines()
        cold_lines = cold_exit.stdout.decode().splitlines()
        assert warm_exit.code == cold_exit.code == 0, (warm_exit, cold_exit)
        assert warm_lines[0] == warm_inst.spec.nonce  # the workload's own environment
        assert cold_lines[0] == cold_inst.spec.nonce
        assert warm_lines[1:] == cold_lines[1:] == ["lo", str(64 << 20), "50"]
        keys = ("Memory", "MemorySwap", "NanoCpus", "PidsLimit", "NetworkMode", "Runtime")
        assert [configs[0].get(k) for k in keys] == [configs[1].get(k) for k in keys]

    def test_precreated_falls_back_to_cold(self, pool: tuple[EnginePool, Prepared],
                                           clean: str) -> None:
        rt, prepared = pool
        empty = rt.create(spec(clean, ["true"]), prepared)
        try:
            assert empty.warm == "cold" and not empty.spec.name.count("-slot-")
        finally:
            rt.remove(empty)
        rt.fill(spec(clean, ["sleep", "60"]), prepared, 1)
        wait_pool(rt, 1)
        other = rt.create(spec(clean, ["true"]), prepared)  # not what the pool holds
        try:
            assert other.warm == "cold"
            rt.start(other)
            assert rt.wait_exit(other, 60).code == 0
        finally:
            rt.remove(other)
        assert rt.ready() == 1

    def test_precreated_slots_drain_and_gc_of_a_killed_runner(
            self, pool: tuple[EnginePool, Prepared], clean: str) -> None:
        rt, prepared = pool
        rt.fill(spec(clean, ["sleep", "60"]), prepared, 2)
        wait_pool(rt, 2)
        slots = rt.slots()
        listed = {c["Names"][0].lstrip("/"): c for c in labelled(rt, clean)}
        assert {str(s.details["container"]) for s in slots} == set(listed)
        for s in slots:
            cid = next(c["Id"] for n, c in listed.items() if n == s.details["container"])
            # the host processes naming the container (Podman's conmon; none for Docker's
            # created container) are the slot's
            naming = {p.pid for p in psutil.process_iter(["cmdline"])
                      if cid in " ".join(p.info["cmdline"] or ())}
            assert naming <= set(s.pids) and bool(naming) == bool(s.pids), (naming, s)
            assert s.disk_bytes is not None
        rt.drain()
        assert rt.ready() == 0 and labelled(rt, clean) == []
        # A runner killed with its pool full: the slots stay, labelled, and gc finds them.
        code = ("import sys, time; from runtimes import registry; from harness.core import "
                "image; from runtimes.base import InstanceSpec; "
                f"rt = registry.get({rt.name!r}); p = rt.prepare(image.build(image.Recipe())); "
                f"rt.fill(InstanceSpec(run_id={clean!r}, name='x', argv=('sleep', '60')), p, 2)\n"
                "while rt.ready() < 2: time.sleep(0.05)\n"
                "print('full', flush=True); time.sleep(600)")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "full\n"
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        names = sorted(c["Names"][0].lstrip("/") for c in labelled(rt, clean))
        assert len(names) == 2 and all(n.startswith(f"cvbench-{clean}-slot-") for n in names)
        assert sorted(gc_own(rt, clean)) == [f"container {n}" for n in names]
        assert labelled(rt, clean) == []


def wait_pool(rt: Pool, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while rt.ready() < n:
        assert time.monotonic() < deadline, f"the pool has {rt.ready()} of {n} slots"
        time.sleep(0.02)


def labelled(rt: Engine, run_id: str) -> list[dict[str, Any]]:
    """The engine's own list of the run's containers (by its label)."""
    found: list[dict[str, Any]] = rt.api.containers(all=True,
                                                    filters={"label": f"{RUN_LABEL}={run_id}"})
    return found
