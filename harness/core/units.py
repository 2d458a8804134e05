"""Parsing and printing of sizes and durations."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_size(value: str | int | float) -> int:
    """Bytes from 1048576, "1M", "1MiB", "1.5G" (binary units: K = 1024, as Docker reads them)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return value
    if isinstance(value, float):
        if value < 0 or value != value:
            raise ValueError(f"not a size: {value!r}")
        return int(value)
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (use bytes, or a number with K, M, G, T)")
    return int(float(m.group(1)) * 1024 ** _POW[m.group(2).lower()])


def parse_seconds(value: str) -> float:
    """Seconds from "2", "2s", "500ms", "1.5m"."""
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 2s or 500ms)")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_seconds(s: float) -> str:
    if s != s:
        return "nan"
    a = abs(s)
    if a >= 1:
        return f"{s:.3g} s"
    if a >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def format_value(value: float, unit: str) -> str:
    if unit == "s":
        return format_seconds(value)
    if unit == "B":
        return format_size(value)
    if unit == "B/s":
        return format_size(value) + "/s"
    if abs(value) >= 1e4:  # 16,080 IOPS, not 1.608e+04 IOPS
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.4g} {unit}".strip()
