"""`bench run db` end to end: PostgreSQL from the Debian image in a fresh instance per
sample, pgbench on the host, on ns, docker and podman with network bridge, publish and
host (short: one sample, 1 s per mode, scale 1), libvirt:disk under `slow`.

Checks: every backend and network mode it has gives tps, mean and p99 latency per mode
and the PSS under load; each figure equals what pgbench's own output kept in the result
says (the p99: the percentile of the kept latencies); the image holds no cluster made at
install time (the server made its own at start, as the postgres user).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

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


def check(doc: dict[str, Any], cells: list[tuple[str, str]]) -> None:
    samples = {(s["backend"], s["variant"], s["metric"]): s["value"] for s in doc["samples"]}
    raw = {(a["backend"], a["variant"]): a["data"] for a in doc["artifacts"]
           if a["kind"] == "pgbench" and not a.get("warmup") and not a.get("init")}
    kept = {(a["backend"], a["variant"]): a["data"] for a in doc["artifacts"]
            if a["kind"] == "pgbench_latencies"}
    for backend, network in cells:
        for mode in pgbench.MODES:
            variant = f"network={network},{mode}"
            run = pgbench.parse(raw[(backend, variant)])
            lats = Counter({int(k): v for k, v in kept[(backend, variant)].items()})
            assert lats.total() == run.processed > 0
            got = {m: samples[(backend, variant, f"db.{m}")]
                   for m in ("tps", "lat_mean", "lat_p99")}
            assert got == {"tps": run.tps, "lat_mean": run.lat_mean,
                           "lat_p99": pgbench.percentile(lats, 0.99)}, (backend, variant)
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
