"""A whole run in explicit stages, as PerfKitBenchmarker runs a benchmark:

  prepare  check the scenario against this host, plan the backends, build the image, take
           the run's lock, clean what an interrupted run left (resume), prepare every
           backend once, open the journal
  run      the sampling loop (harness.sampling) until every cell stopped
  collect  finalize the journal into the result file (and its pyperf companion)
  cleanup  remove what the run made that outlives an instance, release the lock

`bench run` and `bench calibrate` drive it; what is shown to the user goes through a
Reporter, so the stages print nothing themselves. `exec_once` is the one-instance path of
`bench exec`, over the same instance life cycle as the studies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from harness import plan as planning
from harness import results, studies, validate
from harness.bookkeeping import (
    HOOKS,
    Resumable,
    RunLock,
    collect,
    finish,
    hold,
    live_runs,
    runs_dir,
)
from harness.core import image as image_mod
from harness.core.errors import BackendUnavailable, BenchError, UsageError
from harness.core.probes import kernel_limits
from harness.sampling import Cell, Context, Outcome, PlainPlacement, Progress, Runner
from harness.scenario import Scenario
from harness.studies import _lifecycle as life
from runtimes import registry
from runtimes.base import RUN_LABEL, Exit, InstanceSpec, Pool, Prepared, new_run_id


class Reporter(Protocol):
    """What a session tells the user (the CLI draws it with rich)."""

    def info(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def status(self, text: str) -> contextlib.AbstractContextManager[Callable[[str], None]]:
        """Shown while a slow step (preparing a backend, building an image) goes on; the
        function it gives shows how the step progresses."""
        ...

    def sampling(self, scenario: Scenario, cells: Sequence[Cell],
                 unit: str) -> contextlib.AbstractContextManager[Progress]:
        """A progress display for the sampling loop: called with a cell and a note each
        time the cell has taken a sample (or failed, or was restored)."""
        ...


@dataclass
class Done:
    """What a finished (or interrupted) run left: its result file and how it ended."""

    run_id: str
    result: Path
    outcome: Outcome
    cells: list[Cell]
    backends: list[str]
    problems: list[str] = field(default_factory=list)  # clean-up that failed

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status == "failed"]


class Session:
    """One run of `scenario` on `backends` (None: the scenario's, skipping those not
    available here), written to `out_dir`; or the continuation of `resume`."""

    def __init__(self, scenario: Scenario, backends: Sequence[str] | None, out_dir: Path,
                 reporter: Reporter, *, seed: int | None = None, copies: int = 1,
                 resume: Resumable | None = None) -> None:
        self.scenario = scenario
        self.wanted = list(resume.header["backends"]) if resume else \
            (list(backends) if backends else None)
        self.out_dir = out_dir
        self.reporter = reporter
        self.seed = seed
        self.copies = copies
        self.resume = resume
        self.run_id = resume.run_id if resume else new_run_id()
        self.study: studies.Study | None = None
        self.plan: planning.Plan | None = None
        self.cells: list[Cell] = []
        self.lock: RunLock | None = None
        self.journal: results.Journal | None = None
        self.name = ""
        self.images: dict[str, image_mod.Image] = {}  # the study's further images
        self._built: dict[image_mod.Source, image_mod.Image] = {}
        self.build_engines: set[str] = set()  # engines that built images of the run

    # --- stages ---------------------------------------------------------------------------

    def prepare(self) -> None:
        scen, rep, resumed = self.scenario, self.reporter, self.resume
        validate.check(scen)  # (names the file and field: before anything else reads it)
        # Live instances hold descriptors (pipes, pidfds, attach sockets): a density ramp of
        # thousands needs more than the usual soft limit of 1024.
        nofile_before, nofile, nofile_hard = kernel_limits.raise_nofile()
        study = self.study = studies.get(scen.study)
        p = self.plan = planning.plan(scen, self.wanted)
        for b, why in p.skipped.items():
            rep.warn(f"skipping {b}: {why}")
        for b, asked in planning.unenforced_limits(p).items():
            rep.warn(f"note: {b} does not enforce {', '.join(asked)}: its figures are taken "
                     "without them (metadata not_applied)")
        rep.info(f"{'resuming run' if resumed else 'run'} {self.run_id}: scenario "
                 f"{scen.name}, backends {', '.join(p.backends)}")
        # The lock first: a compose `build:` makes an image labelled with the run, which
        # another run's `bench gc` must leave alone.
        self.lock = RunLock(self.run_id, f"scenario {scen.name}")
        source = study.image(scen)
        with rep.status(f"image: {source.describe()}…") as progress:
            img = self._build(source, progress)
        rep.info(f"image {img.tag} sha256:{img.digest} ({img.size / 2**20:.1f} MiB"
                 + (f", built in {img.build_seconds:.1f} s)" if img.build_seconds else ")"))
        if resumed and resumed.header["image"]["digest"] != img.digest:
            raise UsageError(f"the image of run {self.run_id} was sha256:"
                             f"{resumed.header['image']['digest']}; this host now builds "
                             f"sha256:{img.digest}, so the run cannot be continued")
        # The image's defaults (Entrypoint, Cmd, Env, WorkingDir, User) under the scenario's.
        scen = self.scenario = p.scenario = replace(
            scen, workload=scen.workload.resolved(img))
        image_mod.check_paths(img, (
            *((m.target, m.type != "bind" or m.source is None or os.path.isdir(m.source))
              for m in scen.mounts), (scen.workload.workdir or "/", True)))
        for problem in planning.busy_ports(p):
            raise UsageError(problem)
        if resumed:
            # What the interrupted run left (the instance in flight at the kill) goes first.
            live = [x for x in live_runs() if x != self.run_id]
            for b in p.backends:
                for item in collect(p.runtimes[b], live, self.run_id):
                    rep.info(f"removed {item.kind} {item.name} left by the interrupted run")
        prepared = {}
        for b in p.backends:
            with rep.status(f"preparing {b}…"):
                prepared[b] = p.runtimes[b].prepare(img)
        extra = self._study_images(p)
        self.cells = planning.make_cells(p, prepared, self.copies, extra)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resumed and resumed.journal:
            self.name = resumed.base
            self.journal = results.Journal.open_existing(resumed.journal)
        elif resumed:
            self.name = resumed.base
            self.journal = results.Journal(self.out_dir / f"{self.name}.journal",
                                           resumed.header)
            self.journal.add(resumed.samples)
            for e in resumed.events:
                self.journal.event(**e)
            for a in resumed.artifacts:
                self.journal.artifact(**a)
        else:
            self.name = f"{scen.name}-{results.utc_stamp()}-{self.run_id}"
            head = planning.header(p, self.run_id, img, prepared, self.cells)
            head.update(study.header(scen, self.images, extra))
            self.journal = results.Journal(self.out_dir / f"{self.name}.journal", head)
        self.journal.event("rlimit_nofile", soft_before=nofile_before, soft=nofile,
                           hard=nofile_hard)

    def _build(self, source: image_mod.Source,
               progress: Callable[[str], None]) -> image_mod.Image:
        """build_image for this run, once per source; the engines that built one of the
        run's images are remembered, to remove them at its end."""
        if source not in self._built:
            img = self._built[source] = build_image(source, progress, self.run_id)
            if isinstance(img.source, image_mod.EngineRef) and img.source.build:
                self.build_engines.add(img.source.engine)
        return self._built[source]

    def _study_images(self, p: planning.Plan) -> dict[str, dict[str, Prepared]]:
        """Build the study's further images (a stack's services, the single-VM union) and
        prepare each on the backends that run it."""
        rep, study = self.reporter, self.study
        assert study is not None
        with rep.status("the study's further images…") as progress:
            self.images = study.images(self.scenario, lambda src: self._build(src, progress))
        for name, image in self.images.items():
            rep.info(f"{name}: {image.tag} sha256:{image.digest} "
                     f"({image.size / 2**20:.1f} MiB)")
        out: dict[str, dict[str, Prepared]] = {}
        for b in p.backends:
            rt = p.runtimes[b]
            kind = rt.traits().kind
            for name, image in self.images.items():
                if study.runs_image(name, rt, kind):
                    with rep.status(f"preparing {name} on {b}…"):
                        out.setdefault(b, {})[name] = rt.prepare(image)
        return out

    def run(self) -> Outcome:
        assert self.journal is not None and self.study is not None
        study = self.study
        unit = studies.unit_of(study, self.scenario.sampling.metric) or ""
        with self.reporter.sampling(self.scenario, self.cells, unit) as progress:
            r = Runner(self.scenario, self.cells, self.journal, study.sample,
                       lambda m: studies.unit_of(study, m), progress=progress, seed=self.seed)
            if self.resume is not None:
                r.restore(self.resume.samples, self.resume.events)
                for c in self.cells:
                    progress(c, "restored")
            return r.run()

    def collect(self, outcome: Outcome) -> Path:
        assert self.journal is not None
        extra: dict[str, Any] = {
            "finished": datetime.now(UTC).isoformat(),
            "cells": planning.cell_summary(self.cells), "interrupted": outcome.interrupted,
            "duration": outcome.elapsed, "rounds": outcome.rounds}
        if self.resume and self.resume.supersedes:
            extra["supersedes"] = self.resume.supersedes
        return self.journal.finalize(self.out_dir / f"{self.name}.json", extra,
                                     fallback=runs_dir() / "results")

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        if self.journal is not None:
            self.journal.close()
        if self.plan is not None:
            for b in self.plan.backends:  # a pool's filler stops before gc removes its slots
                rt = self.plan.runtimes[b]
                if isinstance(rt, Pool):
                    try:
                        rt.drain()
                    except Exception as e:
                        problems.append(f"{b}: draining its pool: {e} (run `bench gc`)")
        if self.lock is not None:
            rts = [self.plan.runtimes[b] for b in self.plan.backends] if self.plan else []
            # (an engine that built the run's images but runs none of its cells)
            rts += [registry.get(e, HOOKS) for e in sorted(self.build_engines)
                    if e not in (self.plan.backends if self.plan else ())]
            problems += finish(rts, self.run_id)
        if self.lock is not None:
            self.lock.release()
        return problems

    def execute(self) -> Done:
        """All four stages; cleanup also after an error or Ctrl-C."""
        problems: list[str] = []
        try:
            self.prepare()
            outcome = self.run()
            path = self.collect(outcome)
        finally:
            problems = self.cleanup()
        assert self.plan is not None
        return Done(run_id=self.run_id, result=path, outcome=outcome, cells=self.cells,
                    backends=list(self.plan.backends),
                    problems=outcome.cleanup_errors + problems)


def engine_lookup(engine: str, ref: str) -> str | None:
    """None if `ref` is in the store of `engine` (docker, podman), else why not (a
    compose image's look-up: no registry is asked)."""
    try:
        rt = registry.get(engine, HOOKS)
        avail = rt.availability()
        if not avail.ok:
            return f"not available ({avail.reason})"
        if not isinstance(rt, image_mod.EngineStore):
            return "keeps no images"
        rt.image_id(ref)
    except BenchError as e:
        return str(e).removeprefix(f"{engine} image {ref}: ")
    return None


BUILD_ENGINES = ("docker", "podman")  # who builds a compose `build:` with no engine named


def build_image(source: image_mod.Source,
                progress: Callable[[str], None] | None = None,
                run_id: str | None = None) -> image_mod.Image:
    """Build (or take from the cache) the image of `source`; an image in an engine's
    store is exported through that backend (an EngineStore). An engine source with a
    `build` not built yet is first built by its engine (the first available of
    BUILD_ENGINES if it names none) as `cvbench-<run_id>-build-<hash>`, labelled with the
    run, which removes it at its end (`bench gc` after a crash)."""
    store = None
    if isinstance(source, image_mod.EngineRef):
        engines = (source.engine,) if source.engine else BUILD_ENGINES
        problems = []
        for engine in engines:
            registry.check(engine)
            rt = registry.get(engine, HOOKS)
            if not isinstance(rt, image_mod.EngineStore):
                raise UsageError(f"{source.describe()}: {engine!r} keeps no images of "
                                 "its own (docker or podman do)")
            avail = rt.availability()
            if avail.ok:
                store = rt
                source = replace(source, engine=engine)
                break
            problems.append(BackendUnavailable(engine, avail.reason, avail.fix))
        if store is None:
            raise problems[0]
        if source.build is not None and not source.ref:
            if run_id is None:
                raise UsageError(f"{source.describe()}: a build belongs to a run "
                                 "(bench run)")
            what = json.dumps(source.build.as_dict(), sort_keys=True).encode()
            tag = f"cvbench-{run_id}-build-{hashlib.sha256(what).hexdigest()[:12]}:latest"
            if progress:
                progress(f"{source.engine} build of {source.build.context}")
            # (cvbench.source emptied: a base made by `bench image export` would pass on
            # its word that the image is made of its Debian packages alone)
            store.build_image(source.build, tag, {RUN_LABEL: run_id, "cvbench.source": ""})
            source = replace(source, ref=tag)
    return image_mod.build(source, progress=progress, store=store)


def exec_once(backend: str, argv: Sequence[str], image: image_mod.Image, *,
              timeout: float, **spec: Any) -> tuple[Exit, list[str]]:
    """Run `argv` once in `image` under `backend` with the other InstanceSpec fields in
    `spec`, capturing its output (`bench exec`): its exit, and the clean-up problems. The
    instance goes through the studies' life cycle and is removed however it ends."""
    rt = registry.get(backend, HOOKS)
    avail = rt.availability()
    if not avail.ok:
        raise BackendUnavailable(backend, avail.reason, avail.fix)
    run_id = new_run_id()
    problems: list[str] = []
    with hold(run_id, f"exec on {backend}"):
        ctx = Context(run_id, timeout)
        try:
            where = PlainPlacement(rt, rt.prepare(image), backend)
            inst, ex = life.run(ctx, where, InstanceSpec(
                run_id=run_id, name=f"cvbench-{run_id}-1", argv=tuple(argv), capture=True,
                **spec))
            life.finish(ctx, where, inst)
        finally:
            problems += ctx.cleanup()
            problems += finish([rt], run_id)
    return ex, problems


def overrides(scenario: Scenario, *, warmups: int | None = None,
              min_samples: int | None = None, max_samples: int | None = None,
              time_budget: float | None = None) -> Scenario:
    """The scenario with the sampling settings given replaced (`bench run --warmups`)."""
    s = scenario.sampling
    sampling = replace(
        s, warmups=s.warmups if warmups is None else warmups,
        min_samples=s.min_samples if min_samples is None else min_samples,
        max_samples=s.max_samples if max_samples is None else max_samples,
        time_budget=s.time_budget if time_budget is None else time_budget)
    if sampling.max_samples < sampling.min_samples:
        raise UsageError("--max-samples must be >= --min-samples")
    return replace(scenario, sampling=sampling)
