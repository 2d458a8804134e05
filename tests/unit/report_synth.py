"""Synthetic result files for the report tests, written through the real result schema.

Every file is a valid schema-1 result (checksum included) that `harness.results.load`
accepts; the host is called "synthetic-…" so nobody mistakes them for measurements.
The figures are plausible orders of magnitude, not measurements.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import data, results

MiB = 2**20
BACKENDS: dict[str, dict[str, Any]] = {
    "host": {"kind": "process", "isolation": "none"},
    "ns": {"kind": "container"},
    "docker": {"kind": "container"},
    "podman": {"kind": "container"},
    "libvirt": {"kind": "vm", "accel": "tcg", "emulated": True},
}
# Median time to ready (s) and the share of each phase of the lifecycle.
TO_READY = {"host": 0.002, "ns": 0.006, "docker": 0.35, "podman": 0.5, "libvirt": 4.0}
PHASE_SHARE = {"create": 0.3, "start": 0.2, "ready": 0.2, "exit": 0.1, "remove": 0.2}
PSS = {"host": 0.3 * MiB, "ns": 0.5 * MiB, "docker": 2 * MiB, "podman": 1.5 * MiB,
       "libvirt": 180 * MiB}
DAEMON = {"docker": 90 * MiB, "podman": 40 * MiB, "libvirt": 30 * MiB}
IMAGE = {"host": 6 * MiB, "ns": 6 * MiB, "docker": 6.2 * MiB, "podman": 6.1 * MiB,
         "libvirt": 64 * MiB}
JOBS = ("seqread", "seqwrite", "randread", "randwrite")
TARGET_SPEED = {"hostfs": 1.0, "rootfs": 0.6, "volume": 0.95, "bind": 1.0, "tmpfs": 3.0,
                "virtio-raw": 0.3}


def write_result(out: Path, scenario: str, samples: list[dict[str, Any]],
                 backends: Mapping[str, Mapping[str, Any]], *, host: str = "synthetic-a",
                 created: str = "2026-01-10T10:00:00+00:00", run_id: str | None = None,
                 digest: str = "0" * 64, config: Mapping[str, Any] | None = None,
                 cells: list[dict[str, Any]] | None = None) -> Path:
    """Write one finalized result file; return its path. `config`: more of the scenario's
    configuration (limits, params); `cells`: the run's cells with their counts (default:
    none recorded, as in a file written before they were)."""
    run_id = run_id or hashlib.sha1(f"{scenario} {host} {created}".encode()).hexdigest()[:8]
    used = {s["backend"] for s in samples}
    doc: dict[str, Any] = {
        "schema": results.SCHEMA, "tool": {"name": "cvbench", "version": "test"},
        "run_id": run_id, "created": created,
        "scenario": {"name": scenario, "study": scenario, **(config or {})},
        "host": {"hostname": host, "id": f"id-{host}", "cpu_model": "Synthetic CPU",
                 "cores": 2, "mem_total_gib": 24, "kernel": "6.1.0-test",
                 "distro": "Debian GNU/Linux 12", "cgroup_mode": "hybrid",
                 "virtualization": "guest"},
        "backends": {b: {**dict(backends[b]), "versions": {b: "1.0"}} for b in used},
        "image": {"digest": digest, "tag": "cvbench/base:test"},
        "samples": samples, "events": [], "artifacts": [],
        "cells": cells or [], "interrupted": False,
    }
    doc["checksum"] = results.checksum(doc)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario}-{created[:10]}-{run_id}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def _s(backend: str, variant: str, metric: str, unit: str, value: float, rnd: int,
       instance: Any = None) -> dict[str, Any]:
    s = {"backend": backend, "variant": variant, "metric": metric, "unit": unit,
         "value": float(value), "round": rnd}
    if instance is not None:
        s["instance"] = instance
    return s


def startup_samples(rng: np.random.Generator, n: int = 20, speed: float = 1.0,
                    backends: Mapping[str, Any] = BACKENDS) -> list[dict[str, Any]]:
    out = []
    for b in backends:
        for r in range(n):
            phases = {p: TO_READY[b] * f / 0.7 * speed * rng.lognormal(0, 0.15)
                      for p, f in PHASE_SHARE.items()}
            for p, v in phases.items():
                out.append(_s(b, "default", f"startup.{p}", "s", v, r))
            out.append(_s(b, "default", "startup.to_ready", "s",
                          phases["create"] + phases["start"] + phases["ready"], r))
            out.append(_s(b, "default", "startup.total", "s", sum(phases.values()), r))
    return out


def serving_samples(rng: np.random.Generator, n: int = 10) -> list[dict[str, Any]]:
    """An app-startup run: a service removed once it answers (no exit phase), so its
    samples have the serving spans."""
    out = []
    for b in BACKENDS:
        for r in range(n):
            t = {p: TO_READY[b] * f / 0.7 * rng.lognormal(0, 0.15)
                 for p, f in PHASE_SHARE.items() if p != "exit"}
            serving = t["ready"] + TO_READY[b] * 0.5 * rng.lognormal(0, 0.1)
            for p, v in {**t, "serving": serving,
                         "to_serving": t["create"] + t["start"] + serving,
                         "to_ready": t["create"] + t["start"] + t["ready"],
                         "total": t["create"] + t["start"] + serving + t["remove"]}.items():
                out.append(_s(b, "default", f"startup.{p}", "s", v, r))
    return out


def memory_samples(rng: np.random.Generator, rounds: int = 5, instances: int = 4
                   ) -> list[dict[str, Any]]:
    out = []
    for b in BACKENDS:
        for r in range(rounds):
            for i in range(instances):
                pss = PSS[b] * rng.lognormal(0, 0.05)
                out.append(_s(b, "default", "memory.pss", "B", pss, r, i))
                out.append(_s(b, "default", "memory.uss", "B", pss * 0.8, r, i))
                out.append(_s(b, "default", "memory.rss", "B", pss * 1.6, r, i))
                out.append(_s(b, "default", "memory.cgroup", "B", pss * 1.3, r, i))
            out.append(_s(b, "default", "memory.daemon", "B",  # 0: daemonless, as recorded
                          DAEMON[b] * rng.lognormal(0, 0.02) if b in DAEMON else 0.0, r))
    return out


def disk_samples(rounds: int = 3) -> list[dict[str, Any]]:
    out = []
    for b in BACKENDS:
        for r in range(rounds):
            total = IMAGE[b]
            out.append(_s(b, "default", "disk.image", "B", total, r))
            shared = total * 0.5 if b in ("docker", "podman") else 0.0
            out.append(_s(b, "default", "disk.image.shared", "B", shared, r))
            out.append(_s(b, "default", "disk.image.unique", "B", total - shared, r))
            out.append(_s(b, "default", "disk.instance", "B",
                          (16 * MiB if b != "host" else 0) + 4096 * (r + 1), r))
    return out


def io_samples(rng: np.random.Generator, rounds: int = 6) -> list[dict[str, Any]]:
    out = []
    targets = {"host": ["hostfs"], "ns": ["rootfs", "volume", "bind", "tmpfs"],
               "docker": ["rootfs", "volume", "bind", "tmpfs"],
               "podman": ["rootfs", "volume", "bind", "tmpfs"], "libvirt": ["virtio-raw"]}
    for b, ts in targets.items():
        for t in ts:
            for job in JOBS:
                base_bw = 800 * MiB if job.startswith("seq") else 60 * MiB
                bs = 2**20 if job.startswith("seq") else 4096
                for r in range(rounds):
                    bw = base_bw * TARGET_SPEED[t] * rng.lognormal(0, 0.06)
                    if b == "libvirt":
                        bw *= 0.2
                    v = f"target={t}"
                    out.append(_s(b, v, f"io.{job}.bw", "B/s", bw, r))
                    out.append(_s(b, v, f"io.{job}.iops", "IOPS", bw / bs, r))
                    out.append(_s(b, v, f"io.{job}.lat_p50", "s", bs / bw, r))
                    out.append(_s(b, v, f"io.{job}.lat_p99", "s", 3 * bs / bw, r))
    return out


def density_samples(rng: np.random.Generator, steps: int = 8, rounds: int = 2
                    ) -> list[dict[str, Any]]:
    out = []
    avail0 = 20 * 2**30
    for b in ("ns", "docker", "libvirt"):
        for r in range(rounds):
            for n in range(1, steps + 1):
                pss = DAEMON.get(b, 0) * 0 + PSS[b] * n * rng.lognormal(0, 0.02)
                out.append(_s(b, "default", "density.pss_total", "B", pss, r, n))
                out.append(_s(b, "default", "density.daemon_pss", "B",  # 0: daemonless
                              DAEMON.get(b, 0), r, n))
                out.append(_s(b, "default", "density.mem_available", "B",
                              avail0 - 1.2 * pss - DAEMON.get(b, 0), r, n))
                lat = TO_READY[b] * (1 + max(0, n - 5) * 0.3) * rng.lognormal(0, 0.05)
                out.append(_s(b, "default", "density.start_latency", "s", lat, r, n))
    return out


# limits: cores used per asked cpus (× asked), and the cores the host left idle; the host
# applies no limit (its metadata says so) and runs its two busy loops flat out.
HOST_CORES = 2.0
CPU_USED = {"ns": 1.0, "docker": 0.99, "podman": 1.01, "libvirt": 1.3}
LIMIT = 64 * MiB
HOG = (0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0)
# The largest fraction of the limit that lived; the smallest killed is the next one.
LIVED = {"host": 2.0, "ns": 0.9, "docker": 0.9, "podman": 2.0, "libvirt": 1.1}
LIMITS_META: dict[str, dict[str, Any]] = {
    **BACKENDS, "host": {**BACKENDS["host"], "not_applied": ["limits", "mounts", "network"]},
    # a container backend that applies cpus but not memory
    "podman": {**BACKENDS["podman"], "not_applied": ["limits.memory"]}}
CONTENDED = ("docker", 1.0)  # no idle core left while docker ran at cpus=1


def limits_samples(rng: np.random.Generator, rounds: int = 6) -> list[dict[str, Any]]:
    out = []
    for b in BACKENDS:
        for r in range(rounds):
            for cpus in (0.5, 1.0):
                v = f"limits.cpus={cpus:g}"
                used = (1.9 if b == "host" else cpus * CPU_USED[b]) * rng.lognormal(0, 0.01)
                idle = 0.0 if (b, cpus) == CONTENDED else max(0.0, HOST_CORES - used - 0.1)
                out += [_s(b, v, "limits.cpu_used", "cores", used, r),
                        _s(b, v, "limits.cpu_ratio", "×", used / cpus, r),
                        _s(b, v, "limits.host_idle", "cores", idle, r)]
            v = f"limits.memory={LIMIT}"
            lived = int(LIMIT * LIVED[b])
            out += [_s(b, v, "limits.mem_max_ok", "B", lived, r),
                    _s(b, v, "limits.mem_enforced", "bool", float(LIVED[b] < HOG[-1]), r)]
            if LIVED[b] < HOG[-1]:
                killed = int(LIMIT * HOG[HOG.index(LIVED[b]) + 1])
                out.append(_s(b, v, "limits.mem_killed_at", "B", killed, r))
    return out


# network: medians per backend and mode (p50 s, p99 s, B/s); the host runs in mode host
# only, the VM refuses host (it cannot share the host's network stack) and macvlan and
# ipvlan (containers only; podman without ipvlan, as Podman 4.3's netavark).
NET = {
    "host": {"host": (20e-6, 40e-6, 4.0 * 2**30)},
    "ns": {"none": (15e-6, 30e-6, 5.0 * 2**30), "bridge": (30e-6, 60e-6, 3.0 * 2**30),
           "host": (21e-6, 42e-6, 3.9 * 2**30), "macvlan": (25e-6, 50e-6, 3.4 * 2**30),
           "ipvlan": (24e-6, 48e-6, 3.5 * 2**30)},
    "docker": {"none": (16e-6, 32e-6, 5.0 * 2**30), "bridge": (45e-6, 100e-6, 2.5 * 2**30),
               "host": (22e-6, 45e-6, 3.8 * 2**30), "macvlan": (35e-6, 70e-6, 3.0 * 2**30),
               "ipvlan": (34e-6, 68e-6, 3.1 * 2**30)},
    "podman": {"none": (16e-6, 33e-6, 4.9 * 2**30), "bridge": (50e-6, 110e-6, 2.4 * 2**30),
               "host": (22e-6, 46e-6, 3.8 * 2**30), "macvlan": (36e-6, 72e-6, 2.9 * 2**30)},
    "libvirt": {"none": (300e-6, 1.5e-3, 300 * MiB), "bridge": (400e-6, 2e-3, 200 * MiB)},
}


def network_samples(rng: np.random.Generator, rounds: int = 6) -> list[dict[str, Any]]:
    out = []
    for b, modes in NET.items():
        for mode, (p50, p99, bw) in modes.items():
            v = f"network={mode}"
            for r in range(rounds):
                out += [_s(b, v, "network.lat_p50", "s", p50 * rng.lognormal(0, 0.03), r),
                        _s(b, v, "network.lat_p99", "s", p99 * rng.lognormal(0, 0.05), r),
                        _s(b, v, "network.bw", "B/s", bw * rng.lognormal(0, 0.03), r)]
    return out


# stack: per backend (per service: created, started, ready, healthy) medians in s, scaled
STACK_SCALE = {"ns": 1.0, "docker": 2.0, "podman": 1.5, "libvirt": 40.0}
STACK_TIMES = {"db": (0.0, 0.05, 0.1, 0.4), "web": (0.4, 0.5, 0.6, None)}


def stack_samples(rng: np.random.Generator, rounds: int = 3) -> list[dict[str, Any]]:
    out = []
    for b, scale in STACK_SCALE.items():
        for r in range(1, rounds + 1):
            for service, times in STACK_TIMES.items():
                for metric, t in zip(("created", "started", "ready", "healthy"), times,
                                     strict=True):
                    if t is not None:
                        s = _s(b, f"placement=per-service,service={service}",
                               f"stack.service.{metric}", "s",
                               t * scale * rng.lognormal(0, 0.02), r)
                        out.append({**s, "sub": f"service={service}"})
            out.append(_s(b, "placement=per-service", "stack.start", "s",
                          0.6 * scale * rng.lognormal(0, 0.02), r))
    return out


def counted(samples: list[dict[str, Any]], failed: Mapping[str, int]
            ) -> list[dict[str, Any]]:
    """The cells of a run of `samples`, as `bench run` records them: per backend and cell
    variant, its rounds succeeded, and `failed[backend]` failures more."""
    rounds: dict[tuple[str, str], set[int]] = {}
    for s in samples:
        sub = s.get("sub")
        v = s["variant"] if not sub else (
            "default" if s["variant"] == sub else s["variant"].removesuffix("," + sub))
        rounds.setdefault((s["backend"], v), set()).add(s["round"])
    return [{"backend": b, "variant": v, "status": "max_samples", "samples": len(r),
             "failures": failed.get(b, 0), "attempts": len(r) + failed.get(b, 0),
             "reasons": {f"{b} failed": failed[b]} if failed.get(b) else {},
             "warmup_failures": 0} for (b, v), r in rounds.items()]


def all_results(out: Path, seed: int = 1, host: str = "synthetic-a",
                created: str = "2026-01-10T10:00:00+00:00", speed: float = 1.0,
                failed: Mapping[str, int] | None = None) -> list[Path]:
    """One result file per study, all from one (synthetic) host and day; `failed`:
    record the cells' counts, with that many failures per backend (default: no counts,
    as in files written before they were)."""
    rng = np.random.default_rng(seed)
    kw: dict[str, Any] = {"host": host, "created": created}

    def write(scenario: str, samples: list[dict[str, Any]],
              backends: Mapping[str, Mapping[str, Any]] = BACKENDS) -> Path:
        cells = None if failed is None else counted(samples, failed)
        return write_result(out, scenario, samples, backends, cells=cells, **kw)

    return [
        write("startup", startup_samples(rng, speed=speed)),
        write("memory", memory_samples(rng)),
        write("disk", disk_samples()),
        write("io", io_samples(rng)),
        write("density", density_samples(rng)),
        write("limits", limits_samples(rng), LIMITS_META),
        write("network", network_samples(rng)),
        write("stack", stack_samples(rng)),
    ]


def load(paths: list[Path]) -> tuple[list[results.Loaded], pd.DataFrame]:
    """The results at `paths` and their samples frame as the report sees it (enriched)."""
    docs: list[results.Loaded] = [(str(p), results.load_result(p)) for p in paths]
    return docs, data.enrich(results.frame(docs), docs)


# Application studies (harness.report.apps): throughput per backend and network mode as a
# fraction of the bare host's, the host serving on its own network only; the TCG VM has no
# host network. Latency scales inversely. Figures per (study, sub): metric, unit, host value.
APP_SPEED = {
    "host": {"host": 1.0},
    "ns": {"bridge": 0.97, "publish": 0.90, "host": 1.0},
    "docker": {"bridge": 0.93, "publish": 0.75, "host": 0.99},
    "podman": {"bridge": 0.92, "publish": 0.70, "host": 0.99},
    "libvirt": {"bridge": 0.08, "publish": 0.07},
}
APP_FIGURES: dict[str, dict[str, tuple[str, str, float, float]]] = {
    # study: {sub: (throughput metric, its unit, host median, host p99 s)}
    "http": {"small": ("http.rps", "req/s", 20000.0, 2e-3),
             "1MiB": ("http.rps", "req/s", 900.0, 40e-3)},
    "kv": {"GET": ("kv.ops", "ops/s", 60000.0, 1e-3), "SET": ("kv.ops", "ops/s", 55000.0, 1.2e-3)},
}
APP_PSS = {"host": 4 * MiB, "ns": 4.2 * MiB, "docker": 5 * MiB, "podman": 5 * MiB,
           "libvirt": 190 * MiB}


def app_samples(rng: np.random.Generator, study: str, rounds: int = 8,
                speed: float = 1.0, placement: Mapping[str, str] | None = None
                ) -> list[dict[str, Any]]:
    """A server study: per sample its throughput, p50, p99 per sub-case, the instance's
    PSS under load and (engines, VMs) the daemons'; every sample carries its `sub`, and
    `placement` ({"cpuset": "1", "client_cpuset": "0"}) when given."""
    out = []
    for b, modes in APP_SPEED.items():
        for mode, f in modes.items():
            v = f"network={mode}"
            for r in range(rounds):
                for sub, (metric, unit, top, p99) in APP_FIGURES[study].items():
                    k = f * speed * rng.lognormal(0, 0.03)
                    lat = 1 / k
                    for m, u, x in ((metric, unit, top * k), (f"{study}.lat_p50", "s",
                                                              p99 / 4 * lat),
                                    (f"{study}.lat_p99", "s", p99 * lat)):
                        out.append({**_s(b, f"{v},{sub}", m, u, x, r), "sub": sub})
                out.append(_s(b, v, f"{study}.pss_loaded", "B",
                              APP_PSS[b] * rng.lognormal(0, 0.02), r))
                # (0 for a daemonless backend, as the study records it)
                out.append(_s(b, v, f"{study}.daemon_pss_loaded", "B",
                              DAEMON[b] * rng.lognormal(0, 0.02) if b in DAEMON else 0.0, r))
    return [{**x, **(placement or {})} for x in out]


def cpu_samples(rng: np.random.Generator, rounds: int = 8) -> list[dict[str, Any]]:
    """The self-contained cpu study: events/s, no network variant."""
    speed = {"host": 1.0, "ns": 1.0, "docker": 0.99, "podman": 0.99, "libvirt": 0.05}
    return [_s(b, "default", "cpu.events", "events/s", 1200 * f * rng.lognormal(0, 0.01), r)
            for b, f in speed.items() for r in range(rounds)]
