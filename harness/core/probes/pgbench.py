"""pgbench against a PostgreSQL server: the server's start, pgbench's command lines, and
figures read from its own output.

Figures: tps (pgbench's "tps = ... (without initial connection time)"), the mean latency
("latency average = ... ms"), and the p99 latency, which pgbench does not print: it is
the nearest-rank 99th percentile of the latencies in pgbench's per-transaction log (`-l`:
one line per transaction, its third field the latency in µs). The log must hold one
line per transaction pgbench counted, so a lost or truncated log fails the sample.

A run fails (InstanceError, counts kept in the message) on an error line, an aborted
run, a failed transaction, or no transaction at all: never a zero throughput.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from harness.core.errors import InstanceError

# What `sub` runs: pgbench's builtin scripts.
MODES: dict[str, tuple[str, ...]] = {"select-only": ("-S",), "tpcb-like": ()}
PORT = 5432
MISSING = "the db study runs it from the host (Debian package postgresql-client; " \
    "scripts/provision installs it)"

# The server's start in a Debian image with PostgreSQL (see harness.core.debian: the
# cluster directory is empty in the image): as in the official postgres image, initdb
# makes a cluster at the first start, as the postgres user (setpriv, util-linux, when
# started as root: a VM runs its workload as root, PostgreSQL refuses to), then the
# server runs in the foreground with its log on stderr. Host connections are trusted:
# the server lives for one sample on the run's own network.
SERVER = """\
set -e
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
version=${bin%/bin}
data=/var/lib/postgresql/${version##*/}/main
mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 700 "$data"
as_pg=""
[ "$(id -u)" != 0 ] || as_pg="setpriv --reuid=postgres --regid=postgres --init-groups"
if [ ! -s "$data/PG_VERSION" ]; then
  $as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust --no-sync -E UTF8 \\
    --locale=C.UTF-8 >/dev/null
  echo "host all all all trust" >> "$data/pg_hba.conf"
fi
exec $as_pg "$bin/postgres" -D "$data" -c listen_addresses='*' -c port="$1"
"""
READY = "log:database system is ready to accept connections"


def server_argv(port: int = PORT) -> tuple[str, ...]:
    return ("sh", "-c", SERVER, "postgres-server", str(port))


def connection(host: str, port: int) -> list[str]:
    return ["-h", host, "-p", str(port), "-U", "postgres"]


def init_args(host: str, port: int, scale: int) -> list[str]:
    """`pgbench -i`: the tables at `scale` (100,000 accounts per unit)."""
    return ["pgbench", *connection(host, port), "-i", "-q", "-s", str(scale), "postgres"]


def run_args(host: str, port: int, mode: str, clients: int, duration: float,
             log_prefix: str | None) -> list[str]:
    """One pgbench run of `mode` for `duration` seconds (whole seconds, at least 1),
    one thread (the generator's one CPU), with the per-transaction log if asked."""
    log = ["-l", f"--log-prefix={log_prefix}"] if log_prefix else []
    return ["pgbench", *connection(host, port), *MODES[mode], "-c", str(clients), "-j", "1",
            "-T", str(max(1, round(duration))), "-n", *log, "postgres"]


@dataclass(frozen=True)
class Run:
    tps: float
    lat_mean: float  # s
    processed: int
    failed: int


def _number(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, re.M)
    return m.group(1) if m else None


def parse(text: str) -> Run:
    """pgbench's figures from its stdout+stderr; InstanceError when the run failed."""
    processed = _number(r"^number of transactions actually processed: (\d+)", text)
    failed = _number(r"^number of failed transactions: (\d+)", text)
    counts = f"{processed or 0} transactions processed, {failed or 0} failed"
    errors = [ln for ln in text.splitlines() if ln.startswith("pgbench: error:")]
    if errors:
        raise InstanceError(f"pgbench: {errors[0][len('pgbench: error: '):][:200]} "
                            f"({counts}; {len(errors)} error line(s))")
    tps = _number(r"^tps = ([\d.]+) \(without initial connection time\)", text)
    mean = _number(r"^latency average = ([\d.]+) ms", text)
    if processed is None or tps is None or mean is None:
        raise InstanceError(f"pgbench: no summary in its output: {text[-300:]!r}")
    if int(failed or 0):
        raise InstanceError(f"pgbench: {counts}")
    if not int(processed):
        raise InstanceError("pgbench: no transaction processed")
    return Run(float(tps), float(mean) / 1000, int(processed), int(failed or 0))


def latencies(log: str, processed: int) -> Counter[int]:
    """Latency (µs) -> transactions, from pgbench's per-transaction log; InstanceError
    unless it holds one line per transaction pgbench counted."""
    out: Counter[int] = Counter()
    for n, line in enumerate(log.splitlines(), 1):
        fields = line.split()
        if len(fields) < 6 or not fields[2].isdigit():
            raise InstanceError(f"pgbench's transaction log, line {n}: {line[:80]!r} is "
                                "not client, transaction, latency(µs), ...")
        out[int(fields[2])] += 1
    if out.total() != processed:
        raise InstanceError(f"pgbench's transaction log has {out.total()} transactions, "
                            f"its summary {processed}")
    return out


def percentile(counts: Counter[int], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of a latency histogram (µs), in s."""
    rank = max(1, -(-int(q * 1_000_000) * counts.total() // 1_000_000))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value / 1e6
    raise InstanceError("no latencies to take a percentile of")
