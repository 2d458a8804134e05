"""Network: latency and bandwidth per network mode (none, bridge, host, macvlan, ipvlan:
one row per backend and mode)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness import data, stats
from harness.core.units import format_seconds
from harness.report import draw
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

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
            + ([draw.fmt_bytes(meds["network.bw"], "/s")] if "network.bw" in meds else [])))
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
    draw.latency_bandwidth_axes(ax_lat, ax_bw, look, 7)  # a narrow panel: fewer labels
    ax_lat.set_title("latency, one way (sockperf)")
    ax_bw.set_title("bandwidth (iperf3)")
    ax_lat.set_xlabel("log scale")
    ax_bw.set_xlabel("bytes/s, log scale (M = MiB)")
    draw.rows(ax_lat, cs, look)
    draw.rows(ax_bw, cs, look, labels=False)
    draw.right_labels(ax_bw, right, [look.colour(c.backend) for c in cs])
    draw.title(fig, "Network: latency and bandwidth per network mode", look)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="D", color="#555555", mew=2, label="p50"),
        Line2D([], [], ls="", marker="o", mfc="white", color="#555555", mew=2, label="p99"),
        Line2D([], [], color="#555555", lw=lw, alpha=0.6, label="95 % CI of the median"),
        *refs.values()]
    modes = {data.axis_of(c.variant, "network") for c in cs}
    vlans = [m for m in ("macvlan", "ipvlan") if m in modes]
    draw.finish(fig, look, handles, cs,
            "[none]: client and server both inside the instance, over its loopback"
            if "none" in modes else "",
            f"[{'], ['.join(vlans)}]: the host's client through a shim of the same mode on "
            "the run's own parent link (never the host's uplink)" if vlans else "",
            "right: p50 · p99 · bandwidth (medians)", ncols=4 if look.slides else 7)
    return fig


PRESENTATION: Presentation = Presentation(
    "network", "Network", "latency and bandwidth per network mode", rank=60,
    charts={"network": ("Network: latency and bandwidth", network)},
    headline=(r"network\.lat_p50", r"network\.lat_p99", r"network\.bw"))
