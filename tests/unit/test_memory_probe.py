"""The memory probe never turns a failed read into a zero, and finds a daemon by the pid
its socket or pid file names, not by a process name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import Unreadable
from harness.core.probes import memory


def test_a_process_that_may_not_be_read_is_unreadable_not_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str, *args: Any, **kw: Any) -> Any:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(memory, "open", denied, raising=False)
    with pytest.raises(Unreadable, match="smaps_rollup: Permission denied"):
        memory.processes_memory([os.getpid()])


def test_processes_that_all_exited_are_no_reading() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = memory.processes_memory([os.getpid()])
    assert me.pss > 0
    # one of two gone: the other's figure stands (the exited one costs nothing now)
    assert memory.processes_memory([os.getpid(), gone.pid]).pss > 0
    with pytest.raises(Unreadable, match="exited"):
        memory.processes_memory([gone.pid])
    assert memory.processes_memory([]) == memory.ProcMemory()  # a daemonless backend's


def test_a_daemon_is_found_by_its_socket_then_its_pid_file(tmp_path: Path) -> None:
    # A process that listens on a socket: what SO_PEERCRED names, whatever it is called.
    path = tmp_path / "d.sock"
    code = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
            f"s.bind({str(path)!r}); s.listen(); print('up', flush=True); time.sleep(60)")
    daemon = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == b"up\n"
        assert memory.socket_peer(str(path)) == daemon.pid
        pidfile = tmp_path / "d.pid"
        pidfile.write_text(f"{os.getpid()}\n")
        # the socket first; without it (nothing listens there), the pid file
        assert memory.daemon_pid([str(path)], [], [str(pidfile)]) == daemon.pid
        assert memory.daemon_pid([str(tmp_path / "none.sock")], [],
                                 [str(pidfile)]) == os.getpid()
    finally:
        daemon.kill()
        daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()
    assert memory.socket_peer(str(path)) is None  # nobody listens any more
    pidfile.write_text(f"{daemon.pid}\n")  # a stale pid file names no live process
    assert memory.pid_file(str(pidfile)) is None
    assert memory.daemon_pid([str(path)], [], [str(pidfile)]) is None
    (tmp_path / "bad.pid").write_text("dockerd\n")
    assert memory.pid_file(str(tmp_path / "bad.pid")) is None


def test_socket_activation_is_not_taken_for_the_daemon(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """PID 1 (systemd) listens on a socket-activated service's socket: not the daemon."""
    path = tmp_path / "a.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        monkeypatch.setattr(memory.struct, "unpack", lambda fmt, b: (1, 0, 0))
        assert memory.socket_peer(str(path)) is None


def test_a_daemons_descriptors_not_read_are_left_out_not_zero() -> None:
    from harness.core.probes import kernel_limits

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert "daemon_fds" not in kernel_limits.usage([gone.pid])  # was 0: a counter never read
    assert kernel_limits.usage([])["daemon_fds"] == 0  # no daemons: truly none
    assert kernel_limits.usage([os.getpid()])["daemon_fds"] > 0
