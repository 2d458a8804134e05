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
write end, stdout, stderr; a fifth, the cgroup's directory, when the config says
`into_cgroup`: the child is then made there by clone3 with CLONE_INTO_CGROUP), or for
an exec's helper an ExecConfig with its four (the instance's pidfd, its root, status
pipe write end, output); the server (process.serve)
answers b"P<pid>" or b"E<error>".
Answers come in request order and are read only when a pid is needed (at start), so
create never waits for the server. It exits when the runner's end of the socket
closes, or when the runner dies. This module is the runner's side.
"""

from __future__ import annotations

import collections
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path

# Load only the modules the child needs (the package __init__ files are empty, so this
# brings neither the registry nor the harness): a small interpreter forks fast.
_BOOT = """\
import sys
sys.path.insert(0, {root!r})
from runtimes.ns import process
process.serve({fd}, {ppid})
"""


class ForkServerError(Exception):
    pass


class Ticket:
    """One request to the fork server; its answer is read (in order) when asked for."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.answer: bytes | None = None

    def pid(self) -> int:
        if self.answer is None:
            self.server._answer_until(self)
        assert self.answer is not None
        if self.answer[:1] == b"P":
            return int(self.answer[1:])
        raise ForkServerError(self.answer[1:].decode(errors="replace")
                              or "the fork server died")


class ForkServer:
    """The runner's handle on its fork server; thread-safe, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._waiting: collections.deque[Ticket] = collections.deque()

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
                # Its own process group: a Ctrl-C at the terminal goes to the runner, which
                # stops between samples; neither the server nor the instances (cloned
                # into its group) may die of it midway.
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", code], pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL, process_group=0)
            finally:
                theirs.close()
            if ours.recv(16) != b"ok":
                ours.close()
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                raise ForkServerError("the ns fork server did not start")
            self._sock = ours

    def request(self, cfg: object, fds: list[int]) -> Ticket:
        """Ask for a child running process.child_main(cfg, *fds) (exec_main for an
        ExecConfig); do not wait for it.
        Requests are answered in order; `Ticket.pid()` reads the answer when needed."""
        self.start()
        with self._lock:
            assert self._sock is not None
            socket.send_fds(self._sock, [pickle.dumps(cfg, pickle.HIGHEST_PROTOCOL)], fds)
            ticket = Ticket(self)
            self._waiting.append(ticket)
        return ticket

    def _answer_until(self, ticket: Ticket) -> None:
        with self._lock:
            while ticket.answer is None:
                first = self._waiting.popleft()
                first.answer = self._sock.recv(65536) if self._sock is not None else b""

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            for ticket in self._waiting:
                ticket.answer = b""
            self._waiting.clear()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None
