"""Parent side of an instance's first process, and the code that runs in the child.

create: clone() into the new namespaces. The child joins its cgroup, enters a new cgroup
  namespace, builds its root filesystem, sets hostname and loopback, drops capabilities,
  then writes "R" on the status pipe and blocks reading the go pipe (like runc's exec
  fifo: everything but the exec is done at create time).
start: the parent writes one byte on the go pipe; the child execs /bench/init. The
  status pipe is close-on-exec, so EOF there means the exec succeeded; an "E..." message
  means a step failed (the child then exits 127).

The child is a copy of the calling Python thread (see namespaces.clone). It calls only
os functions and the preloaded ctypes wrappers, never anything that takes a lock another
thread could have held at the copy, and it leaves with execve or os._exit, never by
returning into the caller's code.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import traceback
from dataclasses import dataclass

from harness.errors import InstanceError
from runtimes.ns import namespaces as ns
from runtimes.ns import network, rootfs, security
from runtimes.ns.config import ContainerConfig


@dataclass
class Child:
    pid: int
    pidfd: int
    go_w: int
    status_r: int
    out_r: int
    err_r: int


def _child(cfg: ContainerConfig, keep: tuple[int, ...], last: int, go_r: int, status_w: int,
           out_w: int, err_w: int) -> None:
    """Runs in the cloned child; never returns."""
    try:
        os.umask(0)
        # Die with the parent (a SIGKILLed runner must not leave instances running).
        ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores these; the workload must not
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for path in cfg.cgroup_join:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b"0")  # 0 = the writing process; our pid here is 1, not the host's
            os.close(fd)
        if cfg.new_cgroupns:
            ns.unshare(ns.CLONE_NEWCGROUP)  # after joining: the namespace roots at our cgroup
        rootfs.setup(cfg)
        ns.sethostname(cfg.hostname)
        if cfg.loopback_up:
            network.loopback_up()
        os.chdir(cfg.workdir)
        if cfg.gid:
            os.setgroups([])
            os.setgid(cfg.gid)
        if cfg.uid:
            os.setuid(cfg.uid)
        security.apply(keep, last, cfg.no_new_privs)
        os.umask(0o022)
        os.write(status_w, b"R")
        if os.read(go_r, 1) != b"G":
            os._exit(0)  # the parent went away or removed us before start
        os.closerange(3, status_w)
        os.closerange(status_w + 1, 65536)
        os.execve(cfg.argv[0], list(cfg.argv), dict(e.split("=", 1) for e in cfg.env))
    except BaseException as e:  # report any failure to the parent, then leave
        try:
            msg = f"E{type(e).__name__}: {e}"
            if not isinstance(e, OSError):
                msg += "\n" + traceback.format_exc(limit=3)
            os.write(status_w, msg.encode(errors="replace")[:4000])
        finally:
            os._exit(127)
    os._exit(127)


def _read_status(fd: int, deadline: float, until_eof: bool) -> bytes:
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise InstanceError("the instance's first process did not answer in time")
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 4096)
        buf += chunk
        if not chunk or (not until_eof and buf[:1] == b"R"):
            return buf
        if buf[:1] == b"E" and not chunk:
            return buf


def spawn(cfg: ContainerConfig, out_w: int, err_w: int, timeout: float) -> Child:
    """clone() the instance's first process and wait until it is set up (create)."""
    keep = security.cap_numbers(cfg.caps)
    last = security.last_cap()
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = ns.clone(cfg.clone_flags)
    except OSError:
        for fd in (go_r, go_w, status_r, status_w):
            os.close(fd)
        raise
    if pid == 0:
        os.close(go_w)
        os.close(status_r)
        _child(cfg, keep, last, go_r, status_w, out_w, err_w)
    os.close(go_r)
    os.close(status_w)
    child = Child(pid=pid, pidfd=os.pidfd_open(pid), go_w=go_w, status_r=status_r,
                  out_r=-1, err_r=-1)
    status = _read_status(status_r, time.monotonic() + timeout, until_eof=False)
    if status[:1] != b"R":
        abort(child)
        raise InstanceError(f"ns: setting up {cfg.name} failed: "
                            f"{status[1:].decode(errors='replace') or 'the child died'}")
    return child


def release(child: Child, timeout: float) -> None:
    """Let the child exec the workload (start); returns once the exec has happened."""
    os.write(child.go_w, b"G")
    os.close(child.go_w)
    child.go_w = -1
    status = _read_status(child.status_r, time.monotonic() + timeout, until_eof=True)
    os.close(child.status_r)
    child.status_r = -1
    if status:
        raise InstanceError(f"ns: exec failed: {status[1:].decode(errors='replace')}")


def abort(child: Child) -> None:
    """Kill and reap a child that never started."""
    for fd in (child.go_w, child.status_r):
        if fd >= 0:
            os.close(fd)
    child.go_w = child.status_r = -1
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child.pid, 0)
