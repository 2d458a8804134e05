"""The libvirt domain of one instance: pure data in (`DomainConfig`), XML text out.

Choices that matter for what is measured:
  <features><acpi/>      without it libvirt passes -no-acpi and the guest's poweroff only
                         halts the CPU: the domain would stay running after the workload.
  on_poweroff/reboot/crash = destroy
                         a guest that powers off, reboots or panics (panic=-1 reboots)
                         ends the transient domain instead of looping.
  serial on a unix socket (QEMU listens, the harness connects): the console carries the
                         ready line, the workload's output and the exit line.
  memballoon virtio + stats period 1 s
                         lets dom.memoryStats() report the guest's own view (unused,
                         available, usable), not only actual/rss.
  channel (virtio-serial org.cvbench.agent, a unix socket; only when commands will be
                         run in the guest): the guest agent's requests and answers.
  no USB controller, no graphics, no video: nothing the workload does not use.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal

Machine = Literal["pc", "microvm"]
AGENT_PORT = "org.cvbench.agent"  # the virtio-serial port the guest agent reads


@dataclass(frozen=True)
class Disk:
    path: str
    format: Literal["raw", "qcow2"]
    target: str  # vda, vdb, ...
    readonly: bool = False
    cache: str = "none"  # "none" needs O_DIRECT on the host file system


@dataclass(frozen=True)
class DomainConfig:
    name: str
    domain_type: Literal["kvm", "qemu"]  # qemu = TCG
    machine: Machine
    memory_kib: int
    vcpus: int
    kernel: str
    initrd: str
    cmdline: str
    console: str  # unix socket path
    emulator: str = "/usr/bin/qemu-system-x86_64"
    quota_us: int | None = None  # per-vCPU CFS quota for fractional cpus, period 100 ms
    cpuset: str | None = None  # host CPUs the vCPUs and QEMU's own threads are pinned to
    disks: tuple[Disk, ...] = ()
    network: str | None = None  # a libvirt network name, or None: no NIC at all
    cpu_host: bool = False  # host-passthrough (KVM only)
    # ... without the features QEMU cannot migrate: a template VM's, which is saved
    # (QEMU blocks the migration stream, and so a save, of a CPU with e.g. invtsc)
    cpu_migratable: bool = False
    agent: str | None = None  # unix socket of the guest agent's virtio-serial port
    disabled_cpu_features: tuple[str, ...] = field(default=())
    mac: str | None = None  # the NIC's MAC (None: libvirt picks one)
    # Guest RAM from this file instead of anonymous memory (libvirt:restore):
    # mapped shared by a template, which writes its RAM there, privately (copy-on-write)
    # by its clones; `incoming`: QEMU starts waiting for the device state (-incoming defer).
    memory_file: str | None = None
    memory_file_shared: bool = False
    incoming: bool = False


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


def to_xml(c: DomainConfig) -> str:
    dom = ET.Element("domain", type=c.domain_type)
    _sub(dom, "name", c.name)
    _sub(dom, "memory", str(c.memory_kib), unit="KiB")
    _sub(dom, "vcpu", str(c.vcpus), **({"cpuset": c.cpuset} if c.cpuset else {}))
    if c.quota_us is not None or c.cpuset:
        tune = _sub(dom, "cputune")
        if c.cpuset:  # QEMU's main loop and I/O threads too: the whole VM on those CPUs
            _sub(tune, "emulatorpin", cpuset=c.cpuset)
        if c.quota_us is not None:
            _sub(tune, "period", "100000")
            _sub(tune, "quota", str(c.quota_us))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=c.machine)
    _sub(os_, "kernel", c.kernel)
    _sub(os_, "initrd", c.initrd)
    _sub(os_, "cmdline", c.cmdline)
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    if c.cpu_host:
        cpu = _sub(dom, "cpu", mode="host-passthrough", check="none",
                   migratable="on" if c.cpu_migratable else "off")
        for f in c.disabled_cpu_features:
            _sub(cpu, "feature", policy="disable", name=f)
    _sub(dom, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    dev = _sub(dom, "devices")
    _sub(dev, "emulator", c.emulator)
    _sub(dev, "controller", type="usb", model="none")
    if c.machine == "microvm":
        # libvirt 9.0 knows no microvm of its own: it assumes every x86 machine has PCI
        # ("No PCI buses available"). QEMU's microvm has an optional PCIe host bridge:
        # declare it to libvirt and turn it on with a command-line passthrough (which
        # libvirt marks the domain "tainted: custom-argv" for). The virtio devices then
        # sit on PCIe, exactly as on `pc`, and the guest needs the same drivers.
        _sub(dev, "controller", type="pci", model="pcie-root")
    for d in c.disks:
        disk = _sub(dev, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=d.format, cache=d.cache,
             **({"io": "native"} if d.cache == "none" else {}))
        _sub(disk, "source", file=d.path)
        _sub(disk, "target", dev=d.target, bus="virtio")
        if d.readonly:
            _sub(disk, "readonly")
    if c.network:
        nic = _sub(dev, "interface", type="network")
        if c.mac:
            _sub(nic, "mac", address=c.mac)
        _sub(nic, "source", network=c.network)
        _sub(nic, "model", type="virtio")
    serial = _sub(dev, "serial", type="unix")
    _sub(serial, "source", mode="bind", path=c.console)
    _sub(serial, "target", port="0")
    if c.agent:
        channel = _sub(dev, "channel", type="unix")
        _sub(channel, "source", mode="bind", path=c.agent)
        _sub(channel, "target", type="virtio", name=AGENT_PORT)
    balloon = _sub(dev, "memballoon", model="virtio")
    _sub(balloon, "stats", period="1")
    if values := qemu_args(c):
        args = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for value in values:
            ET.SubElement(args, f"{{{QEMU_NS}}}arg", value=value)
    return ET.tostring(dom, encoding="unicode")


def qemu_args(c: DomainConfig) -> list[str]:
    """QEMU arguments libvirt has no element for, passed through (libvirt marks such
    domains "tainted: custom-argv"). A memory file replaces the RAM object libvirt makes
    (`-machine memory-backend=`, the later -machine option wins; libvirt's own object
    stays, never touched); libvirt 9.0 has file-backed memory, but in a file of its own
    that it removes when the domain ends, and a clone must map its template's."""
    out = ["-machine", "pcie=on"] if c.machine == "microvm" else []
    if c.memory_file:
        out += ["-object", f"memory-backend-file,id=cvbench-ram,size={c.memory_kib * 1024},"
                f"mem-path={c.memory_file},share={'on' if c.memory_file_shared else 'off'}",
                "-machine", "memory-backend=cvbench-ram"]
    if c.incoming:
        out += ["-incoming", "defer"]
    return out
