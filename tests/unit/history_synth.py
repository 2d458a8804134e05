"""Synthetic histories for bench history's tests: runs of two machines, interleaved in
time, with heavy-tailed noise (Student's t with 3 degrees of freedom, per run and per
sample: a run on a loaded host is far off now and then), a commit per run, and upgrades
of the kernel and of one backend's components at chosen runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from harness import results

MACHINES = {
    "alpha": {"cpu_model": "Synthetic CPU A", "cores": 8, "mem_total_gib": 32,
              "arch": "x86_64"},
    "beta": {"cpu_model": "Synthetic CPU B", "cores": 16, "mem_total_gib": 64,
             "arch": "x86_64"},
}
LEVELS = {("docker", "startup.total"): 0.300, ("docker", "startup.create"): 0.040,
          ("ns", "startup.total"): 0.008, ("ns", "startup.create"): 0.001}


@dataclass
class Upgrade:
    """From run `at` (index among that machine's runs) on: `what` takes `version`, and
    the figures of `backend` (if any) are multiplied by `factor`."""

    machine: str
    at: int
    what: str  # "kernel" or "<backend>:<component>"
    version: str
    backend: str | None = None
    factor: float = 1.0


@dataclass
class Synth:
    runs_per_machine: int = 30
    samples: int = 15
    run_scale: float = 0.03  # per-run effect: exp(run_scale * t3)
    sample_scale: float = 0.05  # per-sample noise: exp(sample_scale * t3)
    upgrades: list[Upgrade] = field(default_factory=list)
    seed: int = 1
    first: int = 0  # index of the first run (a later part of a history starts later)

    def write(self, out: Path) -> list[Path]:
        rng = np.random.default_rng(self.seed)
        out.mkdir(parents=True, exist_ok=True)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        paths = []
        for i in range(self.first, self.first + self.runs_per_machine):
            for j, machine in enumerate(MACHINES):
                when = start + timedelta(hours=12 * i + j)
                doc = self.doc(machine, i, when, rng)
                p = out / f"startup-{machine}-{i:03d}.json"
                p.write_text(json.dumps(doc))
                paths.append(p)
        return paths

    def state(self, machine: str, i: int) -> tuple[dict[str, str], dict[str, float]]:
        versions = {"kernel": "6.1.0-10", "docker:docker": "24.0.5",
                    "docker:containerd": "1.6.20", "docker:runc": "1.1.5", "ns:kernel":
                    "6.1.0-10"}
        factor: dict[str, float] = {}
        for u in self.upgrades:
            if u.machine == machine and i >= u.at:
                versions[u.what] = u.version
                if u.what == "kernel":
                    versions["ns:kernel"] = u.version
                if u.backend:
                    factor[u.backend] = factor.get(u.backend, 1.0) * u.factor
        return versions, factor

    def doc(self, machine: str, i: int, when: datetime, rng: np.random.Generator
            ) -> dict[str, Any]:
        versions, factor = self.state(machine, i)
        samples = []
        run_effect = float(np.exp(self.run_scale * rng.standard_t(3)))
        for (backend, metric), level in LEVELS.items():
            noise = np.exp(self.sample_scale * rng.standard_t(3, self.samples))
            for r, v in enumerate(level * run_effect * factor.get(backend, 1.0) * noise):
                samples.append({"backend": backend, "variant": "default", "metric": metric,
                                "unit": "s", "value": float(v), "round": r + 1})
        backends = {b: {"kind": "container", "components": [
            {"name": k.split(":", 1)[1], "version": v} for k, v in sorted(versions.items())
            if k.startswith(b + ":")]} for b in ("docker", "ns")}
        host = {"hostname": machine, **MACHINES[machine], "kernel": versions["kernel"],
                "distro": "Debian GNU/Linux 12 (bookworm)", "cgroup_mode": "v2",
                "thp": "madvise", "id": f"{machine}-{versions['kernel']}"}
        doc: dict[str, Any] = {
            "schema": 1, "tool": {"name": "cvbench", "version": "0.1.0",
                                  "commit": f"{i:04d}" + "c" * 36, "dirty": False},
            "run_id": f"{machine[:2]}{i:08d}", "created": when.isoformat(),
            "scenario": {"name": "startup", "workload": {"argv": ["true"]}},
            "host": host, "backends": backends, "image": {"digest": "ab" * 32},
            "samples": samples, "events": []}
        doc["checksum"] = results.checksum(doc)
        return doc
