"""System calls: what one costs inside each backend, the bare host as reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from harness import data, stats
from harness.core.units import format_seconds
from harness.report import draw
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation
from harness.studies.syscall import OPS

PREFIX, SUFFIX = "syscall.", ".ns"
PAIRS = {"openat_close": "openat + close", "mmap_munmap": "mmap + munmap"}


def _ops(df: pd.DataFrame) -> list[str]:
    """The operations measured, in the order the probe runs them (first seen)."""
    names = df["metric"][df["metric"].str.startswith(PREFIX)
                         & df["metric"].str.endswith(SUFFIX)]
    return list(dict.fromkeys(m.removeprefix(PREFIX).removesuffix(SUFFIX) for m in names))


@styled
def syscall(df: pd.DataFrame, look: Look) -> Figure | None:
    """One panel per operation: ns per call of every cell (median and its 95 % CI, on a
    log axis: a VM under TCG or gVisor is orders of magnitude off), with the bare host's
    median as a reference line."""
    ops = _ops(df)
    if not ops:
        return None
    d = df[df["metric"].isin([f"{PREFIX}{op}{SUFFIX}" for op in ops])]
    cs = data.cells(d, look.order, look.sets)
    cols = min(3, len(ops))
    fig = look.figure(len(cs) * ((len(ops) + cols - 1) // cols))
    axes = fig.subplots((len(ops) + cols - 1) // cols, cols, squeeze=False).ravel()
    lw = 5 if look.slides else 2.5
    ref = None
    for k, (ax, op) in enumerate(zip(axes, ops, strict=False)):
        metric = f"{PREFIX}{op}{SUFFIX}"
        for i, c in enumerate(cs):
            v = c.select(d[d["metric"] == metric])["value"].to_numpy(float)
            v = v[v > 0]
            if v.size == 0:
                continue
            s = stats.summarize(v)
            col = look.colour(c.backend)
            ax.plot([s.lo, s.hi], [i, i], color=col, lw=lw, alpha=0.6, solid_capstyle="butt")
            ax.plot([s.median], [i], ls="", marker="D", color=col, zorder=5,
                    gid=f"{metric}|{look.label(c)}")
        host = d[(d["kind"] == "process") & (d["metric"] == metric)]["value"]
        if not host.empty:
            ref = ax.axvline(float(np.median(host)), color="#4d4d4d", ls="--", lw=1.2,
                             label="bare host (reference)", gid=f"{metric}|reference")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_seconds(x * 1e-9)))
        ax.grid(axis="x", which="major")
        ax.set_title(PAIRS.get(op, op))
        draw.rows(ax, cs, look, labels=k % cols == 0)
    for ax in axes[len(ops):]:
        ax.set_visible(False)
    draw.title(fig, "System calls: ns per call", look)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="D", color="#555555", label="median"),
        Line2D([], [], color="#555555", lw=lw, alpha=0.6, label="95 % CI of the median"),
        *([ref] if ref is not None else [])]
    draw.finish(fig, look, handles, cs, "log scale; a pair (openat + close, mmap + munmap) "
                "is one iteration: its two calls together")
    return fig


PRESENTATION: Presentation = Presentation(
    "syscall", "System calls", "what a system call costs inside each backend", rank=65,
    charts={"syscall": ("System calls: ns per call", syscall)},
    headline=tuple(rf"syscall\.{op}\.ns" for op in OPS))
