"""ns:pool without privileges: what a slot is made for, and the hand-over's values."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.core import record
from runtimes import registry
from runtimes.base import InstanceSpec, Limits, Mount, Pool
from runtimes.ns import pool as pool_mod
from runtimes.ns import process
from runtimes.ns.config import HANDED_OVER, ContainerConfig
from runtimes.ns.pool import NsPoolRuntime, _pool_part
from runtimes.ns.runtime import NsRuntime


def spec(**kw: object) -> InstanceSpec:
    base: dict[str, object] = dict(run_id="abcdef0123", name="cvbench-abcdef0123-1",
                                   argv=("true",))
    base.update(kw)
    return InstanceSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))
    return tmp_path


def test_the_pool_flavour_is_a_pool_and_plain_ns_is_not() -> None:
    rt = registry.get("ns:pool")
    assert type(rt) is NsPoolRuntime and rt.name == "ns:pool" and isinstance(rt, Pool)
    for name in ("ns", "ns:tmpfs", "ns:bare"):
        assert not isinstance(registry.get(name), Pool), name
    assert type(NsPoolRuntime()) is NsPoolRuntime and NsPoolRuntime().name == "ns:pool"


@pytest.mark.parametrize("change", [
    dict(name="cvbench-abcdef0123-2"), dict(nonce="00ff"), dict(argv=("sleep", "1")),
    dict(env={"A": "b"}), dict(user="1000:1000"), dict(capture=True),
    dict(readiness="exit"), dict(publish=((8080, 80),), network="bridge"),
])
def test_what_each_instance_brings_itself_takes_the_same_slot(change: dict[str, object]) -> None:
    base = spec(network=change.get("network", "none"))
    assert _pool_part(base) == _pool_part(dataclasses.replace(base, **change))  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    dict(limits=Limits(memory=1 << 30)), dict(network="bridge"), dict(hostname="other"),
    dict(mounts=(Mount("tmpfs", "/t"),)), dict(network_name="net"), dict(aliases=("x",)),
    dict(run_id="0123456789"), dict(workdir="/srv"),
])
def test_what_the_slot_holds_must_match(change: dict[str, object]) -> None:
    assert _pool_part(spec()) != _pool_part(dataclasses.replace(spec(), **change))  # type: ignore[arg-type]


def waiter_run(tmp: Path, cfg: ContainerConfig, handed: bytes) -> tuple[bytes, bytes, int]:
    """Run the built slot waiter as a slot with config `cfg` execs it: (what it said on
    the status pipe after its "R", the workload's stdout, its exit status), `handed`
    written on the go pipe, then closed."""
    go_r, go_w = os.pipe()
    st_r, st_w = os.pipe()
    out = tmp / "out"
    with out.open("wb") as f:
        proc = subprocess.Popen([pool_mod.waiter(tmp), *process.waiter_argv(cfg, go_r, st_w)[1:]],
                                pass_fds=(go_r, st_w), stdout=f)
    os.close(go_r)
    os.close(st_w)
    try:
        assert os.read(st_r, 1) == b"R"  # set up, before any hand-over
        os.write(go_w, handed)
    finally:
        os.close(go_w)
    status = b""
    while chunk := os.read(st_r, 4096):
        status += chunk
    os.close(st_r)
    code = proc.wait()
    return status, out.read_bytes(), code


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the waiter")


@needs_gcc
def test_a_slot_config_and_its_hand_over(state: Path, tmp_path: Path) -> None:
    """A slot's config differs from a cold one's only in `pooled`, the resources' name
    and the HANDED_OVER values; the built waiter, handed them, execs exactly that argv
    with exactly that environment, as that user (the caller's: no privileges needed),
    EOF on the status pipe at the exec."""
    rt = NsRuntime("pool")
    cold = NsRuntime()
    uid, gid = os.getuid(), os.getgid()
    inst = spec(env={"E": "", "F": "a=b"}, user=f"{uid}:{gid}")
    slot_spec = dataclasses.replace(spec(), name="cvbench-abcdef0123-slot00")
    slot = rt._config(slot_spec, "/img", None, pooled=True)
    want = cold._config(inst, "/img", None)
    assert slot.pooled and not want.pooled and process.handover(want) == b""
    handed = record.replace(slot, **{k: getattr(want, k) for k in HANDED_OVER})
    assert handed == record.replace(want, pooled=True, name=slot.name,
                                         cgroup_join=slot.cgroup_join)
    # On the host there is no /bench/init: a shell that prints what it was given. As the
    # caller: no setgroups (as in a user namespace), setuid/setgid to its own ids.
    script = 'printf "[%s]" "$0" "$@"; echo; id -u; id -g; env'
    handed = record.replace(handed, argv=("sh", "-c", script, "zero", "a b", ""))
    caller = record.replace(slot, userns_map=(uid, gid))
    status, out, code = waiter_run(tmp_path, caller, b"G" + process.handover(handed))
    assert (status, code) == (b"", 0), status
    args, got_uid, got_gid, *env = out.decode().splitlines()
    assert args == "[zero][a b][]"  # (sh found on the handed PATH)
    assert (got_uid, got_gid) == (str(uid), str(gid))
    assert sorted(e for e in env if not e.startswith(("PWD=", "SHLVL=", "_="))) == \
        sorted(want.env)


@needs_gcc
@pytest.mark.parametrize("handed, error", [
    (b"G/\x007", b"Ehand-over fields"), (b"G/\x000\x000\x00x\x00a", b"Eargument argc"),
    (b"G/\x000\x000\x002\x00/bin/true", b"Ehand-over argc"),
    (b"G/\x004294968296\x000\x001\x00/bin/true", b"Ehand-over uid/gid"),
    (b"G/srv\x000\x000\x001\x00/bin/true", b"Eworkdir /srv"),  # (not the slot's "/")
    (b"G/\x000\x000\x001\x00/no/such/program", b"Eexec /no/such/program"),
])
def test_the_waiter_reports_a_bad_hand_over(state: Path, tmp_path: Path, handed: bytes,
                                            error: bytes) -> None:
    """A hand-over it cannot run: "E<step> ..." on the status pipe and exit 127, as
    process._fail reports a cold instance's failed step; nothing exec'd."""
    cfg = record.replace(NsRuntime("pool")._config(spec(), "/img", None, pooled=True),
                              userns_map=(os.getuid(), os.getgid()))
    status, out, code = waiter_run(tmp_path, cfg, handed)
    assert status.startswith(error) and code == 127 and out == b"", (status, code)


@needs_gcc
def test_the_waiter_leaves_when_the_slot_is_removed(state: Path, tmp_path: Path) -> None:
    """The go pipe closed without a "G" (process.abort, drain): it exits 0, runs nothing."""
    cfg = NsRuntime("pool")._config(spec(), "/img", None, pooled=True)
    assert waiter_run(tmp_path, cfg, b"") == (b"", b"", 0)


def test_close_inherited_keeps_exactly_what_it_is_told() -> None:
    """In a child: descriptors from 3 up are closed but the kept ones (any order, next
    to each other or not), as fcntl finds them open or not (EBADF); 0-2 untouched."""
    import fcntl

    from runtimes.ns import security

    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(6)]
    keep = (fds[4], fds[1], fds[2])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            security.close_inherited((*keep, w))
            open_fds = []
            for fd in range(max(*fds, w) + 64):
                try:
                    fcntl.fcntl(fd, fcntl.F_GETFD)
                    open_fds.append(fd)
                except OSError:
                    pass
            os.write(w, " ".join(map(str, open_fds)).encode())
        finally:
            os._exit(0)
    os.close(w)
    left = os.read(r, 4096).decode().split()
    os.waitpid(pid, 0)
    for fd in (*fds, r):
        os.close(fd)
    assert sorted(int(f) for f in left) == sorted({0, 1, 2, *keep, w}), left


def test_fill_refuses_a_bad_spec_and_a_negative_size(state: Path) -> None:
    from harness.core.errors import UsageError
    from runtimes.base import Prepared

    rt = NsPoolRuntime()
    prepared = Prepared(image=None, backend=rt.name, ref="/img")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="workdir"):
        rt.fill(spec(workdir="rel"), prepared, 1)
    with pytest.raises(UsageError, match="pool size"):
        rt.fill(spec(), prepared, -1)
    assert rt.ready() == 0 and rt.slots() == []
    rt.drain()


def test_a_taken_slot_is_replaced_once_its_request_is_served(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refill policy: taking a slot makes no new one while the instance is on its
    way to ready; wait_ready (or wait_exit, a failed start, remove) lets the refill
    thread replace it. Slots are fakes here (no privileges): counted as they are made."""
    import threading
    import time

    from runtimes.base import Prepared
    from runtimes.ns.runtime import NsInstance

    made: list[NsInstance] = []
    lock = threading.Lock()

    def make(self: NsPoolRuntime, s: object, p: Prepared) -> NsInstance:
        slot = NsInstance(spec=spec(), prepared=p, key=f"slot{len(made)}")
        slot.child = process.Child(ticket=None, go_w=-1, status_r=-1)  # type: ignore[arg-type]
        with lock:
            made.append(slot)
        return slot

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 30
        while len(made) < n:
            assert time.monotonic() < deadline, f"{len(made)} slots made, not {n}"
            time.sleep(0.01)

    monkeypatch.setattr(NsPoolRuntime, "_make_slot", make)
    monkeypatch.setattr(pool_mod._SERVER, "start", lambda: None)
    monkeypatch.setattr(NsPoolRuntime, "_program", lambda self: b"")
    monkeypatch.setattr(NsPoolRuntime, "limits_applied", False)
    monkeypatch.setattr(pool_mod._proc, "readable", lambda fd: False)  # (alive)
    monkeypatch.setattr(NsRuntime, "wait_ready", lambda self, inst, timeout: 7)
    rt = NsPoolRuntime()
    prepared = Prepared(image=None, backend=rt.name, ref="/img")  # type: ignore[arg-type]
    rt.fill(spec(), prepared, 1)
    try:
        wait_for(1)
        taken = rt._take(spec(), prepared)
        assert taken is made[0] and rt.ready() == 0
        time.sleep(0.3)  # (a fake slot is made at once: a refill now would show)
        assert len(made) == 1
        assert rt.wait_ready(taken, 1) == 7
        wait_for(2)
        assert rt.ready() == 1
    finally:
        monkeypatch.setattr(NsPoolRuntime, "remove", lambda self, inst: None)
        rt.drain()
