"""Thin ctypes wrappers for the system calls Python's os module does not have.

Only the standard library's smallest modules are imported here (and in rootfs, security,
config, process): the fork server loads just these, and a small interpreter forks fast.

The functions come from a PyDLL handle: PyDLL keeps the GIL held across the call. That
matters for `clone()`: the child starts as a copy of this thread with the GIL owned by
it, so it can run Python code (the container set-up in process.py) without waiting for a
lock another thread of the parent might hold at the instant of the copy.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct

_libc = ctypes.PyDLL(None, use_errno=True)

CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000  # clone3 only (a 64-bit flag)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_KEEPCAPS = 8

_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_SYS_CLONE3 = 435  # asm-generic numbering: the same on x86_64 and aarch64
_SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _arch() -> str:
    return os.uname().machine


def clone(flags: int) -> int:
    """fork() into new namespaces: returns 0 in the child, the child's pid in the parent.

    The raw clone syscall with a NULL stack behaves like fork (the child continues on a
    copy of the stack), but it can create every namespace at once, so the child is PID 1
    of its new pid namespace without a second fork.
    """
    nr = _SYS_CLONE[_arch()]
    # x86_64 argument order: flags, stack, parent_tid, child_tid, tls
    return _check(_libc.syscall(nr, ctypes.c_ulong(flags | signal.SIGCHLD), None, None, None,
                                ctypes.c_ulong(0)), "clone")


class _CloneArgs(ctypes.Structure):
    """struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone3(flags: int, cgroup_fd: int) -> int:
    """clone() (as above: fork-like, on a copy of the stack, every namespace of `flags` at
    once) with the child made inside the cgroup v2 directory `cgroup_fd` (an O_PATH
    descriptor will do): CLONE_INTO_CGROUP, Linux 5.7. The child is never anywhere else,
    so it need not write itself into cgroup.procs (a migration) later. Python 3.11 has no
    os.clone3: the raw syscall."""
    # With CLONE_PARENT clone3 refuses an exit signal (EINVAL): the child then gets the
    # caller's own, as clone() does whatever it is asked (the fork server's: SIGCHLD).
    args = _CloneArgs(flags=flags | CLONE_INTO_CGROUP, cgroup=cgroup_fd,
                      exit_signal=0 if flags & CLONE_PARENT else signal.SIGCHLD)
    return _check(_libc.syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args),
                                ctypes.c_size_t(ctypes.sizeof(args))), "clone3")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, flags: int) -> None:
    """Join namespaces: with a pidfd (Linux 5.8; ns needs 5.9 for close_range anyway),
    every namespace of that process named in `flags` at once (the kernel orders them:
    the user namespace first, so the others, owned by it, can then be joined)."""
    _check(_libc.setns(fd, flags), "setns")


def _b(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    if _libc.mount(_b(source), target.encode(), _b(fstype), flags, _b(data)) < 0:
        _check(-1, f"mount {fstype or source or ''} on {target}")  # (message only on error)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(target: str, attr_set: int, flags: int = AT_RECURSIVE) -> None:
    """Set mount attributes on `target` and (AT_RECURSIVE) every mount below it."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), AT_FDCWD, target.encode(),
                         ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {target}")


def has_mount_setattr() -> bool:
    """Whether this kernel has mount_setattr (5.12+): an invalid call fails with EBADF or
    EINVAL, not ENOSYS."""
    ret = _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), -1, b"", 0, None, 0)
    return ret == 0 or ctypes.get_errno() != errno.ENOSYS


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT[_arch()], new_root.encode(), put_old.encode()),
           "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


_LO_UP = struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK)  # struct ifreq


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace: a new one has it down, with
    IFF_LOOPBACK as its only flag, so one SIOCSIFFLAGS sets the flags it must have."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, _LO_UP)
