"""Baselines: the result CI compares against, per host and scenario, with its noise band.

A baseline lives at `results/baselines/<host fingerprint id>/<scenario>.json`. It is a
result file (so everything that reads results reads it) with one more section,
`baseline`: where the samples came from and, once `bench calibrate` has run, the
per-cell A/A spread (`noise`) that `bench compare` turns into a noise band. The file's
checksum is recomputed over the whole, after the source result's own checksum was verified.

A baseline is never overwritten by accident: `bench baseline update` and `bench calibrate`
refuse an existing one unless told `--force`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import results, stats
from harness.core.errors import ResultError, UsageError

DEFAULT_DIR = Path("results/baselines")
CellKey = tuple[str, str, str]  # backend, variant, metric


def path_for(root: Path, host_id: str, scenario: str) -> Path:
    return root / host_id / f"{scenario}.json"


def host_id(doc: Mapping[str, Any], where: str) -> str:
    hid = doc["host"].get("id")
    if not isinstance(hid, str) or not hid:
        raise ResultError(f"{where}: host.id: missing (no host fingerprint)")
    return hid


def noise_of(doc: Mapping[str, Any]) -> dict[CellKey, dict[str, Any]]:
    """The calibrated A/A spread per cell of a baseline (empty when not calibrated)."""
    section = doc.get("baseline")
    if not isinstance(section, dict):
        return {}
    out: dict[CellKey, dict[str, Any]] = {}
    for rec in section.get("noise") or []:
        if isinstance(rec, dict) and {"backend", "variant", "metric", "sigma", "df"} <= set(rec):
            out[(rec["backend"], rec["variant"], rec["metric"])] = rec
    return out


def lookup(root: Path, host: str, scenario: str) -> dict[str, Any] | None:
    """The baseline of (host, scenario) under `root`, or None when there is none."""
    p = path_for(root, host, scenario)
    return results.load_result(p) if p.is_file() else None


def calibrate_noise(docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-cell A/A spread from calibration results (each ran every cell as copies 0 and 1,
    interleaved): one (median of copy 0, median of copy 1) pair per run and cell."""
    import numpy as np

    pairs: dict[CellKey, list[tuple[float, float]]] = {}
    units: dict[CellKey, str] = {}
    for doc in docs:
        by: dict[tuple[str, str, str, int], list[float]] = {}
        for s in doc["samples"]:
            if s.get("copy") in (0, 1):
                by.setdefault((s["backend"], s["variant"], s["metric"], s["copy"]),
                              []).append(float(s["value"]))
                units[(s["backend"], s["variant"], s["metric"])] = s["unit"]
        for (b, v, m, c), values in by.items():
            other = by.get((b, v, m, 1))
            if c == 0 and other:
                pairs.setdefault((b, v, m), []).append(
                    (float(np.median(values)), float(np.median(other))))
    out = []
    for (b, v, m), ps in sorted(pairs.items()):
        spread = stats.aa_spread(ps)
        if spread.df >= 1:
            out.append({"backend": b, "variant": v, "metric": m, "unit": units[(b, v, m)],
                        **spread.as_dict()})
    return out


def make(source: Mapping[str, Any], source_path: str,
         noise: list[dict[str, Any]] | None = None,
         calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A baseline document: the (verified) source result plus the `baseline` section."""
    doc = {k: v for k, v in source.items() if k not in ("checksum", "baseline")}
    doc["baseline"] = {"created": datetime.now(UTC).isoformat(),
                       "source": {"path": source_path, "run_id": source["run_id"],
                                  "checksum": source["checksum"]},
                       "noise": noise or [], "calibration": dict(calibration or {})}
    doc["checksum"] = results.checksum(doc)
    return doc


def write(path: Path, doc: Mapping[str, Any], force: bool) -> None:
    """Write atomically; an existing baseline is replaced only with `force`."""
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force and path.exists():
        raise UsageError(f"{path}: a baseline exists; pass --force to replace it")
    results.write_new(path, text, replace=force)
