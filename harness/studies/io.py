"""io: fio inside the workload against each storage target, fio's own figures.

One sample runs, for each target in turn, one instance whose script runs the fio jobs
(see harness.core.probes.io) in the target's directory:

  target=rootfs  a directory in the instance's root filesystem: the copy-on-write layer
                 of a container (overlay upper), whatever a VM's root is (its metadata
                 says: an initramfs in RAM, or a virtio-blk disk), and for the host
                 backend the host's own filesystem (/var/tmp): the reference
  target=volume  a named volume, the backend's own kind (a Docker volume, ns's volume
                 directory, a VM's virtio-blk disk image)
  target=volume.<fmt>  the same in another format, for backends whose metadata lists
                 `volume_formats` (e.g. ["raw", "qcow2"]: the first is the plain volume,
                 the others are volumes named `<name>.<fmt>`)
  target=bind    a bind mount of a fresh host directory under the state dir
  target=tmpfs   a tmpfs of `tmpfs_size`

Direct I/O (O_DIRECT, page cache bypassed) is used where the target accepts it, checked
first with one `dd oflag=direct` in the target. Each fio document is kept in the result
as an artifact (kind "fio") with the target, whether direct I/O was used, and for each
metric the JSON path of the field it was read from and its scale (value = field * scale).

A target the backend does not apply (its metadata's not_applied lists "mounts" or
"mounts.<type>": the host backend applies none) is not measured; one it declares it
cannot make when the instance is created (NotApplicable: a VM shares no host directory
for a bind mount) is skipped with an artifact (kind "target_refused") saying why; any
other error fails the sample.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import replace
from typing import Any, ClassVar

from harness.core.errors import InstanceError, NotApplicable
from harness.core.probes import io as fio
from harness.core.units import parse_size
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from runtimes.base import Mount, state_dir

BEGIN, END = "CVBENCH-FIO-BEGIN", "CVBENCH-FIO-END"
TARGETS = ("rootfs", "volume", "bind", "tmpfs")
MOUNTED = "/cvbench/io"  # where a mount target goes in the instance

SCRIPT = """\
dir={dir}
mkdir -p "$dir" || exit 1
direct=0
if dd if=/dev/zero of="$dir/.cvbench-direct" bs=4096 count=1 oflag=direct 2>/dev/null
then direct=1; fi
rm -f "$dir/.cvbench-direct"
echo "{begin} {target} direct=$direct"
fio --directory="$dir" --direct=$direct {args}
rc=$?
rm -f "$dir/{filename}"
echo "{end} {target} rc=$rc"
{cleanup}
exit $rc
"""


class Io(Base):
    name = "io"
    metrics: dict[str, str] = fio.METRICS
    params: ClassVar[dict[str, Any]] = {"size": "64M", "runtime": 2.0, "iodepth": 16,
                                        "tmpfs_size": "128M",
                                        "targets": list(TARGETS)}

    def targets(self, ctx: Context, cell: Cell, wanted: list[str]
                ) -> list[tuple[str, Mount | None]]:
        """(target name, its mount or None for rootfs) the backend applies."""
        unknown = set(wanted) - set(TARGETS)
        if unknown:
            raise InstanceError(f"io: unknown targets {sorted(unknown)} (known: "
                                f"{', '.join(TARGETS)})")
        skip = cell.traits.not_applied
        formats = cell.traits.volume_formats
        volume = f"cvbench-{ctx.run_id}-io"
        out: list[tuple[str, Mount | None]] = []
        for t in (t for t in TARGETS if t in wanted):
            if t != "rootfs" and ("mounts" in skip or f"mounts.{t}" in skip):
                continue
            if t == "rootfs":
                out.append((t, None))
            elif t == "volume":
                out.append((t, Mount("volume", MOUNTED, source=volume)))
                out += [(f"volume.{f}", Mount("volume", MOUNTED, source=f"{volume}.{f}"))
                        for f in formats[1:]]
            elif t == "bind":
                out.append((t, Mount("bind", MOUNTED, source="")))  # source made per sample
            else:
                out.append((t, Mount("tmpfs", MOUNTED)))
        return out

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        args = " ".join(shlex.quote(a) for a in fio.fio_args(
            parse_size(p["size"]), float(p["runtime"]), int(p["iodepth"])))
        out: list[Measurement] = []
        for target, mount in self.targets(ctx, cell, list(p["targets"])):
            spec = ctx.spec(cell, readiness="exit", capture=True)
            bind_src = state_dir() / "io" / spec.name
            if mount is None:  # a fresh directory of the root filesystem, removed after
                where = f"/var/tmp/{spec.name}"
                cleanup = f"rmdir {shlex.quote(where)}"
            else:
                where, cleanup = MOUNTED, ""
                if mount.type == "bind":
                    bind_src.mkdir(parents=True, exist_ok=True)
                    mount = replace(mount, source=str(bind_src))
                elif mount.type == "tmpfs":
                    mount = replace(mount, size=parse_size(p["tmpfs_size"]))
                spec = replace(spec, mounts=(*spec.mounts, mount))
            script = SCRIPT.format(dir=shlex.quote(where), target=target, begin=BEGIN, end=END,
                                   args=args, filename=fio.FILENAME, cleanup=cleanup)
            spec = replace(spec, argv=("sh", "-c", script))
            try:
                try:
                    inst, ex = life.run(ctx, cell, spec)
                except NotApplicable as e:  # the backend cannot make this kind of mount
                    ctx.cleanup(only=cell)
                    ctx.artifact("target_refused", str(e), variant=f"target={target}",
                                 target=target)
                    continue
                life.finish(ctx, cell, inst)
            finally:
                shutil.rmtree(bind_src, ignore_errors=True)
            life.check(ex, f"io on {target}")
            out += self.parse(ctx, life.text(ex.stdout), target)
        return out

    def parse(self, ctx: Context, output: str, target: str) -> list[Measurement]:
        found = fio.sections(output, BEGIN, END)
        if target not in found:
            raise InstanceError(f"io: no fio output for target {target}: {output[-300:]!r}")
        info, body, end = found[target]
        if end != "rc=0":
            raise InstanceError(f"io: fio on {target} failed ({end}): {body[-300:]!r}")
        doc = fio.parse_json(body)
        figs = fio.figures(doc)
        sub = f"target={target}"
        ctx.artifact("fio", doc, variant=sub, target=target, direct=info == "direct=1",
                     fields={f.metric: f.as_dict() for f in figs})
        return [Measurement(f.metric, f.value, variant=sub) for f in figs]


STUDY: Study = Io()
