"""What a run shows on the terminal while it goes (a line per step, a spinner per slow step,
a progress bar per cell with its median and CI so far) and, at the end, its medians."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import scenario, stats
from harness.cli.term import err, out
from harness.core.units import format_value
from harness.sampling import Cell


class RichReporter:
    """What a run tells the user, on stderr: lines, a spinner per slow step, and a progress
    bar per cell with its median and CI so far."""

    def info(self, text: str) -> None:
        err.print(text)

    def warn(self, text: str) -> None:
        head, sep, rest = text.partition(": ")
        err.print(f"[yellow]{head}[/]{sep}{rest}" if sep else f"[yellow]{text}[/]")

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[Callable[[str], None]]:
        with err.status(text) as shown:
            yield lambda note: shown.update(f"{text} {note}")

    @contextlib.contextmanager
    def sampling(self, scen: scenario.Scenario, cells: Sequence[Cell],
                 unit: str) -> Iterator[Callable[[Cell, str], None]]:
        s = scen.sampling
        with Progress(TextColumn("{task.description:<28}"), BarColumn(),
                      TextColumn("{task.completed:>3}/{task.total:<3} {task.fields[note]}"),
                      TimeElapsedColumn(), console=err, transient=False) as progress:
            tasks = {c.key: progress.add_task(c.label, total=s.max_samples, note="")
                     for c in cells}

            def update(cell: Cell, note: str) -> None:
                if not note and cell.values and cell.samples >= 2:
                    lo, hi = stats.median_ci(cell.values)
                    med = sorted(cell.values)[len(cell.values) // 2]
                    note = f"median {format_value(med, unit)} ±{(hi - lo) / 2 / med:.1%}"
                    if cell.status != "running":
                        note += f" ({cell.status})"
                if cell.failures:  # the median above is over the samples that succeeded
                    note = f"{cell.samples} ok / {cell.attempts} tried · {note}"
                progress.update(tasks[cell.key], completed=cell.samples, note=note[:60])

            yield update


def print_summary(df: Any, order: list[str] | None = None) -> None:
    from harness import data
    from harness.report import tables

    if df.empty:
        out.print("no samples")
        return
    t = Table(title="medians with 95 % CI (± = CI half-width / median; ! = unstable)",
              box=None, pad_edge=False)
    summ = tables.summary(df)
    notes = {i: data.failed_note(tables.tally_of(r))
             for i, r in zip(summ.index, summ.to_dict("records"), strict=True)}
    failed = any(notes.values())  # a column of its own when a cell had failures
    for col in ("cell", "metric", "n", *(["ok / tried"] if failed else []), "median",
                "95 % CI", "±"):
        t.add_column(col, justify="right" if col in ("n", "median", "±") else "left",
                     no_wrap=True)
    if order:
        rank = {b: i for i, b in enumerate(order)}
        summ = summ.sort_values("backend", kind="stable",
                                key=lambda s: s.map(lambda b: rank.get(b, len(rank))))
    for i, r in zip(summ.index, summ.to_dict("records"), strict=True):
        u = str(r["unit"])
        # (escaped: rich would take "[network=none]" for markup and print nothing)
        cell = escape(str(r["backend"]) + ("" if r["variant"] == "default"
                                           else f" [{r['variant']}]"))
        rel = (r["ci_hi"] - r["ci_lo"]) / 2 / r["median"] if r["median"] else float("nan")
        t.add_row(cell, str(r["metric"]), str(r["n"]), *([notes[i]] if failed else []),
                  format_value(r["median"], u),
                  f"{format_value(r['ci_lo'], u)} – {format_value(r['ci_hi'], u)}",
                  f"{rel:.1%}" + (" !" if r["warning"] else ""))
    out.print(t)
