"""Versioned result files: journal while running, atomic finalize, pandas and pyperf views.

While a run goes, every sample is appended to `<out>/<name>.journal` (JSON lines: a
header, then samples and events) and flushed, so a crash loses at most the sample being
taken. `finalize()` writes `<name>.json` through a temp file + fsync + link (which fails
rather than overwrite), then removes the journal. Next to it goes `<name>.pyperf.json`,
a pyperf BenchmarkSuite that `python -m pyperf stats|compare_to|hist` reads.

A result carries a sha256 checksum of its canonical JSON, so a corrupted or hand-edited
file is detected instead of half-read; files of a newer schema are refused. What a file
holds, and the schema rule, are in harness.core.records.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.errors import ResultError, ResultWriteError
from harness.core.records import (
    DEFAULT_VARIANT,
    FAILURE_LIMIT,
    SCHEMA,
    Attempts,
    Result,
    Sample,
    checksum,
)

if TYPE_CHECKING:
    import pandas as pd

# The records and the schema version are harness.core.records'; they are re-exported here
# for the code (and notebooks) that read results through this module.
__all__ = ["ATTEMPT_COLUMNS", "FAILURE_LIMIT", "SCHEMA", "Attempts", "Journal", "Loaded",
           "Result", "Sample", "attempts_of", "checksum", "current", "expand", "frame",
           "load", "load_all", "load_result", "pyperf_json", "read_journal", "utc_stamp",
           "with_attempts", "write_new"]

SAMPLE_KEYS = ("backend", "variant", "metric", "unit", "value", "round")
PYPERF_UNITS = {"s": "second", "B": "byte"}
Loaded = tuple[str, Result]  # (file, record)


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


class Journal:
    """Append-only record of a run in progress; `finalize()` turns it into the result."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        self.header = dict(header)  # checked at finalize, with the rest of the result
        self.samples: list[Sample] = []
        self.events: list[dict[str, Any]] = []
        self.artifacts: list[dict[str, Any]] = []
        self._pending: list[str] = []
        self.write_error: OSError | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": never overwrite anything, not even a journal of another run.
        self._f = open(path, "x", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self._write({"journal": SCHEMA, "header": self.header})

    @classmethod
    def open_existing(cls, path: Path) -> Journal:
        """Reopen a journal left by an interrupted run (for --resume)."""
        header, samples, events, artifacts = read_journal(path)
        self = cls.__new__(cls)
        self.path, self.header = path, header
        self.samples, self.events, self.artifacts = samples, events, artifacts
        self._pending, self.write_error = [], None
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._recover()  # drop a line the kill tore in half before appending
        self.event("resumed")
        return self

    def _write(self, record: dict[str, Any]) -> None:
        """Append a line; on a write error (a full disk) keep it pending and retry with the
        next one, so the run goes on and nothing measured is lost (it is all in memory)."""
        self._pending.append(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        try:
            while self._pending:
                self._f.write(self._pending[0])
                self._f.flush()
                self._pending.pop(0)
            self.write_error = None
        except OSError as e:
            self.write_error = e
            self._recover()

    def _recover(self) -> None:
        # A failed flush leaves part of the line in the file; reopen and truncate to the
        # last complete line before retrying.
        with contextlib.suppress(OSError):
            self._f.close()
        self._f = open(self.path, "r+", encoding="utf-8")  # noqa: SIM115
        data = self._f.read()
        self._f.seek(0)
        self._f.truncate(data.rfind("\n") + 1)
        self._f.seek(0, os.SEEK_END)

    def add(self, samples: Iterable[Sample]) -> None:
        """One sample's figures, written as ONE line: a crash keeps all or none of them."""
        batch = list(samples)
        self.samples.extend(batch)
        self._write({"samples": [s.to_dict() for s in batch]})

    def event(self, kind: str, **data: Any) -> None:
        record = {"kind": kind, "time": datetime.now(UTC).isoformat(), **data}
        self._write({"event": record})
        self.events.append(record)

    def artifact(self, **data: Any) -> None:
        self._write({"artifact": data})
        self.artifacts.append(data)

    def close(self) -> None:
        if not self._f.closed:
            with contextlib.suppress(OSError):
                os.fsync(self._f.fileno())
            with contextlib.suppress(OSError):
                self._f.close()

    def finalize(self, final: Path, extra: Mapping[str, Any],
                 fallback: Path | None = None) -> Path:
        """Write the result atomically next to the journal, then drop the journal.

        If that directory cannot take it (a full disk), the result goes to `fallback`
        (default: the state dir) and the journal stays: nothing measured is lost.
        """
        doc = {**self.header, **extra, "samples": [s.to_dict() for s in self.samples],
               "events": self.events, "artifacts": self.artifacts}
        result = Result.from_dict(doc, str(final), sealed=False).seal()
        text = json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n"
        self.close()
        try:
            write_new(final, text)
        except OSError as e:
            alt = (fallback or Path(tempfile.gettempdir())) / final.name
            alt.parent.mkdir(parents=True, exist_ok=True)
            write_new(alt, text)
            raise ResultWriteError(f"{final}: cannot write the result ({e.strerror}); it was "
                                   f"saved as {alt} instead") from None
        with contextlib.suppress(ResultError):  # no pyperf-representable sample: no companion
            write_new(final.with_name(final.name.removesuffix(".json") + ".pyperf.json"),
                      pyperf_json(result))
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return final


def read_journal(path: Path) -> tuple[dict[str, Any], list[Sample], list[dict[str, Any]],
                                      list[dict[str, Any]]]:
    """Header, samples, events and artifacts of a journal; a torn last line is dropped."""
    header: dict[str, Any] | None = None
    samples: list[Sample] = []
    events: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:
                break  # the write a crash interrupted
            raise ResultError(f"{path}: line {i + 1}: not JSON") from None
        if "header" in rec:
            header = rec["header"]
        elif "samples" in rec:
            samples += [Sample.from_dict(x, f"{path}: line {i + 1}: samples[{k}]")
                        for k, x in enumerate(rec["samples"])]
        elif "event" in rec:
            events.append(rec["event"])
        elif "artifact" in rec:
            artifacts.append(rec["artifact"])
    if header is None:
        raise ResultError(f"{path}: no journal header")
    return header, samples, events, artifacts


def write_new(path: Path, text: str, replace: bool = False) -> None:
    """Write `path` atomically (temp file, fsync, then link or rename); fail rather than
    overwrite an existing file, unless `replace`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ResultError(f"{path} exists; results are never overwritten") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_result(path: str | Path) -> Result:
    """Read and check one result file; any problem is a ResultError naming the field."""
    p = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultError(f"{p}: no such result file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultError(f"{p}: cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ResultError(f"{p}: not a result file (invalid JSON: {e})") from None
    return Result.from_dict(doc, p)


def frame(docs: Iterable[Loaded]) -> pd.DataFrame:
    """One row per sample of (file, result) pairs; the columns `load` lists."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for path, doc in docs:
        run = {"run_id": doc.run_id, "scenario": doc.scenario_name,
               "image_digest": doc.image_digest, "host_id": doc.host.get("id"),
               "host": doc.host.get("hostname"), "created": doc.created, "file": path}
        for s in doc.samples:
            meta = doc.backends.get(s.backend, {})
            rows.append({"backend": s.backend, "variant": s.variant, "metric": s.metric,
                         "unit": s.unit, "value": s.value, "round": s.round,
                         "instance": s.instance, "sub": s.sub,
                         # which front a figure went through (the scale study's samples)
                         "front": s.extra.get("front"),
                         # its second daemon was emulated (the overlay study's samples)
                         "worker_tcg": s.extra.get("worker_tcg"), **run,
                         "accel": meta.get("accel"),
                         # a TCG VM, or any backend on a host that is itself emulated
                         "emulated": bool(meta.get("emulated", False))
                         or bool(doc.host.get("emulated"))})
    cols = [*SAMPLE_KEYS, "instance", "sub", "front", "worker_tcg", "run_id", "scenario",
            "image_digest", "host_id", "host", "created", "accel", "emulated", "file"]
    return pd.DataFrame(rows, columns=cols)


ATTEMPT_COLUMNS = ["cell_variant", "tried", "failed", "reason"]


def _attempts(doc: Result) -> dict[str, dict[str, Attempts]]:
    """backend -> cell variant -> its attempts, the copies of an A/A run summed (one cell
    as the report sees it)."""
    out: dict[str, dict[str, Attempts]] = {}
    for a in doc.attempts():
        per = out.setdefault(a.backend, {})
        if a.variant in per:
            b = per[a.variant]
            merged: dict[str, int] = dict(b.reasons)
            for r, n in a.reasons:
                merged[r] = merged.get(r, 0) + n
            a = Attempts(a.backend, a.variant, a.tried + b.tried, a.failed + b.failed,
                         tuple(sorted(merged.items(), key=lambda kv: -kv[1])))
        per[a.variant] = a
    return out


def attempts_of(doc: Result, backend: str, variant: str, sub: str = "") -> Attempts | None:
    """The attempts of the cell whose samples are `backend`, `variant` (sub-variant
    `sub`) in `doc`; None when the result holds no count for it."""
    known = _attempts(doc).get(backend, {})
    return known.get(_cell_variant(variant, sub, known))


def with_attempts(df: pd.DataFrame, docs: Iterable[Loaded]) -> pd.DataFrame:
    """The samples frame with, per row, its cell's measured samples (`Result.attempts`,
    the copies of a cell summed): `cell_variant` (the variant without the sub-variant),
    `tried`, `failed` and the most common `reason` ("" when none failed); `tried` is NaN
    where the result holds no count (a file written before cells were). A copy."""
    cells = {(doc.run_id, b): per for _, doc in docs for b, per in _attempts(doc).items()}
    out = df.copy()
    keys = list(zip(out["run_id"].astype(str), out["backend"].astype(str),
                    out["variant"].astype(str), out["sub"].fillna("").astype(str),
                    strict=True))
    found: dict[tuple[str, str, str, str], tuple[str, float, float, str]] = {}
    for key in set(keys):
        run, backend, variant, sub = key
        known = cells.get((run, backend), {})
        cv = _cell_variant(variant, sub, known)
        got = known.get(cv)
        found[key] = ((cv, float(got.tried), float(got.failed), got.reason) if got is not None
                      else (cv, math.nan, math.nan, ""))
    values = [found[k] for k in keys]
    for i, col in enumerate(ATTEMPT_COLUMNS):
        out[col] = [v[i] for v in values]
    return out


def _cell_variant(variant: str, sub: str, known: Mapping[str, Any]) -> str:
    """The variant of the cell a sample of `variant` (sub-variant `sub`) was taken in: the
    sample says, or (written before `sub` was) the cell of the run whose name it starts
    with, as `harness.sampling.cell_of` reads it."""
    if sub:
        return DEFAULT_VARIANT if variant == sub else variant.removesuffix("," + sub)
    if variant in known:
        return variant
    for v in known:
        if variant.startswith(f"{v},"):
            return v
    return DEFAULT_VARIANT if DEFAULT_VARIANT in known and "=" in variant else variant


def current(docs: Iterable[Loaded]) -> list[Loaded]:
    """Drop results that a resumed run's result in the same set supersedes (it holds all of
    their samples; counting both would count them twice)."""
    docs = list(docs)
    superseded = {Path(doc.supersedes).name for _, doc in docs if doc.supersedes}
    return [(p, d) for p, d in docs if Path(p).name not in superseded]


def load_all(paths: str | Path | Iterable[str | Path]) -> list[Loaded]:
    """(path, result) of every current result in `paths` (see `current`)."""
    return current((str(p), load_result(p)) for p in expand(paths))


def load(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per sample of every result in `paths` (files, or directories of them).

    Columns: backend, variant, metric, unit, value, round, instance, sub (the sub-variant
    within `variant`, None in results from before it was recorded), run_id, scenario,
    image_digest, host_id, host, created, accel, emulated, file.
    """
    return frame(load_all(paths))


FLEET_MANIFEST = "fleet.json"  # marks a fleet run's directory (harness.fleet)


def in_dir(d: Path) -> list[Path]:
    """The result files in directory `d`: its *.json, or, in a fleet run's directory
    (results/fleet/<id>/, with fleet.json), those of each host's directory."""
    if (d / FLEET_MANIFEST).is_file():
        return [q for h in sorted(x for x in d.iterdir() if x.is_dir()) for q in in_dir(h)]
    return sorted(q for q in d.glob("*.json") if not _companion(q))


def expand(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(in_dir(p))
        elif not _companion(p):  # `D/*.json` also matches the pyperf companions: skip them
            out.append(p)
    if not out:
        raise ResultError("no result files given")
    return out


def _companion(p: Path) -> bool:
    return p.name.endswith(".pyperf.json")


def pyperf_json(doc: Result) -> str:
    """The samples as a pyperf BenchmarkSuite (one benchmark per backend/variant/metric).

    pyperf accepts only positive values in second/byte/integer units: a metric with a
    value <= 0 (a phase a backend merges into the previous one) is left out, and the
    suite's metadata says which. pyperf also takes lower as better for every unit, so a
    rate (B/s, iops: higher is better) is exported as its inverse, in seconds per byte or
    per operation, under the name "<metric>^-1": `pyperf compare_to` then calls a slower
    rate "slower", as `bench compare` does.
    """
    import pyperf

    from harness.stats import higher_is_better

    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for s in doc.samples:
        groups.setdefault((s.backend, s.variant, s.metric), []).append(s)
    common = {"cvbench_run_id": doc.run_id, "cvbench_scenario": doc.scenario["name"],
              "cvbench_image": doc.image_digest[:12],
              "cvbench_host_id": str(doc.host.get("id")),
              "hostname": str(doc.host.get("hostname"))}
    benches = []
    omitted = []
    for (backend, variant, metric), samples in sorted(groups.items()):
        own_unit = samples[0].unit
        inverse = higher_is_better(own_unit)
        name = f"{metric}{'^-1' if inverse else ''} {backend}" + (
            "" if variant == "default" else f" [{variant}]")
        values = [float(s.value) for s in samples]
        if min(values) <= 0:
            omitted.append(name)
            continue
        if inverse:
            values = [1.0 / v for v in values]
        unit = "second" if inverse else PYPERF_UNITS.get(own_unit, "integer")
        runs = [pyperf.Run([v], metadata={**common, "name": name, "unit": unit,
                                          "cvbench_backend": backend,
                                          "cvbench_variant": variant,
                                          "cvbench_metric": metric,
                                          "cvbench_unit": own_unit},
                           collect_metadata=False) for v in values]
        benches.append(pyperf.Benchmark(runs))
    if not benches:
        raise ResultError("no sample can be represented in pyperf's format")
    suite = pyperf.BenchmarkSuite(benches)
    data = json.loads(_suite_json(suite))
    if omitted:
        data.setdefault("metadata", {})["cvbench_omitted"] = ", ".join(omitted)
    return json.dumps(data)


def _suite_json(suite: Any) -> str:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as tmp:
        suite.dump(tmp.name, replace=True)
        return Path(tmp.name).read_text()
