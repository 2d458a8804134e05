"""Memory: what an idle instance costs, the engine daemons' share apart."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness import data, stats
from harness.core.units import format_value
from harness.report import draw, tables
from harness.report.blocks import Table, fmt_ci
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation


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
    div, unit = draw.byte_scale(max(p.hi + d.hi for p, d, _ in rows))
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
        text = draw.fmt_bytes(p.median + dm.median)
        if dm.median > 0:
            text += f"  ({draw.fmt_bytes(p.median)} + {draw.fmt_bytes(dm.median)} of daemons ÷ {n})"
        end = max(p.hi, p.median + dm.hi) / div
        # A long bar carries its label inside, so the label never leaves the figure.
        inside = end > xmax * 0.6
        ax.annotate(text, (end if not inside else p.median / div * 0.98, i),
                    xytext=(8 if not inside else -8, 0), textcoords="offset points",
                    va="center", ha="left" if not inside else "right", zorder=6,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none",
                          "pad": 2} if inside else None)
    ax.grid(axis="x")
    draw.rows(ax, cs, look)
    ax.set_xlabel(f"memory per idle instance ({unit}); whiskers: 95 % CI of the median")
    draw.title(fig, "Memory: PSS per instance + the engine daemons' share", look)
    draw.finish(fig, look, [Patch(facecolor="#888888", label="PSS of the instance's processes"),
                        Patch(facecolor="#cccccc", hatch="..", edgecolor="#888888",
                              label="engine daemons ÷ instances")], cs)
    return fig


def memory_table(df: pd.DataFrame, several: bool) -> Table | None:
    m = tables.memory(df)
    if m.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "instances",
            "PSS / instance", "daemons ÷ instances", "total / instance", "95 % CI of total"]
    rows = []
    for r in m.to_dict("records"):
        cell = data.ResultCell(r["backend"], r["variant"], r["dataset"], "", r["emulated"],
                         bool(r["ram"]), tables.tally_of(r))
        rows.append([*([str(r["dataset"])] if several else []), cell.label(),
                     str(r["instances"]), format_value(r["pss"], "B"),
                     format_value(r["daemon"], "B"), format_value(r["total"], "B"),
                     fmt_ci(r["total"], r["total_lo"], r["total_hi"], "B")[1]])
    return Table(cols, rows, "l" * (len(cols) - 5) + "rrrrl")


PRESENTATION: Presentation = Presentation(
    "memory", "Memory", "what an idle instance costs", rank=20,
    charts={"memory": ("Memory: per instance", memory)}, table=memory_table,
    caption="Per instance, the engine daemons' memory divided among the instances "
            "sampled with them.")
