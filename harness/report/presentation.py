"""How the report shows a study: its chapter (title, question, charts, summary table and
caption), found through the entry-point group "cvbench.reports" by the study's name.

A second group rather than a field of the study: a study lives in the orchestration
layer, its presentation in the analysis layer above it; naming the presentation from the
study would be an upward reference the layer test cannot see. Here the report asks for
the study's name and the study knows nothing of it (a third party may also present a
study it did not write). A study with no presentation gets a chapter of every figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points

import pandas as pd

from harness.core.errors import UsageError
from harness.report.blocks import Table
from harness.report.draw import ChartFn

GROUP = "cvbench.reports"
MEDIANS = "Medians; ± is half the 95 % CI, relative to the median; ⚠ an unstable figure."
UNKNOWN_RANK = 99  # a study without a presentation: after the known ones, by name

TableFn = Callable[[pd.DataFrame, bool], Table | None]  # (samples, several datasets)
FullFn = Callable[[pd.DataFrame], pd.DataFrame]  # samples -> the study's CSV


@dataclass(frozen=True)
class App:
    """An application study: shown in the applications section (harness.report.apps),
    against the bare host."""

    title: str  # heading and chart title
    throughput: str  # the figure that says how much work was done
    p99: str | None = None  # the tail latency, where the tool reports one
    from_host: bool = True  # the load generator runs on the host (else in the instance)


@dataclass(frozen=True)
class Presentation:
    """One study's chapter. `charts`: name (its files' name) -> (title, function), in the
    chapter's order; `headline`: the metrics of its summary table (regular expressions,
    in column order) unless it has a `table` of its own; `full`: the frame written as
    `<study>.csv` and what it holds, instead of every figure with its CI."""

    study: str
    title: str
    question: str
    rank: int  # the chapter's place in the report (lower first)
    charts: Mapping[str, tuple[str, ChartFn]] = field(default_factory=dict)
    headline: tuple[str, ...] = ()
    table: TableFn | None = None
    caption: str = MEDIANS
    full: tuple[FullFn, str] | None = None
    app: App | None = None


def default(study: str) -> Presentation:
    """A study the report has no presentation of: its name as title, every figure."""
    return Presentation(study, study, "every figure", UNKNOWN_RANK, headline=(r".*",))


@cache
def found() -> dict[str, Presentation]:
    """Every installed presentation by study name, in the report's order."""
    out = []
    for ep in entry_points(group=GROUP):
        p = ep.load()
        if not isinstance(p, Presentation) or p.study != ep.name:
            raise UsageError(f"entry point {ep.name!r} of {GROUP} is not the presentation "
                             f"of study {ep.name!r}")
        out.append(p)
    return {p.study: p for p in sorted(out, key=lambda p: (p.rank, p.study))}


def of(study: str) -> Presentation:
    return found().get(study) or default(study)


def apps() -> dict[str, App]:
    """The application studies by name, in the report's order."""
    return {s: p.app for s, p in found().items() if p.app is not None}


def charts() -> dict[str, tuple[str, ChartFn]]:
    """Every study chart but the applications' (harness.report.apps draws those)."""
    return {n: c for p in found().values() for n, c in p.charts.items()}

