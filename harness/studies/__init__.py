"""Studies: what one sample of a cell measures, one plug-in each.

A scenario names its study (`study = "startup"`); the runner handles rounds, order,
adaptive stopping, journaling and clean-up, and asks the study for one sample at a time.
Studies are found through the entry-point group "cvbench.studies" (pyproject.toml), as
backends are through "cvbench.runtimes": adding one is a module and one entry-point line,
and no list here has to be kept in step. Each module holds its object to `Study`
statically (`STUDY: Study = ...`: mypy checks it against the protocol).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Protocol

from harness.core.errors import UsageError
from harness.core.image import Image, Source
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from runtimes.base import Prepared, Runtime

GROUP = "cvbench.studies"

Build = Callable[[Source], Image]  # builds (or takes from the cache) the image of a source


class Study(Protocol):
    """A study as the orchestration sees it. Its presentation in the report is found by
    the report itself (entry-point group "cvbench.reports"), so a study knows nothing of
    the layer above it."""

    @property
    def name(self) -> str:
        """The name scenarios and results use (the entry point's name)."""
        ...

    @property
    def metrics(self) -> Mapping[str, str]:
        """Metric name (or a prefix ending in ".") -> unit."""
        ...

    @property
    def params(self) -> Mapping[str, Any]:
        """The `[params]` it accepts, with their defaults (their types are checked)."""
        ...

    @property
    def tools(self) -> Mapping[str, str]:
        """Programs it runs on the host -> the Debian package that provides each."""
        ...

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        """Further checks of `s`'s [params] (ranges, nested tables): (key, message)."""
        ...

    def image(self, s: Scenario) -> Source:
        """The workload image as this study runs it (a study may add its own probe)."""
        ...

    def images(self, s: Scenario, build: Build) -> dict[str, Image]:
        """Further images a run needs besides the workload's (a stack's services), by name."""
        ...

    def runs_image(self, name: str, rt: Runtime, kind: str) -> bool:
        """Whether backend `rt` (of Traits.kind `kind`) prepares further image `name`."""
        ...

    def header(self, s: Scenario, images: Mapping[str, Image],
               prepared: Mapping[str, Mapping[str, Prepared]]) -> dict[str, Any]:
        """Entries of the result's header the study adds (given its further images and
        how each backend prepared them)."""
        ...

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        """Take one sample of `cell`; return its measurements."""
        ...


class Base:
    """The defaults of `Study` a study without further checks, tools or images inherits."""

    tools: ClassVar[Mapping[str, str]] = {}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        return []

    def image(self, s: Scenario) -> Source:
        return s.workload.image

    def images(self, s: Scenario, build: Build) -> dict[str, Image]:
        return {}

    def runs_image(self, name: str, rt: Runtime, kind: str) -> bool:
        return False

    def header(self, s: Scenario, images: Mapping[str, Image],
               prepared: Mapping[str, Mapping[str, Prepared]]) -> dict[str, Any]:
        return {}


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """Every study installed, by name."""
    return sorted(_entry_points())


@cache
def get(name: str) -> Study:
    eps = _entry_points()
    if name not in eps:
        raise UsageError(f"unknown study {name!r}; known: {', '.join(sorted(eps))}")
    study = eps[name].load()
    if not callable(getattr(study, "sample", None)) or getattr(study, "name", None) != name:
        raise UsageError(f"entry point {name!r} of {GROUP} is not a study called {name!r}")
    # Each study module holds its object to Study statically (mypy); the entry point only
    # names it.
    found: Study = study
    return found


def unit_of(study: Study, metric: str) -> str | None:
    if metric in study.metrics:
        return study.metrics[metric]
    for prefix, unit in study.metrics.items():
        if prefix.endswith(".") and metric.startswith(prefix):
            return unit
    return None


def missing_tools(study: Study) -> dict[str, str]:
    """Programs the study runs on the host that are not installed here: name -> the
    Debian package that provides it."""
    return {t: pkg for t, pkg in study.tools.items() if shutil.which(t) is None}


def all_tools() -> dict[str, tuple[str, list[str]]]:
    """Every host program an installed study runs: name -> (package, the studies)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for name in names():
        for t, pkg in get(name).tools.items():
            out.setdefault(t, (pkg, []))[1].append(name)
    return out
