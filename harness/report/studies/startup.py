"""Startup: how long until the workload runs, and its phases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from harness import data
from harness.core.probes.timing import PHASES
from harness.core.units import format_seconds
from harness.report import draw
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

PHASE_COLOURS = ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f"]


SERVING_COLOUR = "#222222"
WARM_SHADE = "#fff3c4"  # as the warm chapter shades its pooled rows


@styled
def startup(df: pd.DataFrame, look: Look) -> Figure | None:
    """Every sample of the time to ready per cell on a log axis, median and 95 % CI."""
    metric = next((m for m in ("startup.to_ready", "startup.total")
                   if (df["metric"] == m).any()), None)
    if metric is None:
        return None
    what = "create → ready line" if metric == "startup.to_ready" else "create → removed"
    d = df[df["metric"] == metric]
    warm = pooled(df) if metric == "startup.to_ready" else set()
    if warm:  # each technology at its best start beside its cold one (the warm study)
        w = df[(df["metric"] == "warm.to_ready") & df["backend"].isin(warm)]
        d = pd.concat([d, w.assign(metric=metric)], ignore_index=True)
        what = "request → ready line"
    return _samples(d, look, what, warm)


def pooled(df: pd.DataFrame) -> set[str]:
    """The backends whose warm-study requests came from a prepared slot (a pool): their
    warm.to_ready is drawn beside the cold starts, marked warm."""
    s = df[(df["metric"] == "warm.from_slot") & (df["value"] > 0.5)]
    return set(s["backend"])


@styled
def startup_serving(df: pd.DataFrame, look: Look) -> Figure | None:
    """Every sample of the time to the first answer of a service (tcp, http or log
    readiness) per cell, as `startup`."""
    d = df[df["metric"] == "startup.to_serving"]
    return _samples(d, look, "create → first answer") if not d.empty else None


def _samples(d: pd.DataFrame, look: Look, what: str, warm: set[str] | None = None) -> Figure:
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    warm = warm or set()
    for i, c in enumerate(cs):
        if c.backend in warm:
            ax.axhspan(i - 0.5, i + 0.5, color=WARM_SHADE, zorder=0, lw=0)
        v = c.select(d)["value"].to_numpy(float)
        v = v[v > 0]
        if v.size == 0:
            continue
        ax.scatter(v, i + rng.uniform(-0.28, 0.28, v.size), s=look.points(9),
                   color=look.colour(c.backend), alpha=0.45, marker=look.marker(c.dataset),
                   edgecolors="none", zorder=3)
        s = draw.median_ci(ax, v, i, look)
        ax.annotate(format_seconds(s.median), (max(s.hi, float(v.max())), i), xytext=(8, 0),
                    textcoords="offset points", va="center", fontweight="bold", zorder=6)
    ax.set_xscale("log")
    draw.seconds_axis(ax.xaxis)
    ax.set_xlim(right=ax.get_xlim()[1] * 2.5)  # room for the last median's label
    ax.grid(axis="x", which="major")
    draw.rows(ax, cs, look, text=[look.label(c) + (" · warm" if c.backend in warm else "")
                                  for c in cs])
    ax.set_xlabel(f"{what} (log scale)")
    draw.title(fig, f"Startup: {what}, every sample" + (", cold and warm" if warm else ""),
               look)
    legend: list[Any] = [
        Line2D([], [], ls="", marker="o", color="#777777", alpha=0.6, label="one sample"),
        Line2D([], [], ls="", marker="|", color="black", ms=14, mew=2.5, label="median"),
        Line2D([], [], color="black", lw=4, label="95 % CI of the median")]
    if warm:
        legend.append(Patch(color=WARM_SHADE, label="warm: taken from a pool (warm study)"))
    draw.finish(fig, look, legend, cs)
    return fig


@styled
def startup_phases(df: pd.DataFrame, look: Look) -> Figure | None:
    """The waterfall of phases per cell: each phase's median as a share of their sum,
    labelled with its duration; the sum at the end of the bar."""
    phases = [p for p in PHASES if (df["metric"] == f"startup.{p}").any()]
    if not phases:
        return None
    d = df[df["metric"].isin([f"startup.{p}" for p in phases])]
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    ax = fig.add_subplot()
    sums = []
    spans = False
    for i, c in enumerate(cs):
        cell = c.select(d)
        meds = [float(cell[cell["metric"] == f"startup.{p}"]["value"].median())
                if (cell["metric"] == f"startup.{p}").any() else 0.0 for p in phases]
        served = c.select(df[df["metric"] == "startup.serving"])["value"]
        serving = float(served.median()) if not served.empty else None
        # A service is removed once it answers: the time from its ready line to that
        # answer is in no phase, so the bar leaves it blank before `remove`.
        ready_end = sum(meds[:phases.index("ready") + 1]) if "ready" in phases else 0.0
        begin = ready_end - (meds[phases.index("ready")] if "ready" in phases else 0.0)
        gap = max(0.0, begin + serving - ready_end) if serving is not None else 0.0
        total = sum(m for m in meds if m == m) + gap
        sums.append(f"Σ {format_seconds(total)}" if total > 0 else "")
        if not total > 0:
            continue
        left = 0.0
        for k, m in enumerate(meds):
            if phases[k] == "remove":
                left += gap / total
            w = m / total
            ax.barh(i, w, left=left, height=0.7, color=PHASE_COLOURS[k % len(PHASE_COLOURS)],
                    edgecolor="white", lw=1, hatch="//" if c.emulated else None)
            if w >= (0.1 if look.slides else 0.07):
                ax.text(left + w / 2, i, format_seconds(m), ha="center", va="center",
                        fontsize=draw.pt("ytick.labelsize") * 0.85)
            left += w
        if serving is not None:  # a span over the phases, never one of them
            spans = True
            x0, x1 = begin / total, (begin + serving) / total
            ax.plot([x0, x1], [i - 0.42, i - 0.42], color=SERVING_COLOUR, lw=3,
                    solid_capstyle="butt", zorder=5)
            ax.plot([x1], [i - 0.42], marker="|", color=SERVING_COLOUR, ms=10, mew=2, zorder=5)
            ax.annotate(format_seconds(serving), (x1, i - 0.42), xytext=(4, 0),
                        textcoords="offset points", va="center", color=SERVING_COLOUR,
                        fontsize=draw.pt("ytick.labelsize") * 0.8, zorder=6)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    draw.rows(ax, cs, look)
    draw.right_labels(ax, sums, weight="bold")
    ax.set_xlabel("share of the lifecycle (sum of the phase medians"
                  + ("; a service's blank: its ready line → first answer" if spans else "")
                  + "); in the bars: median duration")
    draw.title(fig, "Startup: where the time goes, phase by phase", look)
    legend: list[Any] = [Patch(color=PHASE_COLOURS[k % len(PHASE_COLOURS)], label=p)
                         for k, p in enumerate(phases)]
    if spans:
        legend.append(Line2D([], [], color=SERVING_COLOUR, lw=3,
                             label="serving: start returned → first answer (a span)"))
    draw.finish(fig, look, legend, cs)
    return fig


PRESENTATION: Presentation = Presentation(
    "startup", "Startup", "how long until the workload runs", rank=10,
    charts={"startup": ("Startup: time to ready", startup),
            "startup_serving": ("Startup: time to the first answer", startup_serving),
            "startup_phases": ("Startup: phases", startup_phases)},
    headline=(r"startup\.to_ready", r"startup\.to_serving", r"startup\.total"))
