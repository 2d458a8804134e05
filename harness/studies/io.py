"""io: fio inside the workload against each storage target, fio's own figures.

One sample is one instance with three mounts besides its root filesystem; a script in
the instance runs the same fio jobs (see harness.probes.io) on each target in turn:

  target=rootfs  a directory in the root filesystem: the copy-on-write layer of a
                 container (overlay upper), the root disk of a VM (virtio-blk), and for
                 the host backend the host's own filesystem (/var/tmp): the reference
  target=volume  a named volume (the backend's own kind: a Docker volume, ns's volume dir)
  target=bind    a bind mount of a fresh host directory under the state dir
  target=tmpfs   a tmpfs of `tmpfs_size`

Direct I/O (O_DIRECT, page cache bypassed) is used where the target accepts it, checked
first with one `dd oflag=direct` in the target; a tmpfs refuses it, so its figures are
memory speed. Each fio document is kept in the result as an artifact (kind "fio") with
the target, whether direct I/O was used, and for each metric the JSON path of the field
it was read from and its scale (value = field * scale).

A backend that does not apply mounts (host) measures the rootfs target only.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import replace
from typing import Any, ClassVar

from harness.errors import InstanceError
from harness.probes import io as fio
from harness.runner import Cell, Context, Measurement
from harness.studies import _lifecycle as life
from harness.units import parse_size
from runtimes.base import Mount, not_applied, state_dir

BEGIN, END = "CVBENCH-FIO-BEGIN", "CVBENCH-FIO-END"

# name -> where it is mounted in the instance (rootfs: a directory, made per instance).
TARGETS = ("rootfs", "volume", "bind", "tmpfs")

SCRIPT = """\
for t in {targets}; do
  name=${{t%%=*}}; dir=${{t#*=}}
  mkdir -p "$dir" || {{ echo "{end} $name rc=mkdir"; continue; }}
  direct=0
  if dd if=/dev/zero of="$dir/.cvbench-direct" bs=4096 count=1 oflag=direct 2>/dev/null
  then direct=1; fi
  rm -f "$dir/.cvbench-direct"
  echo "{begin} $name direct=$direct"
  fio --directory="$dir" --direct=$direct {args}
  rc=$?
  rm -f "$dir/{filename}"
  echo "{end} $name rc=$rc"
done
rmdir {rootdir} 2>/dev/null
true
"""


class Io:
    name = "io"
    metrics: dict[str, str] = fio.METRICS
    params: ClassVar[dict[str, Any]] = {"size": "64M", "runtime": 2.0, "iodepth": 16,
                                        "tmpfs_size": "128M",
                                        "targets": list(TARGETS)}

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        unknown = set(p["targets"]) - set(TARGETS)
        if unknown:
            raise InstanceError(f"io: unknown targets {sorted(unknown)} (known: "
                                f"{', '.join(TARGETS)})")
        size = parse_size(p["size"])
        spec = ctx.spec(cell, readiness="exit", capture=True)
        rootdir = f"/var/tmp/{spec.name}"
        dirs = {"rootfs": rootdir, "volume": "/cvbench/volume", "bind": "/cvbench/bind",
                "tmpfs": "/cvbench/tmpfs"}
        wanted = [t for t in TARGETS if t in p["targets"]]
        if "mounts" in not_applied(cell.runtime):
            wanted = [t for t in wanted if t == "rootfs"]
        bind_src = state_dir() / "io" / spec.name
        mounts: list[Mount] = []
        if "volume" in wanted:
            mounts.append(Mount("volume", dirs["volume"], source=f"cvbench-{ctx.run_id}-io"))
        if "bind" in wanted:
            bind_src.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount("bind", dirs["bind"], source=str(bind_src)))
        if "tmpfs" in wanted:
            mounts.append(Mount("tmpfs", dirs["tmpfs"], size=parse_size(p["tmpfs_size"])))
        script = SCRIPT.format(
            targets=" ".join(shlex.quote(f"{t}={dirs[t]}") for t in wanted),
            begin=BEGIN, end=END, filename=fio.FILENAME, rootdir=shlex.quote(rootdir),
            args=" ".join(shlex.quote(a) for a in fio.fio_args(
                size, float(p["runtime"]), int(p["iodepth"]))))
        spec = replace(spec, argv=("sh", "-c", script), mounts=(*spec.mounts, *mounts))
        try:
            inst, ex = life.run(ctx, cell, spec)
            life.finish(ctx, cell, inst)
        finally:
            shutil.rmtree(bind_src, ignore_errors=True)
        life.check(ex, "io")
        return self.parse(ctx, life.text(ex.stdout), wanted)

    def parse(self, ctx: Context, output: str, wanted: list[str]) -> list[Measurement]:
        found = fio.sections(output, BEGIN, END)
        out: list[Measurement] = []
        for target in wanted:
            if target not in found:
                raise InstanceError(f"io: no fio output for target {target}: "
                                    f"{output[-300:]!r}")
            info, body, end = found[target]
            if end != "rc=0":
                raise InstanceError(f"io: fio on {target} failed ({end}): {body[-300:]!r}")
            doc = fio.parse_json(body)
            figs = fio.figures(doc)
            sub = f"target={target}"
            out += [Measurement(f.metric, f.value, variant=sub) for f in figs]
            ctx.artifact("fio", doc, variant=sub, target=target,
                         direct=info == "direct=1",
                         fields={f.metric: f.as_dict() for f in figs})
        return out


STUDY = Io()
