"""The guest kernel: Debian's linux-image-amd64, its modules, and an uncompressed vmlinux.

A bzImage decompresses itself inside the guest; under TCG that is emulated instruction
by instruction and costs about as long as the rest of the boot. Debian's vmlinux (the
ELF inside the bzImage) carries a PVH entry note (CONFIG_PVH=y), so QEMU can load it
directly and jump into it in 32-bit protected mode: no decompressor, no real-mode setup.
"""

from __future__ import annotations

import lzma
import os
import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import BackendUnavailable

BOOT = Path("/boot")
MODULES = Path("/lib/modules")
XZ_MAGIC = b"\xfd7zXZ\x00"
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note QEMU looks for


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-56-amd64
    bzimage: Path
    modules: Path

    @property
    def config(self) -> Path:
        return BOOT / f"config-{self.version}"


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def find(version: str | None = None) -> Kernel:
    """The newest installed guest kernel that has its modules (or `version`)."""
    found = []
    for p in BOOT.glob("vmlinuz-*"):
        v = p.name.removeprefix("vmlinuz-")
        if (MODULES / v / "modules.dep").exists() and (version is None or v == version):
            found.append(Kernel(v, p, MODULES / v))
    if not found:
        raise BackendUnavailable(
            "libvirt", "no guest kernel: no /boot/vmlinuz-* with its /lib/modules tree"
            + (f" (wanted {version})" if version else ""),
            "apt-get install linux-image-amd64 (scripts/provision does it)")
    return max(found, key=lambda k: _version_key(k.version))


def extract_vmlinux(bzimage: Path) -> bytes | None:
    """The ELF inside an xz-compressed bzImage, or None if it is not one we can unpack.

    The payload is found by its magic, as the kernel's scripts/extract-vmlinux does.
    """
    data = bzimage.read_bytes()
    at = data.find(XZ_MAGIC)
    if at < 0:
        return None
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
    except lzma.LZMAError:
        return None
    return elf if elf[:4] == b"\x7fELF" and has_pvh_note(elf) else None


def has_pvh_note(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF has the Xen PHYS32_ENTRY note (PVH boot)."""
    if elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    pt_note = 4
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != pt_note:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def boot_image(kernel: Kernel, cache: Path) -> tuple[Path, str]:
    """(the file QEMU loads, "pvh" or "bzimage"): the cached vmlinux where it can be had."""
    target = cache / "kernel" / kernel.version / "vmlinux"
    if target.exists():
        return target, "pvh"
    elf = extract_vmlinux(kernel.bzimage)
    if elf is None:
        return kernel.bzimage, "bzimage"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".vmlinux-")
    with os.fdopen(fd, "wb") as f:
        f.write(elf)
    os.replace(tmp, target)
    return target, "pvh"


def module_files(kernel: Kernel, names: list[str]) -> list[tuple[str, Path]]:
    """(module name, file) for `names` and what they depend on, in load order.

    kmod's `modprobe --show-depends` resolves dependencies for a kernel that is not the
    running one (-S); each module appears once, before the modules that need it.
    """
    out: dict[str, Path] = {}
    for name in names:
        proc = subprocess.run(["modprobe", "-S", kernel.version, "--show-depends", name],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BackendUnavailable(
                "libvirt", f"guest kernel {kernel.version} has no module {name}: "
                f"{proc.stderr.strip()}", "install Debian's linux-image-amd64 and kmod")
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                out.setdefault(path.name.removesuffix(".ko").replace("-", "_"), path)
    return list(out.items())
