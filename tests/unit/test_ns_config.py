"""ns and oci: how an InstanceSpec becomes a ContainerConfig / config.json (no privileges)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from harness.core.errors import UsageError
from runtimes.base import InstanceSpec, Limits, Mount
from runtimes.ns import namespaces, network, security, validate
from runtimes.ns.config import DEFAULT_CAPS, DEVICE_RULES, NO_MKNOD_CAPS, caps
from runtimes.ns.runtime import NsRuntime
from runtimes.oci import OciRuntime


def spec(**kw: object) -> InstanceSpec:
    base: dict[str, object] = dict(run_id="abcdef0123", name="cvbench-abcdef0123-1",
                                   argv=("true",))
    base.update(kw)
    return InstanceSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))
    return tmp_path


def test_config_maps_the_spec(state: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rt = NsRuntime()
    s = spec(env={"A": "1"}, workdir="/data", hostname="h1", network="none", mounts=(
        Mount("bind", "/ro", str(src), readonly=True), Mount("bind", "/rw", str(src)),
        Mount("volume", "/vol", "v1"), Mount("tmpfs", "/t", size=1 << 20)))
    cfg = rt._config(s, "/img", None)
    assert cfg.argv == ("/bench/init", "true")
    assert "A=1" in cfg.env and f"CVBENCH_NONCE={s.nonce}" in cfg.env
    assert cfg.hostname == "h1" and cfg.workdir == "/data"
    assert cfg.clone_flags & namespaces.CLONE_NEWNET and cfg.loopback_up
    assert cfg.upper == "" and cfg.scratch.endswith("ns/scratch")
    by_target = {m.target: m for m in cfg.mounts}
    rro = namespaces.has_mount_setattr()
    # read-only binds: recursive, every mount read-only; without mount_setattr, only the
    # top mount (remounted read-only), so nothing below it may come along
    assert by_target["ro"].recursive_readonly == rro
    assert by_target["ro"].readonly_remount != rro
    assert bool(by_target["ro"].flags & namespaces.MS_REC) == rro
    assert by_target["rw"].flags & namespaces.MS_REC
    nosuid_nodev_noexec = namespaces.MS_NOSUID | namespaces.MS_NODEV | namespaces.MS_NOEXEC
    assert by_target["t"].flags & nosuid_nodev_noexec == nosuid_nodev_noexec  # as Docker's
    assert by_target["vol"].source == str(state / "ns" / "volumes" / "cvbench-abcdef0123-v1")
    assert by_target["t"].data == f"size={1 << 20}"
    assert "sys" in by_target
    kept = security.cap_numbers(rt.cap_names)
    assert cfg.caps == kept
    # CAP_MKNOD only where a device cgroup refuses to open what it could make
    assert (security.CAP_NAMES.index("CAP_MKNOD") in kept) == bool(rt.device_rules)
    assert security.CAP_NAMES.index("CAP_SYS_ADMIN") not in kept
    assert cfg.seccomp and len(cfg.seccomp) % 8 == 0  # struct sock_filter[]
    assert cfg.keyring and {r for r, _, _ in cfg.rlimits} == {3, 4, 6, 7, 8}
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # goes to the fork server as a pickle


def test_host_network_has_no_netns_and_no_sysfs(state: Path) -> None:
    cfg = NsRuntime()._config(spec(network="host"), "/img", None)
    assert not cfg.clone_flags & namespaces.CLONE_NEWNET
    assert "sys" not in {m.target for m in cfg.mounts}


def test_disk_upper(state: Path) -> None:
    cfg = NsRuntime()._config(spec(), "/img", state / "i")
    assert cfg.upper == str(state / "i" / "upper") and cfg.work == str(state / "i" / "work")


@pytest.mark.parametrize(("flavour", "fs", "layer"), [
    (None, "ext4", "disk"),  # plain ns: where Docker's overlay2 keeps it
    ("disk", "ext4", "disk"),  # the old name of the disk flavour: the same backend
    ("bare", "xfs", "disk"),
    ("tmpfs", "ext4", "tmpfs"),  # in RAM, whatever the state dir is on
    (None, "tmpfs", "tmpfs"),  # a state dir in RAM is no disk either
])
def test_traits_record_the_writable_layer(state: Path, monkeypatch: pytest.MonkeyPatch,
                                          flavour: str | None, fs: str, layer: str) -> None:
    from runtimes.ns import shared

    monkeypatch.setattr(shared, "filesystem", lambda path: fs)
    rt = NsRuntime(flavour)
    monkeypatch.setattr(rt, "protections", lambda: ())  # (no seccomp profile needed)
    settings = rt.traits().settings
    assert settings["writable_layer"] == layer
    assert rt.upper == ("tmpfs" if flavour == "tmpfs" else "disk")
    if rt.upper == "disk":
        assert settings["rootfs"] == f"overlay, upper on {fs} under {state / 'ns'} " \
                                     "(fsync honoured)"


def test_oci_records_its_writable_layer_on_disk(state: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from runtimes.ns import shared

    monkeypatch.setattr(shared, "filesystem", lambda path: "ext4")
    rt = OciRuntime("crun")
    monkeypatch.setattr(rt, "seccomp_profile", lambda: seccomp_stub())
    assert rt.traits().settings["writable_layer"] == "disk"


def seccomp_stub() -> object:
    class Stub:
        def describe(self) -> str:
            return "stub"
    return Stub()


def test_filesystem_of_a_path_and_of_one_not_made_yet() -> None:
    from runtimes.ns.shared import filesystem

    assert filesystem(Path("/proc/self")) == "proc"
    assert filesystem(Path("/proc/no/such/dir")) == "proc"  # its nearest parent's


def test_the_old_upper_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_NS_UPPER", "tmpfs")
    for make in (NsRuntime, OciRuntime):
        with pytest.raises(UsageError, match=r"CVBENCH_NS_UPPER.*ns:tmpfs"):
            make()


def test_ns_caps_are_dockers_minus_mknod_without_device_rules() -> None:
    assert set(DEFAULT_CAPS) - set(NO_MKNOD_CAPS) == {"CAP_MKNOD"}
    assert len(DEFAULT_CAPS) == 14
    assert caps(True) == DEFAULT_CAPS and caps(False) == NO_MKNOD_CAPS


def test_bare_has_no_filter_no_rlimits_no_device_rules(state: Path) -> None:
    rt = NsRuntime("bare")
    cfg = rt._config(spec(), "/img", None)
    assert cfg.seccomp == b"" and cfg.rlimits == () and rt.device_rules == ()
    assert "CAP_MKNOD" not in rt.cap_names
    assert "seccomp: none (ns:bare)" in rt.protections()


@pytest.mark.parametrize("bad", [
    dict(argv=()),
    dict(mounts=(Mount("bind", "/x", "/nonexistent/cvbench"),)),
    dict(mounts=(Mount("tmpfs", "relative"),)),
    dict(mounts=(Mount("tmpfs", "/a/../../b"),)),
    dict(mounts=(Mount("volume", "/v", "../escape"),)),
    dict(workdir="relative"),
])
def test_validate_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        validate.spec(spec(**bad))


def test_rootless_bridge_refused() -> None:
    with pytest.raises(UsageError, match="root"):
        validate.spec(spec(network="bridge"), rootless=True)


def test_userns_problem_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"/proc/sys/user/max_user_namespaces": "0"}
    monkeypatch.setattr(validate, "_read", lambda p: values.get(p))
    reason = validate.userns_problem()
    assert reason is not None and "max_user_namespaces" in reason[0]
    values = {"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}
    reason = validate.userns_problem()
    assert reason is not None and "AppArmor" in reason[0]


def test_link_names_fit_and_are_prefixed() -> None:
    name = network.link_name("cvbench-abcdef0123-12345")
    assert name.startswith("cvbench") and len(name) <= 15
    assert name != network.link_name("cvbench-abcdef0123-12346")


def test_leases_are_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_NS_SUBNET", "10.99.0.0/29")
    leases = network.Leases(tmp_path)
    got = [str(leases.acquire(f"cvbench-abcdef0123-{i}")) for i in range(5)]
    assert got == ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5", "10.99.0.6"]
    with pytest.raises(Exception, match="no free address"):
        leases.acquire("cvbench-abcdef0123-9")
    leases.release("10.99.0.4")
    assert str(leases.acquire("cvbench-abcdef0123-9")) == "10.99.0.4"
    assert leases.owners()["10.99.0.4"] == "cvbench-abcdef0123-9"


def test_oci_config_json(state: Path, tmp_path: Path) -> None:
    rt = OciRuntime("crun")
    s = spec(limits=Limits(cpus=0.5, memory=1 << 26, pids=64),
             mounts=(Mount("bind", "/ro", str(tmp_path), readonly=True),
                     Mount("tmpfs", "/t", size=4096)))
    c = rt._config(s)
    assert c["process"]["args"] == ["/bench/init", "true"]
    assert c["process"]["noNewPrivileges"] is True
    assert c["process"]["capabilities"]["bounding"] == list(rt.caps)
    assert rt.caps == NsRuntime().cap_names  # the same set as ns, CAP_MKNOD included
    devices = c["linux"]["resources"].pop("devices")
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "access": "m"} in devices  # "c *:* m"
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices
    assert len(devices) == 1 + len(DEVICE_RULES)
    assert c["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {r["type"] for r in c["process"]["rlimits"]} >= {"RLIMIT_NOFILE", "RLIMIT_CORE"}
    assert c["linux"]["resources"] == {"memory": {"limit": 1 << 26, "swap": 1 << 26},
                                       "cpu": {"quota": 50000, "period": 100000},
                                       "pids": {"limit": 64}}
    assert {"type": "network"} in c["linux"]["namespaces"]
    assert c["linux"]["cgroupsPath"] == "/cvbench.oci/cvbench-abcdef0123-1"
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert mounts["/ro"]["options"] == ["rbind", "rro"]
    assert {"size=4096", "nosuid", "nodev", "noexec"} <= set(mounts["/t"]["options"])
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    host = rt._config(spec(network="host"))
    assert {"type": "network"} not in host["linux"]["namespaces"]


def test_oci_flavours() -> None:
    with pytest.raises(UsageError):
        OciRuntime("kata")
    assert OciRuntime("runsc")._cli()[-3:] == ["--network=none", "--platform=ptrace",
                                              "--oci-seccomp"]


def test_empty_dirs(tmp_path: Path) -> None:
    from runtimes.ns.shared import empty_dirs as _empty_dirs

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("")
    assert _empty_dirs(tmp_path / "a", tmp_path / "b", tmp_path / "nope") == [tmp_path / "a"]
    (tmp_path / "b" / "f").unlink()
    assert _empty_dirs(tmp_path / "a", tmp_path / "b", tmp_path) == \
        [tmp_path / "a", tmp_path / "b", tmp_path]


def test_rlimits_per_scenario(state: Path, tmp_path: Path) -> None:
    from harness import scenario
    from runtimes import _engine
    from runtimes.base import RLIMIT_NAMES
    from runtimes.ns.config import RLIMITS

    assert tuple(RLIMITS) == RLIMIT_NAMES  # ns's numbers for every name a scenario may use
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[workload]\nargv = ["true"]\n'
                    '[limits]\nrlimits = { nofile = [1024, 4096], core = 0, stack = -1 }\n')
    lim = scenario.load(str(path)).limits
    assert lim.rlimits == (("nofile", 1024, 4096), ("core", 0, 0), ("stack", -1, -1))
    assert lim.recorded()["rlimits"] == {"nofile": [1024, 4096], "core": [0, 0],
                                         "stack": [-1, -1]}
    cfg = NsRuntime()._config(spec(limits=lim), "/img", None)
    got = {res: (soft, hard) for res, soft, hard in cfg.rlimits}
    assert got[RLIMITS["nofile"]] == (1024, 4096) and got[RLIMITS["core"]] == (0, 0)
    assert RLIMITS["memlock"] in got  # the others: ns's defaults
    c = OciRuntime("crun")._config(spec(limits=lim))
    oci = {r["type"]: (r["soft"], r["hard"]) for r in c["process"]["rlimits"]}
    assert oci["RLIMIT_NOFILE"] == (1024, 4096) and oci["RLIMIT_STACK"] == (2**64 - 1,) * 2
    hc = _engine.host_config(spec(limits=lim), {}, None)
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in hc["ulimits"]] == list(lim.rlimits)
    for bad, key in (("nofile = [10, 5]", "nofile"), ("nofle = 1", "nofle"),
                     ("nofile = [1, 2, 3]", "nofile"), ("nofile = \"x\"", "nofile")):
        path.write_text('name = "s"\n[workload]\nargv = ["true"]\n'
                        f'[limits]\nrlimits = {{ {bad} }}\n')
        with pytest.raises(UsageError, match=rf"limits\.rlimits\.{key}"):
            scenario.load(str(path))


@pytest.mark.parametrize(("rules", "problem", "rootless", "line"), [
    (DEVICE_RULES, None, False, "devices: eBPF allow-list (a BPF_PROG_TYPE_CGROUP_DEVICE "
     "program of 59 instructions attached to each instance's cgroup): deny a; allow c *:* m, "
     "b *:* m, c 1:3 rwm"),
    ((), "the kernel refused the eBPF device program: EPERM", False,
     "devices: no device cgroup (the kernel refused the eBPF device program: EPERM); "
     "CAP_MKNOD dropped instead; nodes null"),
    ((), None, True, "devices: no device cgroup (rootless: a device cgroup, v1 or eBPF, "
     "needs root); CAP_MKNOD dropped instead"),
])
def test_device_protection_on_cgroup_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        rules: tuple[str, ...], problem: str | None,
                                        rootless: bool, line: str) -> None:
    """The protection line says what the v2 manager applies (its program is loaded only
    for real, in tests/integration/test_cgroup2_devices.py): here a manager on a fake
    tree that has, or has not, got its program."""
    from runtimes.ns.cgroups.v2 import V2Manager

    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    m = V2Manager(tmp_path)
    m.device_rules, m.device_problem = rules, problem
    rt = NsRuntime()
    rt._cg, rt.rootless = m, rootless
    monkeypatch.setattr(m, "writable", lambda: True)
    monkeypatch.setattr(rt, "seccomp_profile", lambda: None)
    devices = [p for p in rt.protections() if p.startswith("devices: ")]
    assert len(devices) == 1 and devices[0].startswith(line), devices
    assert ("CAP_MKNOD" in rt.cap_names) == bool(rules)


def test_intocgroup_config_and_refusal(state: Path, tmp_path: Path) -> None:
    """ns:intocgroup: the config asks the fork server for clone3 into the cgroup, and an
    exec still joins through cgroup_join; on a host whose manager is not v2 (a fake v1
    hybrid tree here) create refuses, before anything is made."""
    from harness.core.errors import NotApplicable
    from runtimes.base import Prepared
    from runtimes.ns.cgroups.v1 import V1Manager

    root = tmp_path / "cg"
    for c in ("memory", "cpu", "pids"):
        (root / c).mkdir(parents=True)
    rt = NsRuntime("intocgroup")
    rt._cg, rt.rootless = V1Manager(root, "hybrid"), False
    cfg = rt._config(spec(), "/img", None)
    assert cfg.into_cgroup and cfg.cgroup_join and not NsRuntime()._config(
        spec(), "/img", None).into_cgroup
    with pytest.raises(NotApplicable, match=r"^ns:intocgroup: needs cgroup v2 \(this host: "
                                            r"v1 hybrid\)$"):
        rt.create(spec(), Prepared(image=None, backend=rt.name, ref="/img"))  # type: ignore[arg-type]
    assert not (state / "ns" / spec().name).exists()
