"""Stacks: how soon a stack of services answers, and what it costs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from harness import data
from harness.core.units import format_seconds
from harness.data import DEFAULT_VARIANT
from harness.report import draw
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

STACK_PHASES = (("created", "started", "#c6dbef", "create → started"),
                ("started", "ready", "#4292c6", "started → answers its readiness probe"))


@styled
def stack_timeline(df: pd.DataFrame, look: Look) -> Figure | None:
    """Per stack cell, its services top to bottom in the order they were created (the
    dependency order; on docker:swarm, which creates all in one deploy call and ignores
    depends_on, the order they started): median times from the stack's first create
    call, as bars create → started → ready, a diamond where the healthcheck passed, and
    a single VM's boot as a row of its own; one panel per cell, each on its own time axis
    (a VM stack takes seconds where containers take ms)."""
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
        # (docker:swarm has no create call of a service's own: in the order they started)
        first = "stack.service.created" if "stack.service.created" in m and \
            m["stack.service.created"].notna().any() else "stack.service.started"
        m = m.sort_values(first)
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
                        fontsize=draw.pt("ytick.labelsize") * 0.85)
        ax.set_ylim(len(m) - 0.5, -0.5)
        ax.set_yticks(range(len(m)), [str(x) for x in m.index])
        ax.tick_params(axis="y", length=0)
        ax.set_title(look.label(c), loc="left", color=look.colour(c.backend),
                     fontsize=draw.pt("ytick.labelsize"), fontweight="bold")
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: format_seconds(v) if v > 0 else "0"))
        ax.set_xlim(0, ax.get_xlim()[1] * 1.12)  # room for the last label
        ax.grid(axis="x")
    axes[-1].set_xlabel("time from the first create call (single VM: the VM's, its boot "
                        "the first row; docker:swarm: the deploy call); medians")
    swarm = any(c.backend == "docker:swarm" for c, _ in panels)
    draw.title(fig, "Stacks: each service's start, in dependency order"
               + (" (docker:swarm: in start order)" if swarm else ""), look)
    draw.finish(fig, look, [*(Patch(facecolor=colour, edgecolor="#555555", label=label)
                          for _, _, colour, label in STACK_PHASES),
                        Line2D([], [], ls="", marker="D", color="black", ms=5,
                               label="healthcheck passed")], cs)
    return fig


PRESENTATION: Presentation = Presentation(
    "stack", "Stacks", "how soon a stack of services answers, and what it costs", rank=80,
    charts={"stack_timeline": ("Stacks: each service's start", stack_timeline)},
    headline=(r"stack\.start", r"stack\.memory\.pss", r"stack\.memory\.daemon",
              r"stack\.e2e\.rps", r"stack\.e2e\.lat_p99"))
