"""Disk: what the image and each instance store."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness import data
from harness.report import draw
from harness.report.draw import Look, styled
from harness.report.presentation import Presentation


def _disk_parts(d: pd.DataFrame, base: str) -> tuple[float, float, bool]:
    """(shared, unique, split known) medians of `base` from its .shared/.unique parts."""
    def med(metric: str) -> float | None:
        v = d[d["metric"] == metric]["value"]
        return float(v.median()) if not v.empty else None

    total, shared, unique = med(base), med(f"{base}.shared"), med(f"{base}.unique")
    if shared is None and unique is None:
        return 0.0, total or 0.0, False
    if total is None:
        total = (shared or 0.0) + (unique or 0.0)
    shared = shared if shared is not None else total - (unique or 0.0)
    return shared, total - shared, True


@styled
def disk(df: pd.DataFrame, look: Look) -> Figure | None:
    """Image and per-instance bytes per cell; the part shared with other images or
    instances hatched and pale, the unique part solid."""
    parts = [b for b in ("disk.image", "disk.instance")
             if df["metric"].str.fullmatch(rf"{b}(\.shared|\.unique)?").any()]
    if not parts:
        return None
    d = df[df["metric"].str.match(r"disk\.(image|instance)")]
    cs = data.cells(d, look.order, look.sets)
    fig = look.figure(len(cs))
    axes = fig.subplots(1, len(parts), sharey=True, squeeze=False)[0]
    no_split: list[str] = []
    titles = {"disk.image": "image, as the backend stores it",
              "disk.instance": "each instance (growth)"}
    for ax, base in zip(axes, parts, strict=True):
        vals = [_disk_parts(c.select(d), base) for c in cs]
        div, unit = draw.byte_scale(max((s + u for s, u, _ in vals), default=1.0))
        for i, (c, (shared, unique, known)) in enumerate(zip(cs, vals, strict=True)):
            col = look.colour(c.backend)
            if base == "disk.image" and not known and shared + unique > 0:
                no_split.append(c.backend)
            ax.barh(i, unique / div, height=0.65, color=col, edgecolor="white",
                    hatch="//" if c.emulated else None)
            if shared:
                ax.barh(i, shared / div, left=unique / div, height=0.65, color=col, alpha=0.35,
                        hatch="xx", edgecolor=col)
            if shared + unique > 0:
                label = draw.fmt_bytes(shared + unique)
                if shared:
                    label += f" ({shared / (shared + unique):.0%} shared)"
                ax.annotate(label, ((shared + unique) / div, i), xytext=(6, 0),
                            textcoords="offset points", va="center")
            elif not c.select(d)["metric"].str.fullmatch(rf"{base}(\.shared|\.unique)?").any():
                # An empty row says why: this backend has no such figure (the host adds
                # no layer per instance; a VM booted from an initramfs writes to RAM).
                ax.annotate("not measured for this backend", (0, i), xytext=(6, 0),
                            textcoords="offset points", va="center", color="#777777",
                            style="italic")
        ax.set_xlim(0, max(ax.get_xlim()[1], 1e-9) * 1.6)
        ax.grid(axis="x")
        ax.set_title(titles[base])
        ax.set_xlabel(unit)
        draw.rows(ax, cs, look, labels=ax is axes[0])
    draw.title(fig, "Disk: bytes on disk per backend", look)
    note = (f"no shared/unique split reported by {', '.join(dict.fromkeys(no_split))}: "
            "drawn solid" if no_split else "")
    draw.finish(fig, look, [Patch(facecolor="#888888", label="unique"),
                        Patch(facecolor="#cccccc", hatch="xx", edgecolor="#888888",
                              label="shared with other images or instances")], cs, note)
    return fig


PRESENTATION: Presentation = Presentation(
    "disk", "Disk", "what the image and each instance store", rank=30,
    charts={"disk": ("Disk: bytes on disk", disk)},
    headline=(r"disk\.image", r"disk\.image\.shared", r"disk\.instance_idle",
              r"disk\.instance"))
