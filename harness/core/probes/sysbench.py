"""sysbench cpu and memory inside an instance: command lines, and figures read from its
own output.

cpu: "events per second" (one event: the primes up to `cpu-max-prime` by trial
division). memory: the "(... MiB/sec)" of "N MiB transferred", in B/s; the transferred
MiB must equal the operations times the block size (the bytes moved checked against
the work done). One thread each: the instance gets one CPU.

A run fails (InstanceError) on a FATAL or invalid-option line, a missing summary, or no
event at all: never a zero figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.core.errors import InstanceError

MiB = 1 << 20


def cpu_args(duration: float, max_prime: int) -> list[str]:
    return ["sysbench", "cpu", f"--cpu-max-prime={max_prime}", "--threads=1",
            f"--time={max(1, round(duration))}", "run"]


def memory_args(oper: str, block_size: int, duration: float) -> list[str]:
    """Sequential `oper` (read | write) over one buffer of `block_size` bytes, again and
    again for `duration` s (the total size is set beyond reach: time bounds the run)."""
    return ["sysbench", "memory", f"--memory-block-size={block_size // 1024}K",
            "--memory-total-size=100T", f"--memory-oper={oper}",
            "--memory-access-mode=seq", "--threads=1", f"--time={max(1, round(duration))}",
            "run"]


@dataclass(frozen=True)
class Run:
    events: int
    seconds: float
    events_per_s: float | None  # cpu
    bytes_per_s: float | None  # memory


def _float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def parse(text: str) -> Run:
    """sysbench's figures from its output; InstanceError when the run failed."""
    text = text.replace("\r", "")
    bad = [ln.strip() for ln in text.splitlines()
           if ln.startswith(("FATAL", "Invalid value", "Unknown option"))]
    if bad:
        raise InstanceError(f"sysbench: {bad[0][:200]}")
    events = _float(r"^\s*total number of events:\s+(\d+)", text)
    seconds = _float(r"^\s*total time:\s+([\d.]+)s", text)
    if events is None or seconds is None:
        raise InstanceError(f"sysbench: no summary in its output: {text[-300:]!r}")
    if not events:
        raise InstanceError(f"sysbench: no event in {seconds} s")
    rate = _float(r"^\s*events per second:\s+([\d.]+)", text)
    moved = re.search(r"^([\d.]+) MiB transferred \(([\d.]+) MiB/sec\)", text, re.M)
    bw = None
    if moved:
        block = re.search(r"^\s*block size: (\d+)KiB", text, re.M)
        ops = _float(r"^Total operations: (\d+)", text)
        if block is None or ops is None or \
                abs(float(moved.group(1)) * 1024 - ops * int(block.group(1))) > 1:
            raise InstanceError(f"sysbench: {moved.group(1)} MiB transferred does not "
                                "match its operations times its block size")
        bw = float(moved.group(2)) * MiB
    if rate is None and bw is None:
        raise InstanceError(f"sysbench: neither events per second nor MiB/sec in its "
                            f"output: {text[-300:]!r}")
    return Run(int(events), seconds, rate, bw)
