"""db: PostgreSQL in the instance loaded by pgbench from the host (see _server.py for
what one sample is, the network modes and the CPU placement).

The server starts from a Debian image with PostgreSQL whose cluster directory is empty
(harness.core.debian): harness.core.probes.pgbench.SERVER makes the cluster (initdb, as
the postgres user), then runs postgres in the foreground on the sample's port; it is
ready when it logs that it accepts connections. Then from the host `pgbench -i` makes
the tables at `scale`, `warmup` seconds of select-only run (discarded), and each mode
(sub "select-only", "tpcb-like": pgbench's builtin scripts) runs `duration` seconds
with `clients` connections and one pgbench thread, its per-transaction log written to a
temp dir:

  db.tps       pgbench's tps (without the initial connection time)
  db.lat_mean  pgbench's "latency average"
  db.lat_p99   the nearest-rank 99th percentile of the transaction log's latencies

pgbench's output is kept per run (kind "pgbench"), its per-transaction log as it wrote
it per mode (kind "pgbench_log", gzip then base64: `encoding`); a failed run, or a log
that does not hold the transactions the summary counts, fails the sample with pgbench's
counts. An emulated VM's samples are not stretched (`emulated_scale` 1):
pgbench's transactions complete under TCG, only fewer of them.

On a 2-core host: the shipped scenario puts the server on CPU 1 (`limits.cpuset`) and
pgbench on CPU 0 (`client_cpuset`), so a figure is one server core against one client
core, and the generator may limit it as much as the server. Ratios between backends on
the same placement are meaningful; absolute figures are not comparable with many-core
published ones, and costs that scale with cores (several workers, interrupts spread over
CPUs) do not show. `tpcb-like` commits fsync the WAL: its figure is as much the writable
layer's disk as the CPU.
"""

from __future__ import annotations

import base64
import gzip
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import InstanceError
from harness.core.probes import pgbench
from harness.sampling import Context, Measurement
from harness.scenario import Scenario
from harness.studies import Study
from harness.studies._server import COMMON_PARAMS, ServerStudy, run_tool

METRICS = {"db.tps": "tx/s", "db.lat_mean": "s", "db.lat_p99": "s",
           "db.pss_loaded": "B", "db.daemon_pss_loaded": "B"}


class Db(ServerStudy):
    name = "db"
    metrics = METRICS
    params: ClassVar[dict[str, Any]] = {
        **COMMON_PARAMS, "warmup": 2.0, "duration": 5.0, "emulated_scale": 1.0,
        "scale": 5, "clients": 4, "modes": list(pgbench.MODES)}
    tools: ClassVar[dict[str, str]] = {"pgbench": "postgresql-client", "taskset": "util-linux"}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        unknown = set(dict(s.params).get("modes", [])) - set(pgbench.MODES)
        return [("params.modes", f"unknown modes {sorted(unknown)} (known: "
                 f"{', '.join(pgbench.MODES)})")] if unknown else []

    def server(self, port: int, p: dict[str, Any]) -> tuple[tuple[str, ...], str]:
        return pgbench.server_argv(port), pgbench.READY

    def prepare(self, ctx: Context, addr: str, port: int, p: dict[str, Any]) -> None:
        _pgbench(ctx, pgbench.init_args(addr, port, int(p["scale"])), p, ctx.timeout,
                 init=True)

    def load(self, ctx: Context, addr: str, port: int, p: dict[str, Any], duration: float,
             warm: bool) -> list[Measurement]:
        clients, limit = int(p["clients"]), duration + ctx.timeout
        if warm:
            pgbench.parse(_pgbench(ctx, pgbench.run_args(
                addr, port, "select-only", clients, duration, None), p, limit, warmup=True))
            return []
        out: list[Measurement] = []
        with tempfile.TemporaryDirectory(prefix="cvbench-pgbench-") as tmp:
            for mode in p["modes"]:
                argv = pgbench.run_args(addr, port, mode, clients, duration,
                                        str(Path(tmp) / mode))
                run = pgbench.parse(_pgbench(ctx, argv, p, limit, variant=mode))
                log = b"".join(f.read_bytes() for f in sorted(Path(tmp).glob(f"{mode}.*")))
                counts = pgbench.latencies(log.decode(errors="replace"), run.processed)
                # The log as pgbench wrote it, so that anyone can recompute the p99 from
                # the tool's own lines (gzip: a few bytes per transaction).
                ctx.artifact("pgbench_log",
                             base64.b64encode(gzip.compress(log, mtime=0)).decode("ascii"),
                             variant=mode, encoding="gzip+base64",
                             transactions=run.processed)
                out += [Measurement("db.tps", run.tps, variant=mode),
                        Measurement("db.lat_mean", run.lat_mean, variant=mode),
                        Measurement("db.lat_p99", pgbench.percentile(counts, 0.99),
                                    variant=mode)]
        return out



def _pgbench(ctx: Context, argv: list[str], p: dict[str, Any], timeout: float,
             **about: Any) -> str:
    """pgbench's output (kept as an artifact); InstanceError, with pgbench's own reason
    and counts where it printed them, if it exits non-zero."""
    text, code = run_tool(ctx, argv, p, timeout, "pgbench", **about)
    if code != 0:
        pgbench.parse(text)
        raise InstanceError(f"pgbench exited with {code}: {text[-300:]!r}")
    return text


STUDY: Study = Db()
