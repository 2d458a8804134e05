"""ns:pool without privileges: what a slot is made for, and the hand-over's values."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from harness.core import record
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
    """A slot's config differs from a cold one's only in `pooled` and the resources' name;
    what start hands it is the instance's HANDED_OVER values, and the child reads them
    into exactly the cold config's (the protections untouched)."""
    rt = NsRuntime("pool")
    cold = NsRuntime()
    inst = spec(argv=("sh", "-c", "x"), env={"A": "1"}, user="7:8", workdir="/")
    slot_spec = dataclasses.replace(spec(), name="cvbench-abcdef0123-slot00")
    slot = rt._config(slot_spec, "/img", None, pooled=True)
    want = cold._config(inst, "/img", None)
    assert slot.pooled and not want.pooled and process.handover(want) == b""
    handed = record.replace(slot, **{k: getattr(want, k) for k in HANDED_OVER})
    fields = pickle.loads(process.handover(handed))
    assert set(fields) == set(HANDED_OVER)
    assert fields["argv"] == ("/bench/init", "sh", "-c", "x")
    assert (fields["uid"], fields["gid"]) == (7, 8)
    assert f"CVBENCH_NONCE={inst.nonce}" in fields["env"]
    r, w = os.pipe()
    os.write(w, process.handover(handed))
    os.close(w)
    got = process._handed_over(slot, r)  # (the workdir is the slot's: nothing made)
    os.close(r)
    assert got == record.replace(want, pooled=True, name=slot.name,
                                  cgroup_join=slot.cgroup_join)
    r, w = os.pipe()
    os.write(w, pickle.dumps({"argv": ("x",), "seccomp": b""}))
    os.close(w)
    with pytest.raises(ValueError, match="hand-over"):  # nothing else may be handed over
        process._handed_over(slot, r)
    os.close(r)


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
