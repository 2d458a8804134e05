"""cvbench-ns without privileges: config.json -> ContainerConfig (oci_bundle.py), the
refusals by field, the command line's parsing and its import path."""

from __future__ import annotations

import copy
import json
import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import UsageError
from runtimes.ns import namespaces as ns
from runtimes.ns import oci_bundle, oci_cli, seccomp
from runtimes.ns.config import DEVICE_RULES
from runtimes.ns.security import CAP_NAMES

DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

# What dockerd 20.10 wrote for `docker run --memory 64m --pids-limit 50` (its seccomp
# profile left out), as read from the bundle containerd made.
DOCKER: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {"user": {"uid": 0, "gid": 0, "additionalGids": [0]},
                "args": ["/bench/init", "sleep", "20"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "HOSTNAME=715eabdf4c41"],
                "cwd": "/",
                "capabilities": {k: DOCKER_CAPS for k in ("bounding", "effective", "permitted")},
                "oomScoreAdj": 0},
    "root": {"path": "rootfs"},
    "hostname": "715eabdf4c41",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid", "noexec", "nodev"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "hosts",
         "options": ["rbind", "rprivate"]},
    ],
    "hooks": {"prestart": [{"path": "/proc/6514/exe",
                            "args": ["libnetwork-setkey", "-exec-root=/var/run/docker",
                                     "715eabdf4c41", "c772b13c78e4"]}]},
    "linux": {
        "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"},
        "resources": {
            "devices": [{"allow": False, "access": "rwm"},
                        {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
                        {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
                        {"allow": False, "type": "c", "major": 10, "minor": 229,
                         "access": "rwm"}],
            "memory": {"limit": 67108864, "swap": 134217728, "disableOOMKiller": False},
            "cpu": {"shares": 0}, "pids": {"limit": 50}, "blockIO": {"weight": 0}},
        "cgroupsPath": "/docker/715eabdf4c41",
        "namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "uts"},
                       {"type": "pid"}, {"type": "ipc"}],
        # (Docker's lists, cut to one path every kernel has and one none has)
        "maskedPaths": ["/proc/cpuinfo", "/proc/does-not-exist"],
        "readonlyPaths": ["/proc/sys"],
    },
}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    return tmp_path


def test_dockers_config_translated(bundle: Path) -> None:
    b = oci_bundle.translate(copy.deepcopy(DOCKER), bundle, "c1")
    c = b.config
    assert c.argv == ("/bench/init", "sleep", "20") and c.workdir == "/"
    assert c.clone_flags == ns.CLONE_NEWNS | ns.CLONE_NEWNET | ns.CLONE_NEWUTS | \
        ns.CLONE_NEWPID | ns.CLONE_NEWIPC
    assert not c.cgroupns  # not asked for (Docker's default on cgroup v1)
    assert c.loopback_up and c.hostname == "715eabdf4c41" and c.groups == (0,)
    assert c.caps == tuple(sorted(CAP_NAMES.index(n) for n in DOCKER_CAPS))
    assert not c.no_new_privs and c.inheritable == ()
    assert c.lower == str(bundle / "rootfs") and c.bind_root and not c.die_with_parent
    assert (b.cgroup_parent, b.cgroup_name) == ("docker", "715eabdf4c41")
    assert (b.limits.memory, b.limits.swap, b.limits.pids, b.limits.cpus) == \
        (67108864, 134217728, 50, None)
    # deny a; the allows; the trailing deny of /dev/fuse allows nothing back; then the
    # runtime's own nodes (each rule once)
    assert b.device_rules == tuple(dict.fromkeys(("c 1:5 rwm", "c 5:0 rwm", *DEVICE_RULES)))
    by_target = {m.target: m for m in c.mounts}
    assert by_target["sys"].flags == ns.MS_NOSUID | ns.MS_NOEXEC | ns.MS_NODEV | ns.MS_RDONLY
    assert by_target["dev/pts"].data == "newinstance,ptmxmode=0666,mode=0620,gid=5"
    hosts = by_target["etc/hosts"]
    assert (hosts.source, hosts.flags, hosts.file, hosts.propagation) == \
        (str(bundle / "hosts"), ns.MS_BIND | ns.MS_REC, True, ns.MS_PRIVATE | ns.MS_REC)
    assert b.cgroup_mounts == (4,) and c.mounts[4].target == "sys/fs/cgroup"
    assert c.sysctl == (("net.ipv4.ip_unprivileged_port_start", "0"),)
    # container paths: what each is (or if it is there at all) the child looks up inside
    assert c.masked == (("/proc/cpuinfo", None), ("/proc/does-not-exist", None))
    assert c.readonly == ("/proc/sys",)
    assert b.hooks["prestart"][0].args[0] == "libnetwork-setkey"
    assert b.oom_score_adj == 0


def _set(cfg: dict[str, Any], path: str, v: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        cfg = cfg.setdefault(p, {})
    cfg[last] = v


@pytest.mark.parametrize(("path", "value", "field"), [
    ("linux.intelRdt", {"closID": "x"}, "linux.intelRdt"),
    ("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}],
     "linux.uidMappings"),
    ("linux.namespaces", [{"type": "mount"}, {"type": "user"}], "linux.namespaces[1]"),
    ("linux.namespaces", [{"type": "mount"}, {"type": "pid", "path": "/proc/1/ns/pid"}],
     "linux.namespaces[1].path"),
    ("linux.namespaces", [{"type": "network"}], "linux.namespaces"),
    ("hooks.poststop", [{"path": "bin/true"}], "hooks.poststop[0].path"),
    ("process.capabilities.ambient", ["CAP_KILL"], "process.capabilities.ambient"),
    ("process.capabilities.bounding", ["CAP_KILL"], "process.capabilities.bounding"),
    ("process.apparmorProfile", "docker-default", "process.apparmorProfile"),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}] * 2,
     "process.rlimits[1].type"),
    ("linux.resources.cpu", {"shares": 1024}, "linux.resources.cpu.shares"),
    ("linux.resources.cpu", {"quota": 50000, "period": 50000}, "linux.resources.cpu.period"),
    ("linux.resources.memory", {"limit": 1 << 20, "reservation": 1 << 19},
     "linux.resources.memory.reservation"),
    ("linux.resources.blockIO", {"weight": 500}, "linux.resources.blockIO.weight"),
    ("linux.resources.devices", [{"allow": False, "access": "rwm"},
                                 {"allow": True, "type": "c", "access": "rwm"},
                                 {"allow": False, "type": "c", "major": 1, "minor": 3,
                                  "access": "w"}],
     "linux.resources.devices[2]"),
    ("linux.resources.devices", [{"allow": True, "type": "c", "access": "rwm"},
                                 {"allow": False, "type": "b", "access": "rwm"}],
     "linux.resources.devices[0]"),
    ("linux.cgroupsPath", "system.slice:docker:abc", "linux.cgroupsPath"),
    ("linux.maskedPaths", ["/proc/kcore", "proc/timer_list"], "linux.maskedPaths[1]"),
    ("linux.readonlyPaths", ["sys"], "linux.readonlyPaths[0]"),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_NOTIFY"}, "linux.seccomp.defaultAction"),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]},
     "linux.seccomp.flags"),
    ("mounts", [{"destination": "/proc", "type": "proc", "source": "proc"}], "mounts"),
    ("ociVersion", "2.0.0", "ociVersion"),
])
def test_refused_by_field(bundle: Path, path: str, value: Any, field: str) -> None:
    cfg = copy.deepcopy(DOCKER)
    _set(cfg, path, value)
    with pytest.raises(UsageError) as e:
        oci_bundle.translate(cfg, bundle, "c1")
    assert str(e.value).startswith(f"config.json: {field}: ") or \
        str(e.value).startswith(f"config.json: linux.seccomp.{field.split('.')[-1]}: "), \
        str(e.value)


def test_ambient_capabilities(bundle: Path) -> None:
    """config.md's five capability sets as runtime-tools' generate writes them (all the
    same): ambient is kept for the process; it must be permitted and inheritable (the
    kernel raises nothing else), and a non-root process keeps no capability here."""
    cfg = copy.deepcopy(DOCKER)
    cfg["process"]["capabilities"] = {k: DOCKER_CAPS for k in (
        "bounding", "effective", "permitted", "inheritable", "ambient")}
    c = oci_bundle.translate(copy.deepcopy(cfg), bundle, "c1").config
    assert c.ambient == c.inheritable == c.caps == \
        tuple(sorted(CAP_NAMES.index(n) for n in DOCKER_CAPS))
    assert oci_bundle.translate(copy.deepcopy(DOCKER), bundle, "c1").config.ambient == ()
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    with pytest.raises(UsageError, match=r"^config.json: process.capabilities.ambient: "
                                         r"not supported with a non-root user"):
        oci_bundle.translate(copy.deepcopy(cfg), bundle, "c1")
    cfg["process"]["user"] = {"uid": 0, "gid": 0}
    cfg["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]
    with pytest.raises(UsageError, match=r"^config.json: process.capabilities.ambient: must"):
        oci_bundle.translate(cfg, bundle, "c1")


def test_capabilities_that_cannot_be_granted(bundle: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """config.md: a capability that cannot be mapped to the kernel, or granted, is a
    warning, not a failure: an unknown name, and one outside this process's bounding set
    (as the kernel reports it), are left out of every set, each named on stderr."""
    status = Path("/proc/self/status").read_text()
    bounding = int(status.split("CapBnd:")[1].split()[0], 16)
    outside = [n for i, n in enumerate(CAP_NAMES) if not bounding >> i & 1]
    cfg = copy.deepcopy(DOCKER)
    asked = [*DOCKER_CAPS, "CAP_NOPE", *outside]
    cfg["process"]["capabilities"] = {k: asked for k in ("bounding", "effective", "permitted")}
    oci_bundle._WARNED.clear()
    c = oci_bundle.translate(cfg, bundle, "c1").config
    assert c.caps == tuple(sorted(CAP_NAMES.index(n) for n in DOCKER_CAPS if bounding >>
                                  CAP_NAMES.index(n) & 1))
    err = capsys.readouterr().err
    for name in ("CAP_NOPE", *outside):  # once each (the first set read)
        assert err.count(f"'{name}' cannot be granted here, left out") == 1, err


def test_unknown_properties_ignored(bundle: Path) -> None:
    cfg = copy.deepcopy(DOCKER)
    cfg["linux"]["somethingNew"] = {"x": 1}
    cfg["process"]["futureField"] = True
    assert oci_bundle.translate(cfg, bundle, "c1").config.argv[0] == "/bench/init"


def test_device_rules_allows_only_means_no_device_cgroup() -> None:
    assert oci_bundle.device_rules([]) == ()
    assert oci_bundle.device_rules([{"allow": True, "access": "rwm"}]) == ()


def test_mount_options() -> None:
    flags, data, prop, bind, rro = oci_bundle.mount_options(
        ["rbind", "ro", "nosuid", "rslave", "rro", "size=1m"], "m")
    assert flags == ns.MS_BIND | ns.MS_REC | ns.MS_RDONLY | ns.MS_NOSUID
    assert (data, prop, bind, rro) == (["size=1m"], ns.MS_SLAVE | ns.MS_REC, True, True)
    flags, *_ = oci_bundle.mount_options(["ro", "rw", "noexec", "exec", "nodev"], "m")
    assert flags == ns.MS_NODEV


def test_seccomp_from_oci_reads_what_oci_writes() -> None:
    prof = seccomp.Profile("p", "0" * 64, "SCMP_ACT_ERRNO", 1, ("SCMP_ARCH_X86_64",), (
        seccomp.Rule(("read", "write"), "SCMP_ACT_ALLOW"),
        seccomp.Rule(("personality",), "SCMP_ACT_ALLOW", None, ((0, "SCMP_CMP_EQ", 8, 0),)),
        seccomp.Rule(("clone",), "SCMP_ACT_ERRNO", 38),
    ))
    back = seccomp.from_oci(json.loads(json.dumps(seccomp.oci(prof))), "config.json: x")
    assert (back.default_action, back.default_errno, back.rules) == \
        (prof.default_action, prof.default_errno, prof.rules)


def test_cli_flags() -> None:
    opts, pos = oci_cli.parse("create", ["--bundle", "/b", "--pid-file=/p", "id1",
                                         "--console-socket", "/s"])
    assert (opts["bundle"], opts["pid-file"], opts["console-socket"], pos) == \
        (["/b"], ["/p"], ["/s"], ["id1"])
    opts, pos = oci_cli.parse("exec", ["-d", "--pid-file", "/p", "c1", "sh", "-c", "x -d"],
                              stop_at_positional=True)
    assert oci_cli.flag(opts, "detach") and pos == ["c1", "sh", "-c", "x -d"]
    opts, pos = oci_cli.parse("", ["--root", "/r", "--log-format=json", "kill", "--all",
                                   "c1", "9"])
    assert opts["root"] == ["/r"] and pos == ["kill", "--all", "c1", "9"]
    with pytest.raises(oci_cli.Usage):
        oci_cli.parse("delete", ["--bogus", "c1"])
    assert oci_cli.signal_number("SIGKILL") == oci_cli.signal_number("9") == 9


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert oci_cli.main(["--root", str(tmp_path), "state", "nope"]) == 1
    assert capsys.readouterr().err == "cvbench-ns: container nope does not exist\n"
    assert oci_cli.main(["--systemd-cgroup", "state", "nope"]) == 2
    assert "--systemd-cgroup: not supported" in capsys.readouterr().err
    assert oci_cli.main(["--root", str(tmp_path), "checkpoint", "c1"]) == 1
    assert "checkpoint (CRIU) is not supported" in capsys.readouterr().err


def test_to_json_is_json() -> None:
    v = {"a": 'q"b\\s\n\x01é', "n": -3, "t": True, "f": False, "z": None, "l": ["x", 1],
         "d": {}, "e": {"k": {"j": "v"}}}
    assert json.loads(oci_cli.to_json(v)) == v
    assert json.loads(oci_cli.to_json(v, pretty=True)) == v


def test_state_path_imports_no_heavy_module() -> None:
    """`cvbench-ns state` is a new interpreter each time: importing the CLI brings only
    its own package (no json, re, typing, harness, numpy...)."""
    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
            "import runtimes.ns.oci_cli; print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(repo)], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert set(out) <= {"runtimes", "runtimes.ns", "runtimes.ns.oci_cli", "marshal"}, out


def test_create_imports_within_its_budget() -> None:
    """`cvbench-ns create` imports its modules in a new interpreter on every container:
    none of the heavy ones (dataclasses, with inspect, ast, dis and tokenize, cost it a
    third of its CPU time: harness.core.record stands in for it), and no more modules
    than it takes now (79, where dataclasses made it 95)."""
    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
            "import runtimes.ns.oci_create; print(' '.join(sorted(set(sys.modules) - before)))")
    out = set(subprocess.run([sys.executable, "-I", "-S", "-c", code, str(repo)],
                             capture_output=True, text=True, check=True, timeout=60).stdout.split())
    assert "runtimes.ns.oci_create" in out
    # (ctypes for clone, json for config.json, pickle for the config exec reads: its own)
    heavy = HEAVY - {"ctypes", "json", "pickle"} | {"ast", "dis", "tokenize",
                                                     "importlib.machinery"}
    assert not out & heavy, out & heavy
    assert len(out) <= 79, sorted(out)


# What no call of the engines' lifecycle may import: each is a new interpreter.
HEAVY = {"typing", "dataclasses", "inspect", "json", "subprocess", "pickle", "ctypes",
         "hashlib", "shutil", "tempfile", "psutil", "pyseccomp", "runtimes.base",
         "harness.core.records", "harness.core.hostinfo", "harness.core.probes.memory",
         "harness.report", "click", "rich", "pandas", "numpy"}
# ...and what state, start and kill, which touch no cgroup, need not either.
CGROUPS = {"pathlib", "re", "runtimes.ns.cgroups"}


def test_lifecycle_calls_import_no_heavy_module(tmp_path: Path) -> None:
    """state, start, kill and delete, each run as the command runs (oci_cli.entry, in a
    new interpreter under -X importtime: the modules it imported are the interpreter's
    own report), on a container whose process is a `sleep` of this test, held on a
    FIFO this test reads: each does its work (its answer, the byte on the FIFO, the
    signal as the kernel reports it, the state dir gone) without a heavy import."""
    repo = Path(__file__).resolve().parents[2]
    root, cid = tmp_path / "root", "c1"
    code = f"import sys; sys.path.insert(0, {str(repo)!r}); from runtimes.ns import oci_cli; " \
        "oci_cli.entry()"

    def call(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        p = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", code,
                            "--root", str(root), *args],
                           capture_output=True, text=True, check=False, timeout=60)
        imported = {line.rpartition("|")[2].strip() for line in p.stderr.splitlines()
                    if line.startswith("import time:")}
        assert imported, p.stderr  # (-X importtime did report)
        return p, imported

    # The container's cgroup as create records it: a directory (here an ordinary one, in
    # place of /sys/fs/cgroup's) that delete removes without the cgroup managers.
    cg_parent = tmp_path / "cgroup-parent"
    (cg_parent / cid).mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        d = root / cid
        d.mkdir(parents=True)
        os.mkfifo(d / "exec.fifo", 0o600)
        held = os.open(d / "exec.fifo", os.O_RDONLY | os.O_NONBLOCK)
        (d / "state").write_bytes(marshal.dumps({
            "ociVersion": "1.0.2", "id": cid, "pid": sleeper.pid,
            "start_time": oci_cli.start_time(sleeper.pid), "bundle": str(tmp_path),
            "rootfs": str(tmp_path), "created": "2026-01-01T00:00:00Z", "annotations": {},
            "cgroup": {"parent": "cvbench-ns-unit", "name": f"absent-{os.getpid()}",
                       "device_rules": [], "mode": "v2", "parents": [str(cg_parent)],
                       "dirs": [str(cg_parent / cid)]},
            "hooks": {}}))
        p, imported = call("state", cid)
        assert p.returncode == 0 and json.loads(p.stdout)["status"] == "created", p.stderr
        assert not imported & (HEAVY | CGROUPS), imported & (HEAVY | CGROUPS)
        p, imported = call("start", cid)
        assert p.returncode == 0, p.stderr
        assert os.read(held, 1) == b"G" and not (d / "exec.fifo").exists()
        assert not imported & (HEAVY | CGROUPS), imported & (HEAVY | CGROUPS)
        p, imported = call("state", cid)
        assert json.loads(p.stdout)["status"] == "running"
        p, imported = call("kill", cid, "KILL")
        assert p.returncode == 0, p.stderr
        assert sleeper.wait(timeout=30) == -9  # the kernel's word: killed by SIGKILL
        assert not imported & (HEAVY | CGROUPS), imported & (HEAVY | CGROUPS)
        p, imported = call("delete", cid)
        assert p.returncode == 0, p.stderr
        assert not d.exists() and not (cg_parent / cid).exists()
        # (an empty cgroup: removed without the managers, nor contextlib)
        assert not imported & (HEAVY | CGROUPS | {"contextlib"}), imported
        p, imported = call("delete", "--force", cid)  # the shim's second delete: a no-op
        assert p.returncode == 0, p.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
        if "held" in locals():
            os.close(held)


def test_delete_takes_the_managers_only_for_a_cgroup_not_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """delete of a stopped container: its recorded cgroup directories removed as they
    are; one that will not go (rmdir refuses: something is left in it) is left to the
    cgroup manager, which kills what is left and removes it."""
    calls: list[tuple[str, str]] = []

    class FakeManager:
        mode = "v2"

        def kill(self, name: str) -> None:
            calls.append(("kill", name))

        def destroy(self, name: str) -> None:
            calls.append(("destroy", name))

    monkeypatch.setattr(oci_cli, "_cgroup", lambda st: FakeManager())
    monkeypatch.setattr(oci_cli.G, "root", str(tmp_path / "root"))
    for cid, busy in (("empty", False), ("busy", True)):
        cg = tmp_path / "cg" / cid
        cg.mkdir(parents=True)
        if busy:
            (cg / "left").write_text("")  # rmdir: ENOTEMPTY, as a cgroup's EBUSY
        (tmp_path / "root" / cid).mkdir(parents=True)
        st = {"id": cid, "pid": 1, "start_time": "not pid 1's", "hooks": {},
              "cgroup": {"parent": "cvbench-ns-unit", "name": cid, "device_rules": [],
                         "mode": "v2", "parents": [str(cg.parent)], "dirs": [str(cg)]}}
        oci_cli.delete(st, force=False)
        assert cg.exists() == busy and not (tmp_path / "root" / cid).exists()
    assert calls == [("kill", "busy"), ("destroy", "busy")]


def test_container_hooks_run_in_order_with_status_and_timeout(tmp_path: Path) -> None:
    """createContainer/startContainer hooks as the container's process runs them: state
    on stdin, a failing hook's status, and one outliving its timeout killed and reaped
    (the kernel has no such process left)."""
    from runtimes.ns import process

    out, pidfile = tmp_path / "out", tmp_path / "pid"
    ok = ("/bin/sh", ("sh", "-c", f"cat >> {out}"), ("PATH=/bin:/usr/bin",), 0.0)
    process.run_hooks((ok, ok), b"{state}", "createContainer")
    assert out.read_text() == "{state}{state}"
    fails = ("/bin/sh", ("sh", "-c", "exit 3"), (), 5.0)
    with pytest.raises(RuntimeError, match=r"hooks\.startContainer\[1\] \(/bin/sh\): exit "
                                           r"status 3"):
        process.run_hooks((ok, fails), b"", "startContainer")
    slow = ("/bin/sh", ("sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"), (), 2.0)
    with pytest.raises(RuntimeError, match=r"hooks\.createContainer\[0\].*timed out after 2 s"):
        process.run_hooks((slow,), b"", "createContainer")
    assert not Path(f"/proc/{int(pidfile.read_text())}").exists()
