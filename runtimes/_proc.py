"""Process plumbing shared by the backends that own their workload's process (host, ns,
oci): their instances are PipedInstances.

The ready line is read from the workload's stdout pipe and timestamped when the read
that completes it returns. The exit is watched with a pidfd, so waiting has a timeout
and the pipes keep draining meanwhile (a workload that writes a lot never blocks).
"""

from __future__ import annotations

import math
import os
import re
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from harness.core.errors import InstanceError, ReadyTimeout
from runtimes.base import Exit, Instance

TAIL = 64 * 1024  # what is kept of a discarded stream, for error messages


@dataclass
class Stream:
    fd: int
    keep_all: bool
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if not self.keep_all and len(self.data) > TAIL:
            del self.data[: len(self.data) - TAIL]

    def read_some(self) -> bool:
        """One non-blocking read; False at EOF."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            self.eof = True
            return False
        self.feed(chunk)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(eq=False, slots=True)
class PipedInstance(Instance):
    """An instance whose first process is the runner's child: its pid and pidfd, and
    the read ends of its stdout/stderr pipes (or whatever Stream carries them)."""

    pid: int = 0
    pidfd: int = -1
    out: Stream | None = None
    err: Stream | None = None
    exited: bool = False
    stopped: tuple[int, int] | None = None  # (code, when) once reaped (stop, wait_exit)

    def streams(self) -> tuple[Stream, Stream]:
        if self.out is None or self.err is None:
            raise InstanceError(f"{self.spec.name}: not started")
        return self.out, self.err

    def release(self) -> None:
        """Close the pipes and the pidfd (idempotent)."""
        for s in (self.out, self.err):
            if s is not None:
                s.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def open_pipe() -> tuple[int, int]:
    """A pipe whose read end is non-blocking; both ends close on exec."""
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    return r, w


def wait_line(out: Stream, line: bytes, deadline: float) -> int:
    """Read `out` until `line` is seen; return the monotonic ns of the read that brought it.

    The ready line is stripped from the kept output. Raises ReadyTimeout at the deadline,
    InstanceError if the stream ends (the workload died) before the line.
    """
    poller = select.poll()
    poller.register(out.fd, select.POLLIN)
    t_read = time.monotonic_ns()
    while True:
        idx = out.data.find(line)
        end = out.data.find(b"\n", idx) if idx >= 0 else -1
        if end >= 0:
            del out.data[idx:end + 1]
            return t_read
        if out.eof:
            raise InstanceError("the workload closed its output before the ready line "
                                f"(output: {bytes(out.data[-300:])!r})")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadyTimeout("no ready line within the timeout "
                               f"(output so far: {bytes(out.data[-300:])!r})")
        if poller.poll(max(1, int(left * 1000))):
            out.read_some()
            t_read = time.monotonic_ns()


def wait_match(readers: list[Stream], pattern: re.Pattern[bytes], deadline: float,
               searched: list[Stream] | None = None) -> int:
    """Read `readers` until a line of `searched` (default: the readers) matches `pattern`;
    return the monotonic ns of the read that brought it (or of now, for output that had
    already arrived). InstanceError when every reader has ended, ReadyTimeout at the
    deadline. An incomplete last line counts only once the stream ends."""
    searched = readers if searched is None else searched
    t_read = time.monotonic_ns()
    while True:
        for s in searched:
            lines = bytes(s.data).split(b"\n")
            if not s.eof:
                lines.pop()
            if any(pattern.search(line) for line in lines):
                return t_read
        live = [s for s in readers if not s.eof and s.fd >= 0]
        if not live:
            raise InstanceError(f"the workload's output ended before a line matched "
                                f"{pattern.pattern!r} (output: "
                                f"{b''.join(bytes(s.data[-200:]) for s in searched)!r})")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadyTimeout(f"no line of the workload's output matched "
                               f"{pattern.pattern!r} within the timeout")
        poller = select.poll()
        for s in live:
            poller.register(s.fd, select.POLLIN)
        for fd, _ev in poller.poll(max(1, int(left * 1000))):
            for s in live:
                if s.fd == fd:
                    s.read_some()
        t_read = time.monotonic_ns()


def wait_pid(pid: int, pidfd: int, streams: list[Stream], timeout: float) -> tuple[int, int]:
    """Wait for `pid` to exit while draining `streams`; return (status code, monotonic ns).

    The code is the exit status, or 128 + signal number for a killed process (as a shell
    reports it). Raises InstanceError on timeout (the process is left to the caller);
    timeout 0 polls: it looks once.
    """
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    for s in streams:
        if not s.eof and s.fd >= 0:
            poller.register(s.fd, select.POLLIN)
    t_exit = 0
    while not t_exit:
        left = deadline - time.monotonic()
        events = poller.poll(max(0, math.ceil(left * 1000)))
        if not events and left <= 0:
            raise InstanceError(f"the workload did not exit within {timeout:g} s")
        for fd, _ev in events:
            if fd == pidfd:
                t_exit = time.monotonic_ns()
                continue
            for s in streams:
                if s.fd == fd and not s.read_some():
                    poller.unregister(fd)
    _, status = os.waitpid(pid, 0)
    # Drain what is already buffered; do not wait for EOF (a leftover child may hold it).
    for s in streams:
        while not s.eof and s.fd >= 0 and readable(s.fd) and s.read_some():
            pass
    return _code(status), t_exit


def readable(fd: int, timeout: float = 0) -> bool:
    """Whether `fd` becomes readable within `timeout` s (a pidfd: the process exited).
    poll, not select: select cannot watch a descriptor numbered 1024 or more, and a
    runner with hundreds of live instances holds that many."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def kill(pid: int, pidfd: int | None, sig: int = signal.SIGKILL, group: bool = False) -> None:
    """Signal a process through its pidfd (no pid-reuse race), or its whole process group;
    ignore it if already gone."""
    try:
        if group:
            os.killpg(pid, sig)
        elif pidfd is not None and pidfd >= 0:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reap(pid: int, pidfd: int, grace: float, group: bool = False
         ) -> tuple[int, int] | None:
    """SIGTERM, wait up to `grace`, then SIGKILL (the process, or its group); reap it.
    Its (status code, monotonic ns), or None if it was reaped before."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if not done:
        kill(pid, pidfd, signal.SIGTERM, group)
        if not readable(pidfd, grace):
            kill(pid, pidfd, signal.SIGKILL, group)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
    return _code(status), time.monotonic_ns()


def tagged_processes() -> list[tuple[int, str, str]]:
    """(pid, instance name, run id) of processes whose environment has CVBENCH_INSTANCE."""
    out = []
    me = os.getpid()
    for p in psutil.process_iter():
        try:
            name = p.environ().get("CVBENCH_INSTANCE", "") if p.pid != me else ""
        except (psutil.Error, OSError):
            continue
        if name.startswith("cvbench-"):
            out.append((p.pid, name, name.split("-")[1]))
    return out


# --- the bookkeeping every pipe-fed backend shares -------------------------------------

def spawn(inst: PipedInstance, argv: list[str], env: dict[str, str], label: str = "",
          **options: Any) -> None:
    """posix_spawn `argv` as the instance's process: stdin from /dev/null, stdout and
    stderr into fresh pipes whose read ends the instance keeps (see adopt). `options` go
    to posix_spawn (setpgroup, setsigdef...); `label` prefixes the error."""
    out_r, out_w = open_pipe()
    err_r, err_w = open_pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, env,
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null",
                                            os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_DUP2, out_w, 1),
                                           (os.POSIX_SPAWN_DUP2, err_w, 2)], **options)
    except OSError as e:
        for fd in (out_r, err_r):
            os.close(fd)
        raise InstanceError(f"{label}cannot start {argv[0]}: {e.strerror}") from e
    finally:
        os.close(out_w)
        os.close(err_w)
    inst.pid, inst.pids = pid, [pid]
    inst.pidfd = os.pidfd_open(pid)
    inst.out, inst.err = Stream(out_r, inst.spec.capture), Stream(err_r, inst.spec.capture)


def ready(inst: Instance, out: Stream, timeout: float) -> int:
    """wait_ready for a backend whose ready line comes on the stream `out`: its arrival
    time (monotonic ns), also kept in inst.ready_ns."""
    inst.ready_ns = wait_line(out, inst.spec.ready_line, time.monotonic() + timeout)
    return inst.ready_ns


def output(inst: PipedInstance, pattern: re.Pattern[bytes], timeout: float) -> int:
    """wait_output for a backend whose workload's stdout and stderr come on pipes."""
    return wait_match(list(inst.streams()), pattern, time.monotonic() + timeout)


def exited(inst: PipedInstance, timeout: float,
           oom_killed: Callable[[], bool] | None = None) -> Exit:
    """wait_exit for a backend that is the parent of its workload process."""
    out, err = inst.streams()
    if inst.stopped is not None:  # reaped already: what it wrote is still in the pipes
        code, t = inst.stopped
        for s in (out, err):
            while not s.eof and s.fd >= 0 and readable(s.fd) and s.read_some():
                pass
    else:
        code, t = wait_pid(inst.pid, inst.pidfd, [out, err], timeout)
        inst.stopped = (code, t)  # reaped: asked again (a probe polled it), the same end
    inst.exited = True
    return Exit(code=code, t_ns=t, oom_killed=bool(oom_killed and oom_killed()),
                stdout=bytes(out.data), stderr=bytes(err.data))
