"""Resume of studies with sub-variants (io targets, limits' cpus, network modes): a real
`bench run` on ns, interrupted after its first round (Ctrl-C, or killed outright), then
`bench run --resume`, ends with what an uninterrupted run has: the same sample count per
cell and figure, distinct round numbers, and the samples taken before the interruption
kept as they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import results
from harness.core.records import Sample
from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.root]

BENCH = [sys.executable, "-m", "harness.cli"]
SAMPLES = 3


def small(repo: Path, tmp_path: Path, study: str, params: dict[str, Any],
          variants: dict[str, Any] | None = None) -> Path:
    """The shipped scenario of `study` on ns alone, with small parameters."""
    with open(repo / "scenarios" / f"{study}.toml", "rb") as f:
        doc = tomllib.load(f)
    doc["backends"] = ["ns"]
    doc["params"] = {**doc.get("params", {}), **params}
    if variants is not None:
        doc["variants"] = variants
    doc["sampling"].update(warmups=0, min_samples=SAMPLES, max_samples=SAMPLES)
    lines = []
    for key, value in doc.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            for k, v in value.items():
                if isinstance(v, dict):  # image = { recipe = ..., binaries = [...] }
                    v = "{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }"
                else:
                    v = json.dumps(v)
                lines.append(f'"{k}" = {v}')
    path = tmp_path / f"{study}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def journal_rounds(out: Path) -> set[int]:
    rounds: set[int] = set()
    for j in out.glob("*.journal"):
        for line in j.read_text().splitlines():
            with_samples = line.startswith('{"samples"')
            if with_samples:
                rounds |= {s["round"] for s in json.loads(line)["samples"]}
    return rounds


def interrupt_after_first_round(scenario: Path, out: Path, sig: signal.Signals) -> str:
    proc = subprocess.Popen([*BENCH, "run", str(scenario), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not journal_rounds(out):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no sample within 300 s"
        time.sleep(0.1)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:
        assert proc.returncode == 130, err
    names = [p.name for p in out.iterdir() if p.suffix in (".journal", ".json")]
    return names[0].split("-")[-1].split(".")[0]


def before(out: Path) -> list[Sample]:
    """The samples the interrupted run kept (its journal, or its interrupted result)."""
    for p in out.glob("*.journal"):
        return results.read_journal(p)[1]
    (doc,) = [d for _, d in results.load_all(out)]
    return list(doc.samples)


def check_resumed(out: Path, rid: str, kept: list[Sample], subs: bool = True) -> None:
    res = subprocess.run([*BENCH, "run", "--resume", rid, "--out", str(out)],
                         capture_output=True, text=True, check=False, timeout=900)
    assert res.returncode == 0, res.stderr
    ((_, doc),) = results.load_all(out)  # the resumed result supersedes an interrupted one
    samples = doc.samples
    rounds: dict[str, set[int]] = {}
    for s in samples:
        rounds.setdefault(s.variant, set()).add(s.round)
    # every sub-variant of every cell: N samples in N distinct rounds (a cell the
    # interruption caught before its turn in round 1 takes rounds 2..N+1)
    assert rounds and all(len(r) == SAMPLES for r in rounds.values()), rounds
    per_figure = Counter((s.variant, s.metric) for s in samples)
    assert set(per_figure.values()) == {SAMPLES}, per_figure
    assert all(bool(s.sub) == subs for s in samples)
    assert set(kept) <= set(samples), "restored samples changed or lost"
    assert {c["status"] for c in doc.cells} == {"max_samples"}
    assert all(c["samples"] == SAMPLES for c in doc.cells)


def test_io_resumed_after_kill(repo: Path, tmp_path: Path) -> None:
    backend_or_skip("ns")
    scen = small(repo, tmp_path, "io", {"size": "4M", "runtime": 0.2, "iodepth": 4,
                                        "targets": ["rootfs", "tmpfs"]})
    out = tmp_path / "D"
    rid = interrupt_after_first_round(scen, out, signal.SIGKILL)
    kept = before(out)
    assert {s.variant for s in kept} == {"target=rootfs", "target=tmpfs"}
    check_resumed(out, rid, kept)


def test_limits_resumed_after_ctrl_c(repo: Path, tmp_path: Path) -> None:
    backend_or_skip("ns")
    scen = small(repo, tmp_path, "limits", {"cpus": [0.5, 1.0], "duration": 0.5,
                                            "warmup": 0.1, "memory": "16M",
                                            "hog": [0.5, 2.0]})
    out = tmp_path / "D"
    rid = interrupt_after_first_round(scen, out, signal.SIGINT)
    kept = before(out)
    assert len({s.variant for s in kept}) >= 2
    check_resumed(out, rid, kept)


def test_network_resumed_after_kill(repo: Path, tmp_path: Path) -> None:
    backend_or_skip("ns")
    scen = small(repo, tmp_path, "network", {"duration": 1},
                 variants={"network": ["none", "host"]})
    out = tmp_path / "D"
    rid = interrupt_after_first_round(scen, out, signal.SIGKILL)
    kept = before(out)
    check_resumed(out, rid, kept, subs=False)  # its modes are the scenario's variants
