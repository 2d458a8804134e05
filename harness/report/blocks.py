"""The building blocks of a report page (headings, paragraphs, tables, charts, CSVs beside
it) and the generic tables every study can use: the medians of every figure, or one row per
cell with a column per headline figure."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness import data
from harness.core.units import format_value
from harness.report import tables

CAP = 30  # rows of a table in report.md; the rest go to the CSV beside it


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l"/"r" per column; default left


Block = tuple[str, Any]  # (kind, payload): h1 h2 h3 p ul table chart warn


def fmt_ci(median: float, lo: float, hi: float, unit: str) -> tuple[str, str]:
    """("12.3 ms", "11.9 ms – 12.8 ms")"""
    return format_value(median, unit), f"{format_value(lo, unit)} – {format_value(hi, unit)}"


def pm(median: float, lo: float, hi: float) -> str:
    if not median:
        return ""
    return f"±{(hi - lo) / 2 / abs(median):.1%}"


def medians_table(summ: pd.DataFrame, several: bool,
                  ram: Collection[tuple[str, str]] = ()) -> Table:
    """Every figure of `summ`; a backend in `ram` ((dataset, backend): see `in_ram`) is
    marked data.RAM_MARK."""
    counts = "count" in summ.columns
    notes = [data.failed_note(tables.tally_of(r)) for r in summ.to_dict("records")]
    failed = any(notes)  # the column is there when a cell had failures
    cols = [*(["dataset"] if several else []), "backend", "variant", "metric",
            *(["instances"] if counts else []), "n", *(["samples"] if failed else []),
            "median", "95 % CI", "±", "stability"]
    rows = []
    for r, note in zip(summ.to_dict("records"), notes, strict=True):
        med, ci = fmt_ci(r["median"], r["ci_lo"], r["ci_hi"], str(r["unit"]))
        backend = str(r["backend"])
        if (str(r.get("dataset")), backend) in ram:
            backend += f" {data.RAM_MARK}"
        rows.append([*([str(r["dataset"])] if several else []), backend,
                     str(r["variant"]), str(r["metric"]),
                     *([f"{r['count']:g}"] if counts else []), str(r["n"]),
                     *([note] if failed else []), med, ci,
                     pm(r["median"], r["ci_lo"], r["ci_hi"]),
                     f"⚠ {r['warning']}" if r["warning"] else ""])
    align = ("l" * (len(cols) - 6 - failed) + ("r" if counts else "l") + "r" * (1 + failed)
             + "rlrl")
    return Table(cols, rows, align)


def in_ram(df: pd.DataFrame) -> set[tuple[str, str]]:
    """(dataset, backend) of the backends whose writable layer was in RAM."""
    return {(str(ds), str(b)) for (ds, b), g in df.groupby(["dataset", "backend"])
            if data.in_ram(g)}


def ordered(summ: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the report's order: backend (by kind), variant, dataset, metric."""
    return data.in_order(summ, df, ["metric"])


def csv_blocks(name: str, frame: pd.DataFrame, what: str) -> list[Block]:
    """The full table as a CSV beside the report, and the line that points to it."""
    return [("csv", (name, frame)), ("p", f"{what}: [{name}]({name}) ({len(frame)} rows).")]


def capped(table: Table, csv: str, cap: int = CAP) -> list[Block]:
    """The table, cut at `cap` rows with a line saying where the rest is."""
    if len(table.rows) <= cap:
        return [("table", table)]
    return [("table", Table(table.columns, table.rows[:cap], table.align)),
            ("p", f"… {len(table.rows) - cap} more rows in [{csv}]({csv}).")]


def wide_table(summ: pd.DataFrame, df: pd.DataFrame, headline: Sequence[str],
               several: bool) -> Table | None:
    """One row per cell, one column per headline metric: "median ±x%" (± = half the
    95 % CI, relative to the median), ⚠ where the figure is unstable."""
    present = list(dict.fromkeys(summ["metric"]))
    metrics = [m for rx in headline for m in sorted(present) if re.fullmatch(rx, m)]
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        return None
    part = summ[summ["metric"].isin(metrics)]
    cells = {(c.backend, c.variant, c.dataset): c for c in data.cells(df)}
    cols = [*(["dataset"] if several else []), "backend", "n",
            *(m.split(".", 1)[1] for m in metrics)]
    rows = []
    for (ds, backend, variant), g in part.groupby(["dataset", "backend", "variant"], sort=False):
        by = {str(r["metric"]): r for r in g.to_dict("records")}
        cell = cells.get((str(backend), str(variant), str(ds)))
        values = []
        for m in metrics:
            r = by.get(m)
            values.append("—" if r is None else " ".join(filter(None, [
                format_value(r["median"], str(r["unit"])), pm(r["median"], r["ci_lo"],
                                                               r["ci_hi"]),
                "⚠" if r["warning"] else ""])))
        rows.append([*([str(ds)] if several else []),
                     cell.label() if cell else f"{backend} [{variant}]",
                     str(max(int(r["n"]) for r in by.values())), *values])
    return Table(cols, rows, "l" * (len(cols) - len(metrics) - 1) + "r" * (len(metrics) + 1))
