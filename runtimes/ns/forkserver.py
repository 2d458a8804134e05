"""A small process that clones instances on the runner's behalf (multiprocessing's
forkserver idea, for namespaces).

Why: fork() copies the page tables of the calling process, and the child then faults in
a copy of every page it writes; exec() tears that address space down again. The runner
has numpy, rich and the harness loaded (~45 MiB); forking it costs about a millisecond
more per instance than forking an interpreter that holds only this package's ns modules
(~10 MiB). So one such interpreter is started per runner process, once (before any
timing), and every instance is clone()d from it.

The clone uses CLONE_PARENT: the instance becomes a child of the runner, not of the fork
server, so the runner waits for it, gets its exit status and its SIGCHLD, and the
instance's PR_SET_PDEATHSIG follows the runner, exactly as if the runner had forked it.

Protocol (a SOCK_SEQPACKET socketpair, one message per request): the runner sends a
pickled ContainerConfig with four descriptors attached (go pipe read end, status pipe
write end, stdout, stderr); the server (process.serve) answers b"P<pid>" or b"E<error>".
It exits when the runner's end of the socket closes, or when the runner dies.
This module is the runner's side.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

# Load only the modules the child needs, without running the package __init__ files
# (they import the runtime registry and the harness): a small interpreter forks fast.
_BOOT = """\
import sys, types
root = {root!r}
sys.path.insert(0, root)
for name in ("runtimes", "runtimes.ns"):
    m = types.ModuleType(name)
    m.__path__ = [root + "/" + name.replace(".", "/")]
    sys.modules[name] = m
from runtimes.ns import process
process.serve({fd}, {ppid})
"""


class ForkServerError(Exception):
    pass


class ForkServer:
    """The runner's handle on its fork server; thread-safe, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            root = str(Path(__file__).resolve().parents[2])
            code = _BOOT.format(root=root, fd=theirs.fileno(), ppid=os.getpid())
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", code], pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL)
            finally:
                theirs.close()
            if ours.recv(16) != b"ok":
                ours.close()
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                raise ForkServerError("the ns fork server did not start")
            self._sock = ours

    @contextlib.contextmanager
    def spawning(self, cfg: object, fds: list[int]) -> Iterator[Callable[[], int]]:
        """Ask for a child running process.child_main(cfg, *fds); the block gets a function
        returning its pid. The caller can wait for the child's own report first: by then
        the answer is waiting in the socket, and reading it costs no extra wake-up."""
        self.start()
        with self._lock:
            sock = self._sock
            assert sock is not None
            socket.send_fds(sock, [pickle.dumps(cfg, pickle.HIGHEST_PROTOCOL)], fds)
            answered: list[bytes] = []

            def pid() -> int:
                if not answered:
                    answered.append(sock.recv(65536))
                reply = answered[0]
                if reply[:1] == b"P":
                    return int(reply[1:])
                raise ForkServerError(reply[1:].decode(errors="replace")
                                      or "the fork server died")

            try:
                yield pid
            finally:
                if not answered:  # keep requests and answers paired
                    answered.append(sock.recv(65536))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None
