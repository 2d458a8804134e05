"""Readiness: when an instance counts as ready, and probes that tell a service answers.

Kinds (a scenario's `[workload] readiness`):
  marker          the ready line cvbench's init prints before it execs the workload
  exit            the workload has run to its end
  tcp:PORT        a TCP connect from the host to the instance's address succeeds
  http:PORT/PATH  a GET from the host gets a 2xx or 3xx answer
  log:REGEX       a line of the workload's output (stdout or stderr; a VM's console)
                  matches
The service kinds (tcp, http, log) come after the ready line: they give
`startup.to_serving` (create begins -> the first answer) and `startup.serving` (start
returned -> the first answer). tcp and http poll every `interval` seconds, timed with
the host's monotonic clock; the answer's time is when it arrived. Each attempt waits at
most ATTEMPT_TIMEOUT for an answer (a refused connection returns at once; a guest whose
network is still coming up may drop the SYN instead). A probe that is told how to ask
whether the instance has exited stops at once when it has, with how it ended, instead
of waiting out its deadline for a server that is gone.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness.core.errors import InstanceError

ATTEMPT_TIMEOUT = 1.0
KINDS = ("marker", "exit", "tcp", "http", "log")


@dataclass(frozen=True)
class Readiness:
    kind: str  # one of KINDS
    port: int = 0
    path: str = "/"
    pattern: str = ""

    @property
    def serving(self) -> bool:
        """Whether it waits for the service (after the ready line)."""
        return self.kind in ("tcp", "http", "log")

    @property
    def needs_address(self) -> bool:
        """Whether the host must reach the instance (network none cannot)."""
        return self.kind in ("tcp", "http")

    def __str__(self) -> str:
        if self.kind == "tcp":
            return f"tcp:{self.port}"
        if self.kind == "http":
            return f"http:{self.port}{self.path}"
        return f"log:{self.pattern}" if self.kind == "log" else self.kind


def parse(text: str) -> Readiness:
    """`text` as a Readiness; ValueError says what is wrong."""
    kind, sep, arg = text.partition(":")
    if kind in ("marker", "exit") and not sep:
        return Readiness(kind)
    if kind == "log" and sep:
        try:
            re.compile(arg.encode())
        except re.error as e:
            raise ValueError(f"{text!r}: invalid regular expression: {e}") from None
        if not arg:
            raise ValueError(f"{text!r}: the regular expression is empty")
        return Readiness("log", pattern=arg)
    if kind in ("tcp", "http") and sep:
        port_text, slash, path = arg.partition("/")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        if kind == "tcp" and slash:
            raise ValueError(f"{text!r}: a tcp probe has no path")
        if any(c.isspace() for c in path):
            raise ValueError(f"{text!r}: the path must not contain spaces")
        return Readiness(kind, port=int(port_text), path="/" + path)
    raise ValueError(f"{text!r} is not one of marker, exit, tcp:PORT, http:PORT/PATH, "
                     "log:REGEX")


def answers(r: Readiness, address: str, timeout: float = ATTEMPT_TIMEOUT) -> bool:
    """One attempt: does the service at `address` answer as `r` asks?"""
    try:
        if r.kind == "tcp":
            with socket.create_connection((address, r.port), timeout=timeout):
                return True
        conn = http.client.HTTPConnection(address, r.port, timeout=timeout)
        try:
            conn.request("GET", r.path, headers={"User-Agent": "cvbench-readiness"})
            return 200 <= conn.getresponse().status < 400
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


def fetch(address: str, port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """One GET of `path`: the status and the body as text (status 0: no answer)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "cvbench"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)
    finally:
        conn.close()


# How an instance ended ("exited with status 3: <its output>"), or None while it runs.
Ended = Callable[[], str | None]


def poll(r: Readiness, address: str, interval: float, deadline: float,
         ended: Ended | None = None) -> int | None:
    """Try every `interval` seconds until the service answers (its time, monotonic ns)
    or the deadline (time.monotonic()) passes (None). After every unanswered attempt
    `ended` is asked whether the instance is gone: if it is, InstanceError with how it
    ended (a dead server never answers; its timeout would only hide why)."""
    while True:
        began = time.monotonic()
        if answers(r, address, min(ATTEMPT_TIMEOUT, max(0.01, deadline - began))):
            return time.monotonic_ns()
        if ended is not None and (why := ended()) is not None:
            raise InstanceError(f"{r}: the instance {why}, before it answered")
        if began >= deadline:
            return None
        time.sleep(max(0.0, began + interval - time.monotonic()))
