"""The terminal: the consoles every command writes to, and tables laid out for its width."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
UNBOUNDED = 100_000  # columns


def print_table(table: Table, console: Console = out) -> None:
    """`table` as it is where a row fits on one line of `console`; on a narrower terminal,
    where rich would cut every cell short ("…"), one block per row instead: the first
    column as its heading, then one "column  value" line per other column."""
    # (measured unbounded: a measurement within the console's options is capped at its width)
    unbounded = console.options.update_width(UNBOUNDED)
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(table.title)
    columns = table.columns
    keys = [str(c.header) for c in columns]
    width = max(len(k) for k in keys[1:])
    for row in zip(*(list(c.cells) for c in columns), strict=True):
        console.print()
        console.print(row[0])
        for key, value in zip(keys[1:], row[1:], strict=True):
            line = Text(f"  {key:<{width}}  ")
            line.append(value if isinstance(value, Text) else Text.from_markup(str(value)))
            console.print(line)
    console.print()
