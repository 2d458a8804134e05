"""Helpers for the ns integration tests: run one command in an instance, the real way."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bookkeeping import RunLock
from harness.core import image as image_mod
from harness.core.errors import InstanceError
from runtimes.base import Exit, Instance, InstanceSpec, Pool, Prepared, new_run_id
from tests.conftest import backend_or_skip, require

HERE = Path(__file__).resolve().parent


@dataclass
class Env:
    """A runtime, a prepared image and a run id whose lock is held. `via_exec`: commands
    run through exec into a fresh instance whose first process sleeps (created with the
    same options), not as its first process; stdout and stderr then come together in
    `stdout`, as exec gives them."""

    rt: Any
    prepared: Prepared
    run_id: str
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    via_exec: bool = False

    def spec(self, argv: tuple[str, ...], **kw: Any) -> InstanceSpec:
        return InstanceSpec(run_id=self.run_id, name=f"cvbench-{self.run_id}-{next(self.counter)}",
                            argv=argv, capture=True, **kw)

    def run(self, script: str, timeout: float = 60, **kw: Any) -> Exit:
        """`sh -c script` in a fresh instance; its Exit (stdout/stderr kept)."""
        return self.run_argv(("sh", "-c", script), timeout, **kw)

    def create(self, spec: InstanceSpec) -> Instance:
        """The instance `spec` asks for: on a Pool backend (ns:pool) always a slot of
        its pool, never a cold fallback (see pooled_create)."""
        if isinstance(self.rt, Pool):
            return pooled_create(self.rt, spec, self.prepared)
        return self.rt.create(spec, self.prepared)  # type: ignore[no-any-return]

    def run_argv(self, argv: tuple[str, ...], timeout: float = 60, **kw: Any) -> Exit:
        inst = self.create(self.spec(("sleep", "1000") if self.via_exec else argv, **kw))
        try:
            self.rt.start(inst)
            self.rt.wait_ready(inst, timeout)
            if self.via_exec:
                return self.rt.exec(inst, argv, timeout=timeout)  # type: ignore[no-any-return]
            return self.rt.wait_exit(inst, timeout)  # type: ignore[no-any-return]
        finally:
            self.rt.stop(inst, grace=0.2)
            self.rt.remove(inst)

    def started(self, argv: tuple[str, ...], **kw: Any) -> Instance:
        inst = self.create(self.spec(argv, **kw))
        self.rt.start(inst)
        self.rt.wait_ready(inst, 30)
        return inst  # type: ignore[no-any-return]


def wait_ready_slots(pool: Pool, n: int, timeout: float = 300) -> None:
    """Poll until `pool` has `n` slots ready (generous: a loaded host sets them up
    slowly; no timing is asserted); InstanceError when a slot could not be made."""
    deadline = time.monotonic() + timeout
    while pool.ready() < n:
        if error := getattr(pool, "error", None):  # a slot could not be made: why
            raise InstanceError(error)
        assert time.monotonic() < deadline, f"{pool.ready()} of {n} slots ready after " \
                                            f"{timeout:g} s"
        time.sleep(0.05)


def pooled_create(rt: Any, spec: InstanceSpec, prepared: Prepared,
                  fill: InstanceSpec | None = None) -> Instance:
    """`spec` made from a slot of `rt`'s pool: filled with one slot for `fill` (default
    `spec` itself; another name, nonce, argv, env, user or workdir is handed over), that
    slot taken (Instance.warm "slot"), then the pool drained so that no refill runs
    beside the test."""
    rt.fill(fill or spec, prepared, 1)
    try:
        wait_ready_slots(rt, 1)
        inst: Instance = rt.create(spec, prepared)
    finally:
        rt.drain()
    assert inst.warm == "slot", inst.warm
    return inst


def probe_binary(tmp: Path) -> str:
    """Build tests/integration/escape_probe.c, static (so it runs in the image as is)."""
    gcc = shutil.which("gcc")
    require("ns", None if gcc else "gcc is not installed (scripts/provision installs it)")
    assert gcc is not None
    out = tmp / "escape_probe"
    res = subprocess.run([gcc, "-static", "-O1", "-o", str(out), str(HERE / "escape_probe.c")],
                         capture_output=True, text=True, check=False)
    require("ns", None if res.returncode == 0 else f"cannot build the probe: {res.stderr}")
    return str(out)


def open_env(backend: str, binaries: tuple[str, ...] = ()) -> tuple[Env, RunLock]:
    rt = backend_or_skip(backend)
    img = image_mod.build(image_mod.Recipe(name="nstest" if binaries else "base",
                                           binaries=binaries))
    run_id = new_run_id()
    lock = RunLock(run_id, "test")
    return Env(rt=rt, prepared=rt.prepare(img), run_id=run_id), lock


def gc_run(rt: Any, run_id: str) -> list[str]:
    """gc what run `run_id` left, and nothing of anyone else's runs (live or dead);
    return what is still left of it afterwards."""
    from harness.bookkeeping import collect, live_runs

    others = [r for r in live_runs() if r != run_id]  # (our own lock may still be held)
    collect(rt, others, run_id)
    return [f"{x.kind} {x.name}" for x in collect(rt, others, run_id, dry_run=True)]


def close_env(env: Env, lock: RunLock) -> list[str]:
    """Remove what the run left (volumes...) and return any cvbench leftovers of it."""
    left = gc_run(env.rt, env.run_id)
    lock.release()
    return left


def host_ip() -> str:
    """An address of this host on its default route (what a container must not reach)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return str(s.getsockname()[0])


def mounts_of(run_id: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if run_id in line]


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cgroup2_mount() -> Path | None:
    """Where a cgroup2 hierarchy is mounted (a v2 host's /sys/fs/cgroup, or a hybrid
    host's /sys/fs/cgroup/unified, which holds no controller but enforces device programs
    and takes clone3's CLONE_INTO_CGROUP all the same), or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return Path(left.split()[4])
    return None


def fresh_cgroup(run_id: str, what: str) -> Iterator[Path]:
    """A fresh cgroup `cvbench-<run id>-<what>` in the cgroup2 hierarchy, removed after
    (with whatever is still in it); the test is skipped (or failed) without root or a
    cgroup2 mount."""
    from runtimes.ns.cgroups._common import rmdir

    require("root", None if os.geteuid() == 0 else "needs root")
    root = cgroup2_mount()
    require("cgroup2", None if root else "no cgroup2 hierarchy is mounted")
    assert root is not None
    d = root / f"cvbench-{run_id}-{what}"
    d.mkdir()
    try:
        yield d
    finally:
        rmdir(d)


@contextlib.contextmanager
def node_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory where device nodes can be opened: a tmpfs of our own (no nodev),
    since the temporary directory may be on a `nodev` mount (systemd's /tmp tmpfs),
    where opening any node fails with EACCES before a device program is asked."""
    d = tmp_path / "dev"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "cvbench-test", str(d)],
                   check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)
