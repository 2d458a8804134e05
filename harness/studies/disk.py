"""disk: the image as each backend stores it, and what one instance adds on disk.

One sample records:

  disk.<key>           every entry of the backend's image footprint (Prepared.footprint,
                       read again through the idempotent prepare(); see its docstring):
                       `disk.image` is the image as stored (host and ns: `du -sb` of the
                       unpacked rootfs; Docker and Podman: the image size they report; a
                       VM: the disk's allocated size as `qemu-img info` gives it), and
                       where the backend has them `disk.image.shared` / `.unique` (layers
                       shared with other images vs its own) and `disk.image.virtual` (a
                       VM disk's virtual size)
  disk.instance_idle   what an idle instance occupies beyond the image (its writable
                       layer / overlay upper / disk overlay), once two readings agree
  disk.instance        the same for an instance that wrote `write` bytes of random data
                       (incompressible, so no backend can store it as zeros) to
                       /var/tmp in its root filesystem and synced, read while it is
                       still alive (a tmpfs upper exists only then)

Backends without a per-instance layer (host: `disk_usage()` of the running idle
instance is None) record neither instance figure, and the writer never runs for them
(nothing is written on the host's filesystem).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from harness.core.errors import InstanceError
from harness.core.units import parse_size
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from runtimes.base import Instance

BLOCK = 64 * 1024
POLL = 0.25  # seconds between two readings of an instance's disk usage
METRICS = {"disk.": "B"}  # every disk.<footprint key>, disk.instance, disk.instance_idle


class DiskStudy(Base):
    name = "disk"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {"write": "16M"}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        rt = cell.runtime
        prepared = rt.prepare(cell.prepared.image)
        out = [Measurement(key if key.startswith("disk.") else f"disk.{key}", float(value))
               for key, value in sorted(prepared.footprint.items())]
        written = max(1, parse_size(p["write"]) // BLOCK) * BLOCK
        write = (f"dd if=/dev/urandom of=/var/tmp/cvbench-disk bs={BLOCK} "
                 f"count={written // BLOCK} 2>/dev/null && sync && exec sleep 3600")
        for metric, argv in (("disk.instance_idle", ("sleep", "3600")),
                             ("disk.instance", ("sh", "-c", write))):
            with life.instance(ctx, cell, ctx.spec(cell, argv=argv, readiness="marker")) as inst:
                used = self.settled(ctx, cell, inst, written if metric == "disk.instance" else 0)
            if used is None:  # no per-instance layer (host): nothing to measure, so the
                break         # idle instance was the only one and nothing was written
            out.append(Measurement(metric, float(used)))
        return out

    @staticmethod
    def settled(ctx: Context, cell: Cell, inst: Instance, at_least: int) -> int | None:
        """The instance's disk usage once it holds `at_least` bytes and two readings
        POLL apart agree (the write and sync done); the instance stays alive meanwhile,
        since some layers (a tmpfs upper) exist only while it runs."""
        deadline = time.monotonic() + ctx.timeout
        last: int | None = None
        while True:
            time.sleep(POLL)
            used = cell.runtime.disk_usage(inst)
            if used is None or (used >= at_least and used == last):
                return used
            if time.monotonic() > deadline:
                raise InstanceError(f"disk: the instance holds {used} bytes, not the "
                                    f"{at_least} it wrote, after {ctx.timeout:g} s")
            last = used

STUDY: Study = DiskStudy()
