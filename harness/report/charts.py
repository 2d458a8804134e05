"""Charts with matplotlib: one per study present, in a paper or a slides style.

Figures are built with the object API (`matplotlib.figure.Figure`), not pyplot: no global
state, nothing to close, no GUI backend needed, and a notebook displays them as they are.

Every chart draws *cells* (backend × variant × dataset, see `data.cells`) in one order —
bare processes, then containers, then VMs — and a backend keeps one colour in all of them
(blues and greens for containers, reds and oranges for VMs, grey for the bare process).
An emulated VM (TCG) is marked wherever it appears: "(TCG, emulated)" in its label, a
hatched band or hatched bars, and a footnote saying what that means.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness import data, stats
from harness.core.probes.timing import PHASES
from harness.core.units import format_seconds
from harness.data import DEFAULT_VARIANT
from harness.report import claims as claims_mod
from harness.report import tables

Colour = tuple[float, float, float]
ChartFn = Callable[[pd.DataFrame, "Look"], "Figure | None"]
RGB = str

# Colour families by kind: the eye groups containers and VMs before reading a label.
FAMILIES: dict[str, list[RGB]] = {
    "process": ["#4d4d4d", "#969696"],
    "container": ["#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#bcbd22", "#08519c"],
    "vm": ["#d62728", "#ff7f0e", "#e377c2", "#8c564b"],
    "unknown": ["#b8860b", "#000000", "#7f7f7f"],
}
PHASE_COLOURS = ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f"]
SERVING_COLOUR = "#222222"
VERDICT_COLOURS = {claims_mod.HOLDS: "#1a9850", claims_mod.FAILS: "#d73027",
                   claims_mod.INCONCLUSIVE: "#878787",
                   claims_mod.INCONCLUSIVE_FAILURES: "#b35806"}
DATASET_MARKERS = ["o", "s", "^", "D", "v", "P"]
MARKER_GLYPHS = ["●", "■", "▲", "◆", "▼", "✚"]
EMULATED_NOTE = ("⚠ (TCG, emulated): a VM without hardware acceleration; "
                 "its times say little about a VM under KVM")


@dataclass(frozen=True)
class Style:
    name: str
    size: tuple[float, float]  # inches
    dpi: int
    rc: dict[str, Any]
    row_height: float = 0.0  # paper: grow with the number of rows (inches per row)


STYLES: dict[str, Style] = {
    # A column-and-a-half figure for a paper or a README: small type, compact.
    "paper": Style("paper", (7.0, 4.2), 200, {
        "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
        "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 10,
        "lines.linewidth": 1.2, "lines.markersize": 4}, row_height=0.24),
    # 16:9 at 1920×1080: type readable from the back of a room.
    "slides": Style("slides", (16.0, 9.0), 120, {
        "font.size": 20, "axes.titlesize": 22, "axes.labelsize": 20, "xtick.labelsize": 18,
        "ytick.labelsize": 18, "legend.fontsize": 17, "figure.titlesize": 28,
        "lines.linewidth": 2.5, "lines.markersize": 9, "axes.linewidth": 1.5,
        "xtick.major.width": 1.5, "ytick.major.width": 1.5, "hatch.linewidth": 1.5}),
}
BASE_RC: dict[str, Any] = {
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": False,
    "grid.alpha": 0.35, "svg.fonttype": "path", "figure.facecolor": "white",
    "savefig.facecolor": "white", "font.family": "DejaVu Sans",
}


def _rc(st: Style) -> Any:
    """The rc settings of a style (typed loosely: matplotlib's stubs list every key)."""
    return {**BASE_RC, **st.rc}


@contextmanager
def style_context(style: str | Style) -> Iterator[Style]:
    """matplotlib settings of `style`, for building *and* saving its figures."""
    st = STYLES[style] if isinstance(style, str) else style
    with mpl.rc_context(_rc(st)):
        yield st


def backend_colours(order: Sequence[str], kinds: Mapping[str, str]) -> dict[str, RGB]:
    """backend -> colour: the next colour of its kind's family, in the report's order."""
    colours: dict[str, RGB] = {}
    seen: dict[str, int] = {}
    for b in order:
        kind = kinds.get(b, "unknown")
        i = seen.get(kind, 0)
        seen[kind] = i + 1
        colours[b] = FAMILIES[kind][i % len(FAMILIES[kind])]
    return colours


@dataclass
class Look:
    """How every chart of one report looks: style, backend order and colours, datasets."""

    style: Style
    order: list[str]
    colours: dict[str, RGB]
    sets: list[str]
    kinds: dict[str, str] = field(default_factory=dict)
    claims: pd.DataFrame | None = None  # claims.evaluate of the report's frame, once

    @classmethod
    def of(cls, df: pd.DataFrame, style: str | Style = "paper") -> Look:
        st = STYLES[style] if isinstance(style, str) else style
        order = data.backend_order(df) if not df.empty else []
        kinds = ({str(b): str(k) for b, k in
                  df.drop_duplicates("backend")[["backend", "kind"]].itertuples(index=False)}
                 if not df.empty else {})
        return cls(st, order, backend_colours(order, kinds), data.datasets(df), kinds)

    @property
    def slides(self) -> bool:
        return self.style.name == "slides"

    def colour(self, backend: str) -> RGB:
        return self.colours.get(backend, "#7f7f7f")

    def marker(self, dataset: str) -> str:
        i = self.sets.index(dataset) if dataset in self.sets else 0
        return DATASET_MARKERS[i % len(DATASET_MARKERS)]

    @property
    def several(self) -> bool:
        return len(self.sets) > 1

    def tag(self, dataset: str) -> str | None:
        """"#2" for the second dataset, when there are several (the footnote says which)."""
        if not self.several:
            return None
        return f"#{self.sets.index(dataset) + 1}" if dataset in self.sets else "#?"

    def label(self, cell: data.Cell) -> str:
        return cell.label(self.tag(cell.dataset))

    def figure(self, rows: int = 0) -> Figure:
        w, h = self.style.size
        if self.style.row_height and rows:
            h = max(h, 1.6 + self.style.row_height * rows)
        return Figure(figsize=(w, h), dpi=self.style.dpi, layout="constrained")

    def points(self, size: float) -> float:
        """A marker area scaled for the style (slides get bigger dots)."""
        return size * (4.0 if self.slides else 1.0)


# --- helpers --------------------------------------------------------------------------

def _pt(key: str) -> float:
    """An rc font size in points ("medium" and the like resolved)."""
    from matplotlib.font_manager import FontProperties

    rc: Any = mpl.rcParams
    return float(FontProperties(size=rc[key]).get_size_in_points())


def styled(fn: ChartFn) -> ChartFn:
    """Build the chart under its look's style, whoever calls it (a notebook, a test)."""
    @functools.wraps(fn)
    def wrapper(df: pd.DataFrame, look: Look) -> Figure | None:
        with mpl.rc_context(_rc(look.style)):
            return fn(df, look)
    return wrapper


def _title(fig: Figure, title: str, look: Look) -> None:
    fig.suptitle(title, fontweight="bold", x=0.01, ha="left")


def _finish(fig: Figure, look: Look, handles: Sequence[Any], cells: Sequence[data.Cell],
            *notes: str, ncols: int | None = None) -> None:
    """Legend and footnotes in a band reserved at the bottom (the layout engine keeps the
    axes out of it), so neither can overlap the other or the axes."""
    lines = [n for n in notes if n]
    if any(c.emulated for c in cells):
        lines.append(EMULATED_NOTE)
    if look.several:
        lines.append(_dataset_note(look))
    fs = _pt("legend.fontsize")
    height = fig.get_figheight() * 72
    note_h = sum(n.count("\n") + 1 for n in lines) * fs * 1.3
    ncols = min(len(handles), ncols or len(handles)) or 1
    # Fewer columns when one row of entries would be wider than the figure.
    width_pt = fig.get_figwidth() * 72 * 0.95
    entry = max((len(str(h.get_label())) for h in handles), default=0) * fs * 0.6 + fs * 3.5
    while ncols > 1 and ncols * entry > width_pt:
        ncols -= 1
    leg_h = math.ceil(len(handles) / ncols) * fs * 1.8 + fs * 0.4 if handles else 0.0
    pad = fs * 0.6
    band = (note_h + leg_h + pad) / height
    engine: Any = fig.get_layout_engine()  # constrained: keeps the axes out of the band
    engine.set(rect=(0, band, 1, 1 - band))
    if handles:
        fig.legend(handles=list(handles), loc="lower center", ncols=ncols, frameon=False,
                   bbox_to_anchor=(0.5, (note_h + pad / 2) / height), borderaxespad=0)
    if lines:
        fig.text(0.01, pad / 3 / height, "\n".join(lines), fontsize=fs, ha="left",
                 va="bottom", color="#444444")


def _rows(ax: Axes, cells: Sequence[data.Cell], look: Look, labels: bool = True,
          text: Sequence[str] | None = None) -> None:
    """Cells as rows, top to bottom, grouped by backend; emulated rows hatched. `text`:
    the row labels, when a cell's own label is not enough."""
    ax.set_ylim(len(cells) - 0.5, -0.5)
    ax.set_yticks(range(len(cells)))
    if labels:
        ax.set_yticklabels(list(text) if text is not None else [look.label(c) for c in cells])
        for tick, c in zip(ax.get_yticklabels(), cells, strict=True):
            tick.set_color(look.colour(c.backend))
            if c.emulated:
                tick.set_fontweight("bold")
    else:
        ax.tick_params(axis="y", labelleft=False)
    ax.tick_params(axis="y", length=0)
    for i, c in enumerate(cells):
        if c.emulated:
            ax.axhspan(i - 0.5, i + 0.5, facecolor="none", edgecolor="#d9d9d9", hatch="///",
                       lw=0, zorder=0)
        if i and c.backend != cells[i - 1].backend:
            ax.axhline(i - 0.5, color="#bbbbbb", lw=0.8, zorder=0)


def _seconds_axis(axis: Any, numticks: int = 12) -> None:
    axis.set_major_locator(LogLocator(base=10, numticks=numticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: format_seconds(v)))
    axis.set_minor_formatter(NullFormatter())


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _fmt_bytes(v: float, suffix: str = "") -> str:
    k = 0
    while abs(v) >= 1024 and k < len(BYTE_UNITS) - 1:
        v /= 1024
        k += 1
    return f"{v:.3g} {BYTE_UNITS[k]}{suffix}"


def _bytes_log_axis(axis: Any, suffix: str = "") -> None:
    axis.set_major_locator(LogLocator(base=2, numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_bytes(v, suffix)))
    axis.set_minor_formatter(NullFormatter())


def _compact_bytes(v: float, _: Any = None) -> str:
    """Axis ticks in binary units, short enough for narrow panels: 256M, 1G."""
    k = 0
    while abs(v) >= 1024 and k < 4:
        v /= 1024
        k += 1
    return f"{v:g}{' KMGT'[k].strip()}"


def _byte_scale(vmax: float) -> tuple[float, str]:
    k = 0
    while vmax >= 1024 and k < len(BYTE_UNITS) - 1:
        vmax /= 1024
        k += 1
    return 1024.0 ** k, BYTE_UNITS[k]


def _count_fmt(v: float, _: Any = None) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def _median_ci(ax: Axes, x: np.ndarray, y: float, look: Look, colour: str = "black",
               horizontal: bool = True) -> stats.Summary:
    """Median as a tick, its 95 % CI as a thick line."""
    s = stats.summarize(x)
    lw = 5 if look.slides else 2.5
    ax.plot([s.lo, s.hi], [y, y], color=colour, lw=lw, solid_capstyle="butt", zorder=4)
    ax.plot([s.median], [y], marker="|", color=colour, ms=28 if look.slides else 12,
            mew=lw, zorder=5)
    return s


# --- startup --------------------------------------------------------------------------

@styled
def startup(df: pd.DataFrame, look: Look) -> Figure | None:
    """Every sample of the time to ready per cell on a log axis, median and 95 % CI."""
    metric = next((m for m in ("startup.to_ready", "startup.total")
                   if (df["metric"] == m).any()), None)
    if metric is None:
        return None
    what = "create → ready line" if metric == "startup.to_ready" else "create → removed"
    return _samples(df[df["metric"] == metric], look, what)


@styled
def startup_serving(df: pd.DataFrame, look: Look) -> Figure | None:
    """Every sample of the time to the first answer of a service (tcp, http or log
    readiness) per cell, as `startup`."""
    d = df[df["metric"] == "startup.to_serving"]
    return _samples(d, look, "create → first answer") if not d.empty else None


def _samples(d: pd.DataFrame, look: Look, what: str) -> Figure:
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, c in enumerate(cs):
        v = c.select(d)["value"].to_numpy(float)
        v = v[v > 0]
        if v.size == 0:
            continue
        ax.scatter(v, i + rng.uniform(-0.28, 0.28, v.size), s=look.points(9),
                   color=look.colour(c.backend), alpha=0.45, marker=look.marker(c.dataset),
                   edgecolors="none", zorder=3)
        s = _median_ci(ax, v, i, look)
        ax.annotate(format_seconds(s.median), (max(s.hi, float(v.max())), i), xytext=(8, 0),
                    textcoords="offset points", va="center", fontweight="bold", zorder=6)
    ax.set_xscale("log")
    _seconds_axis(ax.xaxis)
    ax.set_xlim(right=ax.get_xlim()[1] * 2.5)  # room for the last median's label
    ax.grid(axis="x", which="major")
    _rows(ax, cs, look)
    ax.set_xlabel(f"{what} (log scale)")
    _title(fig, f"Startup: {what}, every sample", look)
    _finish(fig, look, [
        Line2D([], [], ls="", marker="o", color="#777777", alpha=0.6, label="one sample"),
        Line2D([], [], ls="", marker="|", color="black", ms=14, mew=2.5, label="median"),
        Line2D([], [], color="black", lw=4, label="95 % CI of the median")], cs)
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
                        fontsize=_pt("ytick.labelsize") * 0.85)
            left += w
        if serving is not None:  # a span over the phases, never one of them
            spans = True
            x0, x1 = begin / total, (begin + serving) / total
            ax.plot([x0, x1], [i - 0.42, i - 0.42], color=SERVING_COLOUR, lw=3,
                    solid_capstyle="butt", zorder=5)
            ax.plot([x1], [i - 0.42], marker="|", color=SERVING_COLOUR, ms=10, mew=2, zorder=5)
            ax.annotate(format_seconds(serving), (x1, i - 0.42), xytext=(4, 0),
                        textcoords="offset points", va="center", color=SERVING_COLOUR,
                        fontsize=_pt("ytick.labelsize") * 0.8, zorder=6)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    _rows(ax, cs, look)
    _right_labels(ax, sums, weight="bold")
    ax.set_xlabel("share of the lifecycle (sum of the phase medians"
                  + ("; a service's blank: its ready line → first answer" if spans else "")
                  + "); in the bars: median duration")
    _title(fig, "Startup: where the time goes, phase by phase", look)
    legend: list[Any] = [Patch(color=PHASE_COLOURS[k % len(PHASE_COLOURS)], label=p)
                         for k, p in enumerate(phases)]
    if spans:
        legend.append(Line2D([], [], color=SERVING_COLOUR, lw=3,
                             label="serving: start returned → first answer (a span)"))
    _finish(fig, look, legend, cs)
    return fig


def _right_labels(ax: Axes, labels: Sequence[str], colours: Sequence[str] | None = None,
                  weight: str = "normal", fontsize: float | None = None) -> Axes:
    """Text at the right end of each row, as tick labels of a twin axis, so the layout
    engine makes room for it."""
    twin = ax.twinx()
    twin.set_ylim(ax.get_ylim())
    twin.set_yticks(range(len(labels)), list(labels), fontweight=weight,
                    fontsize=fontsize or _pt("ytick.labelsize"))
    twin.tick_params(axis="y", length=0)
    twin.spines[["top", "right", "left", "bottom"]].set_visible(False)
    if colours:
        for tick, col in zip(twin.get_yticklabels(), colours, strict=True):
            tick.set_color(col)
    return twin


# --- memory ---------------------------------------------------------------------------

@styled
def memory(df: pd.DataFrame, look: Look) -> Figure | None:
    """PSS per instance with the amortised daemon share stacked on it, CI on each."""
    inst = data.per_instance_memory(df)
    if inst.empty:
        return None
    cs = data.cells(inst.assign(metric="memory.per_instance"), look.order, look.sets)
    rows = []
    for c in cs:
        g = c.select(inst)
        rows.append((stats.summarize(g["pss"].to_numpy(float)),
                     stats.summarize(g["daemon"].dropna().to_numpy(float)),
                     int(g.groupby("round").size().median())))
    div, unit = _byte_scale(max(p.hi + d.hi for p, d, _ in rows))
    fig = look.figure(len(cs))
    ax = fig.add_subplot()
    cap = 8 if look.slides else 3
    labels = []
    for i, (c, (p, dm, n)) in enumerate(zip(cs, rows, strict=True)):
        col = look.colour(c.backend)
        ax.barh(i, p.median / div, height=0.65, color=col,
                hatch="//" if c.emulated else None, edgecolor="white")
        ax.errorbar(p.median / div, i, xerr=[[(p.median - p.lo) / div],
                                             [(p.hi - p.median) / div]],
                    color="black", capsize=cap, lw=1.5)
        if dm.median > 0:
            ax.barh(i, dm.median / div, left=p.median / div, height=0.65, color=col, alpha=0.35,
                    hatch="..", edgecolor=col)
            ax.errorbar((p.median + dm.median) / div, i,
                        xerr=[[(dm.median - dm.lo) / div], [(dm.hi - dm.median) / div]],
                        color="#555555", capsize=cap, lw=1.5)
        labels.append((i, p, dm, n))
    xmax = max(p.hi + dm.hi for p, dm, _ in rows) / div
    ax.set_xlim(0, xmax * 1.6)
    for i, p, dm, n in labels:
        text = _fmt_bytes(p.median + dm.median)
        if dm.median > 0:
            text += f"  ({_fmt_bytes(p.median)} + {_fmt_bytes(dm.median)} of daemons ÷ {n})"
        end = max(p.hi, p.median + dm.hi) / div
        # A long bar carries its label inside, so the label never leaves the figure.
        inside = end > xmax * 0.6
        ax.annotate(text, (end if not inside else p.median / div * 0.98, i),
                    xytext=(8 if not inside else -8, 0), textcoords="offset points",
                    va="center", ha="left" if not inside else "right", zorder=6,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none",
                          "pad": 2} if inside else None)
    ax.grid(axis="x")
    _rows(ax, cs, look)
    ax.set_xlabel(f"memory per idle instance ({unit}); whiskers: 95 % CI of the median")
    _title(fig, "Memory: PSS per instance + the engine daemons' share", look)
    _finish(fig, look, [Patch(facecolor="#888888", label="PSS of the instance's processes"),
                        Patch(facecolor="#cccccc", hatch="..", edgecolor="#888888",
                              label="engine daemons ÷ instances")], cs)
    return fig


# --- disk -----------------------------------------------------------------------------

def _disk_parts(d: pd.DataFrame, base: str) -> tuple[float, float, bool]:
    """(shared, unique, split known) medians of `base` from its .shared/.unique parts."""
    def med(metric: str) -> float | None:
        v = d[d["metric"] == metric]["value"]
        return float(v.median()) if not v.empty else None

    total, shared, unique = med(base), med(f"{base}.shared"), med(f"{base}.unique")
    if shared is None and unique is None:
        return 0.0, total or 0.0, False
    if total is None:
        total = (shared or 0.0) + (unique or 0.0)
    shared = shared if shared is not None else total - (unique or 0.0)
    return shared, total - shared, True


@styled
def disk(df: pd.DataFrame, look: Look) -> Figure | None:
    """Image and per-instance bytes per cell; the part shared with other images or
    instances hatched and pale, the unique part solid."""
    parts = [b for b in ("disk.image", "disk.instance")
             if df["metric"].str.fullmatch(rf"{b}(\.shared|\.unique)?").any()]
    if not parts:
        return None
    d = df[df["metric"].str.match(r"disk\.(image|instance)")]
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    axes = fig.subplots(1, len(parts), sharey=True, squeeze=False)[0]
    no_split: list[str] = []
    titles = {"disk.image": "image, as the backend stores it",
              "disk.instance": "each instance (growth)"}
    for ax, base in zip(axes, parts, strict=True):
        vals = [_disk_parts(c.select(d), base) for c in cs]
        div, unit = _byte_scale(max((s + u for s, u, _ in vals), default=1.0))
        for i, (c, (shared, unique, known)) in enumerate(zip(cs, vals, strict=True)):
            col = look.colour(c.backend)
            if base == "disk.image" and not known and shared + unique > 0:
                no_split.append(c.backend)
            ax.barh(i, unique / div, height=0.65, color=col, edgecolor="white",
                    hatch="//" if c.emulated else None)
            if shared:
                ax.barh(i, shared / div, left=unique / div, height=0.65, color=col, alpha=0.35,
                        hatch="xx", edgecolor=col)
            if shared + unique > 0:
                label = _fmt_bytes(shared + unique)
                if shared:
                    label += f" ({shared / (shared + unique):.0%} shared)"
                ax.annotate(label, ((shared + unique) / div, i), xytext=(6, 0),
                            textcoords="offset points", va="center")
            elif not c.select(d)["metric"].str.fullmatch(rf"{base}(\.shared|\.unique)?").any():
                # An empty row says why: this backend has no such figure (the host adds
                # no layer per instance; a VM booted from an initramfs writes to RAM).
                ax.annotate("not measured for this backend", (0, i), xytext=(6, 0),
                            textcoords="offset points", va="center", color="#777777",
                            style="italic")
        ax.set_xlim(0, max(ax.get_xlim()[1], 1e-9) * 1.6)
        ax.grid(axis="x")
        ax.set_title(titles[base])
        ax.set_xlabel(unit)
        _rows(ax, cs, look, labels=ax is axes[0])
    _title(fig, "Disk: bytes on disk per backend", look)
    note = (f"no shared/unique split reported by {', '.join(dict.fromkeys(no_split))}: "
            "drawn solid" if no_split else "")
    _finish(fig, look, [Patch(facecolor="#888888", label="unique"),
                        Patch(facecolor="#cccccc", hatch="xx", edgecolor="#888888",
                              label="shared with other images or instances")], cs, note)
    return fig


# --- I/O ------------------------------------------------------------------------------

def _io_jobs(df: pd.DataFrame, kind: str) -> list[str]:
    m = df["metric"].str.extract(rf"^io\.(.+)\.{kind}$")[0].dropna()
    return list(dict.fromkeys(m))


def _io(df: pd.DataFrame, look: Look, kind: str) -> Figure | None:
    """Per job: each cell's median with its CI (every sample faint), grouped by backend,
    the storage target in the label; the bare host's median as the reference line."""
    jobs = _io_jobs(df, kind)
    if not jobs:
        return None
    d = df[df["metric"].isin([f"io.{j}.{kind}" for j in jobs])]
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    ncols = len(jobs) if len(jobs) <= 4 else math.ceil(len(jobs) / 2)
    nrows = math.ceil(len(jobs) / ncols)
    axes = list(fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel())
    rng = np.random.default_rng(0)
    refs: dict[str, Any] = {}
    for n, (ax, job) in enumerate(zip(axes, jobs, strict=False)):
        jd = d[d["metric"] == f"io.{job}.{kind}"]
        for i, c in enumerate(cs):
            v = c.select(jd)["value"].to_numpy(float)
            v = v[v > 0]
            if v.size == 0:
                continue
            col = look.colour(c.backend)
            ax.scatter(v, i + rng.uniform(-0.2, 0.2, v.size), s=look.points(6), color=col,
                       alpha=0.3, edgecolors="none", marker=look.marker(c.dataset))
            _median_ci(ax, v, i, look, colour=col)
        for k, ds in enumerate(look.sets):
            host = jd[(jd["kind"] == "process") & (jd["dataset"] == ds)]["value"]
            if host.empty:
                continue
            label = "bare host (reference)" + (f" {look.tag(ds)}" if look.several else "")
            refs[label] = ax.axvline(float(host.median()), color="#4d4d4d",
                                     ls=["--", ":", "-."][k % 3], lw=1.5, label=label)
        ax.set_xscale("log")
        if kind == "bw":
            # Powers of 4 keep binary labels round and short: 64M, 256M, 1G.
            ax.xaxis.set_major_locator(LogLocator(base=4, numticks=4 if ncols > 2 else 6))
            ax.xaxis.set_major_formatter(FuncFormatter(_compact_bytes))
        else:
            ax.xaxis.set_major_locator(LogLocator(base=10, numticks=4 if ncols > 2 else 6))
            ax.xaxis.set_major_formatter(FuncFormatter(_count_fmt))
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.5, hi * 1.5)
        ax.grid(axis="x", which="major")
        ax.set_title(job)
        _rows(ax, cs, look, labels=n % ncols == 0)
        ax.set_xlabel("bytes/s (M = MiB)" if kind == "bw" else "operations/s")
    for ax in axes[len(jobs):]:
        ax.set_visible(False)
    what = "bandwidth" if kind == "bw" else "IOPS"
    _title(fig, f"I/O: {what} by storage target (fio), per job", look)
    _finish(fig, look, [Line2D([], [], color="black", lw=4, label="median, 95 % CI"),
                        Line2D([], [], ls="", marker="o", color="#999999",
                               label="one sample"), *refs.values()], cs)
    return fig


@styled
def io(df: pd.DataFrame, look: Look) -> Figure | None:
    return _io(df, look, "bw")


@styled
def io_iops(df: pd.DataFrame, look: Look) -> Figure | None:
    return _io(df, look, "iops")


# --- density --------------------------------------------------------------------------

@styled
def density(df: pd.DataFrame, look: Look) -> Figure | None:
    """Memory and start latency against the number of running instances, per backend.

    The count is the sample's `instance` field (the density study records, after each
    step, the number of instances then running)."""
    d = df[df["metric"].str.startswith("density.")].copy()
    if d.empty:
        return None
    d["count"] = pd.to_numeric(d["instance"], errors="coerce")
    d = d.dropna(subset=["count"])
    if d.empty:
        return None
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure()
    ax_mem, ax_lat = fig.subplots(1, 2)
    vmax = max(float(d[d["metric"] == "density.pss_total"]["value"].max() or 0.0), 1.0)
    drops: dict[data.Cell, pd.Series] = {}
    for c in cs:
        avail = c.select(d[d["metric"] == "density.mem_available"])
        if not avail.empty:
            med = avail.groupby("count")["value"].median()
            drops[c] = float(med.iloc[0]) - med
            vmax = max(vmax, float(drops[c].max()))
    div, unit = _byte_scale(vmax)
    base_counts = set()
    for c in cs:
        col, mk = look.colour(c.backend), look.marker(c.dataset)
        for metric, ax, scale in (("density.pss_total", ax_mem, div),
                                  ("density.start_latency", ax_lat, 1.0)):
            g = c.select(d[d["metric"] == metric]).groupby("count")["value"]
            if g.ngroups == 0:
                continue
            summ = [stats.summarize(v.to_numpy(float)) for _, v in g]
            x = np.array([k for k, _ in g], dtype=float)
            ax.plot(x, [s.median / scale for s in summ], marker=mk, color=col)
            if any(s.n > 1 for s in summ):
                ax.fill_between(x, [s.lo / scale for s in summ], [s.hi / scale for s in summ],
                                color=col, alpha=0.18, lw=0)
        if c in drops:
            ax_mem.plot(drops[c].index, drops[c].to_numpy(float) / div, ls="--", color=col,
                        lw=float(mpl.rcParams["lines.linewidth"]) * 0.8)
            base_counts.add(int(drops[c].index[0]))
    ax_mem.set_ylabel(unit)
    ax_mem.set_title("host memory in use")
    ax_mem.set_ylim(bottom=0)
    ax_lat.set_yscale("log")
    _seconds_axis(ax_lat.yaxis)
    ax_lat.set_title("start latency of the newest instance")
    for ax in (ax_mem, ax_lat):
        ax.set_xlabel("instances running")
        ax.grid(which="major")
        ax.xaxis.get_major_locator().set_params(integer=True)
    _title(fig, "Density: what each added instance costs", look)
    handles: list[Any] = [Line2D([], [], color=look.colour(c.backend), lw=4,
                                 marker=look.marker(c.dataset) if look.several else None,
                                 label=look.label(c)) for c in cs]
    handles.append(Line2D([], [], color="#555555", label="PSS sum"))
    if drops:
        handles.append(Line2D([], [], color="#555555", ls="--", label="MemAvailable drop"))
    note = ("MemAvailable drop counted from " + ", ".join(f"n={n}" for n in sorted(
        base_counts)) + "; shaded: 95 % CI over rounds") if base_counts else ""
    _finish(fig, look, handles, cs, note, ncols=min(len(handles), 4 if look.slides else 5))
    return fig


# --- limits ---------------------------------------------------------------------------

UNLIMITED = "no limit applied"


def _limits_cpu(ax: Axes, cpu: pd.DataFrame, used_all: pd.DataFrame, look: Look
                ) -> list[Any]:
    """Cores used against cores asked, per cell (dodged around each asked value), with
    the ideal line used = asked and, above each point, the cores the host left idle
    meanwhile; a backend that applies no limit is a dashed level, not a point."""
    cs = data.cells(cpu, look.order, look.sets)
    asked = sorted(float(a) for a in cpu["asked"].unique())
    gap = float(min(np.diff(asked))) if len(asked) > 1 else asked[0]
    limited = [c for c in cs if c.select(cpu)["applied"].all()]
    lw = 5 if look.slides else 2.5
    step = gap * 0.5 / max(len(limited), 1)
    top = max(asked)
    for j, c in enumerate(limited):
        r = c.select(cpu).sort_values("asked")
        col, x = look.colour(c.backend), r["asked"].to_numpy(float) + (
            j - (len(limited) - 1) / 2) * step
        used = r["value"].to_numpy(float)
        ax.vlines(x, used, r["room"].to_numpy(float), colors=col, alpha=0.3, lw=lw * 1.6,
                  gid=f"limits.idle|{look.label(c)}")
        ax.vlines(x, r["value_lo"].to_numpy(float), r["value_hi"].to_numpy(float),
                  colors="black", lw=lw / 2)
        ax.plot(x, used, ls="", marker=look.marker(c.dataset), color=col,
                mfc="white" if c.emulated else col, mew=2, ms=look.points(4) ** 0.5 * 3,
                zorder=5, gid=f"limits.cpu|{look.label(c)}")
        top = max(top, float(np.nanmax(r["room"].to_numpy(float))))
    unlimited = []
    for c in (c for c in cs if c not in limited):
        # One level: the median of every sample, whatever was asked (none applied).
        mine = used_all[(used_all["backend"] == c.backend) & (used_all["dataset"] == c.dataset)]
        level = float(mine[[data.without_axis(v, "limits.cpus") == c.variant
                            for v in mine["variant"]]]["value"].median())
        unlimited.append(ax.axhline(
            level, color=look.colour(c.backend), ls=(0, (5, 3)), lw=lw / 2,
            gid=f"limits.unlimited|{look.label(c)}",
            label=f"{look.label(c)}: {UNLIMITED}, used {level:.2g} cores"))
        top = max(top, level)
    right = max(asked) + gap * 0.6
    ax.plot([0, right], [0, right], color="black", ls="--", lw=1, zorder=1,
            gid="limits.ideal")
    ax.set_xlim(0, right)
    ax.set_ylim(0, top * 1.2)
    ax.set_xticks(asked, [f"{a:g}" for a in asked])
    ax.set_xlabel("cpus asked (cores)")
    ax.set_ylabel("cores used (CPU time ÷ wall time)")
    ax.set_title("CPU")
    ax.grid(axis="y")
    handles: list[Any] = [Line2D([], [], color=look.colour(c.backend), ls="",
                                 marker=look.marker(c.dataset), mew=2,
                                 mfc="white" if c.emulated else look.colour(c.backend),
                                 label=look.label(c)) for c in limited]
    return [*handles, *unlimited,
            Line2D([], [], color="black", ls="--", lw=1, label="used = asked"),
            Line2D([], [], color="#999999", alpha=0.5, lw=lw * 1.6,
                   label="+ host CPU left idle (room to go over)")]


def _limits_memory(ax: Axes, mem: pd.DataFrame, look: Look) -> None:
    """Per cell and limit: the largest allocation that lived and the smallest killed, as
    multiples of the limit; a backend that applies no limit hatched, said in words."""
    cs = data.cells(mem, look.order, look.sets)
    rows = [(c, r) for c in cs for r in c.select(mem).sort_values("asked").to_dict("records")]
    several = mem["asked"].nunique() > 1
    texts, right = [], []
    for i, (c, r) in enumerate(rows):
        col, limit = look.colour(c.backend), float(r["asked"])
        texts.append(look.label(c) + (f" @ {_fmt_bytes(limit)}" if several else ""))
        lived = _fmt_bytes(r["value"])
        if not r["applied"]:
            ax.barh(i, r["ratio"], height=0.6, color="none", edgecolor=col, hatch="..",
                    lw=1, gid=f"limits.mem|{texts[-1]}")
            right.append(f"{UNLIMITED}: {lived} lived")
            continue
        ax.barh(i, r["ratio"], height=0.6, color=col, edgecolor="white",
                hatch="//" if c.emulated else None, gid=f"limits.mem|{texts[-1]}")
        if math.isfinite(r["killed"]):
            ax.plot([r["killed"] / limit], [i], ls="", marker="X", color="#d62728",
                    mec="white", ms=look.points(9) ** 0.5 * 3, zorder=5,
                    gid=f"limits.killed|{texts[-1]}")
            right.append(f"{lived} lived, {_fmt_bytes(r['killed'])} killed")
        else:
            right.append(f"{lived} lived, none killed")
    ax.axvline(1, color="black", lw=1.2, gid="limits.limit")
    ends = [max(r["ratio"], r["killed"] / r["asked"] if math.isfinite(r["killed"]) else 0)
            for _, r in rows]
    ax.set_xlim(0, max([1.0, *ends]) * 1.1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_xlabel("allocation ÷ memory limit asked")
    ax.set_title("memory")
    ax.grid(axis="x")
    _rows(ax, [c for c, _ in rows], look, text=texts)
    _right_labels(ax, right, [look.colour(c.backend) for c, _ in rows])


@styled
def limits(df: pd.DataFrame, look: Look) -> Figure | None:
    """Are `cpus` and `memory` enforced? CPU used against asked, memory allocations that
    lived or were killed against the limit (see `tables.limits`)."""
    t = tables.limits(df)
    if t.empty:
        return None
    cpu, mem = t[t["resource"] == "cpus"], t[t["resource"] == "memory"]
    fig = look.figure(len(mem))
    panels = [p for p in (cpu, mem) if not p.empty]
    axes = fig.subplots(1, len(panels), squeeze=False,
                        width_ratios=[1.0, 1.25][:len(panels)] if len(panels) == 2 else None)[0]
    handles: list[Any] = []
    for ax, part in zip(axes, panels, strict=True):
        if part is cpu:
            handles = _limits_cpu(ax, cpu, df[df["metric"] == "limits.cpu_used"], look)
        else:
            _limits_memory(ax, mem, look)
    if not mem.empty:
        handles += [Line2D([], [], color="black", lw=1.2, label="the memory limit"),
                    Line2D([], [], ls="", marker="X", color="#d62728",
                           label="smallest allocation killed"),
                    Patch(facecolor="none", edgecolor="#777777", hatch="..",
                          label=f"{UNLIMITED}: what lived")]
    _title(fig, "Limits: CPU and memory used against the limit asked", look)
    _finish(fig, look, handles, data.cells(t, look.order, look.sets),
            "CPU: a point below the line with no idle room above it is contention, not "
            "the limit", ncols=3 if not look.slides else 2)
    return fig


# --- network --------------------------------------------------------------------------

NETWORK_METRICS = ("network.lat_p50", "network.lat_p99", "network.bw")


@styled
def network(df: pd.DataFrame, look: Look) -> Figure | None:
    """Per backend and network mode: latency p50 and p99 (log axis) and bandwidth, each
    median with its 95 % CI; the bare host's own figures as reference lines."""
    d = df[df["metric"].isin(NETWORK_METRICS)]
    if d.empty:
        return None
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    ax_lat, ax_bw = fig.subplots(1, 2, sharey=True)
    lw = 5 if look.slides else 2.5
    where = {"network.lat_p50": (ax_lat, -0.15, "D"), "network.lat_p99": (ax_lat, 0.15, "o"),
             "network.bw": (ax_bw, 0.0, "D")}
    right = []
    for i, c in enumerate(cs):
        cell, col = c.select(d), look.colour(c.backend)
        meds = {}
        for metric, (ax, dy, mk) in where.items():
            v = cell[cell["metric"] == metric]["value"].to_numpy(float)
            v = v[v > 0]
            if v.size == 0:
                continue
            s = stats.summarize(v)
            meds[metric] = s.median
            ax.plot([s.lo, s.hi], [i + dy, i + dy], color=col, lw=lw, alpha=0.6,
                    solid_capstyle="butt")
            ax.plot([s.median], [i + dy], ls="", marker=mk, color=col, mew=2, zorder=5,
                    mfc="white" if metric == "network.lat_p99" else col,
                    gid=f"{metric}|{look.label(c)}")
        right.append(" · ".join(
            [f"{format_seconds(meds[m])}" for m in NETWORK_METRICS[:2] if m in meds]
            + ([_fmt_bytes(meds["network.bw"], "/s")] if "network.bw" in meds else [])))
    refs: dict[str, Any] = {}
    for k, ds in enumerate(look.sets):
        host = d[(d["kind"] == "process") & (d["dataset"] == ds)]
        tag = f" {look.tag(ds)}" if look.several else ""
        for metric, ls, what in (("network.lat_p50", "--", "p50"),
                                 ("network.lat_p99", ":", "p99"),
                                 ("network.bw", "--", "bandwidth")):
            ref = host[host["metric"] == metric]["value"]
            if ref.empty:
                continue
            ax = where[metric][0]
            label = f"bare host {what} (reference){tag}"
            refs[label] = ax.axvline(float(ref.median()), color="#4d4d4d", ls=ls,
                                     lw=1.2 if k == 0 else 0.8, label=label,
                                     gid=f"{metric}|reference|{ds}")
    for ax in (ax_lat, ax_bw):
        ax.set_xscale("log")
        ax.grid(axis="x", which="major")
        lo, hi = ax.get_xlim()
        # Down to a labelled power of ten (µs-scale latencies sit below the first one).
        base = 10.0 if ax is ax_lat else 4.0
        ax.set_xlim(min(lo / 1.5, base ** math.floor(math.log(lo, base))), hi * 1.5)
    _seconds_axis(ax_lat.xaxis, 4 if look.slides else 7)  # a narrow panel: fewer labels
    ax_bw.xaxis.set_major_locator(LogLocator(base=4, numticks=6))
    ax_bw.xaxis.set_major_formatter(FuncFormatter(_compact_bytes))
    ax_bw.xaxis.set_minor_formatter(NullFormatter())
    ax_lat.set_title("latency, one way (sockperf)")
    ax_bw.set_title("bandwidth (iperf3)")
    ax_lat.set_xlabel("log scale")
    ax_bw.set_xlabel("bytes/s, log scale (M = MiB)")
    _rows(ax_lat, cs, look)
    _rows(ax_bw, cs, look, labels=False)
    _right_labels(ax_bw, right, [look.colour(c.backend) for c in cs])
    _title(fig, "Network: latency and bandwidth per network mode", look)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="D", color="#555555", mew=2, label="p50"),
        Line2D([], [], ls="", marker="o", mfc="white", color="#555555", mew=2, label="p99"),
        Line2D([], [], color="#555555", lw=lw, alpha=0.6, label="95 % CI of the median"),
        *refs.values()]
    modes = {data.axis_of(c.variant, "network") for c in cs}
    _finish(fig, look, handles, cs,
            "[none]: client and server both inside the instance, over its loopback"
            if "none" in modes else "", "right: p50 · p99 · bandwidth (medians)",
            ncols=4 if look.slides else 7)
    return fig



# --- claims ---------------------------------------------------------------------------

def _ratio_fmt(r: float) -> str:
    if not math.isfinite(r):
        return "?"
    return f"{r:.0f}×" if r >= 1000 else f"{r:.3g}×"


def _claims(df: pd.DataFrame, look: Look, table: pd.DataFrame | None,
            which: str) -> Figure | None:
    """Forest plot: per claim and pair, the ratio A/B with its 95 % CI on a log axis, the
    band of "no meaningful difference" shaded, the verdict at the right.

    `which`: "io" draws the I/O claims (one row per job), "other" the rest; a slide
    holds each of them, not both."""
    t = claims_mod.evaluate(df) if table is None else table
    if not t.empty:
        io_rows = t["metric"].str.startswith("io.")
        t = t[io_rows] if which == "io" else t[~io_rows]
        # The application claim has a row per study, sub-case and network mode: its
        # verdicts are a table of the report's application section instead.
        t = t[t["claim"] != claims_mod.APPS]
    if t.empty:
        return None
    rows: list[tuple[str, Any]] = []  # ("claim", (id, text)) headers, ("pair", record) rows
    several_metrics = {str(c) for c, g in t.groupby("claim") if g["metric"].nunique() > 1
                       and (g["better"] != "bound").all()}
    for cid, g in t.groupby("claim", sort=False):
        rows.append(("claim", (cid, str(g["text"].iloc[0]))))
        for ds in look.sets:
            rows.extend(("pair", r) for r in g[g["dataset"] == ds].to_dict("records"))
    fig = look.figure(len(rows))
    ax = fig.add_subplot()
    margins = {c.id: c.margin for c in claims_mod.CLAIMS}
    lw = 5 if look.slides else 2.5
    fs = _pt("ytick.labelsize")
    if look.slides and len(rows) > 16:
        fs = max(11.0, fs * 16 / len(rows))
    labels, right, colours = [], [], []
    for i, (what, r) in enumerate(rows):
        if what == "claim":
            labels.append("")
            right.append("")
            colours.append("black")
            # The claim's text heads its group, across the plot, on a white ground.
            ax.text(0.005, i, r[1], transform=ax.get_yaxis_transform(), va="center",
                    ha="left", fontweight="bold", fontsize=fs * 1.1, zorder=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
            m = margins.get(r[0], claims_mod.MARGIN)
            end = next((j for j in range(i + 1, len(rows)) if rows[j][0] == "claim"), len(rows))
            ax.fill_betweenx([i + 0.5, end - 0.5], 1 - m, 1 + m, color="#e6e6e6", zorder=0,
                             lw=0)
            continue
        col = VERDICT_COLOURS[r["verdict"]]
        # A claim over several metrics (fio jobs, latency percentiles) names each row's.
        job = (r["metric"].split(".", 1)[1].removesuffix(".bw")
               if r["claim"] in several_metrics else "")
        pair = _pair(r).replace(" (TCG, emulated)", " (TCG)")
        labels.append(pair + (f" · {job}" if job else "")
                      + (f" · {look.tag(r['dataset'])}" if look.several else ""))
        right.append(f"{_ratio_fmt(r['ratio'])} {r['verdict']}")
        colours.append(col)
        ax.plot([r["ratio_lo"], r["ratio_hi"]], [i, i], color=col, lw=lw,
                solid_capstyle="butt", zorder=3)
        ax.plot([r["ratio"]], [i], marker="o" if r["emulated"] else "D", color=col,
                mfc="white" if r["emulated"] else col, mew=2, zorder=4)
    ax.axvline(1, color="black", lw=1)
    ax.set_xscale("log")
    lo = float(np.nanmin(t["ratio_lo"].to_numpy(float)))
    hi = float(np.nanmax(t["ratio_hi"].to_numpy(float)))
    span = max(abs(math.log10(max(lo, 1e-12))), abs(math.log10(max(hi, 1e-12))), 0.3)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 1.5
                                          else (1.0,), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(10 ** -(span * 1.1), 10 ** (span * 1.1))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_yticks(range(len(rows)), labels, fontsize=fs)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", which="major")
    _right_labels(ax, right, colours, weight="bold", fontsize=fs)
    ax.set_xlabel("ratio of medians A / B (log scale); line: its 95 % CI")
    _title(fig, "Seed claims: what the measurements say" + (" (I/O)" if which == "io" else ""),
           look)
    handles: list[Any] = [Line2D([], [], color=c, lw=lw, marker="D", label=v)
                          for v, c in VERDICT_COLOURS.items()
                          if v != claims_mod.INCONCLUSIVE_FAILURES or (t["verdict"] == v).any()]
    handles.append(Patch(color="#e6e6e6", label="no meaningful difference"))
    if t["emulated"].any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", color="#555555", mew=2,
                              label="VM emulated (TCG)"))
    failures = ("\ninconclusive: failures — more than "
                f"{claims_mod.FAILURE_LIMIT * 100:g} % of a cell's samples failed (\"n ok / "
                "n tried\" on its label)" if (t["verdict"] == claims_mod.INCONCLUSIVE_FAILURES)
                .any() else "")
    _finish(fig, look, handles, [], "Verdict from the CI, not the medians: holds when the "
            "whole CI is on the claimed side of 1 (for \"like\" claims: inside the band)."
            + failures)
    return fig


def _pair(r: Mapping[str, Any]) -> str:
    """A claim row's label: "docker: volume vs rootfs" within one backend, "ns under
    cpus 0.5" for a limit, "docker vs libvirt" otherwise."""
    a, b = str(r["a"]), str(r["b"])
    if r["better"] == "bound":
        return f"{a} under {b}"
    ba, _, va = a.partition(" [")
    bb, _, vb = b.partition(" [")
    if ba == bb and va and vb:
        return f"{ba}: {va.replace(']', '', 1)} vs {vb.replace(']', '', 1)}"
    return f"{a} vs {b}"


@styled
def claims(df: pd.DataFrame, look: Look) -> Figure | None:
    return _claims(df, look, look.claims, "other")


@styled
def claims_io(df: pd.DataFrame, look: Look) -> Figure | None:
    return _claims(df, look, look.claims, "io")


def _dataset_note(look: Look) -> str:
    if not look.several:
        return ""
    return "datasets (host, date): " + ", ".join(
        f"#{i + 1} = {s} ({MARKER_GLYPHS[i % len(MARKER_GLYPHS)]})"
        for i, s in enumerate(look.sets))


# --- stacks ---------------------------------------------------------------------------

STACK_PHASES = (("created", "started", "#c6dbef", "create → started"),
                ("started", "ready", "#4292c6", "started → answers its readiness probe"))


@styled
def stack_timeline(df: pd.DataFrame, look: Look) -> Figure | None:
    """Per stack cell, its services top to bottom in the order they were created (the
    dependency order): median times from the stack's first create call, as bars create →
    started → ready, a diamond where the healthcheck passed, and a single VM's boot as a
    row of its own; one panel per cell, each on its own time axis (a VM stack takes
    seconds where containers take ms)."""
    d = df[df["metric"].str.startswith("stack.service.") & df["sub"].notna()].copy()
    if d.empty:
        return None
    d["service"] = d["sub"].str.removeprefix("service=")
    # the cell's own variant: the sample's variant without its "service=..." part
    d["variant"] = [DEFAULT_VARIANT if v == sb else str(v).removesuffix("," + sb)
                    for v, sb in zip(d["variant"], d["sub"], strict=True)]
    cs = data.cells(d, look.order, look.sets)
    med = d.groupby(["backend", "variant", "dataset", "service", "metric"])["value"].median()
    panels = []
    for c in cs:
        m = med.loc[(c.backend, c.variant, c.dataset)].unstack("metric")
        boot = c.select(df[df["metric"] == "stack.vm_boot"])["value"]
        m = m.sort_values("stack.service.created")
        if not boot.empty:  # a single VM: its boot, a row before the services in it
            vm = pd.DataFrame({"stack.service.created": [0.0],
                               "stack.service.started": [float(boot.median())]},
                              index=["(the VM)"])
            m = pd.concat([vm, m])
        panels.append((c, m))
    fig = look.figure(sum(len(m) for _, m in panels) + len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [len(m) for _, m in panels]})[:, 0]
    for ax, (c, m) in zip(axes, panels, strict=True):
        for i, (_, row) in enumerate(m.iterrows()):
            for a, b, colour, _ in STACK_PHASES:
                x0, x1 = row.get(f"stack.service.{a}"), row.get(f"stack.service.{b}")
                if pd.notna(x0) and pd.notna(x1):
                    ax.barh(i, x1 - x0, left=x0, height=0.6, color=colour,
                            edgecolor=look.colour(c.backend), lw=1,
                            hatch="//" if c.emulated else None)
            healthy = row.get("stack.service.healthy")
            if pd.notna(healthy):
                ax.plot([healthy], [i], marker="D", color="black", ms=5, zorder=5)
            end = float(np.nanmax(row.to_numpy(float)))
            ax.annotate(format_seconds(end), (end, i), xytext=(4, 0),
                        textcoords="offset points", va="center",
                        fontsize=_pt("ytick.labelsize") * 0.85)
        ax.set_ylim(len(m) - 0.5, -0.5)
        ax.set_yticks(range(len(m)), [str(x) for x in m.index])
        ax.tick_params(axis="y", length=0)
        ax.set_title(look.label(c), loc="left", color=look.colour(c.backend),
                     fontsize=_pt("ytick.labelsize"), fontweight="bold")
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: format_seconds(v) if v > 0 else "0"))
        ax.set_xlim(0, ax.get_xlim()[1] * 1.12)  # room for the last label
        ax.grid(axis="x")
    axes[-1].set_xlabel("time from the stack's first create call (a single VM: the VM's, "
                        "its boot the first row); medians over the samples")
    _title(fig, "Stacks: each service's start, in dependency order", look)
    _finish(fig, look, [*(Patch(facecolor=colour, edgecolor="#555555", label=label)
                          for _, _, colour, label in STACK_PHASES),
                        Line2D([], [], ls="", marker="D", color="black", ms=5,
                               label="healthcheck passed")], cs)
    return fig


# --- all of them ----------------------------------------------------------------------

# name -> (title, function); the order of the report.
CHARTS: dict[str, tuple[str, ChartFn]] = {
    "claims": ("Seed claims", claims),
    "claims_io": ("Seed claims: I/O", claims_io),
    "startup": ("Startup: time to ready", startup),
    "startup_serving": ("Startup: time to the first answer", startup_serving),
    "startup_phases": ("Startup: phases", startup_phases),
    "memory": ("Memory: per instance", memory),
    "disk": ("Disk: bytes on disk", disk),
    "io_bw": ("I/O: bandwidth", io),
    "io_iops": ("I/O: operations per second", io_iops),
    "limits": ("Limits: CPU and memory against the limit", limits),
    "network": ("Network: latency and bandwidth", network),
    "density": ("Density: cost of each added instance", density),
    "stack_timeline": ("Stacks: each service's start", stack_timeline),
}


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    paths: tuple[Any, ...]  # Path per format
    svg: str | None  # the SVG text, for inlining in HTML
    png: bytes | None


def render_all(df: pd.DataFrame, out: Any, style: str = "paper",
               formats: Sequence[str] = ("png", "svg"), inline: bool = False,
               claims_table: pd.DataFrame | None = None,
               extra: Mapping[str, tuple[str, ChartFn]] | None = None) -> list[Chart]:
    """Build every chart that has data, save it in each format, return what was written.

    With `inline`, the SVG (or PNG) bytes are kept for an HTML page. `claims_table`:
    `claims.evaluate(df)` when the caller has it already (it is not cheap). `extra`:
    charts of other report modules, drawn after CHARTS (name -> (title, function))."""
    import io as _io
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with style_context(style) as st:
        look = Look.of(df, st)
        look.claims = claims_mod.evaluate(df) if claims_table is None else claims_table
        for name, (title, fn) in {**CHARTS, **(extra or {})}.items():
            fig = fn(df, look)
            if fig is None:
                continue
            paths = []
            blobs: dict[str, bytes] = {}
            for fmt in formats:
                buf = _io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=st.dpi,
                            metadata={"Date": None} if fmt in ("svg", "pdf") else None)
                blobs[fmt] = buf.getvalue()
                path = out / f"{name}.{fmt}"
                path.write_bytes(blobs[fmt])
                paths.append(path)
            if inline and "svg" not in blobs and "png" not in blobs:
                buf = _io.BytesIO()
                fig.savefig(buf, format="png", dpi=st.dpi)
                blobs["png"] = buf.getvalue()
            svg = blobs["svg"].decode() if inline and "svg" in blobs else None
            written.append(Chart(name, title, tuple(paths), svg,
                                 blobs.get("png") if inline else None))
    return written
