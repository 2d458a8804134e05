"""The libvirt backend's pure parts: domain XML, initramfs, mapping of the spec, cmdline."""

from __future__ import annotations

import base64
import io
import json
import shutil
import stat
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.core.errors import UsageError
from runtimes import libvirt as lv
from runtimes.base import InstanceSpec, Mount
from runtimes.vm import domain, initramfs, kernel
from tests.conftest import require

MIB = 1 << 20


def _cfg(**kw: object) -> domain.DomainConfig:
    base: dict[str, object] = dict(
        name="cvbench-abcdef0123-1", domain_type="qemu", machine="pc", memory_kib=262144,
        vcpus=1, kernel="/k", initrd="/i", cmdline="console=ttyS0", console="/run/c.sock")
    base.update(kw)
    return domain.DomainConfig(**base)  # type: ignore[arg-type]


def test_domain_xml_has_what_the_measurements_need() -> None:
    root = ET.fromstring(domain.to_xml(_cfg()))
    assert root.get("type") == "qemu"
    assert root.find("features/acpi") is not None  # else poweroff only halts
    assert root.findtext("on_poweroff") == "destroy"
    assert root.find("devices/serial/source").get("path") == "/run/c.sock"  # type: ignore[union-attr]
    assert root.find("devices/memballoon/stats").get("period") == "1"  # type: ignore[union-attr]
    assert root.find("devices/interface") is None  # network none: no NIC
    assert root.find("cputune") is None


def test_domain_xml_microvm_declares_pcie() -> None:
    text = domain.to_xml(_cfg(machine="microvm"))
    root = ET.fromstring(text)
    assert root.find("devices/controller[@model='pcie-root']") is not None
    args = [a.get("value") for a in root.iter(f"{{{domain.QEMU_NS}}}arg")]
    assert args == ["-machine", "pcie=on"]


def test_domain_xml_disks_quota_network_cpu() -> None:
    cfg = _cfg(quota_us=75000, vcpus=2, network="default", cpu_host=True,
               disabled_cpu_features=("arch-capabilities",),
               disks=(domain.Disk("/v.qcow2", "qcow2", "vda", readonly=True),))
    root = ET.fromstring(domain.to_xml(cfg))
    assert root.findtext("cputune/quota") == "75000"
    d = root.find("devices/disk")
    assert d is not None and d.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert d.find("driver").get("cache") == "none"  # type: ignore[union-attr]
    assert d.find("readonly") is not None
    assert root.find("devices/interface/source").get("network") == "default"  # type: ignore[union-attr]
    assert root.find("cpu/feature").get("name") == "arch-capabilities"  # type: ignore[union-attr]


@pytest.mark.parametrize(("cpus", "expected"), [
    (None, (1, None)), (1.0, (1, None)), (0.5, (1, 50000)), (1.5, (2, 75000)), (2.0, (2, None)),
])
def test_vcpus_and_quota(cpus: float | None, expected: tuple[int, int | None]) -> None:
    assert lv.vcpus_and_quota(cpus) == expected


def test_guest_memory_is_limit_plus_overhead() -> None:
    initrd = 5 * MIB
    mem = lv.guest_memory(256 * MIB, initrd)
    assert mem == 256 * MIB + lv.GUEST_BASE_MIB * MIB + 2 * initrd + 4 * MIB
    assert lv.guest_memory(None, initrd) == mem  # default 256 MiB of workload memory
    assert lv.guest_memory(100 * MIB + 1, 0) % MIB == 0


def _spec(**kw: object) -> InstanceSpec:
    base: dict[str, object] = dict(run_id="abcdef0123", name="cvbench-abcdef0123-1",
                                   argv=("sh", "-c", "echo 'a b'\n"), env={"K": "v=1"})
    base.update(kw)
    return InstanceSpec(**base)  # type: ignore[arg-type]


def _decode(word: str) -> str:
    text = base64.b64decode(word).decode()
    assert text.startswith("x") and text.endswith("x")
    return text[1:-1]


def test_cmdline_carries_argv_and_env_exactly() -> None:
    rt = lv.LibvirtRuntime()
    line = rt.cmdline(_spec(), ["virtio_pci"], ["tmpfs tmpfs size=1,rw /t"])
    words = dict(w.split("=", 1) for w in line.split() if w.startswith("CVBENCH_"))
    assert [_decode(w) for w in words["CVBENCH_ARGV"].split(",")] == ["sh", "-c", "echo 'a b'\n"]
    env = [_decode(w) for w in words["CVBENCH_ENV"].split(",")]
    assert "K=v=1" in env and "HOME=/root" in env
    assert words["CVBENCH_MODULES"] == "virtio_pci"
    assert [_decode(w) for w in words["CVBENCH_MOUNTS"].split(",")] == ["tmpfs tmpfs size=1,rw /t"]
    assert "rdinit=/init" in line and len(line) <= lv.MAX_CMDLINE


def test_cmdline_too_long_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="command line"):
        lv.LibvirtRuntime().cmdline(_spec(argv=("x" * 3000,)), [], [])


def test_mounts_a_vm_cannot_share_are_refused() -> None:
    rt = lv.LibvirtRuntime()
    with pytest.raises(UsageError, match="bind mount"):
        rt._devices(_spec(mounts=(Mount("bind", "/data", "/srv"),)))
    disks, lines, mods = rt._devices(_spec(mounts=(Mount("tmpfs", "/t", size=MIB,
                                                          readonly=True),)))
    assert disks == [] and lines == [f"tmpfs tmpfs size={MIB},ro /t"] and not mods


def test_volume_names_are_checked() -> None:
    rt = lv.LibvirtRuntime()
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(UsageError):
            rt.volume_path(bad, "0123456789")
    assert rt.volume_path("v", "0123456789").name == "cvbench-0123456789-v.raw"
    assert rt.volume_path("v.qcow2", "0123456789").name == "cvbench-0123456789-v.qcow2"
    assert rt.volume_path("cvbench-0123456789-v", "0123456789").name == \
        "cvbench-0123456789-v.raw"


def test_unknown_flavour() -> None:
    with pytest.raises(UsageError):
        lv.LibvirtRuntime("firecracker")
    assert lv.LibvirtRuntime("microvm").name == "libvirt:microvm"


def _tar(tmp: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind in (("bench", "d"), ("bench/init", "f"), ("bin", "d"), ("bin/sh", "l")):
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                t.addfile(info)
            else:
                data = b"#!/bin/sh\necho hi\n"
                info.size, info.mode = len(data), 0o755
                t.addfile(info, io.BytesIO(data))
    path = tmp / "image.tar"
    path.write_bytes(buf.getvalue())
    return path


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    out = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) // 4 * 4
        body = data[pos:pos + filesize]
        pos = (pos + filesize + 3) // 4 * 4
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], body, (f[9], f[10]))


def test_initramfs_holds_the_vm_init_modules_console_and_the_image_under_root(
        tmp_path: Path) -> None:
    mod = tmp_path / "virtio.ko"
    mod.write_bytes(b"\x7fELFmodule")
    target = tmp_path / "out" / "initramfs.cpio"
    initramfs.build(_tar(tmp_path), [("virtio", mod)], target)
    data = target.read_bytes()
    assert len(data) % 512 == 0
    entries = _read_newc(data)
    # the image, untouched, under root/; the VM's PID 1 apart from it
    assert entries["root/bench/init"][1] == b"#!/bin/sh\necho hi\n"
    assert stat.S_ISREG(entries["root/bench/init"][0]) and entries["root/bench/init"][0] & 0o111
    assert stat.S_ISLNK(entries["root/bin/sh"][0]) and entries["root/bin/sh"][1] == b"busybox"
    assert entries["init"][1] == initramfs.VM_INIT.encode() and entries["init"][0] & 0o111
    assert "chroot /root /bench/init" in initramfs.VM_INIT
    mode, _, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    assert entries["lib/modules/cvbench/virtio.ko"][1] == b"\x7fELFmodule"
    # the disk flavour's holds no image: its root is the disk
    initramfs.build(None, [], tmp_path / "disk.cpio")
    disk_entries = _read_newc((tmp_path / "disk.cpio").read_bytes())
    assert "init" in disk_entries and not any(n.startswith("root/") for n in disk_entries)


def test_initramfs_is_read_by_cpio(tmp_path: Path) -> None:
    require("cpio", None if shutil.which("cpio") else "cpio is not installed")
    target = tmp_path / "i.cpio"
    initramfs.build(_tar(tmp_path), [], target)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=target.read_bytes(),
                             capture_output=True, check=True).stdout.decode().split()
    assert {"init", "root/bench/init", "root/bin/sh", "dev/console"} <= set(listing)


def test_pvh_note_detection() -> None:
    assert not kernel.has_pvh_note(b"\x7fELF\x01\x01" + b"\0" * 58)  # 32-bit: no
    # A minimal 64-bit ELF with one PT_NOTE holding the Xen PHYS32_ENTRY note.
    note = (4).to_bytes(4, "little") + (4).to_bytes(4, "little") + \
        kernel.XEN_ELFNOTE_PHYS32_ENTRY.to_bytes(4, "little") + b"Xen\0" + b"\0" * 4
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[32:40] = phoff.to_bytes(8, "little")
    header[54:56] = phentsize.to_bytes(2, "little")
    header[56:58] = (1).to_bytes(2, "little")
    ph = bytearray(phentsize)
    ph[0:4] = (4).to_bytes(4, "little")  # PT_NOTE
    ph[8:16] = (phoff + phentsize).to_bytes(8, "little")
    ph[32:40] = len(note).to_bytes(8, "little")
    assert kernel.has_pvh_note(bytes(header + ph + note))


def test_exit_line_parsing() -> None:
    m = lv.EXIT_LINE.search(b"out\nCVBENCH-EXIT 137 1\r\n")
    assert m is not None and m.group(1) == b"137" and m.group(2) == b"1"


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu tsc constant_tsc hypervisor", 2596118),
    ("fpu tsc constant_tsc aperfmperf", None),  # cpu MHz is the scaled frequency
    ("fpu tsc", None),  # the TSC rate may change
])
def test_tsc_khz_only_when_cpu_mhz_is_the_tsc_rate(flags: str, expected: int | None) -> None:
    text = f"processor\t: 0\ncpu MHz\t\t: 2596.118\nflags\t\t: {flags}\n"
    assert lv.tsc_khz_from_cpuinfo(text) == expected


def test_virtlogd_problem_needs_a_listener_not_a_socket_file(tmp_path: Path) -> None:
    import socket

    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "root"\n')
    sock = tmp_path / "virtlogd-sock"
    # nothing there
    why = lv.virtlogd_problem(sock, conf)
    assert why is not None and str(sock) in why
    # a socket file left by a killed virtlogd: refused
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    assert sock.exists()
    why = lv.virtlogd_problem(sock, conf)
    assert why is not None and "refused" in why
    # a listening virtlogd
    sock.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(sock))
        live.listen(1)
        assert lv.virtlogd_problem(sock, conf) is None
    # stdio_handler = "file": libvirtd does not use virtlogd at all
    conf.write_text('stdio_handler = "file"\n')
    assert lv.virtlogd_problem(tmp_path / "absent", conf) is None


def test_disk_flavour_boots_into_its_overlay_as_vda(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rt = lv.LibvirtRuntime("disk")
    assert (rt.name, rt.machine, rt.root_disk) == ("libvirt:disk", "pc", True)
    assert not lv.LibvirtRuntime().root_disk and not lv.LibvirtRuntime("microvm").root_disk
    monkeypatch.setattr(lv.LibvirtRuntime, "volume_path",
                        lambda self, name, run_id: tmp_path / f"{name}.raw")
    monkeypatch.setattr(lv.disk, "volume", lambda path, size: path)
    root = tmp_path / "root.qcow2"
    disks, lines, mods = rt._devices(_spec(mounts=(Mount("volume", "/data", "v"),)), root)
    assert [(d.target, d.path, d.format) for d in disks] == [
        ("vda", str(root), "qcow2"), ("vdb", str(tmp_path / "v.raw"), "raw")]
    assert lines == ["ext4 /dev/vdb rw /data"] and mods >= lv.EXT4_MODULES
    line = rt.cmdline(_spec(), ["ext4"], [], root="/dev/vda")
    assert "CVBENCH_ROOT=/dev/vda" in line.split()
    assert "CVBENCH_ROOT" not in lv.LibvirtRuntime().cmdline(_spec(), [], [])


def test_overlay_is_backed_by_the_image_disk(tmp_path: Path) -> None:
    require("qemu-img", None if shutil.which("qemu-img") else "qemu-img is not installed")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    top = lv.disk.overlay(base, tmp_path / "top.qcow2")
    out = subprocess.run(["qemu-img", "info", "--output=json", str(top)], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    assert info["backing-filename"] == str(base) and info["virtual-size"] == 64 << 20


def test_cpuset_pins_vcpus_and_qemu_threads() -> None:
    root = ET.fromstring(domain.to_xml(_cfg(cpuset="1")))
    assert root.find("vcpu").get("cpuset") == "1"  # type: ignore[union-attr]
    assert root.find("cputune/emulatorpin").get("cpuset") == "1"  # type: ignore[union-attr]
    assert ET.fromstring(domain.to_xml(_cfg())).find("cputune") is None
