"""Overlay: two docker nodes' replicas over a swarm's overlay network (VXLAN) against the
same two hosts over their plain network; the ratio overlay / plain is each sample's own
pair (both paths are measured in every sample), its median with its CI."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness import data, stats
from harness.core.units import format_value
from harness.report import draw
from harness.report.blocks import Table, pm
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

AXIS = "path"
PATHS = ("overlay", "plain")
LAT = ("overlay.lat_p50", "overlay.lat_p99")
BW = "overlay.bw"
TCG_MARK = "⚠ worker emulated (TCG)"
PLAIN_COLOUR = "#7f7f7f"


def by_path(df: pd.DataFrame) -> pd.DataFrame:
    """The study's samples with their `path` (overlay | plain) and the cell's variant
    without it (`base`)."""
    d = df[df["metric"].str.startswith("overlay.")]
    d = d.assign(path=d["variant"].map(lambda v: data.axis_of(str(v), AXIS)),
                 base=d["variant"].map(lambda v: data.without_axis(str(v), AXIS)))
    return d[d["path"].isin(PATHS)]


def worker_tcg(df: pd.DataFrame) -> bool:
    """Whether any sample's worker was emulated (the study's `worker_tcg`)."""
    if "worker_tcg" not in df.columns:
        return False
    return bool(df["worker_tcg"].eq(True).any())  # (absent in other rows: NaN)


def ratios(cell: pd.DataFrame, metric: str) -> np.ndarray:
    """overlay / plain of `metric`, one per sample (run and round) that has both."""
    d = cell[cell["metric"] == metric]
    wide = d.pivot_table(index=["run_id", "round"], columns="path", values="value",
                         aggfunc="median")
    if not set(PATHS) <= set(wide.columns):
        return np.array([])
    both = wide.dropna(subset=list(PATHS))
    both = both[both["plain"] > 0]
    return (both["overlay"] / both["plain"]).to_numpy(float)


def _cells(d: pd.DataFrame, look: Look | None = None) -> list[tuple[data.ResultCell, str]]:
    """(result cell, its rows' label) of each cell, its variant without the path."""
    base = d.assign(variant=d["base"])
    cs = data.cells(base, look.order if look else None, look.sets if look else None)
    return [(c, c.label(look.tag(c.dataset) if look else None)
             + (f" {TCG_MARK}" if worker_tcg(c.select(base)) else "")) for c in cs]


def _label(s: stats.Summary) -> str:
    return f"×{s.median:.2f}" if s.n else "—"


@styled
def overlay(df: pd.DataFrame, look: Look) -> Figure | None:
    """Per cell, the overlay and the plain path: latency p50 and p99 (log axis) and
    bandwidth, each median with its 95 % CI; on the right the ratios overlay / plain
    (medians of each sample's own pair)."""
    d = by_path(df)
    if d.empty:
        return None
    cs = _cells(d, look)
    base = d.assign(variant=d["base"])
    fig = look.figure(2 * len(cs))
    ax_lat, ax_bw = fig.subplots(1, 2, sharey=True)
    lw = 5 if look.slides else 2.5
    right, colours, rows, labels = [], [], [], []
    for i, (c, _) in enumerate(cs):
        cell = c.select(base)
        for k, path in enumerate(PATHS):
            y = 2 * i + k
            rows.append(c)
            labels.append(f"{look.label(c)} · {path}")  # (the title says TCG)
            col = look.colour(c.backend) if path == "overlay" else PLAIN_COLOUR
            mine = cell[cell["path"] == path]
            for metric, ax, dy, mk in ((LAT[0], ax_lat, -0.15, "D"),
                                       (LAT[1], ax_lat, 0.15, "o"), (BW, ax_bw, 0.0, "D")):
                v = mine[mine["metric"] == metric]["value"].to_numpy(float)
                v = v[v > 0]
                if v.size == 0:
                    continue
                s = stats.summarize(v)
                ax.plot([s.lo, s.hi], [y + dy, y + dy], color=col, lw=lw, alpha=0.6,
                        solid_capstyle="butt")
                ax.plot([s.median], [y + dy], ls="", marker=mk, color=col, mew=2, zorder=5,
                        mfc="white" if metric == LAT[1] else col,
                        gid=f"{metric}|{path}|{look.label(c)}")
            colours.append(col)
            if path == "plain":
                right.append("")
                continue
            r = {m: stats.summarize(ratios(cell, m)) for m in (*LAT, BW)}
            right.append(f"p50 {_label(r[LAT[0]])} · p99 {_label(r[LAT[1]])} · "
                         f"bw {_label(r[BW])}")
    for ax in (ax_lat, ax_bw):
        ax.set_xscale("log")
        ax.grid(axis="x", which="major")
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.5, hi * 1.5)
    draw.latency_bandwidth_axes(ax_lat, ax_bw, look, 6)
    ax_lat.set_title("latency, one way")
    ax_bw.set_title("bandwidth")
    ax_lat.set_xlabel("sockperf, log scale")
    ax_bw.set_xlabel("iperf3, bytes/s, log (M = MiB)")
    draw.rows(ax_lat, rows, look, text=labels)
    draw.rows(ax_bw, rows, look, labels=False)
    draw.right_labels(ax_bw, right, colours)
    tcg = worker_tcg(d)
    draw.title(fig, "Overlay (VXLAN) vs plain network" + (f" — {TCG_MARK}" if tcg else ""),
               look)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="D", color="#555555", mew=2, label="p50"),
        Line2D([], [], ls="", marker="o", mfc="white", color="#555555", mew=2, label="p99"),
        Line2D([], [], color="#555555", lw=lw, alpha=0.6, label="95 % CI of the median"),
        Line2D([], [], color=PLAIN_COLOUR, lw=lw, label="plain network (grey)")]
    draw.finish(fig, look, handles, [c for c, _ in cs],
                "overlay: replica to replica over the swarm's overlay network; plain: the "
                "same tools host to host (network host)",
                "right: overlay / plain, the median of each sample's own ratio (two docker "
                "nodes: this host, the worker)"
                + ("\nthe worker's CPU is emulated (QEMU TCG): its figures are an "
                   "emulator's, not a network's" if tcg else ""), ncols=4)
    return fig


COLUMNS = (("latency p50", LAT[0]), ("latency p99", LAT[1]), ("bandwidth", BW))


def overlay_table(df: pd.DataFrame, several: bool) -> Table | None:
    """Per cell: the overlay path's and the plain path's medians (± half the 95 % CI),
    and overlay / plain (each sample's own ratio: median ± half its CI)."""
    d = by_path(df)
    if d.empty:
        return None
    base = d.assign(variant=d["base"])
    cols = [*(["dataset"] if several else []), "backend", "path", *(n for n, _ in COLUMNS)]
    out = []
    for c, label in _cells(d):
        cell = c.select(base)
        for path in (*PATHS, "overlay / plain"):
            row = [*([c.dataset] if several else []), label, path]
            for _, metric in COLUMNS:
                if path in PATHS:
                    v = cell[(cell["path"] == path) & (cell["metric"] == metric)]["value"]
                    s = stats.summarize(v.to_numpy(float))
                    text = format_value(s.median, str(d[d["metric"] == metric]["unit"]
                                                      .iloc[0])) if s.n else "—"
                else:
                    s = stats.summarize(ratios(cell, metric))
                    text = _label(s)
                row.append(f"{text} {pm(s.median, s.lo, s.hi)}".strip() if s.n else "—")
            out.append(row)
    return Table(cols, out, "l" * (len(cols) - len(COLUMNS)) + "r" * len(COLUMNS))


PRESENTATION: Presentation = Presentation(
    "overlay", "Overlay vs plain network",
    "what a swarm's overlay network (VXLAN) costs between two docker nodes, against the "
    "same two hosts over their plain network", rank=62,
    charts={"overlay": ("Overlay vs plain network", overlay)},
    table=overlay_table,
    caption="Medians; ± is half the 95 % CI, relative to the median. overlay: sockperf "
            "and iperf3 from a replica on this host to a replica on the worker over the "
            "swarm's overlay network; plain: the same tools (the image's binaries, network "
            "host) between the two hosts. overlay / plain: each sample's own ratio (both "
            "paths are measured in every sample), its median ± half its CI. '⚠ worker "
            "emulated (TCG)': the worker's CPU is QEMU's emulator: its figures say what "
            "the emulator does, not the network.")
