"""The ns runtime for real: lifecycle, honoured settings, limits, networks, mounts, stop,
stats, leftovers. Runs as root (rootless is tested as `nobody` at the end)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core.errors import InstanceError
from runtimes.base import Exit, Instance, Limits, Mount, own
from runtimes.ns import network
from runtimes.ns.runtime import NsInstance
from tests.conftest import require
from tests.integration._nsutil import Env, close_env, gc_run, is_alive, mounts_of, open_env

pytestmark = pytest.mark.root
BENCH = [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="module", params=["ns", "ns:pool"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """ns, and ns:pool whose every instance is a slot of its pool (Env.create): what a
    cold instance honours, a pooled one honours too."""
    require("root", None if os.geteuid() == 0 else "ns instances are run as root here")
    e, lock = open_env(request.param)
    yield e
    assert close_env(e, lock) == []
    assert mounts_of(e.run_id) == []


def test_exit_status_and_streams_pass_through(env: Env) -> None:
    ex = env.run("echo out; echo err >&2; exit 7")
    assert (ex.code, ex.stdout, ex.stderr, ex.oom_killed) == (7, b"out\n", b"err\n", False)


def test_bench_exec_passes_everything_through() -> None:
    res = subprocess.run([*BENCH, "exec", "ns", "--network", "none", "--", "sh", "-c",
                          "echo out; echo err >&2; exit 3"], capture_output=True, timeout=120,
                         check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"err\n")


def test_like_docker_run(tmp_path: Path) -> None:
    """`bench exec ns` and `docker run --rm --network none` agree on ordinary commands."""
    require("docker", None if os.path.exists("/run/docker.sock") else "no /run/docker.sock")
    from harness.core import image as image_mod

    img = image_mod.build(image_mod.Recipe())
    tag = f"cvbench/nstest:{img.digest[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run(["docker", "import", str(img.tar), tag], capture_output=True, check=True)
    try:
        for cmd in (["echo", "hi"], ["sh", "-c", "echo a; echo b >&2; exit 4"], ["false"],
                    ["cat", "/etc/passwd"], ["uname", "-s"], ["ls", "/nonexistent"], ["id"]):
            ours = subprocess.run([*BENCH, "exec", "ns", "--", *cmd], capture_output=True,
                                  timeout=120, check=False)
            theirs = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, *cmd],
                                    capture_output=True, timeout=120, check=False)
            assert (ours.returncode, ours.stdout, ours.stderr) == \
                (theirs.returncode, theirs.stdout, theirs.stderr), cmd
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)


def test_env_workdir_hostname(env: Env) -> None:
    ex = env.run("echo $FOO; pwd; hostname; echo $HOSTNAME", env={"FOO": "bar"},
                 workdir="/made/here", hostname="box1")
    assert ex.stdout.decode().split() == ["bar", "/made/here", "box1", "box1"]


def test_uid_and_gid_are_honoured(env: Env) -> None:
    # (the spec's user: ns:pool hands it over to a slot made for root)
    ex = env.run("id -u; id -g; grep -E 'CapEff|NoNewPrivs' /proc/self/status",
                 user="65534:65534")
    out = ex.stdout.decode().split()
    assert out[:2] == ["65534", "65534"]
    assert out[3] == "0000000000000000" and out[5] == "1"  # no capabilities as non-root


def test_oom_kill_is_reported(env: Env) -> None:
    ex = env.run("head -c 100m /dev/zero | tail > /dev/null", limits=Limits(memory=32 << 20))
    assert ex.oom_killed and not ex.ok


def test_bench_exec_reports_oom() -> None:
    res = subprocess.run([*BENCH, "exec", "ns", "--memory", "32M", "--", "sh", "-c",
                          "head -c 100m /dev/zero | tail"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 137 and "OOM-killed" in res.stderr


def test_cpu_and_pids_limits_are_written(env: Env) -> None:
    inst = env.started(("sleep", "30"), limits=Limits(cpus=0.25, pids=20))
    try:
        cg = env.rt.cg
        name = own(inst, NsInstance).key  # (a pooled one's: its slot's)
        if cg.mode == "v2":
            assert (cg.path(name) / "cpu.max").read_text().split() == ["25000", "100000"]
        else:
            root = cg.roots["cpu"] / "cvbench" / name
            assert (root / "cpu.cfs_quota_us").read_text().strip() == "25000"
            assert (cg.roots["pids"] / "cvbench" / name / "pids.max").read_text().strip() == "20"
        assert own(inst, NsInstance).pid in cg.pids(name)
    finally:
        env.rt.stop(inst, grace=0)
        env.rt.remove(inst)


def test_stop_terms_then_kills(env: Env) -> None:
    # PID 1 with a handler gets SIGTERM and exits by itself...
    from runtimes import _proc

    inst = env.started(("sh", "-c", "trap 'exit 42' TERM; echo trapped; "
                                    "while :; do sleep 0.1; done"))
    _proc.wait_line(own(inst, NsInstance).streams()[0], b"trapped", time.monotonic() + 10)
    t = time.monotonic()
    env.rt.stop(inst, grace=5)
    assert time.monotonic() - t < 4
    env.rt.remove(inst)
    # ...one without a handler ignores it (pid-namespace init), so SIGKILL follows.
    inst = env.started(("sleep", "60"))
    t = time.monotonic()
    env.rt.stop(inst, grace=0.5)
    assert 0.4 < time.monotonic() - t < 3
    assert not is_alive(own(inst, NsInstance).pid)
    env.rt.remove(inst)


def test_idle_instances_and_stats(env: Env) -> None:
    insts = [env.started(("sleep", "60"), limits=Limits(memory=64 << 20)) for _ in range(3)]
    try:
        for inst in insts:
            st = env.rt.stats(inst)
            assert st.pids and st.pss > 0 and st.uss > 0 and (st.cgroup or 0) > 0
            assert env.rt.disk_usage(inst) is not None
    finally:
        for inst in insts:
            env.rt.stop(inst, grace=0)
            env.rt.remove(inst)


def test_network_host_sees_host_interfaces(env: Env) -> None:
    ex = env.run("ls /sys/class/net 2>/dev/null; cat /proc/net/dev | wc -l", network="host")
    host = len(Path("/proc/net/dev").read_text().splitlines())
    assert int(ex.stdout.split()[-1]) == host


def test_network_bridge(env: Env) -> None:
    require("ns", None if shutil.which("ip") and shutil.which("nsenter")
            else "iproute2/util-linux missing")
    gw = str(next(network.subnet().hosts()))
    ex = env.run(f"ip -4 addr show eth0; ping -c 1 -W 2 {gw}", network="bridge")
    assert ex.code == 0, ex
    assert b"inet 10." in ex.stdout or b"inet " in ex.stdout
    assert not [a for a in network.links().values() if a.startswith(f"cvbench-{env.run_id}")]
    if not network.bridge_in_use():  # (the bridge is made on demand; gc removes it too)
        network.remove_bridge()
    assert not Path(f"/sys/class/net/{network.BRIDGE}").exists() or network.bridge_in_use()


def _answers(addr: str) -> bool:
    """Whether the instance's kernel answers at `addr` within 2 s: a connect to a port
    nothing listens on is refused (an RST: reached) or times out (the packets went
    elsewhere)."""
    import socket

    try:
        socket.create_connection((addr, 9), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return True


def test_an_address_leased_again_is_reached_at_once(env: Env) -> None:
    """An instance at an address just freed by another (a rolling update's): its MAC is
    made from the address, so the host's neighbour entry, still REACHABLE from the last
    holder, names the right MAC (with random MACs it named the last holder's: this
    test failed so). Checked with the kernel's view: the instance's kernel answering a
    connect, and the host's neighbour table."""
    require("ns", None if shutil.which("ip") and shutil.which("nsenter")
            else "iproute2/util-linux missing")
    # Another instance keeps the bridge up, as the other replicas do: an empty bridge
    # loses its carrier, and the kernel flushes its neighbour entries with it.
    keeper = env.started(("sleep", "60"), network="bridge")
    first = env.started(("sleep", "60"), network="bridge")
    addr = env.rt.address(first)
    assert addr is not None
    try:
        assert _answers(addr)
    finally:
        env.rt.stop(first, grace=0)
        env.rt.remove(first)
    second = env.started(("sleep", "60"), network="bridge")
    try:
        assert env.rt.address(second) == addr  # the lease is given again
        assert _answers(addr)
        neigh = subprocess.run(["ip", "neigh", "show", addr], capture_output=True,
                               text=True, check=True).stdout
        assert network.mac_of(ipaddress.IPv4Address(addr)) in neigh, neigh
    finally:
        for inst in (second, keeper):
            env.rt.stop(inst, grace=0)
            env.rt.remove(inst)


def test_network_bridge_with_nat(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """CVBENCH_NS_NAT=1: the subnet is masqueraded; the instance reaches a host service."""
    require("ns", None if shutil.which("iptables") else "iptables missing")
    import socket

    from tests.integration._nsutil import host_ip

    monkeypatch.setenv("CVBENCH_NS_NAT", "1")
    import threading

    srv = socket.socket()
    srv.bind((host_ip(), 0))
    srv.listen()
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        got.append(conn.recv(16))
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        ex = env.run(f"echo hi | nc -w 2 {host_ip()} {srv.getsockname()[1]}; echo done",
                     network="bridge", timeout=20)
        t.join(5)
        assert got == [b"hi\n"], ex
        rules = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"],
                               capture_output=True, text=True, check=True).stdout
        assert f"-s {network.subnet()}" in rules and "MASQUERADE" in rules
    finally:
        srv.close()
        if not network.bridge_in_use():
            network.remove_bridge()
    rules = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"],
                           capture_output=True, text=True, check=True).stdout
    assert f"-s {network.subnet()}" not in rules


def test_mounts(env: Env, tmp_path: Path) -> None:
    (tmp_path / "in").write_text("host data\n")
    ex = env.run("cat /b/in; echo new > /b/out; df -k /t | tail -1; echo v > /v/keep",
                 mounts=(Mount("bind", "/b", str(tmp_path)), Mount("tmpfs", "/t", size=1 << 20),
                         Mount("volume", "/v", "data")))
    assert ex.code == 0, ex
    lines = ex.stdout.decode().splitlines()
    assert lines[0] == "host data" and (tmp_path / "out").read_text() == "new\n"
    assert lines[1].split()[1] == "1024"  # a 1 MiB tmpfs
    # A volume outlives the instance: the next one sees what the first wrote.
    ex = env.run("cat /v/keep", mounts=(Mount("volume", "/v", "data"),))
    assert ex.stdout == b"v\n"


def _root_overlay(mountinfo: str) -> dict[str, str]:
    """The super options of the overlay mounted on / in a /proc/PID/mountinfo."""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, _source, options = rest.split(" ", 2)
        if fields.split()[4] == "/" and fstype == "overlay":
            return dict(o.partition("=")[::2] for o in options.split(","))
    raise AssertionError(f"no overlay on /: {mountinfo}")


def _volatile(options: dict[str, str]) -> bool:
    """Whether an overlay skips syncs: "volatile" (newer kernels show "fsync=volatile")."""
    return "volatile" in options or options.get("fsync") == "volatile"


def test_default_writable_layer_is_on_disk(env: Env) -> None:
    """Plain ns writes where Docker's overlay2 would: a file written inside lands in the
    instance's upper dir under the state dir on the host, the overlay on / has that dir as
    its upper (not a tmpfs) and is not `volatile`, and remove takes the dir away."""
    from runtimes.ns.shared import MEMORY_FS, filesystem

    assert env.rt.traits().settings["writable_layer"] == "disk"
    inst = env.started(("sleep", "30"))
    try:
        idir = own(inst, NsInstance).dir
        assert idir == env.rt.root() / own(inst, NsInstance).key
        ex = env.rt.exec(inst, ["sh", "-c", "head -c 100000 /dev/zero > /big; "
                                            "echo written > /f; cat /proc/1/mountinfo"])
        assert ex.code == 0, ex.stdout
        assert (idir / "upper" / "f").read_text() == "written\n"  # on the host, while it runs
        assert filesystem(idir / "upper") not in MEMORY_FS
        root = _root_overlay(ex.stdout.decode())
        assert root["upperdir"] == str(idir / "upper") and not _volatile(root)
        assert (env.rt.disk_usage(inst) or 0) >= 100000
    finally:
        env.rt.stop(inst, grace=0)
        env.rt.remove(inst)
    assert not idir.exists()


def test_tmpfs_flavour_keeps_the_writable_layer_in_ram() -> None:
    """ns:tmpfs: nothing on the host's disk; the upper is in a tmpfs only the instance's
    mount namespace sees, mounted `volatile`."""
    e, lock = open_env("ns:tmpfs")
    try:
        assert e.rt.traits().settings["writable_layer"] == "tmpfs"
        inst = e.started(("sleep", "30"))
        try:
            assert own(inst, NsInstance).dir is None
            assert not (e.rt.root() / inst.spec.name).exists()
            ex = e.rt.exec(inst, ["sh", "-c", "echo written > /f; cat /proc/1/mountinfo"])
            assert ex.code == 0, ex.stdout
            root = _root_overlay(ex.stdout.decode())
            # the tmpfs was mounted on the scratch dir in the instance's namespace only
            assert root["upperdir"] == f"{e.rt.root()}/scratch/upper" and _volatile(root)
            assert not any((e.rt.root() / "scratch").iterdir())  # nothing on the host
        finally:
            e.rt.stop(inst, grace=0)
            e.rt.remove(inst)
    finally:
        assert close_env(e, lock) == []


def test_setup_failure_is_reported(env: Env) -> None:
    from harness.core.errors import InstanceError

    with pytest.raises(InstanceError, match="setting up"):
        env.run("true", workdir="/etc/passwd/x")  # a file in the way of the workdir


def test_gc_after_sigkilled_runner(tmp_path: Path) -> None:
    """A runner killed with SIGKILL leaves a run lock nobody holds; gc cleans up."""
    script = tmp_path / "runner.py"
    script.write_text(
        "import sys\n"
        "from harness.core import image\n"
        "from harness.bookkeeping import RunLock\n"
        "from runtimes.base import InstanceSpec, Limits, Mount, new_run_id\n"
        "from runtimes.ns.runtime import NsRuntime\n"
        "rt = NsRuntime(); rid = new_run_id(); RunLock(rid, 'test')\n"
        "p = rt.prepare(image.build(image.Recipe()))\n"
        "for i in range(2):\n"
        "    inst = rt.create(InstanceSpec(run_id=rid, name=f'cvbench-{rid}-{i}',\n"
        "        argv=('sleep', '300'), limits=Limits(memory=64 << 20),\n"
        "        mounts=(Mount('volume', '/v', 'x'),)), p)\n"
        "    rt.start(inst)\n"
        "print(rid, flush=True)\n"
        "sys.stdin.read()\n")
    with subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        rid = proc.stdout.readline().strip()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from harness.bookkeeping import live_runs
    from runtimes.ns.runtime import NsRuntime

    rt = NsRuntime()
    assert rid not in live_runs()
    time.sleep(0.2)  # PR_SET_PDEATHSIG has killed the instances; their cgroups remain
    live = live_runs()
    kinds = {x.kind for x in rt.leftovers(live) if x.run_id == rid}
    assert {"cgroup", "dir"} <= kinds
    assert gc_run(rt, rid) == []
    assert mounts_of(rid) == []
    from harness.bookkeeping import runs_dir

    (runs_dir() / f"{rid}.lock").unlink(missing_ok=True)


def test_bench_run_sigkilled_then_gc() -> None:
    """`bench run` killed with SIGKILL mid-run: gc of its run leaves nothing behind."""
    from runtimes import registry

    backends = [b for b in ("ns", "oci:crun") if registry.get(b).availability().ok]
    with subprocess.Popen([*BENCH, "run", "runtime-overhead", "--backends", ",".join(backends),
                           "--out", "/tmp/cvbench-killed-run", "--max-samples", "1000",
                           "--min-samples", "1000"], stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True) as proc:
        assert proc.stderr is not None
        rid = ""
        for line in proc.stderr:
            if line.startswith("run "):
                rid = line.split()[1].rstrip(":")
                break
        time.sleep(3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    shutil.rmtree("/tmp/cvbench-killed-run", ignore_errors=True)
    assert rid
    time.sleep(0.5)  # instances die with the runner (PR_SET_PDEATHSIG), crun's exit
    res = subprocess.run([*BENCH, "gc", "--run", rid], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    for b in backends:
        assert gc_run(registry.get(b), rid) == [], b
    assert mounts_of(rid) == []


def test_rootless_as_nobody() -> None:
    import tempfile

    from runtimes.ns import validate

    reason = validate.userns_problem()
    require("rootless", None if reason is None else reason[0])
    setpriv = shutil.which("setpriv")
    require("rootless", None if setpriv else "util-linux setpriv missing")
    assert setpriv is not None
    nobody = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    if not _can_run(nobody):
        # The interpreter (or the checkout) sits below a directory closed to others, e.g.
        # pyenv under /root (mode 0700): run nobody in a private mount namespace where
        # that directory is a world-readable tmpfs with only the needed entries bound back.
        nobody = [*_opened_parents(), *nobody]
    require("rootless", None if _can_run(nobody) else f"user nobody cannot run "
            f"{sys.executable} with this checkout (a parent directory is not "
            "world-readable, and opening it in a mount namespace did not help)")
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        _rootless(nobody, Path(tmp))


def _can_run(nobody: list[str]) -> bool:
    return subprocess.run([*nobody, sys.executable, "-c", "import harness.cli, subprocess, "
                           "sys; subprocess.run([sys.executable, '-c', ''], check=True)"],
                          capture_output=True, check=False, timeout=60,
                          cwd=Path(__file__).resolve().parents[2]).returncode == 0


def _opened_parents() -> list[str]:
    """A command prefix: a private mount namespace in which every directory closed to
    others above the interpreter, its prefixes and the checkout is replaced by a
    world-readable tmpfs holding only the entries on those paths (bound back)."""
    needed = {Path(os.path.realpath(sys.executable)), Path(sys.base_prefix).resolve(),
              Path(sys.prefix), Path(__file__).resolve().parents[2]}
    closed: dict[Path, set[str]] = {}
    for path in needed:
        for parent in reversed(path.parents):
            if parent != path and not os.stat(parent).st_mode & 0o001:
                child = path.relative_to(parent).parts[0]
                closed.setdefault(parent, set()).add(child)
                break
    lines = ["set -e"]
    for i, (d, children) in enumerate(sorted(closed.items())):
        stash = f"/run/cvbench-open-{os.getpid()}-{i}"
        lines += [f"mkdir -p {stash}", f"mount --bind {d} {stash}",
                  f"mount -t tmpfs -o mode=755,size=1m tmpfs {d}"]
        for c in sorted(children):
            kind = "mkdir" if (d / c).is_dir() else "touch"
            lines += [f"{kind} {d / c}", f"mount --bind {stash}/{c} {d / c}"]
        lines += [f"umount -l {stash}", f"rmdir {stash}"]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            "\n".join([*lines, 'exec "$@"']), "sh"]


def _rootless(nobody: list[str], tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    env_vars = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
                "CVBENCH_CACHE": str(tmp_path / "cache"), "CVBENCH_STATE": str(tmp_path / "s")}
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run([*nobody, sys.executable, "-m", "harness.cli", "exec", "ns", "--",
                          "sh", "-c", "id -u; hostname; ls /proc | grep -c '^[0-9]'"],
                         capture_output=True, text=True, timeout=120, check=False, env=env_vars,
                         cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:2] == ["0", "cvbench"]
    # a whole run, with limits asked: the result says whether they could be enforced
    scenario = tmp_path / "rootless.toml"
    scenario.write_text('name = "rootless"\nstudy = "startup"\nbackends = ["ns"]\n'
                        '[workload]\nimage = { recipe = "base" }\nargv = ["true"]\n'
                        '[limits]\ncpus = 0.5\nmemory = "64M"\n'
                        '[sampling]\nwarmups = 1\nmin_samples = 3\nmax_samples = 3\n')
    scenario.chmod(0o644)
    res = subprocess.run([*nobody, sys.executable, "-m", "harness.cli", "run", str(scenario),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300, check=False, env=env_vars, cwd=repo)
    assert res.returncode == 0, res.stderr
    result = next(f for f in (tmp_path / "out").glob("*.json")
                  if not f.name.endswith(".pyperf.json"))
    meta = json.loads(result.read_text())["backends"]["ns"]
    assert meta["rootless"] is True
    assert meta["limits_applied"] or meta["not_applied"] == ["limits"]
    assert not list((tmp_path / "s" / "ns").glob("cvbench-*"))  # nothing left behind
    # exec into a running instance (a healthcheck's way in): in its user namespace, with
    # its protections (nsenter, as it was, could not even join its namespaces)
    script = tmp_path / "exec.py"
    script.write_text(_ROOTLESS_EXEC)
    script.chmod(0o644)
    res = subprocess.run([*nobody, sys.executable, str(script)], capture_output=True,
                         text=True, timeout=300, check=False, env=env_vars, cwd=repo)
    assert res.returncode == 0, res.stderr
    out = res.stdout.split()
    assert out[0] == out[1] and out[2:] == ["NoNewPrivs:", "1", "Seccomp:", "2", "0"], out


_ROOTLESS_EXEC = """\
from harness.core import image
from harness.bookkeeping import RunLock
from runtimes.base import InstanceSpec, new_run_id
from runtimes.ns.runtime import NsRuntime

rt, rid = NsRuntime(), new_run_id()
lock = RunLock(rid, "test")
prepared = rt.prepare(image.build(image.Recipe()))
inst = rt.create(InstanceSpec(run_id=rid, name=f"cvbench-{rid}-1", argv=("sleep", "100")),
                 prepared)
try:
    rt.start(inst)
    rt.wait_ready(inst, 30)
    ex = rt.exec(inst, ("sh", "-c", "readlink /proc/1/ns/user; readlink /proc/self/ns/user; "
                                    "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; id -u"))
    print(ex.stdout.decode())
finally:
    rt.stop(inst, grace=0)
    rt.remove(inst)
    lock.release()
"""


def test_user_namespace_path_as_root(env: Env) -> None:
    """The rootless code path (user namespace, bound device nodes, no cgroup), driven
    as root: the invoking user is mapped to root inside."""
    rt = type(env.rt)()
    rt.rootless = True
    e2 = Env(rt=rt, prepared=env.prepared, run_id=env.run_id, counter=env.counter)
    ex = e2.run("cat /proc/self/uid_map; id -u; echo x > /dev/null && ls /dev | wc -l; "
                "readlink /proc/self/ns/user")
    assert ex.code == 0, ex
    out = ex.stdout.decode().split()
    assert out[:4] == ["0", "0", "1", "0"]
    assert out[-1] != os.readlink("/proc/self/ns/user")


# --- exec into a running instance: exactly the protections of its first process ----------

# PID 1's own view of itself, read inside the instance, is the independent yardstick.
_SAME_AS_PID1 = ("for p in 1 self; do grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|"
                 "Seccomp|Seccomp_filters):' /proc/$p/status; cat /proc/$p/limits "
                 "/proc/$p/cgroup; echo ==; done")


def _as_pid1(ex: Exit) -> tuple[list[str], list[str]]:
    """(PID 1's lines, the exec'd process's lines) of _SAME_AS_PID1's output."""
    assert ex.code == 0, ex
    first, mine, _ = ex.stdout.decode().split("==\n")
    return first.splitlines(), mine.splitlines()


def test_exec_has_exactly_the_instance_protections(env: Env) -> None:
    inst = env.started(("sleep", "1000"), limits=Limits(memory=64 << 20, pids=50))
    try:
        first, mine = _as_pid1(env.rt.exec(inst, ("sh", "-c", _SAME_AS_PID1)))
        assert mine == first
        assert {"Seccomp:\t2", "NoNewPrivs:\t1", "Seccomp_filters:\t1"} <= set(mine), mine
        # a non-root user: the same bounding set and filter, no capability at all
        ex = env.rt.exec(inst, ("sh", "-c", "id -u; " + _SAME_AS_PID1), user="1000:1000")
        uid, _, rest = ex.stdout.decode().partition("\n")
        first, mine = _as_pid1(dataclasses.replace(ex, stdout=rest.encode()))
        assert uid == "1000"
        fields = dict(line.split(":\t") for line in mine if ":\t" in line)
        assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000", mine
        assert [x for x in mine if not x.startswith(("CapEff", "CapPrm", "CapInh"))] == \
            [x for x in first if not x.startswith(("CapEff", "CapPrm", "CapInh"))]
    finally:
        env.rt.stop(inst, grace=0)
        env.rt.remove(inst)


def test_exec_workdir_is_resolved_inside_the_root(env: Env, tmp_path: Path) -> None:
    inst = env.started(("sleep", "1000"))
    try:
        # at the path of a host directory, an absolute symlink made inside: it must lead
        # to the instance's /etc, not to the host's directory
        ex = env.rt.exec(inst, ("sh", "-c", f"mkdir -p {tmp_path.parent} /w && "
                                            f"ln -s /etc {tmp_path}"))
        assert ex.code == 0, ex
        (tmp_path / "host-only").touch()  # (nsenter -w opened the path on the host)
        ex = env.rt.exec(inst, ("sh", "-c", "pwd -P; ls"), workdir=str(tmp_path))
        assert b"host-only" not in ex.stdout, ex
        assert ex.stdout.decode().split()[0] == "/etc" and b"passwd" in ex.stdout, ex
        assert env.rt.exec(inst, ("pwd",), workdir="/w").stdout == b"/w\n"
        with pytest.raises(InstanceError, match="nonexistent"):
            env.rt.exec(inst, ("true",), workdir="/nonexistent")
    finally:
        env.rt.stop(inst, grace=0)
        env.rt.remove(inst)


def _left(env: Env, inst: Instance) -> list[int]:
    """The instance's live processes but its first (zombies left to PID 1 do not count),
    once those just killed are gone (a few seconds at most)."""
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in env.rt.stats(inst).pids if p != inst.pid and is_alive(p)
                and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_timed_out_exec_leaves_no_process(env: Env) -> None:
    inst = env.started(("sleep", "1000"))
    try:
        # Every way out of the exec's process tree: a new session, a double fork that
        # leaves it to PID 1, and the exec's own process. Their output goes to /dev/null,
        # so nothing of them holds the exec's output pipe (which would hide a leftover
        # behind a wait for its EOF).
        script = ("setsid sleep 1000 >/dev/null 2>&1 & (sleep 1000 >/dev/null 2>&1 &); "
                  "exec sleep 1000 >/dev/null 2>&1")
        with pytest.raises(InstanceError, match="still running"):
            env.rt.exec(inst, ("sh", "-c", script), timeout=1)
        assert _left(env, inst) == []
        assert env.rt.exec(inst, ("echo", "alive")).stdout == b"alive\n"  # PID 1 lives on
    finally:
        env.rt.stop(inst, grace=0)
        env.rt.remove(inst)


def test_exec_joins_the_user_namespace(env: Env) -> None:
    """The rootless code path driven as root (see above): exec joins the instance's user
    namespace too, with the same protections as its first process."""
    rt = type(env.rt)()
    rt.rootless = True
    e2 = Env(rt=rt, prepared=env.prepared, run_id=env.run_id, counter=env.counter)
    inst = e2.started(("sleep", "1000"))
    try:
        ex = rt.exec(inst, ("sh", "-c", "readlink /proc/1/ns/user; readlink /proc/self/ns/user; "
                                        "cat /proc/self/uid_map; " + _SAME_AS_PID1))
        lines = ex.stdout.decode().split("\n", 3)
        assert lines[0] == lines[1], ex
        assert lines[2].split() == ["0", str(os.geteuid()), "1"]
        first, mine = _as_pid1(dataclasses.replace(ex, stdout=lines[3].encode()))
        assert mine == first
    finally:
        rt.stop(inst, grace=0)
        rt.remove(inst)
