"""Load generators run on the host against a server instance: wrk (HTTP) and
redis-benchmark (Redis), their command lines and figures read from their own output.

Every figure is a number the tool printed, scaled only to the metric's unit (seconds,
bytes): wrk's "Requests/sec", "Transfer/sec" and `--latency` distribution;
redis-benchmark's `--csv` rows (rps, p50, p99 per test). The raw output is kept by the
caller as an artifact, so anyone can check a figure against it.

A run that did not do what was asked fails: no requests at all, non-2xx/3xx answers,
socket errors (connect, read, write, timeout), fewer bytes moved than the requests'
bodies, a server error or a missing result row (of any test asked for). `LoadFailed`
carries the counts, and its message says them, so a failed sample is never recorded as a
zero throughput, nor as half of what was asked.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from harness.core.errors import InstanceError

# wrk prints sizes with binary prefixes (its format_binary: 1024 based) and times in
# us/ms/s/m/h (format_time), both with two decimals.
_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = r"([\d.]+)([KMGTP]?)B"
_SUMMARY = re.compile(rf"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), {_SIZE} read", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TRANSFER = re.compile(rf"^Transfer/sec:\s+{_SIZE}", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class LoadFailed(InstanceError):
    """The load generator ran but the run is not a valid sample; `counts` says why
    (requests, non_2xx, socket errors...), as the message does."""

    def __init__(self, tool: str, problem: str, counts: dict[str, int | float]) -> None:
        self.counts = counts
        said = ", ".join(f"{k} {v}" for k, v in counts.items())
        super().__init__(f"{tool}: {problem} ({said})")


@dataclass(frozen=True)
class WrkRun:
    """One wrk run, as it printed it. latency: percentile ("50", "99"...) -> seconds."""

    requests: int
    seconds: float
    bytes_read: float
    rps: float
    transfer: float  # bytes/s
    latency: dict[str, float]
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int | float]:
        return {"requests": self.requests, "non_2xx": self.non_2xx, **self.socket_errors,
                "bytes_read": round(self.bytes_read)}


def wrk_args(url: str, *, duration: float, connections: int, threads: int = 1,
             timeout: int = 2) -> list[str]:
    """wrk's command line: `connections` kept open for `duration` seconds (whole seconds:
    wrk takes no fractions), the latency distribution printed, `timeout` seconds per
    request (an unanswered request counts as a socket timeout)."""
    return ["wrk", f"--threads={threads}", f"--connections={connections}",
            f"--duration={max(1, round(duration))}s", f"--timeout={timeout}s", "--latency",
            url]


def _size(number: str, prefix: str) -> float:
    return float(number) * _BINARY[prefix]


def parse_wrk(text: str) -> WrkRun:
    """wrk's figures from its standard output (run with --latency)."""
    summary, rps, transfer = _SUMMARY.search(text), _RPS.search(text), _TRANSFER.search(text)
    if summary is None or rps is None or transfer is None:
        raise InstanceError(f"wrk: no summary in its output: {text[-300:]!r}")
    socket = _SOCKET.search(text)
    non_2xx = _NON2XX.search(text)
    return WrkRun(
        requests=int(summary[1]), seconds=float(summary[2]) * _TIME[summary[3]],
        bytes_read=_size(summary[4], summary[5]), rps=float(rps[1]),
        transfer=_size(transfer[1], transfer[2]),
        latency={p: float(v) * _TIME[u] for p, v, u in _PERCENTILE.findall(text)},
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"),
                               map(int, socket.groups()), strict=True)) if socket else {})


def check_wrk(run: WrkRun, body: int) -> None:
    """Raise LoadFailed unless every request was answered 2xx/3xx without socket errors
    and at least `body` bytes (the file's size) came back per request. wrk prints the
    bytes read with three significant digits: 1 % of slack for its rounding."""
    if run.requests == 0:
        raise LoadFailed("wrk", "no request completed", run.counts)
    if run.non_2xx or any(run.socket_errors.values()):
        raise LoadFailed("wrk", "failed requests", run.counts)
    if run.bytes_read < 0.99 * body * run.requests:
        raise LoadFailed("wrk", f"fewer bytes read than {run.requests} x {body} B of body",
                         run.counts)
    if "50" not in run.latency or "99" not in run.latency:
        raise InstanceError("wrk: no latency distribution (run without --latency?)")


@dataclass(frozen=True)
class RedisTest:
    """One row of redis-benchmark --csv: a test's requests/s and latencies (seconds)."""

    test: str
    rps: float
    lat_p50: float
    lat_p99: float


def redis_args(host: str, port: int, *, tests: tuple[str, ...], requests: int,
               clients: int, pipeline: int) -> list[str]:
    """redis-benchmark's command line: `requests` per test (its bound), CSV output."""
    return ["redis-benchmark", "-h", host, "-p", str(port), "-t", ",".join(tests),
            "-n", str(requests), "-c", str(clients), "-P", str(pipeline), "--csv"]


def parse_redis(text: str, returncode: int = 0,
                tests: tuple[str, ...] = ()) -> dict[str, RedisTest]:
    """redis-benchmark's CSV rows by test name ("GET", "SET"). A server error ("Error
    from server: ..."), a connection failure, a non-zero exit or a missing row of one of
    the `tests` asked for fails the run."""
    rows = [line for line in text.splitlines() if line.startswith('"')]
    problems = [line for line in text.splitlines()
                if line.startswith(("Error", "Could not connect", "Writing to socket"))]
    out: dict[str, RedisTest] = {}
    for row in csv.DictReader(io.StringIO("\n".join(rows))):
        try:
            out[row["test"]] = RedisTest(row["test"], float(row["rps"]),
                                         float(row["p50_latency_ms"]) * 1e-3,
                                         float(row["p99_latency_ms"]) * 1e-3)
        except (KeyError, TypeError, ValueError):
            raise InstanceError(f"redis-benchmark: unexpected CSV row {row!r}") from None
    if problems or returncode != 0 or not out:
        raise LoadFailed("redis-benchmark", (problems or ["no result row"])[0],
                         {"exit": returncode, "results": len(out), "errors": len(problems)})
    missing = [t for t in tests if t not in out]
    if missing:
        raise LoadFailed("redis-benchmark", f"no result row for {', '.join(missing)}",
                         {"results": len(out), "asked": len(tests)})
    for t in out.values():
        if t.rps <= 0:
            raise LoadFailed("redis-benchmark", f"{t.test}: no request completed",
                             {"rps": t.rps})
    return out
