"""db: PostgreSQL in the instance, pgbench on the host against the instance's address.

One sample = one fresh server: the instance starts PostgreSQL from a Debian image (the
cluster is made at its start, see harness.core.probes.pgbench.SERVER) on a port chosen
per sample, is ready when the server logs that it accepts connections; then from the
host `pgbench -i` makes the tables at `scale`, `warmup` seconds of select-only run
(discarded), and each mode (sub "select-only", "tpcb-like": pgbench's builtin scripts)
runs `duration` seconds with `clients` connections and one pgbench thread, its
per-transaction log written to a temp dir; the instance is then removed.

  db.tps       pgbench's tps (without the initial connection time)
  db.lat_mean  pgbench's "latency average"
  db.lat_p99   the nearest-rank 99th percentile of the transaction log's latencies
  db.pss_loaded, db.daemon_pss_loaded  the instance's PSS (all its host processes) and
               the engine daemons', the largest seen every `pss_interval` s during load

pgbench's output and the log's latencies (µs -> transactions) are kept per mode as an
artifact (kind "pgbench"); a failed run fails the sample with pgbench's counts.
The network mode is the cell's (`network` variant: bridge, publish, host; publish: the
server's port published on the host, pgbench goes to the host's address, NATed to the
instance's); a backend without the mode closes the cell as not applicable. pgbench runs
pinned to `client_cpuset` (taskset; "" for no pinning), the instance to the scenario's
limits.cpuset: on a 2-core host each gets one core.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import InstanceError, UsageError
from harness.core.probes import pgbench
from harness.core.probes.memory import processes_memory
from harness.runner import Cell, Context, Measurement, NotApplicable
from harness.scenario import Scenario
from harness.studies import _lifecycle as life
from runtimes.base import Instance, publish_address

METRICS = {"db.tps": "tx/s", "db.lat_mean": "s", "db.lat_p99": "s",
           "db.pss_loaded": "B", "db.daemon_pss_loaded": "B"}


class Db:
    name = "db"
    metrics: ClassVar[dict[str, str]] = METRICS
    params: ClassVar[dict[str, Any]] = {"scale": 5, "clients": 4, "duration": 5.0,
                                        "warmup": 2.0, "modes": list(pgbench.MODES),
                                        "pss_interval": 0.5, "client_cpuset": "0"}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        """Checked before anything runs: the modes, and pgbench on the host."""
        out = []
        unknown = set(dict(s.params).get("modes", [])) - set(pgbench.MODES)
        if unknown:
            out.append(("params.modes", f"unknown modes {sorted(unknown)} (known: "
                        f"{', '.join(pgbench.MODES)})"))
        if shutil.which("pgbench") is None:
            out.append(("study", f"pgbench is not installed on the host: {pgbench.MISSING}"))
        return out

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        mode = life.network_mode(cell)
        port, host_port = random.Random().sample(range(20000, 61000), 2)
        spec = ctx.spec(cell, argv=pgbench.server_argv(port))
        if mode == "publish":  # through the host's address, NATed to the instance's
            spec = replace(spec, publish=((host_port, port),))
        try:
            with life.instance(ctx, cell, spec) as inst:
                addr = publish_address() if mode == "publish" else cell.runtime.address(inst)
                if addr is None:
                    raise InstanceError(f"db: {cell.backend} gives no address for an "
                                        f"instance with network {mode}")
                return self.load(ctx, cell, inst, addr,
                                 host_port if mode == "publish" else port, p)
        except UsageError as e:  # a VM cannot share the host's network stack
            raise NotApplicable(f"{cell.backend} refuses network {mode}: {e}") from e

    def load(self, ctx: Context, cell: Cell, inst: Instance, addr: str, port: int,
             p: dict[str, Any]) -> list[Measurement]:
        duration, clients = float(p["duration"]), int(p["clients"])
        pin = ["taskset", "-c", str(p["client_cpuset"])] if p["client_cpuset"] else []
        _pgbench(pgbench.init_args(addr, port, int(p["scale"])), ctx.timeout)
        if float(p["warmup"]) > 0:
            pgbench.parse(_pgbench([*pin, *pgbench.run_args(
                addr, port, "select-only", clients, float(p["warmup"]), None)], ctx.timeout))
        out: list[Measurement] = []
        with _peak_pss(cell, inst, float(p["pss_interval"])) as peak, \
                tempfile.TemporaryDirectory(prefix="cvbench-pgbench-") as tmp:
            for mode in p["modes"]:
                prefix = str(Path(tmp) / mode)
                text = _pgbench([*pin, *pgbench.run_args(addr, port, mode, clients, duration,
                                                         prefix)], duration + ctx.timeout)
                run = pgbench.parse(text)
                logs = sorted(Path(tmp).glob(f"{mode}.*"))
                counts = pgbench.latencies("".join(f.read_text() for f in logs),
                                           run.processed)
                ctx.artifact("pgbench", text, variant=mode, address=addr,
                             latencies_us={str(k): v for k, v in sorted(counts.items())})
                out += [Measurement("db.tps", run.tps, variant=mode),
                        Measurement("db.lat_mean", run.lat_mean, variant=mode),
                        Measurement("db.lat_p99", pgbench.percentile(counts, 0.99),
                                    variant=mode)]
        out += [Measurement("db.pss_loaded", peak[0]),
                Measurement("db.daemon_pss_loaded", peak[1])]
        return out


def _pgbench(argv: list[str], timeout: float) -> str:
    """pgbench's stdout and stderr; InstanceError if it cannot run or exits non-zero
    (with its own error line and counts, from pgbench.parse)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstanceError(f"db: {' '.join(argv[:1])}: {e}") from e
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pgbench.parse(text)  # raises with pgbench's reason
        raise InstanceError(f"db: pgbench exited with {proc.returncode}: {text[-300:]!r}")
    return text


@contextlib.contextmanager
def _peak_pss(cell: Cell, inst: Instance, interval: float) -> Iterator[list[int]]:
    """[instance PSS, daemons' PSS]: the largest of each seen every `interval` s while
    the body runs (the load)."""
    peak = [0, 0]
    failed: list[Exception] = []
    done = threading.Event()
    daemon_pids = [pid for pids in cell.runtime.daemons().values() for pid in pids]

    def watch() -> None:
        try:
            while True:
                peak[0] = max(peak[0], cell.runtime.stats(inst).pss)
                peak[1] = max(peak[1], processes_memory(daemon_pids).pss)
                if done.wait(interval):
                    return
        except Exception as e:  # reported by the caller's thread
            failed.append(e)

    t = threading.Thread(target=watch, name="cvbench-pss", daemon=True)
    t.start()
    try:
        yield peak
    finally:
        done.set()
        t.join()
    if failed or not peak[0]:
        raise InstanceError(f"db: the instance's memory could not be read during the load: "
                            f"{failed[0] if failed else 'no PSS'}")


STUDY = Db()
