"""Charts with matplotlib: every chart that has data, saved in each format.

The charts themselves live with what they show: the claims' in claims_chart, each study's
in its presentation (harness.report.studies), the applications' in apps; the helpers they
share in draw.

Figures are built with the object API (`matplotlib.figure.Figure`), not pyplot: no global
state, nothing to close, no GUI backend needed, and a notebook displays them as they are.

Every chart draws *cells* (backend × variant × dataset, see `data.cells`) in one order —
bare processes, then containers, then VMs — and a backend keeps one colour in all of them
(blues and greens for containers, reds and oranges for VMs, grey for the bare process).
An emulated VM (TCG) is marked wherever it appears: "(TCG, emulated)" in its label, a
hatched band or hatched bars, and a footnote saying what that means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report import apps, claims_chart, draw, presentation
from harness.report import claims as claims_mod


def all_charts() -> dict[str, tuple[str, draw.ChartFn]]:
    """name -> (title, function) of every chart, in the report's order."""
    return {**claims_chart.CHARTS, **presentation.charts(), **apps.chart_fns()}


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    paths: tuple[Any, ...]  # Path per format
    svg: str | None  # the SVG text, for inlining in HTML
    png: bytes | None


def render_all(df: pd.DataFrame, out: Any, style: str = "paper",
               formats: Sequence[str] = ("png", "svg"), inline: bool = False,
               claims_table: pd.DataFrame | None = None,
               extra: Mapping[str, tuple[str, draw.ChartFn]] | None = None) -> list[Chart]:
    """Build every chart that has data, save it in each format, return what was written.

    With `inline`, the SVG (or PNG) bytes are kept for an HTML page. `claims_table`:
    `claims.evaluate(df)` when the caller has it already (it is not cheap). `extra`:
    further charts, drawn after `all_charts()` (name -> (title, function))."""
    import io as _io
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with draw.style_context(style) as st:
        look = draw.Look.of(df, st)
        look.claims = claims_mod.evaluate(df) if claims_table is None else claims_table
        for name, (title, fn) in {**all_charts(), **(extra or {})}.items():
            fig = fn(df, look)
            if fig is None:
                continue
            paths = []
            blobs: dict[str, bytes] = {}
            for fmt in formats:
                buf = _io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=st.dpi,
                            metadata={"Date": None} if fmt in ("svg", "pdf") else None)
                blobs[fmt] = buf.getvalue()
                path = out / f"{name}.{fmt}"
                path.write_bytes(blobs[fmt])
                paths.append(path)
            if inline and "svg" not in blobs and "png" not in blobs:
                buf = _io.BytesIO()
                fig.savefig(buf, format="png", dpi=st.dpi)
                blobs["png"] = buf.getvalue()
            svg = blobs["svg"].decode() if inline and "svg" in blobs else None
            written.append(Chart(name, title, tuple(paths), svg,
                                 blobs.get("png") if inline else None))
    return written
