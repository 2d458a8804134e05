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
  disk.instance_idle   what an instance that wrote nothing occupies beyond the image
                       (its writable layer / overlay upper dir / disk overlay), after exit
  disk.instance        the same for an instance that wrote `write` bytes of random data
                       (incompressible, so no backend can store it as zeros) to
                       /var/tmp in its root filesystem, synced, after exit

Backends without a per-instance layer (host: `disk_usage()` is None) record neither
instance figure, and nothing is written on the host's filesystem for them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.runner import Cell, Context, Measurement
from harness.studies import _lifecycle as life
from harness.units import parse_size

BLOCK = 64 * 1024
METRICS = {"disk.": "B"}  # every disk.<footprint key>, disk.instance, disk.instance_idle


class Disk:
    name = "disk"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {"write": "16M"}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        rt = cell.runtime
        prepared = rt.prepare(cell.prepared.image)
        out = [Measurement(key if key.startswith("disk.") else f"disk.{key}", float(value))
               for key, value in sorted(prepared.footprint.items())]
        blocks = max(1, parse_size(p["write"]) // BLOCK)
        write = (f"dd if=/dev/urandom of=/var/tmp/cvbench-disk bs={BLOCK} count={blocks} "
                 "2>/dev/null && sync")
        for metric, argv in (("disk.instance_idle", ("true",)),
                             ("disk.instance", ("sh", "-c", write))):
            spec = ctx.spec(cell, argv=argv, readiness="exit")
            inst = rt.create(spec, cell.prepared)
            ctx.track(cell, inst)
            try:
                if rt.disk_usage(inst) is None:
                    break  # no per-instance layer: nothing to measure, nothing to write
                rt.start(inst)
                ex = rt.wait_exit(inst, ctx.timeout)
                life.check(ex, metric)
                used = rt.disk_usage(inst)
                if used is not None:
                    out.append(Measurement(metric, float(used)))
            finally:
                life.finish(ctx, cell, inst)
        return out


STUDY = Disk()
