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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import results, stats
from harness.core.errors import BenchError, ResultError, UsageError
from harness.core.records import Baseline, Noise, Result

if TYPE_CHECKING:
    from harness.session import Reporter

DEFAULT_DIR = Path("results/baselines")
CellKey = tuple[str, str, str]  # backend, variant, metric


def path_for(root: Path, host_id: str, scenario: str) -> Path:
    return root / host_id / f"{scenario}.json"


def host_id(doc: Result, where: str) -> str:
    if doc.host_id is None:
        raise ResultError(f"{where}: host.id: missing (no host fingerprint)")
    return doc.host_id


def noise_of(doc: Result) -> dict[CellKey, Noise]:
    """The calibrated A/A spread per cell of a baseline (empty when not calibrated)."""
    return {} if doc.baseline is None else {n.key: n for n in doc.baseline.noise}


def lookup(root: Path, host: str, scenario: str) -> Result | None:
    """The baseline of (host, scenario) under `root`, or None when there is none."""
    p = path_for(root, host, scenario)
    return results.load_result(p) if p.is_file() else None


def calibrate_noise(docs: Iterable[Result]) -> list[Noise]:
    """Per-cell A/A spread from calibration results (each ran every cell as copies 0 and 1,
    interleaved): one (median of copy 0, median of copy 1) pair per run and cell."""
    import numpy as np

    pairs: dict[CellKey, list[tuple[float, float]]] = {}
    units: dict[CellKey, str] = {}
    for doc in docs:
        by: dict[tuple[str, str, str, int], list[float]] = {}
        for s in doc.samples:
            if s.copy in (0, 1):
                by.setdefault((s.backend, s.variant, s.metric, s.copy),
                              []).append(float(s.value))
                units[(s.backend, s.variant, s.metric)] = s.unit
        for (b, v, m, c), values in by.items():
            other = by.get((b, v, m, 1))
            if c == 0 and other:
                pairs.setdefault((b, v, m), []).append(
                    (float(np.median(values)), float(np.median(other))))
    out = []
    for (b, v, m), ps in sorted(pairs.items()):
        spread = stats.aa_spread(ps)
        if spread.df >= 1:
            out.append(Noise(backend=b, variant=v, metric=m, unit=units[(b, v, m)],
                             runs=spread.runs, sigma_within=spread.within,
                             sigma_between=spread.between, sigma=spread.total, df=spread.df,
                             max_aa_within=spread.max_within,
                             max_aa_cross=spread.max_cross))
    return out


def make(source: Result, source_path: str, noise: Sequence[Noise] = (),
         calibration: Mapping[str, Any] | None = None) -> Result:
    """A baseline: the (verified) source result plus the `baseline` section."""
    section = Baseline(created=datetime.now(UTC).isoformat(),
                       source={"path": source_path, "run_id": source.run_id,
                               "checksum": source.checksum},
                       noise=tuple(noise), calibration=dict(calibration or {}))
    return replace(source, baseline=section).seal()


def recalibrated(doc: Result, where: str, noise: Sequence[Noise],
                 calibration: Mapping[str, Any]) -> Result:
    """The baseline `doc` with a new noise band; its samples and source are kept."""
    if doc.baseline is None:
        raise ResultError(f"{where}: baseline: missing (not a baseline)")
    section = replace(doc.baseline, noise=tuple(noise), calibration=dict(calibration))
    return replace(doc, baseline=section).seal()


def write(path: Path, doc: Result, force: bool) -> None:
    """Write atomically; an existing baseline is replaced only with `force`."""
    text = json.dumps(doc.to_dict(), indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force and path.exists():
        raise UsageError(f"{path}: a baseline exists; pass --force to replace it")
    results.write_new(path, text, replace=force)


def calibrate(scenario_name: str, backends: list[str] | None, out_dir: Path,
              baselines_dir: Path, runs: int, over_s: float, force: bool,
              reporter: Callable[[], Reporter], say: Callable[[str], None]
              ) -> tuple[Path, list[Noise]]:
    """`bench calibrate`: `runs` A/A runs of the scenario (every cell twice, interleaved),
    spread evenly over `over_s` seconds, and their noise band stored in this host's
    baseline (made from the first run when there is none): the baseline's path and the
    band. `reporter` makes what each run tells the user; `say`: a line between runs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from harness import scenario
    from harness.core import hostinfo

    scen = scenario.load(scenario_name)
    target = path_for(baselines_dir, hostinfo.fingerprint()["id"], scen.name)
    existing = results.load_result(target) if target.is_file() else None
    if existing is not None and noise_of(existing) and not force:
        raise UsageError(f"{target}: already calibrated; pass --force to measure again")
    docs: list[results.Loaded] = []
    t0 = time.monotonic()
    for i in range(runs):
        wait = t0 + i * over_s / runs - time.monotonic()
        if wait > 0:
            say(f"next run in {wait:.0f} s (spreading {runs} runs over {over_s:.0f} s)")
            time.sleep(wait)
        say(f"calibration run {i + 1}/{runs}")
        # Each calibration run is a session in a fresh process, as the runs compared later
        # are separate `bench run` processes: process start-up state is part of what
        # differs between runs.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            final, problem = pool.submit(_calibration_run, scenario_name, backends,
                                         out_dir, reporter).result()
        if problem:
            raise BenchError(f"calibration run {i + 1} failed ({problem}); nothing stored")
        docs.append((final, results.load_result(final)))
    noise = calibrate_noise(d for _, d in docs)
    cal = {"runs": [p for p, _ in docs], "run_ids": [d.run_id for _, d in docs]}
    if existing is not None:  # keep the baseline's samples, replace only the noise band
        doc = recalibrated(existing, str(target), noise, cal)
    else:
        doc = make(docs[0][1], docs[0][0], noise, cal)
    write(target, doc, force=existing is not None)
    return target, noise


def _calibration_run(scenario_name: str, backends: list[str] | None, out_dir: Path,
                     reporter: Callable[[], Reporter]) -> tuple[str, str]:
    """One A/A run (every cell twice, interleaved): (its result file, "" or what failed)."""
    from harness import scenario, session

    try:
        done = session.Session(scenario.load(scenario_name), backends, out_dir,
                               reporter(), copies=2).execute()
    except BenchError as e:
        return "", str(e)
    if done.outcome.interrupted:
        return str(done.result), "interrupted"
    if done.failed:
        return str(done.result), f"cells failed: {', '.join(c.label for c in done.failed)}"
    return str(done.result), ""
