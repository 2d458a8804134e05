"""What the child applies last, just before exec (process.confine_and_exec: an
instance's first process and every exec into it alike): a new session keyring, rlimits,
capabilities, no_new_privs, closing inherited descriptors, and the seccomp filter.

For root, execve() gives the new program permitted = inheritable | bounding set, so both
are cut down to the kept set: first the bounding set (PR_CAPBSET_DROP needs CAP_SETPCAP,
which we still have), then, after any change of uid (which clears every capability of
a non-root user), capset() for effective/permitted/inheritable. no_new_privs makes
setuid binaries and file capabilities unable to give any of it back, and lets an
unprivileged process install a seccomp filter: the filter goes on last, when nothing of
the set-up needs a system call it may refuse (keyctl, setrlimit above the hard limit...).
A pool's slot (ns:pool) loads it before it waits, with everything but the user's switch:
what runs under the filter then (the exec of its waiter, slot_waiter.c, whose static C
library start-up, read, write, close, fcntl, mkdir, chdir, setgroups, setgid, setuid,
capset, prctl and execve) is what the filter lets any instance do (Docker's profile and
containers-common's allow each); were one refused, start fails with the step, never
runs the workload with less.
Only ctypes here: the fork server imports this module, so the child pays nothing for it.
"""

from __future__ import annotations

import ctypes
import errno
import os

from runtimes.ns import namespaces as ns

CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2  # <linux/prctl.h>


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
_SYS_CLOSE_RANGE = 436  # the same number on every architecture (asm-generic)
RLIM_INFINITY = 2**64 - 1
_setrlimit = ns._libc.setrlimit
_setrlimit.argtypes = [ctypes.c_int, ctypes.POINTER(_Rlimit)]
_DataPair = _Data * 2  # capset takes two 32-bit words of each set (version 3)
_capset = ns._libc.capset
_capset.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def cap_numbers(names: tuple[str, ...]) -> tuple[int, ...]:
    """Capability numbers of `names` (unknown names raise ValueError)."""
    return tuple(CAP_NAMES.index(n) for n in names)


def drop_bounding(keep: tuple[int, ...], last: int) -> None:
    """Cut the bounding set to `keep`: no later execve can gain anything outside it.
    Done first, while we still hold CAP_SETPCAP."""
    prctl = ns._libc.prctl
    for cap in range(last + 1):
        if cap not in keep and prctl(ns.PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            ns.prctl(ns.PR_CAPBSET_DROP, cap)  # again, to raise the error with its message


def set_caps(keep: tuple[int, ...], inheritable: tuple[int, ...] | None = None) -> None:
    """effective = permitted = `keep` (root's execve then keeps them), inheritable =
    `inheritable` (None: `keep` too)."""
    mask = sum(1 << cap for cap in set(keep))
    inh = mask if inheritable is None else sum(1 << cap for cap in set(inheritable))
    data = _DataPair()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = (inh >> (32 * i)) & 0xFFFFFFFF
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    if _capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "capset failed")


def raise_ambient(caps: tuple[int, ...]) -> None:
    """Add `caps` to the ambient set (each must be permitted and inheritable already)."""
    for cap in caps:
        ns.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def no_new_privs() -> None:
    """setuid binaries and file capabilities can no longer raise privileges."""
    ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)


def new_session_keyring() -> None:
    """Join a new anonymous session keyring: the runner's keys (and every other instance's)
    are out of reach even where seccomp would let keyctl through (runc does the same)."""
    ns._check(ns._libc.syscall(_SYS_KEYCTL[ns._arch()], _KEYCTL_JOIN_SESSION_KEYRING, None),
              "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")


def set_rlimits(limits: tuple[tuple[int, int, int], ...]) -> None:
    """setrlimit each (resource, soft, hard); done while CAP_SYS_RESOURCE is still held,
    so a hard limit above the runner's can be set."""
    for res, soft, hard in limits:
        ns._check(_setrlimit(res, ctypes.byref(_Rlimit(soft, hard))), f"setrlimit({res})")


def close_inherited(keep: tuple[int, ...]) -> None:
    """Close every descriptor from 3 up but those in `keep`, to the last possible one:
    close_range(2), not a loop up to a guessed bound (a runner may hold descriptors above
    65536)."""
    nr = ctypes.c_long(_SYS_CLOSE_RANGE)
    ranges, low = [], 3
    for fd in sorted(k for k in set(keep) if k >= 3):
        if fd > low:
            ranges.append((low, fd - 1))
        low = fd + 1
    ranges.append((low, 2**32 - 1))
    for low, high in ranges:
        if ns._libc.syscall(nr, ctypes.c_uint(low), ctypes.c_uint(high), 0) == 0:
            continue
        if ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM):
            ns._check(-1, "close_range")
        # A kernel older than 5.9, or a bundle's seccomp profile (loaded before this when
        # it has no noNewPrivileges) that does not allow close_range: one close each
        import contextlib
        import resource

        try:
            fds = [int(f) for f in os.listdir("/proc/self/fd")]
        except OSError:  # no /proc in this container: up to the descriptor limit
            fds = list(range(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for fd in fds:
            if low <= fd <= high:
                with contextlib.suppress(OSError):
                    os.close(fd)


def load_seccomp(program: bytes) -> None:
    """Install a compiled seccomp filter (struct sock_filter[], 8 bytes per instruction) on
    this thread; inherited by everything it execs and forks. Needs no_new_privs first."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    ns._check(ns._libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog),
                             0, 0), "prctl(PR_SET_SECCOMP)")
