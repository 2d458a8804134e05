"""`bench run memory|disk|io|limits|network` end to end on every backend available here.

Each study runs once (one sample per cell, tiny sizes) through the real CLI, with every
backend this host offers in one run; a backend listed in CVBENCH_REQUIRE but unavailable
fails the test. The checks are the issue's acceptance: the metrics are there for every
backend, io figures equal fields of fio's JSON kept in the result, disk.image equals what
the backend's own tools report, limits are enforced where a backend applies them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness.core.probes.io import lookup
from runtimes import registry
from tests.conftest import REQUIRED, require

pytestmark = [pytest.mark.root, pytest.mark.slow]

BENCH = [sys.executable, "-m", "harness.cli"]

# Tiny parameters: the point is that every backend completes, not precise figures.
TINY: dict[str, dict[str, Any]] = {
    "memory": {"instances": 2, "settle": 0.5},
    "disk": {"write": "2M"},
    "io": {"size": "4M", "runtime": 0.5, "iodepth": 4, "tmpfs_size": "16M"},
    "limits": {"duration": 1.0, "warmup": 0.3, "memory": "32M", "hog": [0.5, 2.0]},
    "network": {"duration": 1},
}


def available_backends() -> list[str]:
    """Base backends usable here; one that CVBENCH_REQUIRE lists but is not, fails."""
    out = []
    for name in registry.base_names():
        a = registry.get(name).availability()
        if a.ok:
            out.append(name)
        elif name in REQUIRED:
            require(name, f"{a.reason} (fix: {a.fix})")
    return out


def run_study(repo: Path, tmp_path: Path, study: str,
              flavours: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """Run `study` on every available base backend, plus those of `flavours` whose base
    is among them."""
    data = tomllib.loads((repo / "scenarios" / f"{study}.toml").read_text())
    backends = available_backends()
    backends += [f for f in flavours if f.partition(":")[0] in backends]
    data["backends"] = backends
    data["params"] = {**data.get("params", {}), **TINY[study]}
    data["sampling"] = {**data["sampling"], "timeout": 300, "time_budget": 1500}
    p, doc = run_once(data, tmp_path)
    assert p.returncode == 0, f"bench run {study} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return doc, backends


def run_once(data: dict[str, Any], tmp_path: Path, samples: int = 1,
             env: dict[str, str] | None = None
             ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`bench run` of the scenario `data`, `samples` samples per cell (`env`: added to
    the environment); its result ({}: none)."""
    path = tmp_path / f"{data['name']}.toml"
    path.write_text(_toml(data))
    out = tmp_path / "D"
    p = subprocess.run([*BENCH, "run", str(path), "--out", str(out), "--warmups", "0",
                        "--min-samples", str(samples), "--max-samples", str(samples)],
                       capture_output=True, text=True, timeout=1800, check=False,
                       env={**os.environ, **(env or {})})
    found = [f for f in out.glob("*.json") if not f.name.endswith(".pyperf.json")]
    return p, (json.loads(found[0].read_text()) if found else {})


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for a scenario: scalars, lists, inline tables, nested tables."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict) and k != "image":
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_value(v)}")
    text = "\n".join(lines) + "\n"
    for k, v in tables:
        text += f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.")
    return text


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v)


def by_backend(doc: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for s in doc["samples"]:
        out[s["backend"]][s["metric"]].append(s)
    return out


def test_memory(repo: Path, tmp_path: Path) -> None:
    doc, backends = run_study(repo, tmp_path, "memory")
    got = by_backend(doc)
    for b in backends:
        for m in ("memory.pss", "memory.uss", "memory.rss"):
            assert len(got[b][m]) == 2 and all(s["value"] > 0 for s in got[b][m]), (b, m)
        assert len(got[b]["memory.daemon"]) == 1, b
        if b != "host":
            assert got[b]["memory.cgroup"], b


def test_disk(repo: Path, tmp_path: Path) -> None:
    doc, backends = run_study(repo, tmp_path, "disk", ("libvirt:disk",))
    got = by_backend(doc)
    if "libvirt:disk" in backends:  # a VM booted into its own overlay has a layer too
        assert "disk.instance" in got["libvirt:disk"]
    for b in backends:
        footprint = [m for m in got[b] if not m.startswith("disk.instance")]
        assert footprint and got[b]["disk.image"][0]["value"] > 0, b
        # Bytes an image shares with other images may be none; nothing is negative.
        assert all(got[b][m][0]["value"] >= 0 for m in footprint), b
        if b in ("host", "ns"):  # the unpacked rootfs, as du -sb counts it
            ref = doc["backends"][b]["prepared"]["ref"]
            du = subprocess.run(["du", "-sb", ref], capture_output=True, text=True,
                                check=True).stdout.split()[0]
            assert got[b]["disk.image"][0]["value"] == int(du), b
        if b in ("ns", "docker", "podman") or "disk.instance" in got[b]:  # a layer per instance
            grown = got[b]["disk.instance"][0]["value"] - got[b]["disk.instance_idle"][0]["value"]
            assert grown >= 2 << 20, (b, grown)
    assert "disk.instance" not in got["host"]
    for b in backends:
        prepared = doc["backends"][b]["prepared"]
        sock = doc["backends"][b].get("socket")
        if sock:  # an engine: its own image size (what `docker|podman system df -v` shows)
            import docker

            api = docker.APIClient(base_url=f"unix://{sock}")
            sizes = {i["Id"].removeprefix("sha256:"): i["Size"] for i in api.df()["Images"]}
            ref = prepared["ref"].removeprefix("sha256:")
            assert got[b]["disk.image"][0]["value"] == sizes[ref], b
        for fmt in ("raw", "qcow2"):  # a VM's disks: qemu-img info's disk size
            path = prepared.get(f"disk_{fmt}")
            if path and f"disk.{fmt}" in got[b]:
                info = json.loads(subprocess.run(
                    ["qemu-img", "info", "--output=json", "-U", path], capture_output=True,
                    text=True, check=True).stdout)
                assert got[b][f"disk.{fmt}"][0]["value"] == info["actual-size"], (b, fmt)


def test_io_figures_are_fios_own(repo: Path, tmp_path: Path) -> None:
    doc, backends = run_study(repo, tmp_path, "io")
    arts = {(a["backend"], a["variant"], a["round"]): a for a in doc["artifacts"]
            if a["kind"] == "fio"}
    io_samples = [s for s in doc["samples"] if s["metric"].startswith("io.")]
    assert io_samples
    for s in io_samples:
        a = arts[(s["backend"], s["variant"], s["round"])]
        f = a["fields"][s["metric"]]
        assert s["value"] == lookup(a["data"], f["path"]) * f["scale"], s
    for b in backends:
        variants = {s["variant"] for s in io_samples if s["backend"] == b}
        refused = {a["variant"] for a in doc["artifacts"]
                   if a["backend"] == b and a["kind"] == "target_refused"}
        if b == "host":  # applies no mounts: its own filesystem only, the reference
            assert variants == {"target=rootfs"}
        else:  # every target measured or refused with a reason, rootfs and tmpfs always
            assert {v.split(".")[0] for v in variants} | refused == \
                {"target=rootfs", "target=volume", "target=bind", "target=tmpfs"}, b
            assert {"target=rootfs", "target=tmpfs"} <= variants, b


def test_limits(repo: Path, tmp_path: Path) -> None:
    doc, backends = run_study(repo, tmp_path, "limits")
    rows = defaultdict(dict)
    for s in doc["samples"]:
        rows[(s["backend"], s["variant"])][s["metric"]] = s["value"]
    for b in backends:
        assert "limits.cpu_used" in rows[(b, "limits.cpus=0.5")], b
        assert "limits.cpu_used" in rows[(b, "limits.cpus=1")], b
        mem = rows[(b, f"limits.memory={32 << 20}")]
        assert "limits.mem_enforced" in mem, b
        if b != "host":  # every isolating backend applies both limits
            assert mem["limits.mem_enforced"] == 1.0, (b, mem)
            # CFS quota: never more than asked (plus rounding of one period)
            assert rows[(b, "limits.cpus=0.5")]["limits.cpu_used"] <= 0.5 * 1.2, b


def test_network(repo: Path, tmp_path: Path) -> None:
    doc, backends = run_study(repo, tmp_path, "network")
    cells = {(c["backend"], c["variant"]): c["status"] for c in doc["cells"]}
    got = defaultdict(set)
    for s in doc["samples"]:
        got[(s["backend"], s["variant"])].add(s["metric"])
    want = {"network.lat_p50", "network.lat_p99", "network.bw"}
    reasons = {(e["backend"], e["variant"]) for e in doc["events"]
               if e["kind"] == "not_applicable"}
    for (b, v), status in cells.items():
        if status == "not_applicable":  # a mode the backend does not apply, with why
            assert (b, v) in reasons
        else:
            assert got[(b, v)] == want, (b, v, status)
    for b in backends:  # loopback inside works everywhere that isolates at all
        assert got[(b, "network=host" if b == "host" else "network=none")] == want, b
    for v in ("network=none", "network=bridge", "network=macvlan", "network=ipvlan"):
        assert cells[("host", v)] == "not_applicable"
    for b in {"ns", "docker", "podman"} & set(backends):  # on the run's own segment
        assert got[(b, "network=macvlan")] == want, b
    kinds = {a["kind"] for a in doc["artifacts"]}
    assert kinds == {"sockperf", "iperf3"}
    for a in doc["artifacts"]:  # clients on the host: its own tools, the image's release
        if a["client"] == "host":
            assert a["client_path"] == shutil.which(a["kind"]) and a["same_version"], a
