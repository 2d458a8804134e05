"""`bench capacity`'s tables on a narrow terminal (harness.cli.term.print_table): laid out
one block per cell, nothing cut short, every figure of the wide table there in full."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from harness import capacity as cap
from harness.cli.term import print_table
from harness.report import capacity as shown
from tests.unit.test_capacity import MIB, doc, ramp, target


def plan_table() -> Table:
    samples = [s for b, fixed in (("docker", 90 * MIB), ("ns", 2 * MIB))
               for r in (1, 2) for s in ramp(b, r, 30, fixed, 0.5 * MIB, daemon=40 * MIB)]
    return shown.table(cap.analyse([("a.json", doc(samples))], target(basis="pss")))


def shown_at(width: int, table: Table, fit: bool = True) -> str:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    if fit:
        print_table(table, console)
    else:
        console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_the_14_column_table_is_cut_short_at_80_columns_as_rich_lays_it_out() -> None:
    """What the narrow layout is for: rich alone ends the cells in "…" at 80 columns."""
    assert "…" in shown_at(80, plan_table(), fit=False)


def test_at_80_columns_each_cell_is_a_block_and_no_figure_is_cut() -> None:
    table = plan_table()
    text = shown_at(80, table)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    # Every figure of every column, whole, on the line of its column's name.
    lines = text.splitlines()
    for column in table.columns[1:]:
        for value in column.cells:
            assert any(line.split() == [*str(column.header).split(), *str(value).split()]
                       for line in lines), (column.header, value)
    assert [line for line in lines if line in ("docker", "ns")] == ["docker", "ns"]


def test_a_wide_terminal_gets_the_table_as_it_was() -> None:
    table = plan_table()
    assert shown_at(250, table) == shown_at(250, table, fit=False)
