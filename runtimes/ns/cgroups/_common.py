"""Helpers both cgroup versions use."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

from harness.core.cgroupfs import cgroup_procs as procs


def write(path: Path, value: str) -> None:
    # One write() per value: cgroup files act on each write, not on close.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_int_field(path: Path, field: str) -> int:
    """`field N` lines of files like memory.events / memory.oom_control."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == field:
                return int(value)
    except (FileNotFoundError, ValueError):
        pass
    return 0


def kill_procs(path: Path, timeout: float = 5.0) -> None:
    """SIGKILL every process in the cgroup until it is empty (new ones may be forking)."""
    deadline = time.monotonic() + timeout
    while (pids := procs(path)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)


def rmdir(path: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup; EBUSY while the last processes are still exiting, so retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            kill_procs(path, timeout=0.1)
            time.sleep(0.001)
