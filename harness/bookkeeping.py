"""Run bookkeeping: the lock that marks a run live, clean-up of what runs leave behind,
and finding an interrupted run to resume.

A run holds an flock on `<state>/runs/<run id>.lock` for its whole life: `bench gc` and
every backend's `leftovers(live_runs)` leave the resources of live runs alone, and what a
dead run left (its lock no longer held) is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.core.errors import UsageError
from harness.core.records import Sample
from runtimes.base import Hooks, Leftover, check_run_id, state_dir


def runs_dir() -> Path:
    return state_dir() / "runs"


class RunLock:
    """An flock held for the whole run: `bench gc` leaves runs whose lock is held alone."""

    def __init__(self, run_id: str, what: str) -> None:
        self.path = runs_dir() / f"{check_run_id(run_id)}.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, json.dumps({"pid": os.getpid(), "what": what}).encode())

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def hold(run_id: str, what: str) -> Iterator[None]:
    """`run_id` counts as a live run inside the block."""
    lock = RunLock(run_id, what)
    try:
        yield
    finally:
        lock.release()


HOOKS = Hooks(hold_run=hold)  # what backends are lent: see runtimes.base.Hooks


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


class Collectable(Protocol):
    """What leaves resources of a run behind: a backend (Runtime), or the orchestration's
    own (the scale study's HAProxy fronts)."""

    name: str

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]: ...

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]: ...


def others() -> list[Collectable]:
    """What runs leave besides the backends' resources: HAProxy fronts (processes and
    their state directories)."""
    from harness.studies._haproxy import Fronts
    return [Fronts()]


def collect(rt: Collectable, live: Sequence[str], only_run: str | None = None,
            dry_run: bool = False) -> list[Leftover]:
    """Leftovers of dead runs on one backend (all, or only `only_run`'s): listed, and
    removed unless `dry_run`."""
    keep = list(live)
    if only_run:
        # Every other run counts as live, so only `only_run`'s resources go.
        keep += sorted({x.run_id or "" for x in rt.leftovers(live)} - {only_run})
    return rt.leftovers(keep) if dry_run else rt.gc(keep)


def finish(rts: Sequence[Collectable], run_id: str) -> list[str]:
    """End of a run (before its lock is released): remove what it made that outlives an
    instance (volumes, networks); then, if no other run is going, what runs share (parent
    cgroups, bridge, dev layer, state dirs) and whatever dead runs left (HAProxy fronts
    too). Returns the
    problems, to be reported."""
    problems = []
    live = [x for x in live_runs() if x != run_id]
    for rt in [*rts, *others()]:
        try:
            collect(rt, live, run_id)
            if not live:
                rt.gc([])
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
class Resumable:
    """What an interrupted run left in an output directory."""

    run_id: str
    base: str  # file name stem of the new journal/result
    header: dict[str, Any]
    samples: list[Sample]
    events: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]
    journal: Path | None  # a SIGKILLed run's journal, appended to in place
    supersedes: str | None  # an interrupted result the resumed one replaces


def find_resumable(out_dir: Path, run_id: str) -> Resumable:
    """The journal (killed run) or interrupted result (Ctrl-C) of `run_id` in `out_dir`."""
    from harness import results

    try:
        check_run_id(run_id)
    except ValueError:
        raise UsageError(f"--resume: {run_id!r} is not a run id") from None
    if run_id in live_runs():
        raise UsageError(f"run {run_id} is still running (its lock is held)")
    journals = sorted(out_dir.glob(f"*-{run_id}*.journal"))
    if journals:
        j = journals[-1]
        header, samples, events, artifacts = results.read_journal(j)
        return Resumable(run_id, j.name.removesuffix(".journal"), header, samples, events,
                         artifacts, j, None)
    done = sorted(p for p in out_dir.glob(f"*-{run_id}*.json")
                  if not p.name.endswith(".pyperf.json"))
    if not done:
        raise UsageError(f"--resume: no journal or result of run {run_id} in {out_dir}")
    last = done[-1]
    doc = results.load_result(last)
    if not doc.interrupted:
        raise UsageError(f"--resume: run {run_id} finished ({last}); nothing to resume")
    stem = last.name.removesuffix(".json")
    n = 1
    while (out_dir / f"{stem}-r{n}.json").exists() or (out_dir / f"{stem}-r{n}.journal").exists():
        n += 1
    return Resumable(run_id, f"{stem}-r{n}", doc.header(), list(doc.samples),
                     [dict(e) for e in doc.events], [dict(a) for a in doc.artifacts], None,
                     last.name)
