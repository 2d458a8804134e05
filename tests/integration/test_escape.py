"""Escape attempts from inside `ns` instances, run as root; each must be blocked.

The workload runs as root inside the instance (as a Docker container does by default),
with the capabilities ns keeps. escape_probe.c makes the system calls busybox cannot.
The escapes of issue 17 also run under `docker`, the reference: ns must block at least
what Docker blocks, probe by probe, and a sweep of every system call Docker's seccomp
profile denies or conditions must give the same errno under both.

Every probe runs twice: as an instance's first process, and exec'd into a running
instance (a compose healthcheck's way in), which must get exactly the same protections;
and both again on `ns:pool`, each instance a slot of its pool handed the probe.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.base import Limits, Mount
from runtimes.ns import seccomp
from tests.conftest import require
from tests.integration._nsutil import Env, close_env, host_ip, is_alive, open_env, probe_binary

pytestmark = pytest.mark.root
PROBE = "/usr/bin/escape_probe"


@pytest.fixture(scope="module")
def probe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    require("root", None if os.geteuid() == 0 else "the escape tests run instances as root")
    return probe_binary(tmp_path_factory.mktemp("probe"))


def _env(backend: str, probe_path: str, via_exec: bool = False) -> Iterator[Env]:
    e, lock = open_env(backend, (probe_path,))
    e.via_exec = via_exec
    yield e
    assert close_env(e, lock) == []


@pytest.fixture(scope="module", params=[("ns", "first process"), ("ns", "exec"),
                                        ("ns:pool", "first process"), ("ns:pool", "exec")],
                ids=lambda p: " ".join(p))
def env(probe_path: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    """ns, and ns:pool whose every instance is a slot of its pool (Env.create): a
    pooled instance must get exactly a cold one's protections."""
    backend, way = request.param
    yield from _env(backend, probe_path, via_exec=way == "exec")


@pytest.fixture(scope="module")
def docker_env(probe_path: str) -> Iterator[Env]:
    """The reference: the same image and probes in a container of the real dockerd."""
    yield from _env("docker", probe_path)


@pytest.fixture(scope="module")
def host_sleep() -> Iterator[int]:
    """A host process the instances try to see, signal and trace."""
    p = subprocess.Popen(["sleep", "600"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("host") / "host-secret"
    path.write_text("host secret\n")
    return path


def probe(env: Env, *args: str, **kw: object) -> str:
    ex = env.run_argv((PROBE, *args), **kw)  # type: ignore[arg-type]
    assert ex.code == 0, ex
    return ex.stdout.decode().strip()


def blocked(env: Env, script: str, **kw: object) -> str:
    """Run `script`; it must fail (non-zero), and the output is returned for checks."""
    ex = env.run(script, **kw)  # type: ignore[arg-type]
    assert ex.code != 0, f"not blocked: {script!r}: {ex}"
    return (ex.stdout + ex.stderr).decode()


# --- processes ---------------------------------------------------------------------------

def test_host_processes_are_invisible(env: Env, host_sleep: int) -> None:
    ex = env.run(f"ls /proc | grep -c '^[0-9]'; test -e /proc/{host_sleep} && echo SEEN")
    assert "SEEN" not in ex.stdout.decode()
    assert int(ex.stdout.split()[0]) <= 3 + env.via_exec  # sh, ls, grep (+ the sleeping PID 1)


def test_cannot_signal_a_host_process(env: Env, host_sleep: int) -> None:
    blocked(env, f"kill -9 {host_sleep}")
    assert is_alive(host_sleep)


def test_kill_all_spares_the_host(env: Env, host_sleep: int) -> None:
    env.run("kill -9 -1; true")
    assert is_alive(host_sleep) and is_alive(os.getpid())


def test_cannot_ptrace_a_host_process(env: Env, host_sleep: int) -> None:
    assert probe(env, "ptrace", str(host_sleep)) in ("ERR ESRCH", "ERR EPERM")


def test_namespaces_are_all_new(env: Env) -> None:
    kinds = ("pid", "mnt", "net", "uts", "ipc", "cgroup")
    ex = env.run("; ".join(f"readlink /proc/self/ns/{k}" for k in kinds))
    inside = ex.stdout.decode().split()
    assert len(inside) == len(kinds)
    for kind, link in zip(kinds, inside, strict=True):
        assert link != os.readlink(f"/proc/self/ns/{kind}"), kind


def test_setns_refused(env: Env) -> None:
    assert probe(env, "setns", "/proc/1/ns/mnt") == "ERR EPERM"


def test_no_process_left_after_remove(env: Env) -> None:
    inst = env.started(("sh", "-c", "setsid sleep 300 & (sleep 300 &); sleep 300 & "
                                    "sleep 300"))
    import time

    deadline = time.monotonic() + 5
    while len(pids := env.rt.stats(inst).pids) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) >= 4, pids
    env.rt.stop(inst, grace=0.2)
    env.rt.remove(inst)
    time.sleep(0.1)
    assert [p for p in pids if is_alive(p) and Path(f"/proc/{p}/stat").read_text()
            .split()[2] != "Z"] == []


def test_fork_bomb_is_bounded_by_pids(env: Env) -> None:
    import time

    # busybox sh gives up at the first failed fork: bomb from a subshell, keep PID 1.
    inst = env.started(("sh", "-c", "(for i in $(seq 200); do sleep 30 & done) 2>/dev/null; "
                                    "exec sleep 30"), limits=Limits(pids=32))
    try:
        time.sleep(1.0)
        assert 20 <= len(env.rt.stats(inst).pids) <= 32
    finally:
        env.rt.stop(inst, grace=0)
        env.rt.remove(inst)


def test_memory_limit_oom_kills(env: Env) -> None:
    ex = env.run("head -c 100m /dev/zero | tail > /dev/null", limits=Limits(memory=32 << 20))
    if env.via_exec:  # in the instance's cgroup: its OOM killer ends tail (exec has no flag)
        assert ex.code == 137, ex
    else:
        assert ex.oom_killed and ex.code != 0


# --- files -------------------------------------------------------------------------------

def test_host_files_are_unreachable(env: Env, marker: Path) -> None:
    blocked(env, f"cat {marker}")
    blocked(env, f"cat /proc/1/root{marker}")


def test_chroot_escape(env: Env, marker: Path) -> None:
    assert probe(env, "chroot-escape", str(marker)) == "ERR ENOENT"


def test_open_by_handle_refused(env: Env) -> None:
    assert probe(env, "handle") == "ERR EPERM"


def test_writes_stay_in_the_instance(env: Env) -> None:
    lower = Path(env.prepared.ref)
    before = (lower / "etc/passwd").read_bytes()
    ex = env.run("echo pwned > /etc/passwd && echo x > /bin/pwned && cat /etc/passwd")
    assert ex.stdout == b"pwned\n"
    assert (lower / "etc/passwd").read_bytes() == before
    assert not (lower / "bin/pwned").exists()
    assert env.run("cat /etc/passwd").stdout == before  # a fresh upper layer each time


def test_readonly_bind_mount_holds(env: Env, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("orig")
    m = (Mount("bind", "/ro", str(tmp_path), readonly=True),)
    out = blocked(env, "echo x > /ro/f", mounts=m)
    assert "Read-only" in out
    blocked(env, "mount -o remount,rw /ro", mounts=m)
    blocked(env, "rm /ro/f", mounts=m)
    assert (tmp_path / "f").read_text() == "orig"


# --- /proc, /sys, /dev -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/proc/sys/kernel/hostname", "/proc/sys/kernel/core_pattern",
                                  "/proc/sysrq-trigger", "/proc/sys/vm/drop_caches"])
def test_proc_is_read_only(env: Env, path: str) -> None:
    blocked(env, f"echo 1 > {path}")


@pytest.mark.parametrize("path", ["/sys/kernel/uevent_helper", "/sys/kernel/mm/ksm/run",
                                  "/sys/class/net/lo/mtu"])
def test_sys_is_read_only(env: Env, path: str) -> None:
    blocked(env, f"echo 1 > {path}")


def test_masked_paths_are_empty(env: Env) -> None:
    ex = env.run("for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do "
                 "[ -e $p ] && wc -c < $p; done; "
                 "ls -A /proc/acpi /sys/firmware | grep -v ':$' | grep -c .")
    assert set(ex.stdout.split()) <= {b"0"}


def test_only_the_allowed_devices(env: Env) -> None:
    ex = env.run("ls /dev")
    assert set(ex.stdout.decode().split()) == {"fd", "full", "mqueue", "null", "ptmx", "pts",
                                               "random", "shm", "stderr", "stdin", "stdout",
                                               "tty", "urandom", "zero"}


def test_device_nodes_cannot_be_opened(env: Env) -> None:
    blocked(env, "mknod /tmp/sda b 8 0 && head -c 512 /tmp/sda")
    # With a device allow-list (cgroup v1's devices controller, or on v2 the eBPF device
    # program), ns keeps CAP_MKNOD as Docker does: the node can be made, not opened;
    # without one (rootless, ns:bare), it cannot even be made.
    made = probe(env, "mknod-block", "/tmp/sda")
    assert made == ("OK" if env.rt.device_rules else "ERR EPERM")


# --- mounts, privileges ------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["mount -t tmpfs none /mnt", "mount -t proc proc /mnt",
                                 "mount -t cgroup -o memory none /mnt",
                                 "mount -o remount,rw /proc/sys", "umount /proc/kcore",
                                 "mount --bind / /mnt"])
def test_mounting_refused(env: Env, cmd: str) -> None:
    blocked(env, cmd)


@pytest.mark.parametrize("fs", ["proc", "sysfs"])
def test_user_namespace_cannot_mount_proc_or_sys(env: Env, fs: str) -> None:
    # A new user namespace gives "root" there, but the kernel lets it mount proc/sysfs
    # only where the existing ones are fully visible: the masked paths prevent that.
    assert probe(env, "userns-mount", fs) in ("ERR EPERM", "ERR EINVAL")


def test_capabilities_cannot_be_regained(env: Env) -> None:
    assert probe(env, "capset", "21") == "ERR EPERM"  # CAP_SYS_ADMIN
    ex = env.run("grep -E 'CapBnd|NoNewPrivs' /proc/self/status")
    fields = dict(line.split(":\t") for line in ex.stdout.decode().splitlines())
    assert int(fields["CapBnd"], 16) & (1 << 21) == 0
    assert fields["NoNewPrivs"] == "1"


def test_setuid_cannot_raise_privileges(env: Env) -> None:
    drop = f"{PROBE} runas 65534"
    ex = env.run(f"mkdir /tmp/s && cp /bin/busybox /tmp/s && chmod 4755 /tmp/s/busybox && "
                 f"{drop} /tmp/s/busybox id -u; "
                 f"{drop} {PROBE} setuid0")
    assert ex.stdout.decode().split() == ["65534", "ERR", "EPERM"]


# date sets the clock to what it is (less its fraction of a second): were it ever let
# through (as exec once did), the host's clock must not go back years.
@pytest.mark.parametrize("cmd", ["reboot -f", "hostname evil",
                                 "date -s \"$(date '+%Y-%m-%d %H:%M:%S')\"",
                                 "ip link add d0 type dummy", "ip link set lo down",
                                 "insmod /nonexistent.ko"])
def test_privileged_operations_refused(env: Env, cmd: str) -> None:
    host_name = socket.gethostname()
    ex = env.run(cmd)
    # busybox date reports the refusal but exits 0; the message is the kernel's EPERM.
    assert ex.code != 0 or b"not permitted" in ex.stdout + ex.stderr, ex
    assert socket.gethostname() == host_name


@pytest.mark.parametrize("what", ["module", "settime"])
def test_kernel_level_calls_refused(env: Env, what: str) -> None:
    # ENOSYS: a kernel built without module support (this VM's) refuses before checking.
    assert probe(env, what) in ("ERR EPERM", "ERR ENOSYS")


# --- network -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_network_none_has_loopback_only(env: Env) -> None:
    ex = env.run("ls /sys/class/net; cat /sys/class/net/lo/operstate")
    assert ex.stdout.decode().split()[0] == "lo" and len(ex.stdout.split()) == 2


def test_network_none_cannot_reach_the_host(env: Env, host_listener: int) -> None:
    assert probe(env, "connect", host_ip(), str(host_listener)) == "ERR ENETUNREACH"
    # 127.0.0.1 is the instance's own loopback, where nothing listens.
    assert probe(env, "connect", "127.0.0.1", str(host_listener)) == "ERR ECONNREFUSED"


def test_raw_socket_cannot_reach_the_host(env: Env) -> None:
    assert probe(env, "rawsend", host_ip()) == "ERR ENETUNREACH"


def test_host_abstract_socket_unreachable(env: Env) -> None:
    name = f"cvbench-test-{env.run_id}"
    s = socket.socket(socket.AF_UNIX)
    s.bind("\0" + name)
    s.listen()
    try:
        assert probe(env, "abstract", name) == "ERR ECONNREFUSED"
    finally:
        s.close()


# --- from the outside: bench exec ----------------------------------------------------------

@pytest.mark.parametrize("script", ["mount -t tmpfs none /mnt", "echo 1 > /proc/sys/vm/drop_caches",
                                    "head -c 1 /proc/kcore | grep -q .",
                                    "ls /proc/$PPID/root/root/.cache"])
def test_bench_exec_blocks(env: Env, script: str) -> None:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "exec", "ns", "--", "sh", "-c",
                          script], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0, res


# --- the acceptance of issue 17 -------------------------------------------------------------

def test_bench_exec_has_seccomp_and_no_user_namespaces() -> None:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "exec", "ns", "--", "sh", "-c",
                          "grep Seccomp: /proc/self/status; unshare -U -r true"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.stdout.split() == ["Seccomp:", "2"], res
    assert res.returncode != 0 and "Operation not permitted" in res.stderr, res


def test_an_allowed_call_still_works(env: Env) -> None:
    ex = env.run("grep Seccomp: /proc/self/status; echo hi > /tmp/x && cat /tmp/x; "
                 "sleep 0.01 & wait")
    assert ex.code == 0 and ex.stdout.split() == [b"Seccomp:", b"2", b"hi"], ex


# --- ns against Docker, probe by probe -------------------------------------------------------

LEAKED_FD = 70000  # above the 65536 ns used to close up to, where the runner may go there
SUID_DIR = "/suid"
# name -> the command in the instance; each prints "OK" (allowed) or "ERR <errno>"
ESCAPES: dict[str, tuple[str, ...]] = {
    "new user namespace": (PROBE, "userns"),
    "keyctl": (PROBE, "keyctl"),
    "add_key": (PROBE, "add_key"),
    "bpf": (PROBE, "bpf"),
    "perf_event_open": (PROBE, "perf_event_open"),
    "userfaultfd (unprivileged)": (PROBE, "userfaultfd"),
    "ptrace another process": ("sh", "-c", f"sleep 30 & {PROBE} ptrace $!; kill $!"),
    "open_by_handle_at": (PROBE, "handle"),
    "mknod a char device (/dev/mem), open it": (PROBE, "mknod-char", "/tmp/mem"),
    "write through a bind-mounted device node": (PROBE, "write", "/kmsg"),
    "setuid-root binary on a bind mount": (PROBE, "runas", "65534",
                                           f"{SUID_DIR}/escape_probe", "setuid0"),
    "read a descriptor leaked from the runner": (PROBE, "readfd", "{leaked_fd}"),
}
# Where ns is stricter than Docker, and why.
NS_STRICTER = {"setuid-root binary on a bind mount":
               "no_new_privs: Docker leaves it off, so the setuid bit gives root back"}


@pytest.fixture(scope="module")
def escape_mounts(probe_path: str, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[tuple[Mount, ...]]:
    """A device node no instance may open (writing a line to the kernel log is harmless
    if one could), and a dir holding a setuid-root copy of the probe. The dir is a tmpfs
    of our own: the temporary directory may be on a `nosuid` mount (systemd's /tmp),
    where the setuid bit gives nothing back in any backend and the probe proves nothing."""
    suid = tmp_path_factory.mktemp("suid")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "cvbench-test", str(suid)],
                   check=True)
    try:
        shutil.copy(probe_path, suid / "escape_probe")
        os.chown(suid / "escape_probe", 0, 0)
        os.chmod(suid / "escape_probe", 0o4755)
        yield (Mount("bind", "/kmsg", "/dev/kmsg"), Mount("bind", SUID_DIR, str(suid)))
    finally:
        subprocess.run(["umount", "-l", str(suid)], check=True)


@pytest.fixture(scope="module")
def leaked_fd(marker: Path) -> Iterator[int]:
    """An inheritable descriptor of the runner on the host secret: above 65536, or where
    root may not raise its hard limit (no CAP_SYS_RESOURCE here), the highest it may."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(old[0], LEAKED_FD + 1),
                                                    max(old[1], LEAKED_FD + 1)))
        number = LEAKED_FD
    except ValueError:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old[1], old[1]))
        number = old[1] - 1
    fd = os.open(marker, os.O_RDONLY)
    os.dup2(fd, number, inheritable=True)
    os.close(fd)
    yield number
    os.close(number)
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def outcome(e: Env, argv: tuple[str, ...], mounts: tuple[Mount, ...]) -> str:
    ex = e.run_argv(argv, mounts=mounts)
    out = ex.stdout.decode().strip()
    assert out.startswith(("OK", "ERR ")), ex
    return out


def _escapes(leaked_fd: int) -> dict[str, tuple[str, ...]]:
    return {name: tuple(a.format(leaked_fd=leaked_fd) for a in argv)
            for name, argv in ESCAPES.items()}


@pytest.fixture(scope="module")
def docker_outcomes(docker_env: Env, escape_mounts: tuple[Mount, ...],
                    leaked_fd: int) -> dict[str, str]:
    """probe -> outcome under docker (once for both ways into ns)."""
    return {name: outcome(docker_env, argv, escape_mounts)
            for name, argv in _escapes(leaked_fd).items()}


@pytest.fixture(scope="module")
def escape_table(env: Env, docker_outcomes: dict[str, str], escape_mounts: tuple[Mount, ...],
                 leaked_fd: int) -> dict[str, tuple[str, str]]:
    """probe -> (outcome under ns, outcome under docker)."""
    return {name: (outcome(env, argv, escape_mounts), docker_outcomes[name])
            for name, argv in _escapes(leaked_fd).items()}


def _blocked(out: str) -> bool:
    return out.startswith("ERR")


def test_ns_blocks_what_docker_blocks(escape_table: dict[str, tuple[str, str]]) -> None:
    table = "\n".join(f"| {n} | {ns} | {d} |" for n, (ns, d) in escape_table.items())
    print(f"\n| escape | ns | docker |\n|---|---|---|\n{table}")
    missed = [n for n, (ns, d) in escape_table.items() if _blocked(d) and not _blocked(ns)]
    assert missed == [], table
    stricter = {n for n, (ns, d) in escape_table.items() if _blocked(ns) and not _blocked(d)}
    assert stricter == set(NS_STRICTER), table
    for name in ("new user namespace", "keyctl", "add_key", "bpf", "perf_event_open",
                 "userfaultfd (unprivileged)", "open_by_handle_at",
                 "write through a bind-mounted device node",
                 "read a descriptor leaked from the runner"):
        assert _blocked(escape_table[name][0]), (name, table)


def test_no_descriptor_docker_would_not_pass(env: Env, docker_env: Env,
                                             leaked_fd: int) -> None:
    # 0-2, the directory ls reads, and (in both) busybox sh's own fd 10 on /bench/init;
    # exec'd, ls is not started by /bench/init: no fd 10
    ns, docker = (e.run_argv(("ls", "/proc/self/fd")).stdout.split() for e in (env, docker_env))
    assert set(ns) <= set(docker) if env.via_exec else ns == docker
    assert str(leaked_fd).encode() not in ns


_URETPROBE = {"x86_64": (335,)}  # (this libseccomp may not know its name)


def sweep_numbers() -> list[int]:
    """Native system call numbers Docker's profile denies or conditions: every one below
    512 but those it allows unconditionally, and but uretprobe (335 on x86_64), which the
    kernel lets by seccomp and which raises SIGILL outside a uretprobe trampoline."""
    import pyseccomp

    data = json.loads(seccomp.DOCKER_PROFILE.read_text())
    free = {n for r in data["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
            and not r.get("args") and not r.get("includes") and not r.get("excludes")
            for n in r["names"]}
    out = []
    for nr in range(512):
        try:
            name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr).decode()
        except ValueError:
            name = ""
        if name not in free and nr not in _URETPROBE.get(platform.machine(), ()):
            out.append(nr)
    return out


def sweep(e: Env) -> dict[str, str]:
    """system call number -> "OK" or the errno name, as the probe saw them in `e`."""
    nrs = [str(n) for n in sweep_numbers()]
    ex = e.run_argv((PROBE, "sweep", *nrs))
    rows = dict(line.split() for line in ex.stdout.decode().splitlines())
    assert list(rows) == nrs, ex  # every call answered, none killed the probe
    return rows


@pytest.fixture(scope="module")
def docker_sweep(docker_env: Env) -> dict[str, str]:
    if not seccomp.DOCKER_PROFILE.is_file():
        pytest.fail(f"{seccomp.DOCKER_PROFILE} is missing: run make provision")
    return sweep(docker_env)


def test_syscall_sweep_agrees_with_docker(env: Env, docker_sweep: dict[str, str]) -> None:
    ns, docker = sweep(env), docker_sweep
    denied = {nr for nr, err in docker.items() if err in ("EPERM", "ENOSYS")}
    assert len(denied) > 150  # the profile really denies: not a sweep of nothing
    differ = {nr: (ns[nr], docker[nr]) for nr in denied if ns[nr] != docker[nr]}
    assert differ == {}


# --- mount flags, rlimits, keyring: compared with what Docker applies ------------------------

SECURITY_FLAGS = {"nosuid", "nodev", "noexec", "ro"}


def mount_flags(e: Env) -> dict[str, set[str]]:
    ex = e.run("cat /proc/mounts", mounts=(Mount("tmpfs", "/t"),))
    return {f[1]: set(f[3].split(",")) & SECURITY_FLAGS
            for f in (line.split() for line in ex.stdout.decode().splitlines())}


def test_mount_flags_at_least_dockers(env: Env, docker_env: Env) -> None:
    ns, docker = mount_flags(env), mount_flags(docker_env)
    for target in ("/proc", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/t",
                   "/proc/sys", "/proc/bus", "/sys/firmware"):
        assert ns[target] >= docker[target], (target, ns[target], docker[target])
    assert ns["/t"] == {"nosuid", "nodev", "noexec"}  # Docker's tmpfs flags


def test_read_only_bind_is_read_only_below_too(env: Env, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "cvbench-test", str(tmp_path / "sub")], check=True)
    try:
        ex = env.run("touch /ro/sub/x", mounts=(Mount("bind", "/ro", str(tmp_path),
                                                      readonly=True),))
        assert ex.code != 0 and b"Read-only" in ex.stdout + ex.stderr, ex
    finally:
        subprocess.run(["umount", str(tmp_path / "sub")], check=True)


def limits(e: Env) -> dict[str, str]:
    """ "Max open files" -> "20000:20000" ..., as /proc/self/limits shows them inside."""
    ex = e.run("cat /proc/self/limits")
    out = {}
    for line in ex.stdout.decode().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = f"{soft}:{hard}"
    return out


def recorded(e: Env) -> dict[str, str]:
    line = next(p for p in e.rt.traits().protections if p.startswith("rlimits:"))
    pairs = (w.split("=") for w in line.split() if "=" in w)
    return {k: v.rstrip(",") for k, v in pairs}


def test_rlimits_as_recorded_next_to_dockers(env: Env, docker_env: Env) -> None:
    labels = {"core": "Max core file size", "nofile": "Max open files",
              "nproc": "Max processes", "memlock": "Max locked memory",
              "stack": "Max stack size"}
    for e in (env, docker_env):  # what each records is what its instances get
        inside, rec = limits(e), recorded(e)
        for name, label in labels.items():
            assert inside[label] == rec[name], (e.rt.name, name, inside[label], rec[name])
    print({name: (limits(env)[label], limits(docker_env)[label])
           for name, label in labels.items()})


@pytest.mark.parametrize("via_exec", [False, True], ids=["first process", "exec"])
def test_every_instance_has_its_own_session_keyring(probe_path: str, via_exec: bool) -> None:
    """ns:bare (no seccomp, so keyctl gets through): a new keyring each time, not the
    runner's (under ns and Docker, keyctl itself is refused: see the table)."""
    runner = subprocess.run([probe_path, "keyring-id"], capture_output=True, text=True,
                            check=True).stdout.split()
    gen = _env("ns:bare", probe_path, via_exec)
    bare = next(gen)
    try:
        ids = [bare.run_argv((PROBE, "keyring-id")).stdout.decode().split() for _ in range(2)]
        seccomp_line = bare.run("grep Seccomp: /proc/self/status").stdout.split()
    finally:
        next(gen, None)
    assert ids[0][0] == "OK" and ids[1][0] == "OK", ids
    assert len({runner[1], ids[0][1], ids[1][1]}) == 3, (runner, ids)
    assert seccomp_line == [b"Seccomp:", b"0"]
