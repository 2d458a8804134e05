"""Escape attempts from inside `ns` instances, run as root; each must be blocked.

The workload runs as root inside the instance (as a Docker container does by default),
with the capabilities ns keeps. escape_probe.c makes the system calls busybox cannot.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.base import Limits, Mount
from tests.integration._nsutil import Env, close_env, host_ip, is_alive, open_env, probe_binary

pytestmark = pytest.mark.root
PROBE = "/usr/bin/escape_probe"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("root: the escape tests run instances as root")
    probe = probe_binary(tmp_path_factory.mktemp("probe"))
    e, lock = open_env("ns", (probe,))
    yield e
    assert close_env(e, lock) == []


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
    assert int(ex.stdout.split()[0]) <= 3  # sh, ls, grep


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
    assert set(ex.stdout.decode().split()) == {"fd", "full", "null", "ptmx", "pts", "random",
                                               "shm", "stderr", "stdin", "stdout", "tty",
                                               "urandom", "zero"}


def test_device_nodes_cannot_be_made(env: Env) -> None:
    blocked(env, "mknod /tmp/sda b 8 0 && head -c 512 /tmp/sda")
    assert probe(env, "mknod-block", "/tmp/sda") == "ERR EPERM"


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


@pytest.mark.parametrize("cmd", ["reboot -f", "hostname evil", "date -s 2000-01-01",
                                 "ip link add d0 type dummy", "ip link set lo down",
                                 "insmod /nonexistent.ko"])
def test_privileged_operations_refused(env: Env, cmd: str) -> None:
    host_name = socket.gethostname()
    ex = env.run(cmd)
    # busybox date reports the refusal but exits 0; the message is the kernel's EPERM.
    assert ex.code != 0 or b"not permitted" in ex.stderr, ex
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
