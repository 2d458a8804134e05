"""Limits: are CPU and memory limits enforced."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from harness import data
from harness.core.units import format_value
from harness.report import claims as claims_mod
from harness.report import draw, tables
from harness.report.blocks import Table, fmt_ci
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

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
        texts.append(look.label(c) + (f" @ {draw.fmt_bytes(limit)}" if several else ""))
        lived = draw.fmt_bytes(r["value"])
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
            right.append(f"{lived} lived, {draw.fmt_bytes(r['killed'])} killed")
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
    draw.rows(ax, [c for c, _ in rows], look, text=texts)
    draw.right_labels(ax, right, [look.colour(c.backend) for c, _ in rows])


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
    draw.title(fig, "Limits: CPU and memory used against the limit asked", look)
    draw.finish(fig, look, handles, data.cells(t, look.order, look.sets),
            "CPU: a point below the line with no idle room above it is contention, not "
            "the limit", ncols=3 if not look.slides else 2)
    return fig


def limits_table(df: pd.DataFrame, several: bool) -> Table | None:
    """Per backend and limit: what was used (CPU) or the largest allocation that lived
    (memory), against the limit asked, and the verdict of `claims.enforcement`."""
    t = data.in_order(claims_mod.enforcement(df), df, ["resource", "asked"])
    if t.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "limit", "used / lived", "95 % CI",
            "÷ asked", "host idle", "killed", "verdict", "note"]
    rows = []
    for r in t.to_dict("records"):
        unit = "cores" if r["resource"] == "cpus" else "B"
        cell = data.ResultCell(r["backend"], r["variant"], r["dataset"], r["kind"], r["emulated"],
                         bool(r["ram"]), tables.tally_of(r))
        killed = "" if unit == "cores" else (format_value(r["killed"], "B")
                                             if math.isfinite(r["killed"]) else "none")
        rows.append([*([str(r["dataset"])] if several else []), cell.label(),
                     data.limit_name(r["resource"], r["asked"]),
                     format_value(r["value"], unit),
                     fmt_ci(r["value"], r["value_lo"], r["value_hi"], unit)[1],
                     f"{r['ratio']:.3g}×",
                     format_value(r["idle"], "cores") if math.isfinite(r["idle"]) else "",
                     killed,
                     f"**{r['verdict']}**" if r["applied"] else r["verdict"], r["note"]])
    return Table(cols, rows, "l" * (len(cols) - 8) + "lrlrrrll")


PRESENTATION: Presentation = Presentation(
    "limits", "Limits", "are CPU and memory limits enforced", rank=50,
    charts={"limits": ("Limits: CPU and memory against the limit", limits)},
    table=limits_table,
    caption="*holds* when used ÷ asked stays at or under 1 (+5 %) with room to go over "
            "(idle host CPU; a larger allocation tried and killed).")
