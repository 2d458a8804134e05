"""The guest's initramfs: the image's rootfs tar, entry by entry, plus kernel modules.

Written as one uncompressed newc cpio: the kernel unpacks it into its rootfs before
running init, and an uncompressed archive costs the guest no decompression (under TCG
every instruction of a decompressor is emulated). The rootfs is taken from the image's
tar itself, so the guest runs the same bytes (same digest) as every container backend.

Added to the rootfs (nothing of it is replaced):
  dev/console                  the kernel opens it for init's stdin/stdout/stderr; the
                               tar's /dev is empty and devtmpfs is mounted only by init
  lib/modules/cvbench/<m>.ko   the modules, flat, loaded by name (see harness/image.py)
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

MODULE_DIR = "lib/modules/cvbench"


class CpioWriter:
    """A minimal newc ("070701") writer: what the kernel's initramfs unpacker reads."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.ino = 0
        self.dirs: set[str] = set()

    def _pad(self, n: int) -> None:
        self.f.write(b"\0" * (-n % 4))

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
            nlink: int = 1) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.f.write(header + encoded)
        self._pad(len(header) + len(encoded))
        self.f.write(data)
        self._pad(len(data))
        if stat.S_ISDIR(mode):
            self.dirs.add(name)

    def mkdirs(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.add(d, stat.S_IFDIR | 0o755, nlink=2)

    def trailer(self) -> None:
        self.add("TRAILER!!!", 0)
        self.f.write(b"\0" * (-self.f.tell() % 512))


def build(tar: Path, modules: Iterable[tuple[str, Path]], target: Path) -> None:
    """Write the initramfs of `tar` with `modules` to `target` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".initramfs-")
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(tar) as tf:
            w = CpioWriter(f)
            for m in tf:
                name = m.name.rstrip("/")
                if m.isdir():
                    w.add(name, stat.S_IFDIR | m.mode, nlink=2)
                elif m.issym():
                    w.add(name, stat.S_IFLNK | 0o777, m.linkname.encode())
                elif m.isfile():
                    src = tf.extractfile(m)
                    assert src is not None
                    w.add(name, stat.S_IFREG | m.mode, src.read())
            w.mkdirs("dev")
            w.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
            w.mkdirs(MODULE_DIR)
            for name, path in modules:
                w.add(f"{MODULE_DIR}/{name}.ko", stat.S_IFREG | 0o644, path.read_bytes())
            w.trailer()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
