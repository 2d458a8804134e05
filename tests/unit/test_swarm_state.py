"""docker:swarm's bookkeeping (runtimes/_swarm.py) against a fake daemon: a swarm made by
a run is left once no run that uses it is live, never one the run found; a worker is
refused; the gwbridge goes only if the init made it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.core.errors import BackendUnavailable
from runtimes import _swarm
from runtimes._swarm import Membership


class FakeDaemon:
    def __init__(self, state: str = "inactive", manager: bool = True,
                 gwbridge: bool = False) -> None:
        self.m = Membership(state, "found-node" if state == "active" else "", manager)
        self.networks = {"docker_gwbridge"} if gwbridge else set()
        self.calls: list[str] = []

    def membership(self) -> Membership:
        return self.m

    def init(self, addr: str) -> str:
        self.calls.append(f"init {addr}")
        self.m = Membership("active", "made-node", True, 1)
        self.networks.add("docker_gwbridge")
        return "made-node"

    def leave(self) -> None:
        self.calls.append("leave")
        self.m = Membership("inactive")

    def has_network(self, name: str) -> bool:
        return name in self.networks

    def remove_network(self, name: str) -> None:
        self.calls.append(f"rm {name}")
        self.networks.discard(name)


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))


def test_made_swarm_left_once_its_run_is_dead() -> None:
    d = FakeDaemon()
    used = _swarm.use(d, "aaaaaaaa01", "192.0.2.2")
    assert used.made and d.calls == ["init 192.0.2.2"]
    assert _swarm.leftover(["aaaaaaaa01"]) is None  # its run is live
    found = _swarm.leftover([])
    assert found is not None and (found.kind, found.name, found.run_id) == \
        ("swarm", "made-node", "aaaaaaaa01")
    assert _swarm.leave(d, [])
    assert d.calls[1:] == ["leave", "rm docker_gwbridge"] and d.m.state == "inactive"
    assert _swarm.leftover([]) is None  # forgotten


def test_found_swarm_is_never_left() -> None:
    d = FakeDaemon("active")
    used = _swarm.use(d, "aaaaaaaa01", "192.0.2.2")
    assert not used.made and used.maker is None and d.calls == []
    assert _swarm.leftover([]) is None
    assert _swarm.leave(d, []) and d.calls == []


def test_gwbridge_kept_when_it_was_there_before() -> None:
    d = FakeDaemon(gwbridge=True)
    _swarm.use(d, "aaaaaaaa01", "192.0.2.2")
    _swarm.leave(d, [])
    assert d.calls == ["init 192.0.2.2", "leave"] and d.networks == {"docker_gwbridge"}


def test_a_second_run_keeps_the_made_swarm_alive() -> None:
    d = FakeDaemon()
    _swarm.use(d, "aaaaaaaa01", "192.0.2.2")
    second = _swarm.use(d, "bbbbbbbb02", "192.0.2.2")
    assert not second.made and second.maker == "aaaaaaaa01" and d.calls == ["init 192.0.2.2"]
    assert _swarm.leftover(["bbbbbbbb02"]) is None  # the maker is dead, its user is not
    assert not _swarm.leave(d, ["bbbbbbbb02"]) and "leave" not in d.calls
    assert _swarm.leftover([]) is not None
    assert _swarm.leave(d, []) and "leave" in d.calls


def test_a_run_registered_after_gc_began_counts_as_live() -> None:
    d = FakeDaemon()
    _swarm.use(d, "aaaaaaaa01", "192.0.2.2")
    since = time.time() - 60
    _swarm.use(d, "bbbbbbbb02", "192.0.2.2")
    users = _swarm.state_path() / "users" / "bbbbbbbb02"
    os.utime(users, (since + 30, since + 30))
    assert not _swarm.leave(d, [], since=since) and "leave" not in d.calls


def test_swarm_left_by_hand_is_forgotten_and_another_one_not_touched() -> None:
    d = FakeDaemon()
    _swarm.use(d, "aaaaaaaa01", "192.0.2.2")
    d.m = Membership("active", "someone-elses", True, 1)  # left by hand, a new swarm made
    assert _swarm.leave(d, []) and "leave" not in d.calls
    assert _swarm.leftover([]) is None
    # and a run that comes now uses it as found
    assert not _swarm.use(d, "cccccccc03", "192.0.2.2").made


def test_worker_and_locked_swarm_refused() -> None:
    with pytest.raises(BackendUnavailable, match="worker"):
        _swarm.use(FakeDaemon("active", manager=False), "aaaaaaaa01", "192.0.2.2")
    with pytest.raises(BackendUnavailable, match="locked"):
        _swarm.use(FakeDaemon("locked"), "aaaaaaaa01", "192.0.2.2")
    assert _swarm.leftover([]) is None


def test_ipvs_found_loaded_builtin_or_as_a_module(tmp_path: Path) -> None:
    from runtimes.swarm import ipvs_problem

    proc, mods = tmp_path / "proc", tmp_path / "modules" / os.uname().release
    (proc / "net").mkdir(parents=True)
    mods.mkdir(parents=True)
    assert ipvs_problem(proc, mods.parent) is not None
    assert "CONFIG_IP_VS" in (ipvs_problem(proc, mods.parent) or "")
    (mods / "modules.builtin").write_text("kernel/net/netfilter/ipvs/ip_vs.ko\n")
    assert ipvs_problem(proc, mods.parent) is None
    (mods / "modules.builtin").write_text("")
    ko = mods / "kernel/net/netfilter/ipvs/ip_vs.ko.xz"
    ko.parent.mkdir(parents=True)
    ko.touch()
    assert ipvs_problem(proc, mods.parent) is None
    ko.unlink()
    (proc / "net/ip_vs").touch()
    assert ipvs_problem(proc, mods.parent) is None


def test_stack_labelled_with_the_run() -> None:
    from runtimes.swarm import labelled_stack

    doc = {"services": {"web": {"image": "x", "deploy": {"labels": ["a=1"], "replicas": 2}},
                        "db": {"image": "y"}},
           "networks": {"front": {}, "outside": {"external": True}}}
    out = labelled_stack(doc, "aaaaaaaa01")
    assert out["services"]["web"]["deploy"] == {"labels": {"a": "1", "cvbench.run": "aaaaaaaa01"},
                                                "replicas": 2}
    assert out["services"]["db"]["deploy"] == {"labels": {"cvbench.run": "aaaaaaaa01"}}
    # the default network the services without `networks` are on is declared, labelled
    assert out["networks"] == {"front": {"labels": {"cvbench.run": "aaaaaaaa01"}},
                               "outside": {"external": True},
                               "default": {"labels": {"cvbench.run": "aaaaaaaa01"}}}
    assert "volumes" not in out
    assert doc["services"]["db"] == {"image": "y"}  # the caller's document is not changed


def test_stack_volumes_labelled_and_no_default_network_unless_used() -> None:
    from runtimes.swarm import labelled_stack

    doc = {"services": {"web": {"image": "x", "networks": ["back"]}},
           "networks": {"back": None}, "volumes": {"data": None, "old": {"external": True}}}
    out = labelled_stack(doc, "aaaaaaaa01")
    assert out["networks"] == {"back": {"labels": {"cvbench.run": "aaaaaaaa01"}}}
    assert out["volumes"] == {"data": {"labels": {"cvbench.run": "aaaaaaaa01"}},
                              "old": {"external": True}}
