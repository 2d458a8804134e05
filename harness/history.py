"""`bench history`: every figure over time, per machine; where it moved, and what changed.

A *series* is one machine (hardware id: CPU model, cores, memory, architecture) × scenario
× backend × variant × metric. A kernel or engine upgrade on the same machine stays in the
series: it is what a move gets annotated with, never a reason to start a new line. A
different machine is always a different series.

Each run is one point of its series: the median of its samples, with the bootstrap 95 % CI.
Moves are found by binary segmentation:

1. the most likely split of a stretch of runs is the one that maximises Pettitt's rank
   statistic over the runs' medians (a Mann-Whitney U between the runs before and after
   each candidate split). Ranks make it robust: one run on a loaded host, however far
   off, moves it by one rank;
2. the split counts as a move when `bench compare`'s decision holds between the runs on
   either side of it (up to `window` runs each, pooled, as compare pools several runs per
   side): Mann-Whitney p < alpha, the 95 % CI of the ratio of medians excludes 1, and the
   change exceeds both the threshold and the noise band. The band comes from the series'
   run-to-run spread of the medians, estimated robustly (the MAD of successive
   differences: neither a move nor a stray run widens it), with alpha shared out
   Bonferroni-wise over every split that was a candidate in every series (the split is
   the most extreme of many: a band for one fixed comparison would flag noise);
3. a move splits its stretch in two, and each part is searched again. A side needs
   `min_runs` runs (2): one deviating run is an outlier until another confirms it.

Each move is annotated with what differs between the last run before it and the first
after it: the cvbench commit, the host's software, the backend's components, the image and
the scenario (harness.compare.differences); and with what changed one run earlier or later
(with noisy runs the split can be one run off).

Files that cannot be read (corrupted, other schema versions), and files of another
scenario or machine than asked for, are skipped with one line each.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from harness import results, stats
from harness.compare import Change, differences
from harness.core import hostinfo
from harness.core.errors import ResultError, UsageError
from harness.core.records import Attempts, Result

MIN_RUNS = 2
WINDOW = 10
MAD_TO_SD = 1.4826  # MAD of a normal sample x this = its standard deviation


# --- loading ---------------------------------------------------------------------------

@dataclass
class Gathered:
    """What `load` gathered for a history: the runs in time order, each with its file (a
    results.Loaded), and the files it left out."""

    runs: list[results.Loaded]
    skipped: list[str]  # one line per file left out, naming it and why


def load(paths: Iterable[str | Path], scenario: str | None = None,
         host: str | None = None) -> Gathered:
    """Every readable result under `paths` (files, or directories of them), in time order.
    `scenario` and `host` (a hardware id, host id or hostname) keep only those."""
    files: list[Path] = []
    skipped: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = results.in_dir(p)
            if not found:
                skipped.append(f"{p}: no result files in it")
            files += found
        elif p.name.endswith(".pyperf.json"):
            continue
        elif p.exists():
            files.append(p)
        else:
            skipped.append(f"{p}: no such file or directory")
    runs: list[results.Loaded] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            doc = results.load_result(f)
        except ResultError as e:
            skipped.append(str(e))
            continue
        if doc.created is None:
            skipped.append(f"{f}: created: missing (a run without a time has no place in a "
                           "history)")
        elif scenario is not None and doc.scenario_name != scenario:
            skipped.append(f"{f}: scenario {doc.scenario_name!r}, not {scenario!r}")
        elif host is not None and host not in (hostinfo.hardware_id(doc.host), doc.host_id,
                                                doc.host.get("hostname")):
            skipped.append(f"{f}: another machine ({_machine(doc.host)})")
        elif doc.run_id in seen:
            skipped.append(f"{f}: the same run as {seen[doc.run_id]} (run {doc.run_id})")
        else:
            seen[doc.run_id] = str(f)
            runs.append((str(f), doc))
    runs = results.current(runs)
    runs.sort(key=lambda r: (_when(r[1]), r[1].run_id))
    return Gathered(runs, skipped)


def _when(doc: Result) -> datetime:
    return datetime.fromisoformat(str(doc.created))


def _machine(host: Mapping[str, Any]) -> str:
    return f"{host.get('hostname', '?')}, hardware id {hostinfo.hardware_id(host)}"


# --- series ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    hardware: str
    scenario: str
    backend: str
    variant: str
    metric: str
    unit: str

    @property
    def cell(self) -> str:
        v = "" if self.variant == "default" else f" [{self.variant}]"
        return f"{self.scenario} · {self.backend}{v} · {self.metric}"


@dataclass(eq=False)
class Point:
    """One run of a series."""

    file: str
    doc: Result
    values: np.ndarray
    median: float
    lo: float
    hi: float

    @property
    def when(self) -> datetime:
        return _when(self.doc)


@dataclass(frozen=True)
class Move:
    """A change of level between points[index - 1] and points[index] of a series."""

    key: Key
    index: int
    before: Point  # the last run before the move
    after: Point  # the first run after it
    runs_before: int  # runs compared on each side
    runs_after: int
    decision: stats.Decision
    band: float
    changes: tuple[Change, ...]
    # Changes between the neighbouring pairs of runs (offset -1: one run earlier, +1: one
    # later), other than the commit: with noisy runs the split can be one run off.
    nearby: tuple[tuple[int, Change], ...] = ()

    @property
    def verdict(self) -> str:
        return self.decision.verdict

    @property
    def change(self) -> float:
        """Relative change of the median, later/earlier - 1 (+0.2: 20 % higher)."""
        return self.decision.ratio - 1


@dataclass
class Series:
    key: Key
    hostnames: list[str]
    emulated: bool
    points: list[Point]
    moves: list[Move] = field(default_factory=list)
    note: str = ""  # why no move could be searched for, if so


def series(runs: Sequence[tuple[str, Result]], metrics: Sequence[str] = ("*",),
           backends: Sequence[str] = ("*",)) -> list[Series]:
    """One series per (machine, scenario, backend, variant, metric, unit), its points in
    time order (`runs` come sorted). Samples of a density ramp (one per instance count)
    are left out: their figures depend on the count, not on the run."""
    values: dict[Key, list[tuple[int, list[float]]]] = {}
    info: dict[Key, tuple[set[str], bool]] = {}
    for i, (_, doc) in enumerate(runs):
        hw = hostinfo.hardware_id(doc.host) or "?"
        by: dict[Key, list[float]] = {}
        for s in doc.samples:
            if s.instance is not None:
                continue
            key = Key(hw, doc.scenario_name or "?", s.backend, s.variant, s.metric, s.unit)
            by.setdefault(key, []).append(float(s.value))
        for key, vals in by.items():
            if not (_match(key.metric, metrics) and _match(key.backend, backends)):
                continue
            values.setdefault(key, []).append((i, vals))
            names, emu = info.get(key, (set(), False))
            names.add(str(doc.host.get("hostname", "?")))
            info[key] = (names, emu or bool(doc.backends.get(key.backend, {}).get("emulated")))
    out = []
    for key in sorted(values, key=lambda k: (k.scenario, k.metric, k.backend, k.variant,
                                             k.hardware)):
        points = []
        for i, vals in values[key]:
            x = np.sort(np.asarray(vals, dtype=float))
            lo, hi = _median_ci(x)
            points.append(Point(runs[i][0], runs[i][1], x, float(np.median(x)), lo, hi))
        names, emu = info[key]
        out.append(Series(key, sorted(names), emu, points))
    return out


@functools.cache
def _ci_ranks(n: int) -> tuple[int, int]:
    from scipy.stats import binom

    k = int(binom.ppf(0.025, n, 0.5))
    return max(k - 1, 0), min(n - k, n - 1)


def _median_ci(x: np.ndarray) -> tuple[float, float]:
    """95 % CI of the median of sorted `x` from its order statistics (the binomial
    interval: coverage >= 95 % whatever the distribution), instead of the bootstrap
    `bench report` draws: a history has hundreds of runs times dozens of series, and
    2000 resamples per point would take most of the time."""
    lo, hi = _ci_ranks(len(x))
    return float(x[lo]), float(x[hi])


def _match(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


# --- detection -------------------------------------------------------------------------

class Differences:
    """differences() of two runs for one backend, computed once: every metric's series
    and chart of that backend asks for the same pairs. Keyed by the records' ids, which
    hold while the records do (the memo keeps them)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int, str], tuple[Result, Result, tuple[Change, ...]]] = {}

    def __call__(self, a: Result, b: Result, backend: str) -> tuple[Change, ...]:
        key = (id(a), id(b), backend)
        if key not in self._memo:
            self._memo[key] = (a, b, tuple(differences(a, b, [backend])))
        return self._memo[key][2]


def pettitt_split(y: np.ndarray, min_runs: int = MIN_RUNS) -> int:
    """The split k (y[:k] | y[k:]) maximising |U_k|, Pettitt's (1979) statistic: the
    Mann-Whitney U between the two parts, from ranks (ties averaged)."""
    from scipy.stats import rankdata

    m = len(y)
    r = rankdata(y)
    k = np.arange(1, m)
    u = np.abs(2 * np.cumsum(r)[:-1] - k * (m + 1))
    ok = (k >= min_runs) & (k <= m - min_runs)
    return int(k[ok][np.argmax(u[ok])])


def robust_sigma(y: np.ndarray) -> tuple[float, int]:
    """Run-to-run sd of a series' log medians, from the MAD of its successive differences
    (/ sqrt 2): a move changes one difference only, and a stray run two, so neither widens
    it, whereas the sd of the runs themselves grows with every move and every outlier.
    With its degrees of freedom (the differences, less one)."""
    d = np.abs(np.diff(y))
    return (float(MAD_TO_SD * np.median(d) / math.sqrt(2)) if d.size else float("nan"),
            int(d.size - 1))


def candidates(n: int, min_runs: int = MIN_RUNS) -> int:
    """How many splits a stretch of n runs offers."""
    return max(n - 2 * min_runs + 1, 0)


def detect(s: Series, *, threshold: float = 0.05, alpha: float = 0.01, tests: int = 1,
           min_runs: int = MIN_RUNS, window: int = WINDOW,
           diffs: Differences | None = None) -> list[Move]:
    """The moves of one series (module docstring). `tests`: how many splits are tried in
    all the series searched together, the Bonferroni divisor of the band's alpha."""
    pts = s.points
    med = np.asarray([p.median for p in pts])
    if len(pts) < 2 * min_runs:
        s.note = f"{len(pts)} runs: {2 * min_runs} needed to find a move"
        return []
    if (med <= 0).any():
        s.note = "a run's median is 0 or negative: no ratio"
        return []
    y = np.log(med)
    sigma, df = robust_sigma(y)
    _differences = diffs or Differences()
    moves: list[Move] = []
    todo = [(0, len(pts))]
    while todo:
        lo, hi = todo.pop()
        if hi - lo < 2 * min_runs:
            continue
        k = lo + pettitt_split(y[lo:hi], min_runs)
        a, b = max(lo, k - window), min(hi, k + window)
        band = stats.noise_band(sigma, df, k - a, b - k, alpha, tests) if df >= 1 \
            else float("nan")
        dec = stats.decide(np.concatenate([p.values for p in pts[a:k]]),
                           np.concatenate([p.values for p in pts[k:b]]), s.key.unit,
                           threshold, alpha, band)
        if dec.verdict not in ("regression", "improvement"):
            continue
        before, after = pts[k - 1], pts[k]
        near = tuple((off, c) for off in (-1, 1) if 1 <= k + off < len(pts)
                     for c in _differences(pts[k + off - 1].doc, pts[k + off].doc,
                                           s.key.backend) if c.what != "commit")
        moves.append(Move(s.key, k, before, after, k - a, b - k, dec, band,
                          _differences(before.doc, after.doc, s.key.backend), near))
        todo += [(lo, k), (k, hi)]
    moves.sort(key=lambda m: m.index)
    return moves


@dataclass
class History:
    series: list[Series]
    runs: int
    skipped: list[str]
    threshold: float
    alpha: float
    diffs: Differences = field(default_factory=Differences)

    @property
    def moves(self) -> list[Move]:
        """Newest first."""
        return sorted((m for s in self.series for m in s.moves),
                      key=lambda m: (m.after.when, m.key.cell), reverse=True)

    @property
    def failures(self) -> list[tuple[Point, Attempts]]:
        """Per run (oldest first), its cells whose samples failed: a point of such a cell is
        the median of the samples that survived."""
        docs = {id(p.doc): p for s in self.series for p in s.points}
        return [(p, a) for p in sorted(docs.values(), key=lambda p: p.when)
                for a in p.doc.attempts() if a.failed]

    @property
    def machines(self) -> dict[str, Mapping[str, Any]]:
        """hardware id -> the host fingerprint of its latest run."""
        out: dict[str, Mapping[str, Any]] = {}
        for s in self.series:
            out[s.key.hardware] = s.points[-1].doc.host
        return dict(sorted(out.items()))

    def as_json(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None
        return {"runs": self.runs, "series": len(self.series), "skipped": self.skipped,
                "threshold": self.threshold, "alpha": self.alpha,
                "moves": [{"hardware_id": m.key.hardware, "scenario": m.key.scenario,
                           "backend": m.key.backend, "variant": m.key.variant,
                           "metric": m.key.metric, "unit": m.key.unit, "verdict": m.verdict,
                           "ratio": num(m.decision.ratio), "lo": num(m.decision.lo),
                           "hi": num(m.decision.hi), "p": num(m.decision.p),
                           "band": num(m.band), "runs_before": m.runs_before,
                           "runs_after": m.runs_after, "before": _run_json(m.before),
                           "after": _run_json(m.after),
                           "changes": [{"what": c.what, "old": c.old, "new": c.new}
                                       for c in m.changes],
                           "nearby": [{"offset": o, "what": c.what, "old": c.old,
                                       "new": c.new} for o, c in m.nearby]}
                          for m in self.moves],
                "failures": [{**_run_json(p), "backend": a.backend, "variant": a.variant,
                              "copy": a.copy, "ok": a.ok, "tried": a.tried,
                              "reasons": dict(a.reasons)} for p, a in self.failures]}


def _run_json(p: Point) -> dict[str, Any]:
    return {"run_id": p.doc.run_id, "created": p.doc.created, "file": p.file,
            "commit": p.doc.commit, "dirty": p.doc.dirty, "median": p.median}


def history(loaded: Gathered, *, metrics: Sequence[str] = ("*",),
            backends: Sequence[str] = ("*",), threshold: float = 0.05, alpha: float = 0.01,
            min_runs: int = MIN_RUNS, window: int = WINDOW) -> History:
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha: must be between 0 and 1, not {alpha}")
    if threshold < 0:
        raise UsageError(f"--threshold: must not be negative, not {threshold * 100:g}")
    if min_runs < 1:
        raise UsageError(f"--min-runs: must be at least 1, not {min_runs}")
    found = series(loaded.runs, metrics, backends)
    tests = max(sum(candidates(len(s.points), min_runs) for s in found), 1)
    diffs = Differences()
    for s in found:
        s.moves = detect(s, threshold=threshold, alpha=alpha, tests=tests,
                         min_runs=min_runs, window=window, diffs=diffs)
    return History(found, len(loaded.runs), loaded.skipped, threshold, alpha, diffs)


# --- the page --------------------------------------------------------------------------

def what_changed(m: Move, limit: int = 0) -> str:
    parts = [str(c) for c in m.changes]
    if limit and len(parts) > limit:
        parts = [*parts[:limit], f"(+{len(parts) - limit} more)"]
    text = "; ".join(parts) or "nothing recorded (same commit, host software, components, " \
                               "image and scenario): the host's load, or something unrecorded"
    for off in (-1, 1):
        near = [str(c) for o, c in m.nearby if o == off]
        if near:
            text += f" — one run {'earlier' if off < 0 else 'later'}: " + "; ".join(near)
    return text


def format_change(r: float) -> str:
    """A change as a percentage; a factor once it is large (×12, not +1100 %)."""
    if not math.isfinite(r):
        return "—"
    return f"×{r:.3g}" if r >= 2 or r <= 0.5 else f"{(r - 1) * 100:+.1f} %"
