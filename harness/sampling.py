"""The sampling loop: warmups, interleaved shuffled rounds, adaptive stop, clean-up.

Each round runs every cell (backend x variant) still going once, in a fresh random order,
so drift (thermal, page cache, a noisy neighbour) hits all cells alike. A cell stops when
the bootstrap 95 % CI half-width of the median of the scenario's metric is within
`target_ci` of the median (after `min_samples`), or at `max_samples`, or when the run's
`time_budget` is spent. Samples go to the journal as they arrive.

Ctrl-C (or SIGTERM) once: the current sample finishes, live instances are removed and
the samples taken are finalized. Twice: the current sample is abandoned too.

What surrounds it: harness.plan (which backends and cells), harness.bookkeeping (the run's
lock, clean-up, what to resume), harness.session (the stages of a whole run).
"""

from __future__ import annotations

import gc
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from harness import stats
from harness.core.errors import BenchError, InstanceError, NotApplicable
from harness.core.records import DEFAULT_VARIANT, Sample, failure_reason, join_variant
from harness.results import Journal
from harness.scenario import Config, Scenario, Variant
from runtimes.base import Instance, InstanceSpec, Prepared, Runtime, Traits

FAILURES_TO_GIVE_UP = 3


def cell_of(sample: Sample, cell_variants: Iterable[str]) -> tuple[str, str | None] | None:
    """(cell variant, sub-variant) of a stored sample among the run's cell variants: its
    `sub` field says; a sample written before `sub` was stored is matched by the name
    its variant is made of ("<cell variant>,<sub>", or "<sub>" of the default variant)."""
    names = set(cell_variants)
    if sample.sub is not None:
        return (sample.cell_variant, sample.sub) if sample.cell_variant in names else None
    if sample.variant in names:
        return sample.variant, None
    for v in names:
        if sample.variant.startswith(f"{v},"):
            return v, sample.variant.removeprefix(f"{v},")
    if DEFAULT_VARIANT in names and "=" in sample.variant:
        return DEFAULT_VARIANT, sample.variant
    return None


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
    extra: dict[str, Any] | None = None  # kept with the sample (Sample.extra)


@dataclass
class Cell:
    backend: str
    variant: Variant
    config: Config
    runtime: Runtime
    prepared: Prepared
    traits: Traits  # the backend's, taken once when the cells are made
    values: list[float] = field(default_factory=list)  # of the stop metric
    sub_values: dict[str, list[float]] = field(default_factory=dict)  # by sub-variant
    samples: int = 0  # measured samples that succeeded
    failures: int = 0  # measured samples that failed (their figures are missing)
    reasons: dict[str, int] = field(default_factory=dict)  # failure_reason -> count
    warmup_failures: int = 0
    consecutive_failures: int = 0
    status: str = "running"  # running | target | max_samples | budget | failed | interrupted
    #                          | not_applicable
    # A/A calibration (`bench calibrate`) runs each cell as 2 identical copies in one run;
    # the copy number goes into every sample so the copies can be told apart afterwards.
    copy: int | None = None
    # Further images its instances run, prepared by this backend, by name (a stack's
    # services; "@single-vm": the union image a single-VM stack boots).
    images: dict[str, Prepared] = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return self.samples + self.failures

    def failed(self, error: str, warmup: bool) -> None:
        """Count a failed sample (a warmup's apart: it is not one of the cell's samples)."""
        self.consecutive_failures += 1
        if warmup:
            self.warmup_failures += 1
            return
        self.failures += 1
        reason = failure_reason(error)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def key(self) -> tuple[str, str]:
        if self.copy is None:
            return (self.backend, self.variant.name)
        return (self.backend, f"{self.variant.name} #{self.copy}")

    def variant_of(self, sub: str | None) -> str:
        """The variant name recorded for a measurement of sub-variant `sub` (the cell's
        variant and `sub` joined: what readers of results have always grouped by)."""
        return join_variant(self.variant.name, sub)

    @property
    def label(self) -> str:
        label = self.backend if self.variant.name == "default" else \
            f"{self.backend} [{self.variant.name}]"
        return label if self.copy is None else f"{label} #{self.copy}"


class Placement(Protocol):
    """Where instances are made: a backend and the image it prepared (a Cell; for `bench
    exec`, a PlainPlacement). Instances are tracked by their placement."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def prepared(self) -> Prepared: ...

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class PlainPlacement:
    """A placement that is only that: a backend and an image it prepared, outside a run's
    cells (`bench exec`, image checks)."""

    runtime: Runtime
    prepared: Prepared
    label: str


class Context:
    """What a study gets besides the cell: instance specs, tracking, the timeout."""

    def __init__(self, run_id: str, timeout: float) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self.counter = 0
        self.live: dict[int, tuple[Placement, Instance]] = {}
        self.artifacts: list[dict[str, Any]] = []  # of the sample being taken
        self.params: dict[str, Any] = {}  # the scenario's [params]
        self.probe_interval = 0.01  # seconds between a tcp/http readiness probe's attempts
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
        w = cfg.workload
        fields: dict[str, Any] = dict(
            run_id=self.run_id, name=f"cvbench-{self.run_id}-{self.counter}",
            argv=w.command, env=dict(w.env), limits=cfg.limits,
            # "publish": a bridged instance whose ports the study publishes
            network="bridge" if cfg.network == "publish" else cfg.network,
            mounts=cfg.mounts, readiness=w.readiness, workdir=w.workdir or "/",
            user=w.user or "")
        fields.update(overrides)
        return InstanceSpec(**fields)

    def track(self, where: Placement, inst: Instance) -> None:
        self.live[id(inst)] = (where, inst)

    def untrack(self, inst: Instance) -> None:
        self.live.pop(id(inst), None)

    def cleanup(self, only: Placement | None = None) -> list[str]:
        """Stop and remove live instances (all, or one cell's); return what failed. One
        whose removal failed stays tracked: the next clean-up (the run's last) tries it
        again, and the backend's leftovers() still lists it for `bench gc`."""
        errors = []
        for key, (where, inst) in list(self.live.items()):
            if only is not None and where is not only:
                continue
            try:
                where.runtime.stop(inst, grace=0.5)
                where.runtime.remove(inst)
            except Exception as e:  # keep cleaning the others
                errors.append(f"{where.label}: {inst.spec.name}: {e}")
                continue
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
        self.ctx.probe_interval = scenario.workload.probe_interval
        self.ctx.stop_requested = self.interrupt.wanted
        self.ctx.event = lambda kind, **data: self.journal.event(kind, round=self.round, **data)

    def _artifacts(self, cell: Cell, **mark: Any) -> None:
        for a in self.ctx.artifacts:
            sub = a.pop("sub")
            self.journal.artifact(backend=cell.backend, variant=cell.variant_of(sub),
                                  round=self.round, **a, **mark,
                                  **({"copy": cell.copy} if cell.copy is not None else {}))
        self.ctx.artifacts = []

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
            # Counted against the cell: its figures are over the samples that survived,
            # and the result says how many did (cells[].attempts, failures, reasons).
            cell.failed(str(e), warmup=not record)
            # What the tool said is the evidence of the failure: kept, marked failed.
            self._artifacts(cell, failed=True)
            self.journal.event("sample_failed", backend=cell.backend, variant=cell.variant.name,
                               round=self.round, error=str(e), cleanup_errors=errors,
                               **({"warmup": True} if not record else {}),
                               **({"copy": cell.copy} if cell.copy is not None else {}),
                               **({"logs": e.logs} if isinstance(e, InstanceError)
                                  and e.logs else {}))
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
        self.journal.add(Sample.in_cell(
            cell.backend, cell.variant.name, m.metric, m.unit or self.unit_of(m.metric) or "",
            m.value, self.round, sub=m.variant, instance=m.instance, copy=cell.copy,
            extra=m.extra)
            for m in measurements)
        self._artifacts(cell)
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

    def restore(self, samples: Iterable[Sample], events: list[dict[str, Any]]) -> None:
        """Rebuild the cells' progress from a resumed run's samples and events: their
        sample counts (distinct rounds), the stop metric's values, per sub-variant too,
        and the round number to go on from."""
        metric = self.scenario.sampling.metric
        variants = {c.variant.name for c in self.cells}
        by_key = {c.key: c for c in self.cells}
        rounds: dict[tuple[str, str], set[int]] = {}
        for s in samples:
            self.round = max(self.round, s.round)
            found = cell_of(s, variants)
            if found is None:
                continue
            v, sub = found
            key = (s.backend, v if s.copy is None else f"{v} #{s.copy}")
            cell = by_key.get(key)
            if cell is None:
                continue
            rounds.setdefault(key, set()).add(s.round)
            if s.metric == metric:
                cell.values.append(float(s.value))
                if sub:
                    cell.sub_values.setdefault(sub, []).append(float(s.value))
        for key, cell in by_key.items():
            cell.samples = len(rounds.get(key, ()))
            for e in events:
                if (e.get("backend"), e.get("variant")) != (cell.backend, cell.variant.name):
                    continue
                if e.get("copy", cell.copy) != cell.copy:
                    continue
                if e["kind"] == "sample_failed":
                    cell.failed(str(e.get("error", "")), warmup=bool(e.get("warmup")))
                elif e["kind"] == "cell_failed":
                    cell.status = "failed"
            cell.consecutive_failures = 0  # as before the interruption: it gets its 3 again
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
            if errors:  # in the result too, not only on the terminal
                self.journal.event("cleanup_failed", errors=errors,
                                   note="still there: `bench gc` removes them")
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
