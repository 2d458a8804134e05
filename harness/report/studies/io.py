"""I/O: each storage target under fio."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness import data
from harness.report import draw
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation


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
            draw.median_ci(ax, v, i, look, colour=col)
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
            ax.xaxis.set_major_formatter(FuncFormatter(draw.compact_bytes))
        else:
            ax.xaxis.set_major_locator(LogLocator(base=10, numticks=4 if ncols > 2 else 6))
            ax.xaxis.set_major_formatter(FuncFormatter(draw.count_fmt))
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.5, hi * 1.5)
        ax.grid(axis="x", which="major")
        ax.set_title(job)
        draw.rows(ax, cs, look, labels=n % ncols == 0)
        ax.set_xlabel("bytes/s (M = MiB)" if kind == "bw" else "operations/s")
    for ax in axes[len(jobs):]:
        ax.set_visible(False)
    what = "bandwidth" if kind == "bw" else "IOPS"
    draw.title(fig, f"I/O: {what} by storage target (fio), per job", look)
    draw.finish(fig, look, [Line2D([], [], color="black", lw=4, label="median, 95 % CI"),
                        Line2D([], [], ls="", marker="o", color="#999999",
                               label="one sample"), *refs.values()], cs)
    return fig


@styled
def io(df: pd.DataFrame, look: Look) -> Figure | None:
    return _io(df, look, "bw")


@styled
def io_iops(df: pd.DataFrame, look: Look) -> Figure | None:
    return _io(df, look, "iops")


PRESENTATION: Presentation = Presentation(
    "io", "I/O", "each storage target under fio", rank=40,
    charts={"io_bw": ("I/O: bandwidth", io), "io_iops": ("I/O: operations per second", io_iops)},
    headline=(r"io\.seq[^.]*\.bw", r"io\.rand[^.]*\.iops"))
