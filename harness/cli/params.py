"""The command line's own value types: each parses and checks one kind of option value, so
a wrong value is one line naming the option (click's usage error, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harness.core.units import parse_seconds, parse_size
from runtimes.base import MOUNT_TYPES, Mount


class Size(click.ParamType[int, Any]):
    """A size such as 64M, 1.5G or 4096 (bytes), parsed by harness.core.units; with
    `positive`, 0 is refused."""

    name = "size"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            size = value
        else:
            try:
                size = parse_size(str(value))
            except ValueError as e:
                self.fail(str(e), param, ctx)
        if self.positive and size <= 0:
            self.fail("must be positive", param, ctx)
        return size


SIZE = Size()


class Seconds(click.ParamType[float, Any]):
    """A duration such as 2s, 150ms or 1.5 (seconds), parsed by harness.core.units."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_seconds(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class NameCount(click.ParamType[tuple[str, int], Any]):
    """NAME=COUNT, a count of something named (a kernel limit: pid_max=4194304)."""

    name = "NAME=COUNT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        name, _, count = str(value).partition("=")
        if not count.strip().isdigit():
            self.fail(f"{value!r} is not NAME=COUNT", param, ctx)
        return name.strip(), int(count)


class ChartFile(click.Path):
    """A file to draw a chart into, its format by suffix (png, svg or pdf)."""

    SUFFIXES = (".png", ".svg", ".pdf")

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        if Path(str(path)).suffix not in self.SUFFIXES:
            self.fail("must end in .png, .svg or .pdf", param, ctx)
        return path


class MountSpec(click.ParamType[Mount, Any]):
    """Docker's --mount syntax: type=bind|volume|tmpfs,source=…,target=…[,readonly][,size=…]."""

    name = "mount"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Mount:
        if isinstance(value, Mount):
            return value
        fields: dict[str, str] = {}
        for part in str(value).split(","):
            key, eq, v = part.partition("=")
            if key in ("readonly", "ro") and not eq:
                v = "true"
            fields[{"src": "source", "dst": "target", "destination": "target",
                    "ro": "readonly"}.get(key, key)] = v
        unknown = set(fields) - {"type", "source", "target", "readonly", "size"}
        if unknown:
            self.fail(f"unknown field {sorted(unknown)[0]!r} in {value!r}", param, ctx)
        mtype = fields.get("type", "bind")
        if mtype not in MOUNT_TYPES or not fields.get("target", "").startswith("/"):
            self.fail(f"{value!r}: need type=bind|volume|tmpfs and an absolute target=",
                      param, ctx)
        size = SIZE.convert(fields["size"], param, ctx) if "size" in fields else None
        return Mount(type=mtype,  # type: ignore[arg-type]
                     target=fields["target"], source=fields.get("source"),
                     readonly=fields.get("readonly", "false").lower() in ("1", "true", "yes"),
                     size=size)


class KeyValue(click.ParamType[tuple[str, str], Any]):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, str]:
        k, eq, v = str(value).partition("=")
        if not eq or not k:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return k, v


