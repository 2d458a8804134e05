"""Scale: a service of N replicas behind one front, as containers and as VMs."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness import data, stats
from harness.core.units import format_value
from harness.report import draw
from harness.report.blocks import Table, pm
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

AXIS = "replicas"
# a sample's `front` when an orchestrator's replicas went through the study's HAProxy
# (harness.studies.scale.BEHIND; the report does not import the study)
BEHIND = "haproxy over the orchestrator's replicas"
BEHIND_MARK = " (HAProxy front: no routing mesh)"


def mark(df: pd.DataFrame, backend: str) -> str:
    """BEHIND_MARK for a backend whose figures went through the study's HAProxy instead
    of its own front, else ""."""
    if "front" not in df:
        return ""
    return BEHIND_MARK if (df[df["backend"] == backend]["front"] == BEHIND).any() else ""


def by_n(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Samples of `metric` with their N (the sub-variant replicas=N) and the cell's
    variant without it."""
    d = df[df["metric"] == metric]
    if d.empty:
        return d.assign(n=pd.Series(dtype=int), base=pd.Series(dtype=str))
    n = d["variant"].map(lambda v: data.axis_of(v, AXIS))
    d = d.assign(n=pd.to_numeric(n, errors="coerce"),
                 base=d["variant"].map(lambda v: data.without_axis(v, AXIS)))
    return d.dropna(subset=["n"])


def _lines(df: pd.DataFrame, look: Look, metric: str, ylabel: str, chart_title: str,
           log: bool) -> Figure | None:
    """Per backend, the median of `metric` at each N with its 95 % CI (error bars);
    replicas as VMs dashed, as containers solid."""
    d = by_n(df, metric)
    if d.empty:
        return None
    d = d.assign(variant=d["base"])  # a cell per backend (and variant), N along x
    cells = data.cells(d, look.order, look.sets)
    fig = look.figure()
    ax = fig.add_subplot()
    handles: list[Any] = []
    ns = sorted(int(x) for x in d["n"].unique())
    for c in cells:
        xs, med, lo, hi = [], [], [], []
        for n, v in c.select(d).groupby("n")["value"]:
            s = stats.summarize(v.to_numpy(float))
            xs.append(float(str(n)))
            med.append(s.median)
            lo.append(s.median - s.lo)
            hi.append(s.hi - s.median)
        vm = c.kind == "vm"
        handles.append(ax.errorbar(xs, med, yerr=[lo, hi], color=look.colour(c.backend),
                                   lw=2, capsize=4, ls="--" if vm else "-",
                                   marker=look.marker(c.dataset),
                                   ms=12 if look.slides else 7,
                                   label=look.label(c) + mark(d, c.backend)
                                   + (" · VM" if vm else "")))
        handles[-1].lines[0].set_gid(f"{metric}|{look.label(c)}")  # the medians' line
    if log:
        ax.set_yscale("log")
        draw.seconds_axis(ax.yaxis)
        bottom, top = ax.get_ylim()  # down to a labelled power of ten: every point readable
        ax.set_ylim(min(bottom, 10.0 ** math.floor(math.log10(bottom))), top)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlim(min(ns) / 1.3, max(ns) * 1.3)
    ax.set_xlabel("replicas (N)")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", which="major")
    draw.title(fig, chart_title, look)
    draw.finish(fig, look, [*handles,
                            Line2D([], [], color="#555555", lw=2, label="replicas as containers"),
                            Line2D([], [], color="#555555", lw=2, ls="--",
                                   label="replicas as VMs")],
                cells, "median at each N, bars: its 95 % CI", ncols=3)
    return fig


@styled
def to_serving(df: pd.DataFrame, look: Look) -> Figure | None:
    """Time from asking for N replicas (from 0) until all N answered through the
    front, against N, per backend."""
    return _lines(df, look, "scale.to_serving", "0 → N serving (log scale)",
                  "Scale out: time until all N replicas answer through the front", log=True)


@styled
def throughput(df: pd.DataFrame, look: Look) -> Figure | None:
    """wrk's requests per second through the front at each N, per backend."""
    fig = _lines(df, look, "scale.rps", "requests/s through the front (wrk)",
                 "Scale: throughput through the front at N replicas", log=False)
    if fig is not None:
        fig.axes[0].set_ylim(bottom=0)
    return fig


ROWS = (("to serving", "scale.to_serving"), ("spread", "scale.spread"),
        ("PSS / replica", "scale.pss"), ("req/s", "scale.rps"), ("p99", "scale.lat_p99"),
        ("N → 1", "scale.down"), ("update", "scale.update"))


def scale_table(df: pd.DataFrame, several: bool) -> Table | None:
    """One row per backend and N: the medians (± half the 95 % CI) of each figure."""
    d = df[df["metric"].str.startswith("scale.")]
    if d.empty:
        return None
    d = pd.concat([by_n(d, m) for _, m in ROWS])
    if d.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "N", *(n for n, _ in ROWS)]
    out = []
    for c in data.cells(d.assign(variant=d["base"])):
        cell = d[(d["backend"] == c.backend) & (d["base"] == c.variant)
                 & (d["dataset"] == c.dataset)]
        for n in sorted(int(x) for x in cell["n"].unique()):
            row = [*([c.dataset] if several else []), c.label() + mark(cell, c.backend),
                   str(n)]
            for _, metric in ROWS:
                v = cell[(cell["metric"] == metric) & (cell["n"] == n)]["value"]
                if v.empty:
                    row.append("—")
                    continue
                s = stats.summarize(v.to_numpy(float))
                unit = str(cell[cell["metric"] == metric]["unit"].iloc[0])
                row.append(f"{format_value(s.median, unit)} {pm(s.median, s.lo, s.hi)}".strip())
            out.append(row)
    return Table(cols, out, "l" * (len(cols) - len(ROWS)) + "r" * len(ROWS))


PRESENTATION: Presentation = Presentation(
    "scale", "Scale", "how fast a service goes from 0 to N replicas serving behind one "
    "front address, what each replica costs, and what the front delivers at each N — "
    "replicas as containers beside replicas as VMs", rank=65,
    charts={"scale": ("Scale out: time to N serving", to_serving),
            "scale_rps": ("Scale: throughput through the front", throughput)},
    table=scale_table,
    caption="Medians; ± is half the 95 % CI, relative to the median. to serving: from "
            "asking for N replicas (from 0) until each has answered through the front; "
            "spread: until each replica's own request count (read from the replica) shows "
            "requests from the front; PSS per replica: its host processes (a replica on "
            "another node: absent); req/s and p99: wrk through the front; N → 1: until one "
            "replica is left and answers alone; update: a rolling update to another image "
            "digest until every replica is new and has answered. The front is HAProxy on "
            "the host, or the orchestrator's own (docker:swarm); '(HAProxy front: no "
            "routing mesh)': the orchestrator's replicas behind that same HAProxy, its own "
            "front being unavailable on the host (docker:swarm without IPVS).")
