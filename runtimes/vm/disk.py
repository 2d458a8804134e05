"""Disk images: the rootfs as ext4 (raw and qcow2), empty ext4 volumes, `qemu-img info`.

`mkfs.ext4 -d DIR` fills a new filesystem from a directory in one pass (about a second),
no loop device or mount needed. The filesystem has metadata_csum, so a guest mounting it
needs crc32c (the crc32c_generic module; the initramfs carries it). A raw image is
sparse: its virtual size is what the guest sees, its allocated size what the host
stores; qcow2 allocates clusters as they are written. `qemu-img info` reports both, and
those are the figures recorded (never our own arithmetic).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness.core.errors import BackendUnavailable, InstanceError

DISK_SIZE = 1 << 30  # virtual size of the rootfs disks: room for I/O studies' files


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BackendUnavailable("libvirt", f"{argv[0]} is not installed",
                                 "apt-get install e2fsprogs qemu-utils") from e
    if proc.returncode != 0:
        raise InstanceError(f"{what} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def mkfs(target: Path, size: int, source: Path | None = None, label: str = "cvbench") -> None:
    """An ext4 raw image of `size` bytes (sparse), filled from `source` if given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    os.close(fd)
    try:
        os.truncate(tmp, size)
        argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0"]
        if source is not None:
            argv += ["-d", str(source)]
        _run([*argv, tmp], f"mkfs.ext4 {target.name}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_qcow2(raw: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    os.close(fd)
    try:
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), tmp],
             f"qemu-img convert {raw.name}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def overlay(base: Path, target: Path) -> Path:
    """A new qcow2 image at `target` whose backing file is the qcow2 `base`: it holds
    only the clusters written through it, as a container's writable layer holds only
    what the container changed; `base` is only read."""
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
          str(target)], f"qemu-img create {target.name}")
    return target


def info(path: Path) -> dict[str, Any]:
    """`qemu-img info` of one image: format, virtual size, allocated ("actual") size."""
    out = json.loads(_run(["qemu-img", "info", "-U", "--output=json", str(path)],
                          f"qemu-img info {path.name}"))
    return {"format": out.get("format"), "virtual_size": out.get("virtual-size"),
            "actual_size": out.get("actual-size")}


def volume(path: Path, size: int) -> Path:
    """A named volume as a disk image (raw, or qcow2 by its suffix), created empty (ext4)
    on first use and kept across instances, as a container engine keeps a volume."""
    if path.exists():
        return path
    if path.suffix == ".qcow2":
        raw = path.with_suffix(".raw.tmp")
        mkfs(raw, size, label="cvbench-vol")
        try:
            to_qcow2(raw, path)
        finally:
            raw.unlink(missing_ok=True)
    else:
        mkfs(path, size, label="cvbench-vol")
    return path


def direct_io_ok(directory: Path) -> bool:
    """Whether files in `directory` can be opened with O_DIRECT (QEMU's cache=none needs
    it; tmpfs and some overlay setups refuse it)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".odirect-")
    os.close(fd)
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECT)
        os.close(fd)
        return True
    except OSError:
        return False
    finally:
        os.unlink(tmp)
