"""Charts with matplotlib (Agg backend: files only, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import runtimes
from harness import stats
from harness.probes.timing import PHASES

PALETTE = [plt.get_cmap("tab10")(i)[:3] for i in range(10)]
PHASE_COLOURS = [plt.get_cmap("Set2")(i)[:3] for i in range(8)]


def backend_order(names: Sequence[str]) -> list[str]:
    """One order for every chart: the registry's (host first, then by name)."""
    known = runtimes.all_names()
    rank = {n: i for i, n in enumerate(sorted(known, key=lambda n: (n != "host", n)))}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def colour(name: str) -> tuple[float, float, float]:
    """A backend keeps its colour in every chart and every report."""
    order = backend_order(runtimes.all_names())
    i = order.index(name) if name in order else len(order) + hash(name) % 10
    r, g, b = PALETTE[i % len(PALETTE)]
    return (r, g, b)


def _label(row_backend: str, variant: str, emulated: bool) -> str:
    label = row_backend if variant == "default" else f"{row_backend}\n[{variant}]"
    return label + ("\n(EMULATED)" if emulated else "")


def startup(df: pd.DataFrame, out: Path, formats: Sequence[str]) -> list[Path]:
    """Every sample of startup.total per cell on a log axis, median and 95 % CI marked;
    beside it the phases (median of each) stacked per cell."""
    d = df[df["metric"].str.startswith("startup.")]
    if d.empty:
        return []
    cells = []
    for b in backend_order(list(d["backend"].unique())):
        for v in d[d["backend"] == b]["variant"].unique():
            cells.append((b, v))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.6 * len(cells) + 2.5),
                                  gridspec_kw={"width_ratios": [3, 2]}, sharey=True)
    rng = np.random.default_rng(0)
    labels = []
    for i, (b, v) in enumerate(cells):
        cell = d[(d["backend"] == b) & (d["variant"] == v)]
        total = cell[cell["metric"] == "startup.total"]["value"].to_numpy(float)
        labels.append(_label(b, v, bool(cell["emulated"].any())))
        if total.size == 0:
            continue
        y = i + rng.uniform(-0.2, 0.2, total.size)
        ax.scatter(total, y, s=12, alpha=0.5, color=colour(b), edgecolors="none")
        s = stats.summarize(total.tolist())
        ax.errorbar([s.median], [i], xerr=[[s.median - s.lo], [s.hi - s.median]], fmt="|",
                    color="black", markersize=18, capsize=6, lw=2)
        ax.annotate(f"{s.median * 1e3:.3g} ms", (s.median, i + 0.32), ha="center",
                    fontsize=8)
        left = 0.0
        for k, phase in enumerate(PHASES):
            vals = cell[cell["metric"] == f"startup.{phase}"]["value"]
            if vals.empty:
                continue
            width = float(vals.median())
            ax2.barh(i, width, left=left, color=PHASE_COLOURS[k],
                     label=phase if i == 0 else None)
            left += width
    ax.set_xscale("log")
    ax.set_yticks(range(len(cells)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("startup.total (s, log scale): every sample; bar = median, 95 % CI")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax2.set_xlabel("median of each phase (s)")
    ax2.legend(loc="lower right", fontsize=8)
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle("Startup: create → remove, per backend")
    fig.tight_layout()
    return save(fig, out / "startup", formats)


def save(fig: Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths
