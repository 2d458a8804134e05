"""The seed claims as a forest plot: per claim and pair, the ratio A / B with its 95 % CI
on a log axis, coloured by verdict (storage claims in a chart of their own)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness.report import claims as claims_mod
from harness.report import draw
from harness.report.draw import Look, styled

VERDICT_COLOURS = {claims_mod.HOLDS: "#1a9850", claims_mod.FAILS: "#d73027",
                   claims_mod.INCONCLUSIVE: "#878787",
                   claims_mod.INCONCLUSIVE_FAILURES: "#b35806"}


def _ratio_fmt(r: float) -> str:
    if not math.isfinite(r):
        return "?"
    return f"{r:.0f}×" if r >= 1000 else f"{r:.3g}×"


def _claims(df: pd.DataFrame, look: Look, table: pd.DataFrame | None,
            which: str) -> Figure | None:
    """Forest plot: per claim and pair, the ratio A/B with its 95 % CI on a log axis, the
    band of "no meaningful difference" shaded, the verdict at the right.

    `which`: "io" draws the I/O claims (one row per job), "other" the rest; a slide
    holds each of them, not both."""
    t = claims_mod.evaluate(df) if table is None else table
    if not t.empty:
        io_rows = t["metric"].str.startswith("io.")
        t = t[io_rows] if which == "io" else t[~io_rows]
        # The application claim has a row per study, sub-case and network mode: its
        # verdicts are a table of the report's application section instead.
        t = t[t["claim"] != claims_mod.APPS]
    if t.empty:
        return None
    rows: list[tuple[str, Any]] = []  # ("claim", (id, text)) headers, ("pair", record) rows
    several_metrics = {str(c) for c, g in t.groupby("claim") if g["metric"].nunique() > 1
                       and (g["better"] != "bound").all()}
    for cid, g in t.groupby("claim", sort=False):
        rows.append(("claim", (cid, str(g["text"].iloc[0]))))
        for ds in look.sets:
            rows.extend(("pair", r) for r in g[g["dataset"] == ds].to_dict("records"))
    fig = look.figure(len(rows))
    ax = fig.add_subplot()
    margins = {c.id: c.margin for c in claims_mod.seed()}
    lw = 5 if look.slides else 2.5
    fs = draw.pt("ytick.labelsize")
    if look.slides and len(rows) > 16:
        fs = max(11.0, fs * 16 / len(rows))
    labels, right, colours = [], [], []
    for i, (what, r) in enumerate(rows):
        if what == "claim":
            labels.append("")
            right.append("")
            colours.append("black")
            # The claim's text heads its group, across the plot, on a white ground.
            ax.text(0.005, i, r[1], transform=ax.get_yaxis_transform(), va="center",
                    ha="left", fontweight="bold", fontsize=fs * 1.1, zorder=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
            m = margins.get(r[0], claims_mod.MARGIN)
            end = next((j for j in range(i + 1, len(rows)) if rows[j][0] == "claim"), len(rows))
            ax.fill_betweenx([i + 0.5, end - 0.5], 1 - m, 1 + m, color="#e6e6e6", zorder=0,
                             lw=0)
            continue
        col = VERDICT_COLOURS[r["verdict"]]
        # A claim over several metrics (fio jobs, latency percentiles) names each row's.
        job = (r["metric"].split(".", 1)[1].removesuffix(".bw")
               if r["claim"] in several_metrics else "")
        pair = _pair(r).replace(" (TCG, emulated)", " (TCG)")
        labels.append(pair + (f" · {job}" if job else "")
                      + (f" · {look.tag(r['dataset'])}" if look.several else ""))
        right.append(f"{_ratio_fmt(r['ratio'])} {r['verdict']}")
        colours.append(col)
        ax.plot([r["ratio_lo"], r["ratio_hi"]], [i, i], color=col, lw=lw,
                solid_capstyle="butt", zorder=3)
        ax.plot([r["ratio"]], [i], marker="o" if r["emulated"] else "D", color=col,
                mfc="white" if r["emulated"] else col, mew=2, zorder=4)
    ax.axvline(1, color="black", lw=1)
    ax.set_xscale("log")
    lo = float(np.nanmin(t["ratio_lo"].to_numpy(float)))
    hi = float(np.nanmax(t["ratio_hi"].to_numpy(float)))
    span = max(abs(math.log10(max(lo, 1e-12))), abs(math.log10(max(hi, 1e-12))), 0.3)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 1.5
                                          else (1.0,), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(10 ** -(span * 1.1), 10 ** (span * 1.1))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_yticks(range(len(rows)), labels, fontsize=fs)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", which="major")
    draw.right_labels(ax, right, colours, weight="bold", fontsize=fs)
    ax.set_xlabel("ratio of medians A / B (log scale); line: its 95 % CI")
    draw.title(fig, "Seed claims: what the measurements say" + (" (I/O)" if which == "io" else ""),
           look)
    handles: list[Any] = [Line2D([], [], color=c, lw=lw, marker="D", label=v)
                          for v, c in VERDICT_COLOURS.items()
                          if v != claims_mod.INCONCLUSIVE_FAILURES or (t["verdict"] == v).any()]
    handles.append(Patch(color="#e6e6e6", label="no meaningful difference"))
    if t["emulated"].any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", color="#555555", mew=2,
                              label="VM emulated (TCG)"))
    failures = ("\ninconclusive: failures — more than "
                f"{claims_mod.FAILURE_LIMIT * 100:g} % of a cell's samples failed (\"n ok / "
                "n tried\" on its label)" if (t["verdict"] == claims_mod.INCONCLUSIVE_FAILURES)
                .any() else "")
    draw.finish(fig, look, handles, [], "Verdict from the CI, not the medians: holds when the "
            "whole CI is on the claimed side of 1 (for \"like\" claims: inside the band)."
            + failures)
    return fig


def _pair(r: Mapping[str, Any]) -> str:
    """A claim row's label: "docker: volume vs rootfs" within one backend, "ns under
    cpus 0.5" for a limit, "docker vs libvirt" otherwise."""
    a, b = str(r["a"]), str(r["b"])
    if r["better"] == "bound":
        return f"{a} under {b}"
    ba, _, va = a.partition(" [")
    bb, _, vb = b.partition(" [")
    if ba == bb and va and vb:
        return f"{ba}: {va.replace(']', '', 1)} vs {vb.replace(']', '', 1)}"
    return f"{a} vs {b}"


@styled
def claims(df: pd.DataFrame, look: Look) -> Figure | None:
    return _claims(df, look, look.claims, "other")


@styled
def claims_io(df: pd.DataFrame, look: Look) -> Figure | None:
    return _claims(df, look, look.claims, "io")


# name -> (title, function): drawn first, shown in the claims section
CHARTS: dict[str, tuple[str, draw.ChartFn]] = {
    "claims": ("Seed claims", claims),
    "claims_io": ("Seed claims: I/O", claims_io),
}
