"""cgroup managers against fake trees: the v1 layout, the v2 layout, the factory."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from runtimes.base import Limits
from runtimes.ns import cgroups
from runtimes.ns.cgroups import _common, v1, v2


@pytest.fixture
def fake_fs(monkeypatch: pytest.MonkeyPatch) -> None:
    """cgroupfs makes the control files on mkdir and lets rmdir remove a directory that
    holds them; a plain directory does neither, so writes create files and rmdir
    removes the tree. cgroup.subtree_control behaves as the kernel's (checked in the
    Debian 13 test host): "+c"/"-c" words enable and disable, reading lists the enabled
    controllers by name, and a cgroup other than the root that has processes cannot
    enable any (the no-internal-process rule: EBUSY)."""

    def write(path: Path, value: str) -> None:
        if path.name == "cgroup.procs" and value.strip() != "0":
            # a pid moves: out of every other cgroup of the tree, into this one
            top = next(d for d in (path.parent, *path.parents)
                       if (d / "cgroup.controllers").exists())
            for f in top.rglob("cgroup.procs"):
                f.write_text("".join(f"{x}\n" for x in f.read_text().split() if x != value))
            path.write_text(path.read_text() + f"{value}\n" if path.exists() else f"{value}\n")
            return
        if path.name != "cgroup.subtree_control":
            path.write_text(value)
            return
        d = path.parent
        if not (d / "cgroup.controllers").exists() and (d / "cgroup.procs").exists() \
                and (d / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        enabled = set(path.read_text().split()) if path.exists() else set()
        for word in value.split():
            (enabled.add if word[0] == "+" else enabled.discard)(word[1:])
        path.write_text(" ".join(sorted(enabled)) + "\n")

    def rmdir(path: Path, timeout: float = 5.0) -> None:
        shutil.rmtree(path, ignore_errors=True)

    for mod in (v1, v2):
        monkeypatch.setattr(mod, "write", write)
        monkeypatch.setattr(mod, "rmdir", rmdir)


def v1_tree(root: Path) -> Path:
    for c in ("memory", "cpu", "pids"):
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.procs").write_text("")
    return root


def v2_tree(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    (root / "cvbench").mkdir()  # cgroupfs gives every new cgroup its control files
    (root / "cvbench" / "cgroup.subtree_control").write_text("")
    return root


def test_factory_picks_by_host(tmp_path: Path) -> None:
    assert isinstance(cgroups.new(v2_tree(tmp_path / "a")), v2.V2Manager)
    m = cgroups.new(v1_tree(tmp_path / "b"))
    assert isinstance(m, v1.V1Manager)
    assert m.mode == "hybrid"
    shutil.rmtree(tmp_path / "b" / "unified")
    assert cgroups.new(tmp_path / "b").mode == "v1"


def test_v1_limits_and_files(tmp_path: Path, fake_fs: None) -> None:
    root = v1_tree(tmp_path)
    m = cgroups.new(root)
    assert m.check() is None
    (root / "memory" / "cvbench").mkdir()
    m.create("cvbench-abcdef0123-1", Limits(cpus=0.5, memory=64 << 20, pids=32))
    mem = root / "memory" / "cvbench" / "cvbench-abcdef0123-1"
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 << 20)
    cpu = root / "cpu" / "cvbench" / "cvbench-abcdef0123-1"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert not (cpu / "cpu.cfs_period_us").exists()  # the kernel's default, 100 ms, is kept
    assert (root / "pids" / "cvbench" / "cvbench-abcdef0123-1" / "pids.max").read_text() \
        == "32"
    assert m.join_files("cvbench-abcdef0123-1") == [
        str(root / c / "cvbench" / "cvbench-abcdef0123-1" / "cgroup.procs")
        for c in ("memory", "cpu", "pids")]
    assert m.names() == ["cvbench-abcdef0123-1"]
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert m.oom_killed("cvbench-abcdef0123-1")
    (mem / "memory.usage_in_bytes").write_text("12345\n")
    assert m.memory_usage("cvbench-abcdef0123-1") == 12345
    m.destroy("cvbench-abcdef0123-1")
    assert m.names() == []


def test_v1_memsw_when_swap_accounting(tmp_path: Path, fake_fs: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = v1_tree(tmp_path)
    m = cgroups.new(root)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a: object, **k: object) -> None:
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]
        if self.parent.name == "cvbench" and self.parent.parent.name == "memory":
            (self / "memory.memsw.limit_in_bytes").write_text("max")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    m.create("cvbench-abcdef0123-2", Limits(memory=1 << 20))
    d = root / "memory" / "cvbench" / "cvbench-abcdef0123-2"
    assert (d / "memory.memsw.limit_in_bytes").read_text() == str(1 << 20)


def test_v1_missing_controller(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    shutil.rmtree(root / "pids")
    assert "pids" in (cgroups.new(root).check() or "")


def test_v2_enables_controllers_and_writes_limits(tmp_path: Path, fake_fs: None) -> None:
    root = v2_tree(tmp_path)
    m = cgroups.new(root, parent="cvbench")
    assert m.mode == "v2"
    assert m.check() is None
    m.create("cvbench-abcdef0123-3", Limits(cpus=1.5, memory=32 << 20, pids=10))
    assert set((root / "cgroup.subtree_control").read_text().split()) == \
        {"memory", "cpu", "pids"}
    assert set((root / "cvbench" / "cgroup.subtree_control").read_text().split()) == \
        {"memory", "cpu", "pids"}
    d = root / "cvbench" / "cvbench-abcdef0123-3"
    assert (d / "memory.max").read_text() == str(32 << 20)
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "pids.max").read_text() == "10"
    assert m.join_files("cvbench-abcdef0123-3") == [str(d / "cgroup.procs")]
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    assert not m.oom_killed("cvbench-abcdef0123-3")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert m.oom_killed("cvbench-abcdef0123-3")
    (d / "memory.current").write_text("4096\n")
    assert m.memory_usage("cvbench-abcdef0123-3") == 4096
    (d / "cgroup.procs").write_text("")
    assert m.pids("cvbench-abcdef0123-3") == []
    assert m.names() == ["cvbench-abcdef0123-3"]
    m.destroy("cvbench-abcdef0123-3")
    assert m.names() == []


def test_v2_swap_off_where_it_exists(tmp_path: Path, fake_fs: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = v2_tree(tmp_path)
    m = cgroups.new(root)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a: object, **k: object) -> None:
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]
        if self.name.startswith("cvbench-"):
            (self / "memory.swap.max").write_text("max")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    m.create("cvbench-abcdef0123-4", Limits(memory=1 << 20))
    assert (root / "cvbench" / "cvbench-abcdef0123-4" / "memory.swap.max").read_text() == "0"


def test_v2_missing_controllers(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, controllers="hugetlb")
    reason = cgroups.new(root).check() or ""
    assert "memory" in reason and "cpu" in reason and "pids" in reason


def test_read_int_field(tmp_path: Path) -> None:
    f = tmp_path / "events"
    f.write_text("oom 2\noom_kill 7\n")
    assert _common.read_int_field(f, "oom_kill") == 7
    assert _common.read_int_field(f, "missing") == 0
    assert _common.read_int_field(tmp_path / "absent", "oom_kill") == 0


def test_v2_parent_holds_no_process(tmp_path: Path, fake_fs: None) -> None:
    """Instances get their own subtree (cvbench/<name>), never a cgroup with processes:
    the parent's controllers can only be enabled while it holds none."""
    root = v2_tree(tmp_path)
    (root / "cvbench" / "cgroup.procs").write_text("4242\n")  # a process put there
    m = cgroups.new(root)
    with pytest.raises(OSError) as e:
        m.create("cvbench-abcdef0123-5", Limits(memory=1 << 20))
    assert e.value.errno == errno.EBUSY
    (root / "cvbench" / "cgroup.procs").write_text("")
    m.create("cvbench-abcdef0123-5", Limits(cpuset="0"))
    assert (root / "cvbench" / "cgroup.subtree_control").read_text().split() == \
        ["cpu", "cpuset", "memory", "pids"]


def test_v2_delegated_subtree(tmp_path: Path, fake_fs: None) -> None:
    """Rootless under systemd: the user's unit (Delegate=yes) is the tree. The runner's
    own processes leave it for a `runner` leaf first, then the controllers go to the
    cvbench parent and the instance's cgroup gets its limits there."""
    unit = "user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service"
    own = v2_tree(tmp_path / unit, "cpu memory pids")
    (own / "cgroup.procs").write_text("111\n222\n")  # the runner and its shell
    cgroup = tmp_path / "proc-self-cgroup"
    cgroup.write_text(f"0::/{unit}\n")
    assert v2.delegated(tmp_path, str(cgroup)) == own
    m = v2.V2Manager(own, delegated=True)
    m.create("cvbench-abcdef0123-1", Limits(memory=32 << 20, pids=8))
    assert (own / "cgroup.procs").read_text().split() == []
    assert (own / "runner" / "cgroup.procs").read_text().split() == ["111", "222"]
    assert (own / "cgroup.subtree_control").read_text().split() == ["cpu", "memory", "pids"]
    d = own / "cvbench" / "cvbench-abcdef0123-1"
    assert (d / "memory.max").read_text() == str(32 << 20)
    # a second manager in the same process finds the unit again from its runner leaf
    cgroup.write_text(f"0::/{unit}/runner\n")
    assert v2.delegated(tmp_path, str(cgroup)) == own


def test_v2_not_delegated(tmp_path: Path) -> None:
    """The root cgroup, or a cgroup another user owns, is no tree of this user's."""
    cgroup = tmp_path / "proc-self-cgroup"
    cgroup.write_text("0::/\n")
    assert v2.delegated(tmp_path, str(cgroup)) is None
    other = v2_tree(tmp_path / "user.slice/session-3.scope")
    os.chown(other, 12345, 12345)
    cgroup.write_text("0::/user.slice/session-3.scope\n")
    assert v2.delegated(tmp_path, str(cgroup)) is None


def test_v2_device_program_attached_at_create(tmp_path: Path, fake_fs: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules asked for: the program loaded once, attached to each new cgroup before
    any limit is written (the kernel's side is tests/integration/test_cgroup2_devices.py);
    a kernel that refuses it: no rules, and why."""
    from runtimes.ns.cgroups import devices_bpf

    calls: list[tuple[str, object]] = []

    def attach(fd: int, d: Path) -> None:
        calls.append(("attach", (fd, d, sorted(p.name for p in d.iterdir()))))

    monkeypatch.setattr(devices_bpf, "loaded", lambda rules: calls.append(("load", rules)) or 7)
    monkeypatch.setattr(devices_bpf, "attach", attach)
    root = v2_tree(tmp_path)
    m = cgroups.new(root, device_rules=("c 1:3 rwm",))
    assert m.device_rules == ("c 1:3 rwm",) and m.device_problem is None
    m.create("cvbench-abcdef0123-4", Limits(memory=32 << 20))
    d = root / "cvbench" / "cvbench-abcdef0123-4"
    assert calls == [("load", ("c 1:3 rwm",)), ("attach", (7, d, []))]  # before memory.max
    assert m.devices().startswith("eBPF allow-list (a BPF_PROG_TYPE_CGROUP_DEVICE program "
                                  "of 13 instructions")

    def refused(rules: tuple[str, ...]) -> int:
        raise OSError(errno.EPERM, "bpf(BPF_PROG_LOAD, cgroup device program): "
                                   "Operation not permitted")

    monkeypatch.setattr(devices_bpf, "loaded", refused)
    m = cgroups.new(root, device_rules=("c 1:3 rwm",))
    assert m.device_rules == ()
    assert m.device_problem == ("the kernel refused the eBPF device program: bpf("
                                "BPF_PROG_LOAD, cgroup device program): Operation not "
                                "permitted")
    m.create("cvbench-abcdef0123-5", Limits())
    assert len(calls) == 2  # no attach
