"""mem: sysbench memory inside the instance (one thread), sequential read and write
bandwidth in B/s (sub "read", "write").

Each operation sweeps one buffer of `block_size` bytes again and again for `duration`
seconds: the buffer must be larger than the last-level cache for the figure to be the
memory's, not the cache's (this host's L3 is 480 MiB: 1 GiB is the default), and the
instance's memory limit must hold it. Parameters: `block_size`, `duration`, `warmup` (s,
a write sweep first: the buffer's pages faulted in).
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.core.probes import sysbench
from harness.core.units import parse_size
from harness.runner import Cell, Context, Measurement
from harness.studies import _lifecycle as life
from harness.studies import _sysbench

OPERATIONS = ("read", "write")


class Mem:
    name = "mem"
    metrics: ClassVar[dict[str, str]] = {"mem.bw": "B/s"}
    params: ClassVar[dict[str, Any]] = {"block_size": "1G", "duration": 3.0, "warmup": 1.0}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        block, duration = parse_size(p["block_size"]), float(p["duration"])
        warmup = sysbench.memory_args("write", block, float(p["warmup"])) \
            if p["warmup"] else None
        jobs: _sysbench.Jobs = {op: sysbench.memory_args(op, block, duration)
                                for op in OPERATIONS}
        return _sysbench.run(ctx, cell, jobs, warmup, "mem.bw", lambda r: r.bytes_per_s)


STUDY = Mem()
