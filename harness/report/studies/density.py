"""Density: what each added instance costs."""

from __future__ import annotations

import math
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness import data, stats
from harness.core.units import format_value
from harness.report import blocks, draw, tables
from harness.report.blocks import Table
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation


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
    drops: dict[data.ResultCell, pd.Series] = {}
    for c in cs:
        avail = c.select(d[d["metric"] == "density.mem_available"])
        if not avail.empty:
            med = avail.groupby("count")["value"].median()
            drops[c] = float(med.iloc[0]) - med
            vmax = max(vmax, float(drops[c].max()))
    div, unit = draw.byte_scale(vmax)
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
    draw.seconds_axis(ax_lat.yaxis)
    ax_lat.set_title("start latency of the newest instance")
    for ax in (ax_mem, ax_lat):
        ax.set_xlabel("instances running")
        ax.grid(which="major")
        ax.xaxis.get_major_locator().set_params(integer=True)
    draw.title(fig, "Density: what each added instance costs", look)
    handles: list[Any] = [Line2D([], [], color=look.colour(c.backend), lw=4,
                                 marker=look.marker(c.dataset) if look.several else None,
                                 label=look.label(c)) for c in cs]
    handles.append(Line2D([], [], color="#555555", label="PSS sum"))
    if drops:
        handles.append(Line2D([], [], color="#555555", ls="--", label="MemAvailable drop"))
    note = ("MemAvailable drop counted from " + ", ".join(f"n={n}" for n in sorted(
        base_counts)) + "; shaded: 95 % CI over rounds") if base_counts else ""
    draw.finish(fig, look, handles, cs, note, ncols=min(len(handles), 4 if look.slides else 5))
    return fig


def density_table(df: pd.DataFrame, several: bool) -> Table | None:
    """One row per cell: memory fixed + marginal × n, the marginal at the low and top end
    of the ramp, the largest count reached, the start latency's p95."""
    t = data.in_order(tables.density(df), df)
    if t.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "basis", "fixed",
            "marginal / instance", "95 % CI", "low end", "top end", "max count", "start p95"]
    rows = []
    for r in t.to_dict("records"):
        cell = data.ResultCell(r["backend"], r["variant"], r["dataset"], r["kind"], r["emulated"],
                         bool(r["ram"]), tables.tally_of(r))

        def size(x: float) -> str:
            return format_value(x, "B") if math.isfinite(x) else "—"

        rows.append([*([str(r["dataset"])] if several else []), cell.label(), r["basis"],
                     size(r["fixed"]), size(r["marginal"]),
                     f"{size(r['marginal_lo'])} – {size(r['marginal_hi'])}",
                     f"{size(r['low'])} (n {r['low_counts']})" if r["low_counts"] else "—",
                     f"{size(r['top'])} (n {r['top_counts']})" if r["top_counts"] else "—",
                     str(r["max_count"]), format_value(r["start_p95"], "s")])
    return Table(cols, rows, "l" * (len(cols) - 7) + "rrrrrrr")


def _per_count(df: pd.DataFrame) -> pd.DataFrame:
    """The density study's figures per instance count (never pooled across counts)."""
    sub = df[df["metric"].map(data.study_of) == "density"]
    part = tables.summary(sub.assign(count=pd.to_numeric(sub["instance"], errors="coerce")),
                          ["dataset", "backend", "variant", "metric", "unit", "count"])
    return blocks.ordered(part.sort_values(["metric", "count"], kind="stable"), df)


PRESENTATION: Presentation = Presentation(
    "density", "Density", "what each added instance costs", rank=70,
    charts={"density": ("Density: cost of each added instance", density)},
    table=density_table,
    caption="Memory = fixed + marginal × instances, fitted over every ramp "
            "(`bench capacity` has the plan); low and top end: the marginal over the "
            "lowest and highest third of the counts alone.",
    full=(_per_count, "The full table per instance count, with 95 % CIs"))
