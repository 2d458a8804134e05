"""Warm: each backend at its best start (a pool of prepared instances) beside its cold
start, and what the pool costs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness import data, stats
from harness.core.units import format_seconds, format_value
from harness.report import draw
from harness.report.blocks import Table, pm
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation

WARM, COLD = "warm", "cold"


def start_of(df: pd.DataFrame, cell: data.ResultCell) -> tuple[str, int, int]:
    """How a cell's timed requests started: ("warm", from a slot, measured) when any came
    from a slot (a pool), else ("cold", 0, measured)."""
    v = cell.select(df[df["metric"] == "warm.from_slot"])["value"].to_numpy(float)
    k = int((v > 0.5).sum())
    return (WARM if k else COLD), k, int(v.size)


def start_label(df: pd.DataFrame, cell: data.ResultCell) -> str:
    """"warm", "cold", or "warm (4 of 5 from a slot)" when some requests came cold."""
    how, k, n = start_of(df, cell)
    return how if how == COLD or k == n else f"{how} ({k} of {n} from a slot)"


@styled
def warm(df: pd.DataFrame, look: Look) -> Figure | None:
    """Every sample of request → ready line per backend, log axis, median and 95 % CI;
    a backend with a pool is marked warm (its samples as diamonds, a hollow one where the
    request came cold), the others are their cold starts."""
    d = df[df["metric"] == "warm.to_ready"]
    if d.empty:
        return None
    slot = df[df["metric"] == "warm.from_slot"][["backend", "variant", "dataset", "round",
                                                  "value"]].rename(columns={"value": "slot"})
    d = d.merge(slot, on=["backend", "variant", "dataset", "round"], how="left")
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    labels = []
    for i, c in enumerate(cs):
        g = c.select(d)
        how = start_of(df, c)[0]
        labels.append(f"{look.label(c)} · {how}")
        v = g["value"].to_numpy(float)
        from_slot = g["slot"].fillna(0).to_numpy(float) > 0.5
        y = i + rng.uniform(-0.28, 0.28, v.size)
        col = look.colour(c.backend)
        for mask, marker, face in ((from_slot, "D", col), (~from_slot, "o", col)):
            if how == WARM and marker == "o":
                face = "none"  # a pool's request that came cold: hollow
            if mask.any():
                ax.scatter(v[mask], y[mask], s=look.points(12 if marker == "D" else 9),
                           marker=marker, facecolors=face, edgecolors=col, alpha=0.55,
                           linewidths=1, zorder=3)
        s = draw.median_ci(ax, v[v > 0], i, look)
        ax.annotate(format_seconds(s.median), (max(s.hi, float(v.max())), i), xytext=(8, 0),
                    textcoords="offset points", va="center", fontweight="bold", zorder=6)
        if how == WARM:
            ax.axhspan(i - 0.5, i + 0.5, color="#fff3c4", zorder=0, lw=0)
    ax.set_xscale("log")
    draw.seconds_axis(ax.xaxis)
    ax.set_xlim(right=ax.get_xlim()[1] * 2.5)
    ax.grid(axis="x", which="major")
    draw.rows(ax, cs, look, text=labels)
    ax.set_xlabel("request → ready line (log scale)")
    draw.title(fig, "Warm and cold: request → ready, every sample", look)
    draw.finish(fig, look, [
        Line2D([], [], ls="", marker="D", color="#777777", label="warm: taken from a slot"),
        Line2D([], [], ls="", marker="o", color="#777777", label="cold start"),
        Line2D([], [], ls="", marker="o", mfc="none", color="#777777",
               label="a pool's request made cold"),
        Line2D([], [], ls="", marker="|", color="black", ms=14, mew=2.5, label="median, 95 % CI")],
        cs, "shaded rows: backends with a pool (warm)")
    return fig


@styled
def burst(df: pd.DataFrame, look: Look) -> Figure | None:
    """Request → ready of each request of the burst, by its place in the burst (median
    over samples), marked by whether it came from a slot in most samples: a pool's
    requests are fast until it is empty, then cold, unless its filler keeps up."""
    d = df[df["metric"] == "warm.burst.to_ready"]
    if d.empty:
        return None
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure()
    ax = fig.add_subplot()
    slots = df[df["metric"] == "warm.burst.from_slot"]
    for c in cs:
        g = c.select(d).groupby("instance")["value"].median()
        x = g.index.to_numpy(float) + 1
        y = g.to_numpy(float)
        # a request from a slot in most samples: a filled diamond; else a hollow circle
        share = c.select(slots).groupby("instance")["value"].mean().reindex(g.index)
        slot = share.fillna(0).to_numpy(float) > 0.5
        col = look.colour(c.backend)
        pool = bool(c.select(slots)["value"].max() > 0) if c.select(slots).size else False
        ax.plot(x, y, color=col, lw=1.5, label=look.label(c), ls="-" if pool else "--",
                zorder=3)
        ax.scatter(x[slot], y[slot], marker="D", color=col, zorder=4, s=look.points(18))
        ax.scatter(x[~slot], y[~slot], marker="o", facecolors="none", edgecolors=col,
                   zorder=4, s=look.points(18))
    ax.set_yscale("log")
    draw.seconds_axis(ax.yaxis)
    ax.set_xlabel("request in the burst (back to back, one client)")
    ax.set_ylabel("request → ready line (median)")
    ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    ax.grid(axis="y", which="major")
    draw.title(fig, "Burst: each request's time to ready as the pool empties", look)
    handles = [*ax.get_legend_handles_labels()[0],
               Line2D([], [], ls="", marker="D", color="#777777",
                      label="from a slot (in most samples)"),
               Line2D([], [], ls="", marker="o", mfc="none", color="#777777", label="cold")]
    draw.finish(fig, look, handles, cs, "solid line: a backend with a pool; dashed: cold only",
                ncols=3)
    return fig


ROWS = (("to_ready", "warm.to_ready"), ("idle PSS / slot", "warm.idle.pss"),
        ("idle kernel / slot", "warm.idle.kernel"), ("idle disk / slot", "warm.idle.disk"),
        ("refill", "warm.refill_rate"), ("burst", "warm.burst.rate"))


def warm_table(df: pd.DataFrame, several: bool) -> Table | None:
    """One row per backend: how it started, the medians (± half the 95 % CI) of to_ready,
    the idle cost per slot, the refill rate and the burst's rate, and the burst's split."""
    d = df[df["metric"].str.startswith("warm.")]
    if d.empty or not (d["metric"] == "warm.to_ready").any():
        return None
    cols = [*(["dataset"] if several else []), "backend", "start", "n",
            *(name for name, _ in ROWS), "burst: slot / cold"]
    rows = []
    for c in data.cells(d[d["metric"] == "warm.to_ready"]):
        cell = c.select(d)
        out = []
        for _, metric in ROWS:
            v = cell[cell["metric"] == metric]
            if v.empty:
                out.append("—")
                continue
            s = stats.summarize(v["value"].to_numpy(float))
            out.append(f"{format_value(s.median, str(v['unit'].iloc[0]))} "
                       f"{pm(s.median, s.lo, s.hi)}".strip())
        split = [cell[cell["metric"] == m]["value"].median()
                 for m in ("warm.burst.slots", "warm.burst.cold")]
        rows.append([*([c.dataset] if several else []), c.label(), start_label(d, c),
                     str(int((cell["metric"] == "warm.to_ready").sum())), *out,
                     " / ".join("—" if pd.isna(x) else f"{x:g}" for x in split)])
    return Table(cols, rows, "l" * (len(cols) - len(ROWS) - 2) + "r" * (len(ROWS) + 2))


PRESENTATION: Presentation = Presentation(
    "warm", "Warm start", "how fast each backend starts at its best (a pool of prepared "
    "instances) and what that costs", rank=12,
    charts={"warm": ("Warm and cold: time to ready", warm),
            "warm_burst": ("Warm: a burst past the pool's size", burst)},
    table=warm_table,
    caption="Medians; ± is half the 95 % CI, relative to the median. start: warm where "
            "requests were taken from a pool's slot, cold otherwise (a backend without a "
            "pool: its cold start). Idle cost per ready slot: PSS of the processes it "
            "holds (0: none), its cgroup's kernel memory, its bytes on disk; refill: slots "
            "prepared per second from an empty pool; burst: instances ready per second over "
            "requests back to back past the pool's size, and how many came from a slot or "
            "cold.")
