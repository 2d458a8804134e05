"""`bench run db` end to end: PostgreSQL from the Debian image in a fresh instance per
sample, pgbench on the host, on ns, docker and podman with network bridge, publish and
host (short: one sample, 1 s per mode, scale 1), libvirt:disk under `slow`.

Checks: every backend and network mode it has gives tps, mean and p99 latency per mode
and the PSS under load; tps and mean equal what pgbench's own output kept in the result
says; the p99 is recomputed here from pgbench's raw per-transaction log kept in the
result (one line per transaction its summary counts), not from cvbench's histogram; the
image holds no cluster made at install time (the server made its own at start, as the
postgres user).
"""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.core.probes import pgbench
from tests.integration._scenario_run import run_one_sample

pytestmark = [pytest.mark.root]

SHORT = {"scale": 1, "clients": 2, "duration": 1.0, "warmup": 0.0}


def run(repo: Path, tmp_path: Path, backends: tuple[str, ...], networks: list[str]
        ) -> dict[str, Any]:
    p, doc = run_one_sample(repo, tmp_path, "db", backends, params=SHORT,
                            variants={"network": networks})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return doc


def p99_of_log(artifact: dict[str, Any]) -> tuple[int, float]:
    """From pgbench's raw per-transaction log kept in the result (`-l` lines: client_id
    transaction_no time script_no time_epoch time_us, the latency in µs third), read
    here without cvbench's parser: the transactions and their nearest-rank 99th
    percentile latency in seconds (numpy's inverted CDF)."""
    assert artifact["encoding"] == "gzip+base64"
    lines = gzip.decompress(base64.b64decode(artifact["data"])).decode().splitlines()
    lats = [int(line.split()[2]) for line in lines]
    return len(lats), float(np.percentile(lats, 99, method="inverted_cdf")) / 1e6


def check(doc: dict[str, Any], cells: list[tuple[str, str]]) -> None:
    samples = {(s["backend"], s["variant"], s["metric"]): s["value"] for s in doc["samples"]}
    raw = {(a["backend"], a["variant"]): a["data"] for a in doc["artifacts"]
           if a["kind"] == "pgbench" and not a.get("warmup") and not a.get("init")}
    logs = {(a["backend"], a["variant"]): a for a in doc["artifacts"]
            if a["kind"] == "pgbench_log"}
    for backend, network in cells:
        for mode in pgbench.MODES:
            variant = f"network={network},{mode}"
            run = pgbench.parse(raw[(backend, variant)])
            summary = re.search(r"^number of transactions actually processed: (\d+)$",
                                raw[(backend, variant)], re.M)
            assert summary is not None
            transactions, p99 = p99_of_log(logs[(backend, variant)])
            assert transactions == int(summary[1]) > 0, (backend, variant)
            got = {m: samples[(backend, variant, f"db.{m}")]
                   for m in ("tps", "lat_mean", "lat_p99")}
            assert (got["tps"], got["lat_mean"]) == (run.tps, run.lat_mean), (backend, variant)
            # the log's resolution: 1 µs
            assert abs(got["lat_p99"] - p99) <= 1e-6, (backend, variant, got["lat_p99"], p99)
        assert samples[(backend, f"network={network}", "db.pss_loaded")] > 20 << 20
        extra = [s.get("extra", s) for s in doc["samples"] if s["backend"] == backend]
        assert all(e["cpuset"] == "1" and e["client_cpuset"] == "0" for e in extra)
        assert (backend, f"network={network}", "db.daemon_pss_loaded") in samples


def test_containers_bridge_publish_host(repo: Path, tmp_path: Path) -> None:
    backends, networks = ("ns", "docker", "podman"), ["bridge", "publish", "host"]
    doc = run(repo, tmp_path, backends, networks)
    check(doc, [(b, n) for b in backends for n in networks])
    assert doc["scenario"]["limits"]["cpuset"] == "1"
    identity = doc["image"]["identity"]
    assert any(r.startswith("var/lib/postgresql") for r in identity["normalised"])


@pytest.mark.slow
@pytest.mark.libvirt
def test_libvirt_disk(repo: Path, tmp_path: Path) -> None:
    doc = run(repo, tmp_path, ("libvirt:disk",), ["bridge", "publish", "host"])
    check(doc, [("libvirt:disk", "bridge"), ("libvirt:disk", "publish")])
    assert any(e["kind"] == "not_applicable" and e["variant"] == "network=host"
               for e in doc["events"])
