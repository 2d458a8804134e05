"""ns:pool without privileges: what a slot is made for, and the hand-over's values."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from runtimes import registry
from runtimes.base import InstanceSpec, Limits, Mount, Pool
from runtimes.ns import process
from runtimes.ns.config import HANDED_OVER
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
    dict(env={"A": "b"}), dict(user="1000:1000"), dict(workdir="/srv"), dict(capture=True),
    dict(readiness="exit"), dict(publish=((8080, 80),), network="bridge"),
])
def test_what_each_instance_brings_itself_takes_the_same_slot(change: dict[str, object]) -> None:
    base = spec(network=change.get("network", "none"))
    assert _pool_part(base) == _pool_part(dataclasses.replace(base, **change))  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    dict(limits=Limits(memory=1 << 30)), dict(network="bridge"), dict(hostname="other"),
    dict(mounts=(Mount("tmpfs", "/t"),)), dict(network_name="net"), dict(aliases=("x",)),
    dict(run_id="0123456789"),
])
def test_what_the_slot_holds_must_match(change: dict[str, object]) -> None:
    assert _pool_part(spec()) != _pool_part(dataclasses.replace(spec(), **change))  # type: ignore[arg-type]


def test_a_slot_config_and_its_hand_over(state: Path) -> None:
    """A slot's config differs from a cold one's only in `pooled`, the resources' name
    and the HANDED_OVER values; what start hands it are the instance's, and the child
    reads back exactly the cold config's (bytes, for execve)."""
    rt = NsRuntime("pool")
    cold = NsRuntime()
    inst = spec(argv=("sh", "-c", "x", ""), env={"A": "1", "E": "", "F": "a=b"},
                user="7:8", workdir="/w")
    slot_spec = dataclasses.replace(spec(), name="cvbench-abcdef0123-slot00")
    slot = rt._config(slot_spec, "/img", None, pooled=True)
    want = cold._config(inst, "/img", None)
    assert slot.pooled and not want.pooled and process.handover(want) == b""
    assert dataclasses.replace(slot, **{k: getattr(want, k) for k in HANDED_OVER}) == \
        dataclasses.replace(want, pooled=True, name=slot.name, cgroup_join=slot.cgroup_join)
    handed = dataclasses.replace(slot, **{k: getattr(want, k) for k in HANDED_OVER})
    data = process.handover(handed)
    r, w = os.pipe()
    os.write(w, data[5:])  # (the child has read the first bytes with the "G")
    os.close(w)
    got = process.read_handover(r, data[:5])
    os.close(r)
    workdir, uid, gid, argv, env = got
    assert (workdir, uid, gid) == (b"/w", 7, 8)
    assert argv == [b"/bench/init", b"sh", b"-c", b"x", b""]  # (an empty last argument)
    assert env == {k.encode(): v.encode() for k, v in (e.split("=", 1) for e in want.env)}
    assert env[b"CVBENCH_NONCE"] == inst.nonce.encode() and env[b"F"] == b"a=b"
    for bad in (b"/\x007", b"/\x000\x000\x00x\x00a"):  # too few fields; argc not a number
        r, w = os.pipe()
        os.write(w, bad)
        os.close(w)
        with pytest.raises(ValueError, match="hand-over"):
            process.read_handover(r, b"")
        os.close(r)


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
    from runtimes.ns import pool as pool_mod
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
