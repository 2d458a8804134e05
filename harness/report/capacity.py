"""`bench capacity`'s output: the plan as a terminal table and as a chart, and an
application plan as a table.

The plans themselves (fits, projection, JSON) are harness.capacity's; this module only
shows them, with the reports' paper style and backend colours.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from rich.markup import escape
from rich.table import Table

from harness.capacity import MARGINAL_AT, MIB, CapacityPlan
from harness.capacity.apps import AppPlan
from harness.core.errors import UsageError
from harness.core.units import format_seconds, format_size, format_value
from harness.report.draw import backend_colours, style_context


def _num(x: float | None) -> str:
    return "∞" if x is None else f"{x:,.0f}"


def _mib(x: float) -> str:
    return f"{x / MIB:.3g}"


def table(plan: CapacityPlan) -> Table:
    """One row per cell: the memory curve (marginal at 40 and at the top of the measured
    range, the average slope, the host basis beside it), start latency, and what binds."""
    t = plan.target
    tab = Table(title=f"idle instances per host of {t.memory / 2**30:.3g} GiB and {t.cpus} "
                      f"cpus (memory basis {t.basis}; MiB per instance; [95 % CI])",
                box=None, pad_edge=False)
    for col in ("cell", "ramps×n", "model", f"@{MARGINAL_AT}", "@top", "avg", "host @top",
                "fixed MiB", "start p95 @plan", "knee", "by memory", "first limit", "by SLO",
                "max", "binding"):
        tab.add_column(col, justify="left" if col in ("cell", "model", "first limit",
                                                      "binding") else "right")
    for c in plan.cells:
        f, lat, host, first = c.fits.get(c.basis), c.latency, c.fits.get("host"), c.first_limit
        far = c.extrapolation > t.max_extrapolation
        top = "—" if f is None else (f"{_mib(f.marginal_top)} [{_mib(f.marginal_top_ci[0])}, "
                                     f"{_mib(f.marginal_top_ci[1])}]")
        vs_host = "—"
        if host is not None and f is not None and c.basis != "host":
            gap = (host.marginal_top - f.marginal_top) / f.marginal_top if f.marginal_top else 0
            vs_host = f"{_mib(host.marginal_top)} ({gap:+.0%})"
        p95 = "—" if c.p95_at_plan is None else format_seconds(c.p95_at_plan) + (
            " (top)" if lat is not None and c.instances and c.instances > lat.max_n else "")
        tab.add_row(
            c.label,
            f"{c.ramps}×{c.max_measured}",
            "—" if f is None else f.model,
            "—" if f is None else _mib(f.marginal_at(min(MARGINAL_AT, f.top))),
            top,
            "—" if f is None else _mib(f.marginal),
            vs_host,
            "—" if f is None else ("0 (held)" if "fixed cost" in f.held  # see the notes
                                   else _mib(f.curve_fixed)),
            p95,
            "—" if lat is None or lat.knee is None else str(lat.knee),
            f"{_num(c.by_memory)} [{_num(c.by_memory_ci[0])}, {_num(c.by_memory_ci[1])}]",
            "—" if first is None else f"{first.name} {_num(first.count)}",
            "—" if c.by_slo is None else _num(c.by_slo),
            _num(c.instances) + (f" ({c.extrapolation:.3g}× measured!)" if far else ""),
            c.binding)
    return tab


def limits_lines(plan: CapacityPlan) -> list[str]:
    """Per cell, every kernel limit whose counter grew, nearest first."""
    out = []
    for c in plan.cells:
        bound = sorted((lim for lim in c.limits if lim.count is not None),
                       key=lambda lim: lim.count or 0.0)
        if bound:
            out.append(f"{c.label}: " + "; ".join(
                f"{lim.name} {_num(lim.count)} ({lim.per_instance:.3g} {lim.counter}/instance"
                f" of {lim.ceiling:,}{' given' if lim.given else ''})" for lim in bound))
    return out


def chart(plan: CapacityPlan, path: Path) -> Path:
    """Projected instances per host by backend (log scale): bar = the binding limit,
    whisker = the 95 % CI of the memory limit, hatched when the SLO or a kernel limit
    binds, a dash at the memory limit where another binds below it; a plan beyond the
    extrapolation factor says so on its bar."""
    cells = [c for c in plan.cells if c.instances is not None]
    if not cells:
        raise UsageError("nothing to chart: no cell has a projected count")
    # Colours over every backend of the plan, as the reports assign them over every
    # backend of the results: a backend keeps its colour whichever cells are drawn.
    colours = backend_colours(list(dict.fromkeys(c.backend for c in plan.cells)),
                              {c.backend: c.kind for c in plan.cells})
    with style_context("paper") as st:
        fig = Figure(figsize=(max(st.size[0], 1.3 * len(cells) + 2), st.size[1]))
        ax = fig.subplots()
        floor = 0.5  # where a bar of 0 would start on a log axis
        for i, c in enumerate(cells):
            value = float(c.instances or 0)
            lo, hi = c.by_memory_ci
            if value > 0:
                ax.bar(i, value, width=0.6, bottom=floor, color=colours[c.backend],
                       edgecolor="black", linewidth=0.5,
                       hatch=None if c.binding == "memory" else "//")
            if lo is not None and hi is not None and c.by_memory:
                mem = c.by_memory
                ax.errorbar([i], [mem], yerr=[[mem - max(lo, floor)], [hi - mem]], fmt="_",
                            markersize=20 if c.binding != "memory" else 0, color="black",
                            capsize=4, lw=1)
                if c.binding != "memory":  # the dash says what memory alone would allow
                    ax.annotate(f"memory: {mem:,.0f}", (i + 0.17, mem), xytext=(3, 0),
                                textcoords="offset points", ha="left", va="center",
                                fontsize="small")
            far = (f"\n{c.extrapolation:.3g}× measured!"
                   if c.extrapolation > plan.target.max_extrapolation else "")
            # Inside the bar, under its top, where the bar is tall enough: above it the
            # label would run into the memory dash and its whisker.
            inside = value / floor > 300
            ax.annotate(f"{value:,.0f}\n{c.binding.split(' (')[0]}{far}", (i, max(value, floor)),
                        xytext=(0, -4 if inside else 3), textcoords="offset points",
                        ha="center", va="top" if inside else "bottom",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none",
                              "alpha": 0.85} if inside else None)
        ax.set_yscale("log")
        top = max(max(c.instances or 0, (c.by_memory_ci[1] or 0) if c.by_memory else 0)
                  for c in cells)
        ax.set_ylim(floor, max(top, 1) * 20)  # room for the labels
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set_xticks(range(len(cells)), [c.label.replace(" (", "\n(") for c in cells])
        t = plan.target
        slo = f", start p95 ≤ {format_seconds(t.slo_start)}" if t.slo_start is not None else ""
        ax.set_ylabel("idle instances per host (log scale)")
        ax.set_title(f"Projected instances per host: {t.memory / 2**30:.3g} GiB, {t.cpus} "
                     f"cpus, {t.reserve:.0%} reserved{slo}\nmemory basis {t.basis}; "
                     "hatched: the SLO or a kernel limit binds (dash: the memory limit)")
        ax.grid(axis="y", which="major")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=st.dpi, metadata={"Date": None} if path.suffix != ".png"
                    else None)
    return path


def _n(lo: int | None, hi: int | None) -> str:
    return "—" if lo is None or hi is None else f"[{lo:,}, {hi:,}]"


def app_table(p: AppPlan) -> Table:
    """One row per cell: what one instance served (median, the study's unit), the cores
    each planned instance needs, the count by CPU and by memory with their CIs, and
    which binds."""
    t = p.target
    each = ("at the measured saturation" if p.rate is None
            else f"serving {format_value(p.rate, p.unit)} each")
    tab = Table(title=f"{p.study} instances {each}, per host of {t.memory / 2**30:.3g} GiB "
                      f"and {t.cpus} cpus ({p.unit}; [95 % CI])", box=None, pad_edge=False)
    for col in ("cell", "n", "served", "cores each", "by CPU", "PSS loaded", "daemons",
                "by memory", "instances", "binding"):
        tab.add_column(col, justify="left" if col in ("cell", "binding") else "right")
    for c in p.cells:
        tab.add_row(
            escape(c.label), str(c.n), f"{c.throughput:,.0f}", f"{c.cores_needed:.3g}",
            f"{c.by_cpu:,} {_n(*c.by_cpu_ci)}",
            format_size(c.pss) if math.isfinite(c.pss) else "—",
            format_size(c.daemons) if c.daemons else "—",
            f"{c.by_memory:,} {_n(*c.by_memory_ci)}",
            f"{c.instances:,}", c.binding)
    return tab
