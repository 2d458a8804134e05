"""mem: sysbench memory inside the instance (one thread), sequential read and write
bandwidth in B/s (sub "read", "write").

Each operation sweeps one buffer of `block_size` bytes again and again for `duration`
seconds: the buffer must be larger than the last-level cache for the figure to be the
memory's, not the cache's. The study reads that cache's size from sysfs on the host that
runs it (harness.core.hostinfo.last_level_cache), refuses a scenario whose buffer is
smaller than CACHE_MULTIPLE times it (1 GiB is the default), and records it in every
sample (`llc`: its level and bytes, or why it is unknown). The instance's memory limit
must hold the buffer. Parameters: `block_size`, `duration`, `warmup` (s, a write sweep
first: the buffer's pages faulted in).

On a 2-core host: the instance runs on CPU 1 (`limits.cpuset`), one sysbench thread: the
bandwidth one core draws, not the machine's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.core import hostinfo
from harness.core.probes import sysbench
from harness.core.units import format_size, parse_size
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from harness.studies import Base, Study, _sysbench
from harness.studies import _lifecycle as life

OPERATIONS = ("read", "write")
# A buffer twice the cache: at most half of it can be cached at any time, so a sweep
# reads most of it from memory.
CACHE_MULTIPLE = 2


class MemBandwidth(Base):
    name = "mem"
    metrics: ClassVar[dict[str, str]] = {"mem.bw": "B/s"}
    params: ClassVar[dict[str, Any]] = {"block_size": "1G", "duration": 3.0, "warmup": 1.0}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        """A buffer below CACHE_MULTIPLE x this host's last-level cache is refused: its
        figure would be the cache's bandwidth. An unknown cache size is not refused (it
        is recorded in every sample and shown in the report)."""
        try:
            block = parse_size(dict(s.params).get("block_size", self.params["block_size"]))
        except ValueError as e:
            return [("params.block_size", str(e))]
        llc = hostinfo.last_level_cache()
        if llc.size is not None and block < CACHE_MULTIPLE * llc.size:
            return [("params.block_size", f"{format_size(block)} is less than "
                     f"{CACHE_MULTIPLE}x this host's last-level cache (L{llc.level}, "
                     f"{format_size(llc.size)}, from {hostinfo.CACHE_ROOT}): the sweep "
                     "would measure the cache, not the memory; give at least "
                     f"{format_size(CACHE_MULTIPLE * llc.size)}")]
        return []

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        block, duration = parse_size(p["block_size"]), float(p["duration"])
        warmup = sysbench.memory_args("write", block, float(p["warmup"])) \
            if p["warmup"] else None
        jobs: _sysbench.Jobs = {op: sysbench.memory_args(op, block, duration)
                                for op in OPERATIONS}
        return _sysbench.run(ctx, cell, jobs, warmup, "mem.bw", lambda r: r.bytes_per_s,
                             extra={"block_size": block,
                                    "llc": hostinfo.last_level_cache().as_dict()})


STUDY: Study = MemBandwidth()
