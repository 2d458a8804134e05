"""The shared drawing helpers of every chart (a study's, the claims', history's): styles,
the look of one report, rows of cells, axes in seconds and bytes, legends and footnotes.

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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness import data, stats
from harness.core.units import format_seconds

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


DATASET_MARKERS = ["o", "s", "^", "D", "v", "P"]


MARKER_GLYPHS = ["●", "■", "▲", "◆", "▼", "✚"]


EMULATED_NOTE = ("⚠ (TCG, emulated): a VM without hardware acceleration, or anything on "
                 "an emulated host; its times say little about KVM or bare metal")


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


def rc(st: Style) -> Any:
    """The rc settings of a style (typed loosely: matplotlib's stubs list every key)."""
    return {**BASE_RC, **st.rc}


@contextmanager
def style_context(style: str | Style) -> Iterator[Style]:
    """matplotlib settings of `style`, for building *and* saving its figures."""
    st = STYLES[style] if isinstance(style, str) else style
    with mpl.rc_context(rc(st)):
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

    def label(self, cell: data.ResultCell) -> str:
        return cell.label(self.tag(cell.dataset))

    def figure(self, rows: int = 0) -> Figure:
        w, h = self.style.size
        if self.style.row_height and rows:
            h = max(h, 1.6 + self.style.row_height * rows)
        return Figure(figsize=(w, h), dpi=self.style.dpi, layout="constrained")

    def points(self, size: float) -> float:
        """A marker area scaled for the style (slides get bigger dots)."""
        return size * (4.0 if self.slides else 1.0)


def pt(key: str) -> float:
    """An rc font size in points ("medium" and the like resolved)."""
    from matplotlib.font_manager import FontProperties

    rc: Any = mpl.rcParams
    return float(FontProperties(size=rc[key]).get_size_in_points())


def styled(fn: ChartFn) -> ChartFn:
    """Build the chart under its look's style, whoever calls it (a notebook, a test)."""
    @functools.wraps(fn)
    def wrapper(df: pd.DataFrame, look: Look) -> Figure | None:
        with mpl.rc_context(rc(look.style)):
            return fn(df, look)
    return wrapper


def title(fig: Figure, title: str, look: Look) -> None:
    fig.suptitle(title, fontweight="bold", x=0.01, ha="left")


def finish(fig: Figure, look: Look, handles: Sequence[Any], cells: Sequence[data.ResultCell],
            *notes: str, ncols: int | None = None) -> None:
    """Legend and footnotes in a band reserved at the bottom (the layout engine keeps the
    axes out of it), so neither can overlap the other or the axes."""
    lines = [n for n in notes if n]
    if any(c.emulated for c in cells):
        lines.append(EMULATED_NOTE)
    if look.several:
        lines.append(dataset_note(look))
    fs = pt("legend.fontsize")
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


def rows(ax: Axes, cells: Sequence[data.ResultCell], look: Look, labels: bool = True,
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


def seconds_axis(axis: Any, numticks: int = 12) -> None:
    axis.set_major_locator(LogLocator(base=10, numticks=numticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: format_seconds(v)))
    axis.set_minor_formatter(NullFormatter())


def latency_bandwidth_axes(ax_lat: Axes, ax_bw: Axes, look: Any, lat_ticks: int) -> None:
    """The network charts' pair of log axes: one-way latency in seconds (`lat_ticks`
    labels, 4 on slides), bandwidth in bytes/s by powers of 4 (M = MiB)."""
    seconds_axis(ax_lat.xaxis, 4 if look.slides else lat_ticks)
    ax_bw.xaxis.set_major_locator(LogLocator(base=4, numticks=6))
    ax_bw.xaxis.set_major_formatter(FuncFormatter(compact_bytes))
    ax_bw.xaxis.set_minor_formatter(NullFormatter())


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def fmt_bytes(v: float, suffix: str = "") -> str:
    k = 0
    while abs(v) >= 1024 and k < len(BYTE_UNITS) - 1:
        v /= 1024
        k += 1
    return f"{v:.3g} {BYTE_UNITS[k]}{suffix}"


def bytes_log_axis(axis: Any, suffix: str = "") -> None:
    axis.set_major_locator(LogLocator(base=2, numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v, suffix)))
    axis.set_minor_formatter(NullFormatter())


def compact_bytes(v: float, _: Any = None) -> str:
    """Axis ticks in binary units, short enough for narrow panels: 256M, 1G."""
    k = 0
    while abs(v) >= 1024 and k < 4:
        v /= 1024
        k += 1
    return f"{v:g}{' KMGT'[k].strip()}"


def byte_scale(vmax: float) -> tuple[float, str]:
    k = 0
    while vmax >= 1024 and k < len(BYTE_UNITS) - 1:
        vmax /= 1024
        k += 1
    return 1024.0 ** k, BYTE_UNITS[k]


def count_fmt(v: float, _: Any = None) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def median_ci(ax: Axes, x: np.ndarray, y: float, look: Look, colour: str = "black",
               horizontal: bool = True) -> stats.Summary:
    """Median as a tick, its 95 % CI as a thick line."""
    s = stats.summarize(x)
    lw = 5 if look.slides else 2.5
    ax.plot([s.lo, s.hi], [y, y], color=colour, lw=lw, solid_capstyle="butt", zorder=4)
    ax.plot([s.median], [y], marker="|", color=colour, ms=28 if look.slides else 12,
            mew=lw, zorder=5)
    return s


def right_labels(ax: Axes, labels: Sequence[str], colours: Sequence[str] | None = None,
                  weight: str = "normal", fontsize: float | None = None) -> Axes:
    """Text at the right end of each row, as tick labels of a twin axis, so the layout
    engine makes room for it."""
    twin = ax.twinx()
    twin.set_ylim(ax.get_ylim())
    twin.set_yticks(range(len(labels)), list(labels), fontweight=weight,
                    fontsize=fontsize or pt("ytick.labelsize"))
    twin.tick_params(axis="y", length=0)
    twin.spines[["top", "right", "left", "bottom"]].set_visible(False)
    if colours:
        for tick, col in zip(twin.get_yticklabels(), colours, strict=True):
            tick.set_color(col)
    return twin


def dataset_note(look: Look) -> str:
    if not look.several:
        return ""
    return "datasets (host, date): " + ", ".join(
        f"#{i + 1} = {s} ({MARKER_GLYPHS[i % len(MARKER_GLYPHS)]})"
        for i, s in enumerate(look.sets))
