"""Result files: journal -> atomic finalize -> load through pandas and pyperf."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import results
from harness.core.errors import ResultError
from harness.core.records import Sample


def header() -> dict[str, object]:
    return {"schema": 1, "tool": {"name": "cvbench", "version": "0"}, "run_id": "0123456789",
            "created": "2026-01-01T00:00:00+00:00",
            "scenario": {"name": "startup"}, "host": {"id": "h1", "hostname": "x"},
            "backends": {"host": {"versions": {}}, "vm": {"accel": "tcg", "emulated": True}},
            "image": {"digest": "ab" * 32, "recipe": {"name": "base"}}}


def make_result(tmp_path: Path, n: int = 12) -> Path:
    j = results.Journal(tmp_path / "r.journal", header())
    for i in range(n):
        j.add([Sample(b, "default", m, "s", 0.001 * (1 + i % 3) * (10 if b == "vm" else 1),
                      i + 1) for b in ("host", "vm") for m in ("startup.total", "startup.create")])
    j.event("note", text="hello")
    return j.finalize(tmp_path / "r.json", {"cells": []})


def test_round_trip_through_pandas(tmp_path: Path) -> None:
    path = make_result(tmp_path)
    assert not (tmp_path / "r.journal").exists()
    df = results.load(path)
    assert len(df) == 12 * 4
    assert {"backend", "variant", "metric", "unit", "value", "round", "run_id",
            "image_digest"} <= set(df.columns)
    assert df["image_digest"].unique().tolist() == ["ab" * 32]
    assert bool(df[df.backend == "vm"]["emulated"].all())
    med = df[(df.metric == "startup.total")].groupby("backend")["value"].median()
    assert med["vm"] == pytest.approx(10 * med["host"])
    assert results.load(tmp_path).shape == df.shape  # a directory works too


def test_pyperf_companion(tmp_path: Path) -> None:
    path = make_result(tmp_path)
    pp = tmp_path / "r.pyperf.json"
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(pp))
    names = suite.get_benchmark_names()
    assert "startup.total host" in names and "startup.total vm" in names
    bench = suite.get_benchmark("startup.total host")
    assert bench.get_nvalue() == 12
    assert bench.get_unit() == "second"
    proc = subprocess.run([sys.executable, "-m", "pyperf", "stats", str(pp)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert path.exists()


def test_never_overwrites(tmp_path: Path) -> None:
    make_result(tmp_path)
    j = results.Journal(tmp_path / "r2.journal", header())
    j.add([Sample("host", "default", "m", "s", 1.0, 1)])
    with pytest.raises(ResultError, match="never overwritten"):
        j.finalize(tmp_path / "r.json", {})
    j.close()
    with pytest.raises(FileExistsError):
        results.Journal(tmp_path / "r2.journal", header())


def test_checksum_detects_corruption(tmp_path: Path) -> None:
    path = make_result(tmp_path)
    doc = json.loads(path.read_text())
    doc["samples"][0]["value"] = 99.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match="checksum"):
        results.load_result(bad)
    truncated = tmp_path / "trunc.json"
    truncated.write_text(path.read_text()[:-100])
    with pytest.raises(ResultError, match="invalid JSON"):
        results.load_result(truncated)


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = make_result(tmp_path)
    doc = json.loads(path.read_text())
    doc["schema"] = 99
    doc["checksum"] = results.checksum(doc)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match="newer than this cvbench"):
        results.load_result(newer)


def test_journal_survives_a_torn_line(tmp_path: Path) -> None:
    j = results.Journal(tmp_path / "t.journal", header())
    j.add([Sample("host", "default", "m", "s", 1.0, 1)])
    j.close()
    with open(tmp_path / "t.journal", "a") as f:
        f.write('{"sample": {"backend": "ho')
    hdr, samples, events, _ = results.read_journal(tmp_path / "t.journal")
    assert hdr["run_id"] == "0123456789" and len(samples) == 1 and events == []


def test_companions_skipped_in_globs(tmp_path: Path) -> None:
    make_result(tmp_path)
    paths = results.expand([*tmp_path.glob("*.json")])
    assert [p.name for p in paths] == ["r.json"]
