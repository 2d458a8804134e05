"""The runner: warmups, interleaved shuffled rounds, adaptive stop, clean-up.

Each round runs every cell (backend x variant) still going once, in a fresh random order,
so drift (thermal, page cache, a noisy neighbour) hits all cells alike. A cell stops when
the bootstrap 95 % CI half-width of the median of the scenario's metric is within
`target_ci` of the median (after `min_samples`), or at `max_samples`, or when the run's
`time_budget` is spent. Samples go to the journal as they arrive.

Ctrl-C (or SIGTERM) once: the current sample finishes, live instances are removed and
the samples taken are finalized. Twice: the current sample is abandoned too.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import runtimes as runtimes_registry
from harness import __version__, stats
from harness.core import hostinfo
from harness.core.errors import BackendUnavailable, BenchError, InstanceError, UsageError
from harness.core.image import Image
from harness.core.units import format_size
from harness.results import SCHEMA, Journal
from harness.scenario import Config, Scenario, Variant
from runtimes.base import (
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Runtime,
    not_applied,
    state_dir,
)

FAILURES_TO_GIVE_UP = 3


@dataclass(frozen=True)
class Measurement:
    """One figure of one sample. `instance` tells apart instances of one sample.

    `variant` names a sub-variant the study measured within one sample (e.g. the storage
    target of an I/O run, "target=tmpfs"); it is appended to the cell's variant name, and
    the adaptive stop waits until every sub-variant meets the target.
    """

    metric: str
    value: float
    instance: int | None = None
    unit: str | None = None
    variant: str | None = None


class NotApplicable(BenchError):
    """A study cannot measure this cell on this backend (e.g. network modes on a backend
    that applies none): the cell is closed with this reason instead of failing."""


@dataclass
class Cell:
    backend: str
    variant: Variant
    config: Config
    runtime: Runtime
    prepared: Prepared
    values: list[float] = field(default_factory=list)  # of the stop metric
    sub_values: dict[str, list[float]] = field(default_factory=dict)  # by sub-variant
    samples: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    status: str = "running"  # running | target | max_samples | budget | failed | interrupted
    #                          | not_applicable
    # A/A calibration (`bench calibrate`) runs each cell as 2 identical copies in one run;
    # the copy number goes into every sample so the copies can be told apart afterwards.
    copy: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        if self.copy is None:
            return (self.backend, self.variant.name)
        return (self.backend, f"{self.variant.name} #{self.copy}")

    def variant_of(self, sub: str | None) -> str:
        """The variant name recorded for a measurement of sub-variant `sub`."""
        if not sub:
            return self.variant.name
        return sub if self.variant.name == "default" else f"{self.variant.name},{sub}"

    @property
    def label(self) -> str:
        label = self.backend if self.variant.name == "default" else \
            f"{self.backend} [{self.variant.name}]"
        return label if self.copy is None else f"{label} #{self.copy}"


class Context:
    """What a study gets besides the cell: instance specs, tracking, the timeout."""

    def __init__(self, run_id: str, timeout: float) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self.counter = 0
        self.live: dict[int, tuple[Cell, Instance]] = {}
        self.artifacts: list[dict[str, Any]] = []  # of the sample being taken
        self.params: dict[str, Any] = {}  # the scenario's [params]
        # Set by the runner. A study whose sample takes long (a density ramp) polls
        # stop_requested() to end it early on the first Ctrl-C, and says why with event().
        self.stop_requested: Callable[[], bool] = lambda: False
        self.event: Callable[..., None] = lambda kind, **data: None

    def artifact(self, kind: str, data: Any, *, variant: str | None = None,
                 instance: int | None = None, **extra: Any) -> None:
        """Keep raw data of the current sample (fio's JSON...) in the result; the runner
        journals it with the sample's backend, variant and round, or drops it with a
        warmup or a failed sample."""
        self.artifacts.append({"kind": kind, "sub": variant, "instance": instance,
                               **extra, "data": data})

    def spec(self, cell: Cell, **overrides: Any) -> InstanceSpec:
        self.counter += 1
        cfg = cell.config
        fields: dict[str, Any] = dict(
            run_id=self.run_id, name=f"cvbench-{self.run_id}-{self.counter}",
            argv=cfg.workload.argv, env=dict(cfg.workload.env), limits=cfg.limits,
            network=cfg.network, mounts=cfg.mounts, readiness=cfg.workload.readiness,
            workdir=cfg.workload.workdir)
        fields.update(overrides)
        return InstanceSpec(**fields)

    def track(self, cell: Cell, inst: Instance) -> None:
        self.live[id(inst)] = (cell, inst)

    def untrack(self, inst: Instance) -> None:
        self.live.pop(id(inst), None)

    def cleanup(self, only: Cell | None = None) -> list[str]:
        """Stop and remove live instances (all, or one cell's); return what failed."""
        errors = []
        for key, (cell, inst) in list(self.live.items()):
            if only is not None and cell is not only:
                continue
            try:
                cell.runtime.stop(inst, grace=0.5)
                cell.runtime.remove(inst)
            except Exception as e:  # keep cleaning the others
                errors.append(f"{cell.label}: {inst.spec.name}: {e}")
            self.live.pop(key, None)
        return errors


class Interrupt:
    """First SIGINT/SIGTERM asks to stop after the current sample; the second raises."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def wanted(self) -> bool:
        return self.requested

    @contextmanager
    def installed(self) -> Iterator[Interrupt]:
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


@dataclass
class Outcome:
    cells: list[Cell]
    rounds: int
    elapsed: float
    interrupted: bool
    cleanup_errors: list[str]


Sampler = Callable[[Context, Cell], list[Measurement]]
Progress = Callable[[Cell, str], None]


class Runner:
    def __init__(self, scenario: Scenario, cells: list[Cell], journal: Journal,
                 sample: Sampler, unit_of: Callable[[str], str | None],
                 progress: Progress | None = None, seed: int | None = None,
                 start_round: int = 0) -> None:
        self.scenario = scenario
        self.cells = cells
        self.journal = journal
        self.sample = sample
        self.unit_of = unit_of
        self.progress = progress or (lambda cell, note: None)
        self.rng = random.Random(seed)
        self.ctx = Context(journal.header["run_id"], scenario.sampling.timeout)
        self.interrupt = Interrupt()
        self.round = start_round
        self.ctx.params = dict(scenario.params)
        self.ctx.stop_requested = self.interrupt.wanted
        self.ctx.event = lambda kind, **data: self.journal.event(kind, round=self.round, **data)

    def _one(self, cell: Cell, record: bool) -> None:
        gc.disable()  # no collector pause inside a timed sample
        self.ctx.artifacts = []
        try:
            measurements = self.sample(self.ctx, cell)
        except NotApplicable as e:
            self.ctx.cleanup(only=cell)
            cell.status = "not_applicable"
            self.journal.event("not_applicable", backend=cell.backend,
                               variant=cell.variant.name, reason=str(e))
            self.progress(cell, f"not applicable: {e}")
            return
        except Exception as e:
            # A daemon that died, a timeout, a backend bug: recorded against this cell
            # (type and message); the other cells go on and earlier samples stay.
            errors = self.ctx.cleanup(only=cell)
            if not isinstance(e, BenchError):
                e = InstanceError(f"{type(e).__name__}: {e}")
            cell.failures += 1
            cell.consecutive_failures += 1
            self.journal.event("sample_failed", backend=cell.backend, variant=cell.variant.name,
                               round=self.round, error=str(e), cleanup_errors=errors)
            if cell.consecutive_failures >= FAILURES_TO_GIVE_UP:
                cell.status = "failed"
                self.journal.event("cell_failed", backend=cell.backend,
                                   variant=cell.variant.name, error=str(e))
            self.progress(cell, f"failed: {e}")
            return
        finally:
            gc.enable()
        cell.consecutive_failures = 0
        if not record:
            return
        metric = self.scenario.sampling.metric
        self.journal.add({
            "backend": cell.backend, "variant": cell.variant_of(m.variant), "metric": m.metric,
            "unit": m.unit or self.unit_of(m.metric) or "", "value": m.value,
            "round": self.round, **({"instance": m.instance} if m.instance is not None else {}),
            **({"copy": cell.copy} if cell.copy is not None else {}),
        } for m in measurements)
        for a in self.ctx.artifacts:
            sub = a.pop("sub")
            self.journal.artifact(backend=cell.backend, variant=cell.variant_of(sub),
                                  round=self.round, **a,
                                  **({"copy": cell.copy} if cell.copy is not None else {}))
        self.ctx.artifacts = []
        cell.samples += 1
        for m in measurements:
            if m.metric == metric:
                cell.values.append(m.value)
                if m.variant:
                    cell.sub_values.setdefault(m.variant, []).append(m.value)
        self._decide(cell)
        note = ""
        if self.journal.write_error is not None:
            note = f"journal not written ({self.journal.write_error.strerror}); kept in memory"
        self.progress(cell, note)

    def restore(self, samples: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        """Rebuild the cells' progress from a resumed run's samples and events."""
        metric = self.scenario.sampling.metric
        by_key = {c.key: c for c in self.cells}
        rounds: dict[tuple[str, str], set[int]] = {}
        for s in samples:
            key = (s["backend"], s["variant"])
            if key not in by_key:
                continue
            rounds.setdefault(key, set()).add(s["round"])
            if s["metric"] == metric:
                by_key[key].values.append(float(s["value"]))
            self.round = max(self.round, int(s["round"]))
        for key, cell in by_key.items():
            cell.samples = len(rounds.get(key, ()))
            for e in events:
                if (e.get("backend"), e.get("variant")) != key:
                    continue
                if e["kind"] == "sample_failed":
                    cell.failures += 1
                elif e["kind"] == "cell_failed":
                    cell.status = "failed"
            if cell.status == "running":
                self._decide(cell)

    def _decide(self, cell: Cell) -> None:
        s = self.scenario.sampling
        if cell.samples >= s.max_samples:
            cell.status = "max_samples"
        elif cell.samples >= s.min_samples and cell.values:
            groups = list(cell.sub_values.values()) or [cell.values]
            if all(self._within(g, s.target_ci) for g in groups):
                cell.status = "target"

    @staticmethod
    def _within(values: list[float], target: float) -> bool:
        lo, hi = stats.median_ci(values)
        med = float(sorted(values)[len(values) // 2])
        return bool(med) and (hi - lo) / 2 / abs(med) <= target

    def active(self) -> list[Cell]:
        return [c for c in self.cells if c.status == "running"]

    def run(self, warmups: bool = True) -> Outcome:
        s = self.scenario.sampling
        t_start = time.monotonic()
        interrupted = False
        with self.interrupt.installed():
            try:
                for _ in range(s.warmups if warmups else 0):
                    for cell in self._shuffled():
                        if self.interrupt.wanted():
                            break
                        self._one(cell, record=False)
                while self.active() and not self.interrupt.wanted():
                    if time.monotonic() - t_start > s.time_budget:
                        for c in self.active():
                            c.status = "budget"
                            self.journal.event("budget_spent", backend=c.backend,
                                               variant=c.variant.name, samples=c.samples)
                        break
                    self.round += 1
                    for cell in self._shuffled():
                        if self.interrupt.wanted():
                            break
                        self._one(cell, record=True)
            except KeyboardInterrupt:
                interrupted = True
            interrupted = interrupted or self.interrupt.wanted()
            errors = self.ctx.cleanup()
        if interrupted:
            for c in self.active():
                c.status = "interrupted"
            self.journal.event("interrupted", signal=self.interrupt.signal_name or "SIGINT",
                               round=self.round)
        return Outcome(cells=self.cells, rounds=self.round, elapsed=time.monotonic() - t_start,
                       interrupted=interrupted, cleanup_errors=errors)

    def _shuffled(self) -> list[Cell]:
        cells = self.active()
        self.rng.shuffle(cells)
        return cells


# --- whole runs: lock, preparation, journal, finalize ------------------------------------

def runs_dir() -> Path:
    return state_dir() / "runs"


class RunLock:
    """An flock held for the whole run: `bench gc` leaves runs whose lock is held alone."""

    def __init__(self, run_id: str, info: dict[str, Any]) -> None:
        self.path = runs_dir() / f"{run_id}.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, json.dumps({"pid": os.getpid(), **info}).encode())

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = -1


def live_runs() -> list[str]:
    """Run ids whose runner still holds its lock."""
    live: list[str] = []
    d = runs_dir()
    if not d.is_dir():
        return live
    for p in d.glob("*.lock"):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            live.append(p.stem)
        finally:
            os.close(fd)
    return live


def collect(rt: Runtime, live: list[str], only_run: str | None = None,
            dry_run: bool = False) -> list[Leftover]:
    """Leftovers of dead runs on one backend (all, or only `only_run`'s): listed, and
    removed unless `dry_run`."""
    keep = list(live)
    if only_run:
        # Every other run counts as live, so only `only_run`'s resources go.
        keep += sorted({x.run_id or "" for x in rt.leftovers(live)} - {only_run})
    return rt.leftovers(keep) if dry_run else rt.gc(keep)


def release_shared(rts: list[Runtime], me: str) -> list[Leftover]:
    """Once no other run is going, remove what runs share (parent cgroups, bridges, dev
    layers, state dirs) and whatever dead runs left. Called at the end of a run."""
    if [r for r in live_runs() if r != me]:
        return []
    removed: list[Leftover] = []
    for rt in rts:
        removed += rt.gc([me])  # `me` is done; its lock is released just after
    return removed


def finish(rts: list[Runtime], run_id: str) -> list[str]:
    """End of a run (before its lock is released): remove what it made that outlives an
    instance (volumes, networks); then, if no other run is going, what runs share (parent
    cgroups, bridge, dev layer, state dirs). Returns the problems, to be reported."""
    problems = []
    live = [x for x in live_runs() if x != run_id]
    for rt in rts:
        try:
            collect(rt, live, run_id)
            if not live:
                rt.gc([])  # leftovers of dead runs, and the shared state
        except Exception as e:
            problems.append(f"{rt.name}: {e} (run `bench gc`)")
    return problems


def clear_stale_locks() -> None:
    """Remove the lock files of runs that are no longer alive."""
    live = set(live_runs())
    d = runs_dir()
    if d.is_dir():
        for p in d.glob("*.lock"):
            if p.stem not in live:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


@dataclass
class Plan:
    """A scenario bound to this host: the backends that will run, and the ones skipped."""

    scenario: Scenario
    backends: list[str]
    runtimes: dict[str, Runtime]
    skipped: dict[str, str]  # backend -> why


def plan(scenario: Scenario, requested: list[str] | None) -> Plan:
    """Choose backends: requested ones must be available (exit 3 if not); the scenario's
    own list is auto-detected (unavailable ones are skipped, with the reason)."""
    names = requested or list(scenario.backends) or runtimes_registry.base_names()
    for n in names:
        if not runtimes_registry.known(n):
            raise UsageError(f"unknown backend {n!r}; known backends: "
                             f"{', '.join(runtimes_registry.all_names())}")
    chosen: list[str] = []
    rts: dict[str, Runtime] = {}
    skipped: dict[str, str] = {}
    for n in names:
        rt = runtimes_registry.get(n)
        avail = rt.availability()
        if avail.ok:
            chosen.append(n)
            rts[n] = rt
        elif requested:
            raise BackendUnavailable(n, avail.reason, avail.fix)
        else:
            skipped[n] = avail.reason + (f" (fix: {avail.fix})" if avail.fix else "")
    if not chosen:
        raise BackendUnavailable(",".join(names), "none of the scenario's backends is "
                                 "available here", "run `bench doctor`")
    return Plan(scenario=scenario, backends=chosen, runtimes=rts, skipped=skipped)


def unenforced_limits(p: Plan) -> dict[str, list[str]]:
    """backend -> the limits its cells ask for that it does not enforce (its metadata's
    not_applied lists "limits" or "limits.<field>"), as "field=value" across variants."""
    out: dict[str, list[str]] = {}
    for b in p.backends:
        skip = not_applied(p.runtimes[b])
        asked = {f"{k}={format_size(v) if k == 'memory' else f'{v:g}'}"
                 for variant in p.scenario.variants
                 for k, v in p.scenario.config(variant).limits.as_dict().items()
                 if v is not None and ("limits" in skip or f"limits.{k}" in skip)}
        if asked:
            out[b] = sorted(asked)
    return out


def make_cells(p: Plan, prepared: dict[str, Prepared], copies: int = 1) -> list[Cell]:
    """One cell per (backend, variant); with copies > 1 (A/A calibration), that many
    identical cells each, numbered, which the rounds interleave like any other cells."""
    return [Cell(backend=b, variant=v, config=p.scenario.config(v), runtime=p.runtimes[b],
                 prepared=prepared[b], copy=None if copies == 1 else k)
            for b in p.backends for v in p.scenario.variants for k in range(copies)]


def header(p: Plan, run_id: str, image: Image, prepared: dict[str, Prepared]
           ) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    for b in p.backends:
        rt = p.runtimes[b]
        avail = rt.availability()
        backends[b] = {**rt.metadata(), "versions": dict(avail.versions),
                       "prepared": {"ref": prepared[b].ref,
                                    "footprint": dict(prepared[b].footprint),
                                    **dict(prepared[b].details)}}
    return {
        "schema": SCHEMA, "tool": {"name": "cvbench", "version": __version__},
        "run_id": run_id, "created": datetime.now(UTC).isoformat(),
        "scenario": p.scenario.as_dict(), "scenario_toml": dict(p.scenario.raw),
        "host": hostinfo.fingerprint(),
        "backends": backends, "skipped": p.skipped, "image": image.as_dict(),
    }


def cell_summary(cells: list[Cell]) -> list[dict[str, Any]]:
    return [{"backend": c.backend, "variant": c.variant.name, "status": c.status,
             "samples": c.samples, "failures": c.failures,
             **({"copy": c.copy} if c.copy is not None else {})} for c in cells]


@dataclass
class Resumable:
    """What an interrupted run left in an output directory."""

    run_id: str
    base: str  # file name stem of the new journal/result
    header: dict[str, Any]
    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]
    journal: Path | None  # a SIGKILLed run's journal, appended to in place
    supersedes: str | None  # an interrupted result the resumed one replaces


def find_resumable(out_dir: Path, run_id: str) -> Resumable:
    """The journal (killed run) or interrupted result (Ctrl-C) of `run_id` in `out_dir`."""
    from harness.results import load_result, read_journal

    check_run = re.compile(r"^[0-9a-z]{8,32}$")
    if not check_run.match(run_id):
        raise UsageError(f"--resume: {run_id!r} is not a run id")
    if run_id in live_runs():
        raise UsageError(f"run {run_id} is still running (its lock is held)")
    journals = sorted(out_dir.glob(f"*-{run_id}*.journal"))
    if journals:
        j = journals[-1]
        header, samples, events, artifacts = read_journal(j)
        # Samples as dicts until restore() reads Sample records (the runner's rewrite).
        return Resumable(run_id, j.name.removesuffix(".journal"), header,
                         [s.to_dict() for s in samples], events, artifacts, j, None)
    done = sorted(p for p in out_dir.glob(f"*-{run_id}*.json")
                  if not p.name.endswith(".pyperf.json"))
    if not done:
        raise UsageError(f"--resume: no journal or result of run {run_id} in {out_dir}")
    last = done[-1]
    doc = load_result(last)
    if not doc.interrupted:
        raise UsageError(f"--resume: run {run_id} finished ({last}); nothing to resume")
    header = doc.header()
    stem = last.name.removesuffix(".json")
    n = 1
    while (out_dir / f"{stem}-r{n}.json").exists() or (out_dir / f"{stem}-r{n}.journal").exists():
        n += 1
    return Resumable(run_id, f"{stem}-r{n}", header, [s.to_dict() for s in doc.samples],
                     [dict(e) for e in doc.events], [dict(a) for a in doc.artifacts], None,
                     last.name)
