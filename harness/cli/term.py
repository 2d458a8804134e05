"""The terminal: the consoles every command writes to, and tables laid out for its width."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

ELLIPSIS = "…"


def print_table(table: Table, console: Console = out) -> None:
    """`table` as rich lays it out on `console` (wrapping a cell's words where a row does
    not fit on one line) unless that would cut some text short ("…"): then one block per
    row instead, the first column as its heading, then one "column  value" line per
    other column, which fits any terminal."""
    if not _cut(table, console.width):
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


def _cut(table: Table, width: int) -> bool:
    """Whether rich, laying `table` out in `width` columns, cuts text short: more "…" in
    what it prints than in the table's own text."""
    probe = Console(file=io.StringIO(), width=width, highlight=False, color_system=None)
    probe.print(table)
    printed = probe.file.getvalue()  # type: ignore[attr-defined]
    own = sum(str(x).count(ELLIPSIS) for c in table.columns for x in (c.header, *c.cells))
    return str(printed).count(ELLIPSIS) > own + str(table.title or "").count(ELLIPSIS)
