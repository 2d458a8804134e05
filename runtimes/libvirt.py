"""`libvirt` (`libvirt:microvm`, `libvirt:disk`): the image booted as a QEMU virtual machine;
`libvirt:restore`, `libvirt:restore-save`: the same cloned from a template VM saved at
the hand-over, by sharing its RAM file or by virDomainSave/restore (LibvirtRestore).

One transient libvirt domain per instance (createXML, so nothing outlives it in
libvirt's configuration), booted directly into the guest kernel: Debian's kernel (its
uncompressed vmlinux entered through PVH where it can be extracted), an initramfs holding
cvbench's VM init (the guest's PID 1: drivers, mounts, network, power-off; see
runtimes/vm/initramfs.py), the kernel modules the guest needs and, unless the root is a
disk, the image's rootfs tar; the workload runs chrooted into the image through the
image's /bench/init, as in every backend. The host reads the serial console from a unix
socket and timestamps the ready line as it arrives; the guest powers off when the
workload exits, after writing `CVBENCH-EXIT <code> <oom kills>` on the console.

Mapping of the InstanceSpec:
  argv, env, workdir, hostname  -> kernel command-line variables (base64-wrapped), which
                                   the kernel hands to init as its environment
  limits.cpus     -> ceil(cpus) vCPUs (1 if unset); a fractional rest becomes a per-vCPU
                     CFS quota (<cputune>), e.g. 1.5 -> 2 vCPUs at 75 ms per 100 ms each
  limits.memory   -> guest RAM = limit (256 MiB if unset) + what the guest kernel needs
                     before the workload gets any: GUEST_BASE_MIB + twice the initramfs
                     (the packed archive and the unpacked rootfs are both in RAM during
                     boot) + limit/64 (the kernel's page structures)
  limits.pids     -> not applied (the guest kernel has its own pid space; metadata says so)
  network none    -> no NIC (the guest's loopback only)
  network bridge  -> a virtio NIC on a libvirt network (CVBENCH_LIBVIRT_NETWORK, default
                     "default"); the guest takes an address by DHCP
  network host    -> refused: a VM cannot share the host's network stack
  network macvlan,-> not applicable: a macvtap (<interface type='direct'>) would be the VM's
          ipvlan     counterpart, and cvbench does not make one
  network_name    -> a NIC on a transient libvirt network of its own, `cvbench-<run
                     id>-<name>` (an isolated /24 of CVBENCH_LIBVIRT_NETWORKS, default
                     10.205.0.0/16, bridge `cvl` + 8 hex digits, made on first use); the
                     guest sends its hostname with its DHCP request, so libvirt's dnsmasq
                     answers it to the others, and mounts a resolv.conf naming that
                     dnsmasq and a hosts file with its own names (hostname, aliases)
                     over the image's, as an engine does; more_networks: refused
                     (NotApplicable: the guest's init configures one NIC)
  agent           -> a virtio-serial port (org.cvbench.agent) on a unix socket, read by
                     cvbench's guest agent: `exec` (healthchecks, a single-VM stack's
                     services) as root or any uid:gid, with busybox's nsenter
  publish         -> an iptables DNAT from the host's address to the guest's (the DHCP
                     lease's), added once the guest is ready (runtimes/_publish.py)
  limits.cpuset   -> <vcpu cpuset=...> and <emulatorpin>: every vCPU and QEMU's own
                     threads pinned to those host CPUs
  mounts tmpfs    -> a tmpfs mounted by the guest (size as asked)
  mounts volume   -> a disk image per volume name under <state>/libvirt/volumes (ext4,
                     created empty on first use, kept across instances like an engine's
                     volume; raw, or qcow2 if the name ends in .qcow2), attached as
                     virtio-blk with cache=none where the host allows O_DIRECT
  mounts bind     -> refused: no host directory is shared into the guest
  user            -> the VM init enters the image's root as uid:gid (busybox nsenter -r
                     -S -G) instead of chroot
  readiness       -> the ready line on the serial console

Root filesystem size: the initramfs root (`libvirt`, `libvirt:microvm`) is unpacked into
guest RAM at every boot and costs twice its size in guest memory; an image tar above
MAX_INITRAMFS_IMAGE (128 MiB) is refused there, with a pointer to `libvirt:disk`, whose
ext4 disk is DISK_SIZE or twice the rootfs, whichever is larger.

Root filesystem: the initramfs, in the guest's RAM (`libvirt`, `libvirt:microvm`), or with
`libvirt:disk` a qcow2 overlay per instance whose backing file is the image's qcow2 disk
(shared by every instance, as an engine shares image layers), attached as virtio-blk vda:
the VM init mounts it as the image's root, and what the instance writes lands
in its overlay, whose allocated size (`qemu-img info`) is the instance's disk footprint.

Phases: create = createXML of a paused domain (QEMU runs, the vCPUs do not) + connecting
to the console; start = resume; ready = the ready line (includes the guest kernel's
boot); exit = the domain has shut off (QEMU gone); remove = the instance's files.

Acceleration: KVM if a short probe boot under KVM reaches the guest's init within
PROBE_TIMEOUT (cached per host kernel, QEMU and guest kernel); otherwise TCG, QEMU's
emulator, and every result says `emulated: true`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import shlex
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

from harness.core import image as image_mod
from harness.core.errors import (
    BackendUnavailable,
    BenchError,
    InstanceError,
    NotApplicable,
    UsageError,
)
from harness.core.hostinfo import emulated_cpu
from harness.core.image import Image
from harness.core.probes import memory
from runtimes import _proc, _publish
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    VLAN_MODES,
    Availability,
    Exit,
    Hooks,
    Instance,
    InstanceSpec,
    Json,
    Leftover,
    Prepared,
    Slot,
    Stats,
    Traits,
    check_publish,
    new_run_id,
    own,
    remove_each,
    rmtree,
    run_of,
    state_dir,
    uid_gid,
)
from runtimes.vm import disk, domain, initramfs, kernel, template

URI = os.environ.get("CVBENCH_LIBVIRT_URI", "qemu:///system")
MIB = 1 << 20
DEFAULT_MEMORY = 256 * MIB
GUEST_BASE_MIB = 64
PROBE_TIMEOUT = 20.0
TEMPLATE_TIMEOUT = 300.0  # a template's boot to the hand-over, under TCG too
EXIT_LINE = re.compile(rb"CVBENCH-EXIT (\d+) ?(\d*)\r?\n")
MAX_INITRAMFS_IMAGE = 128 * MIB
MAX_CMDLINE = 2047  # COMMAND_LINE_SIZE on x86 is 2048 with the NUL
# Every module the initramfs carries (with their dependencies); an instance loads the
# ones its devices need (see _modules).
INITRAMFS_MODULES = ("virtio_pci", "virtio_mmio", "virtio_balloon", "virtio_blk", "virtio_net",
                     "virtio_console", "crc32c_generic", "ext4", "vmw_vsock_virtio_transport")
# What a guest needs to mount an ext4 disk (metadata_csum needs crc32c).
EXT4_MODULES = frozenset({"virtio_blk", "crc32c_generic", "ext4"})
# The guest's command line, besides the workload's variables. console: the ready line and
# output go to the first serial port. loglevel=1: only emergencies interleave with the
# workload's output. panic=-1: a panicking guest reboots at once, which ends the domain
# (on_reboot=destroy). The rest skips work that only costs boot time in a VM: the
# crypto self-tests (~0.3 s under TCG), the timer and TSC checks, and probing three
# more UARTs and the PS/2 controller, which this domain does not have.
BOOT_ARGS = ("console=ttyS0 loglevel=1 panic=-1 rdinit=/init cryptomgr.notests "
             "no_timer_check tsc=reliable 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp")


@cache
def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz, if it is constant (constant_tsc) and reported.

    Under TCG the guest's TSC counts at the host's rate, but the guest cannot measure
    it on `microvm`: there is no PIT, HPET or ACPI PM timer to calibrate against, and a
    failed calibration marks the TSC unstable and leaves the kernel without a clock (the
    boot hangs). Telling the guest the rate (tsc_early_khz) also skips the calibration
    on `pc`. Under KVM the guest has kvmclock and needs none of this.

    `cpu MHz` is the kernel's calibrated cpu_khz (the TSC rate, with constant_tsc) only
    where the CPU has no APERF/MPERF counters; with them it shows the current, scaled
    frequency, and a wrong rate would skew every clock in the guest: then None.
    """
    try:
        return tsc_khz_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def tsc_khz_from_cpuinfo(text: str) -> int | None:
    flags = set(re.findall(r"^flags\s*:(.*)$", text, re.M)[0].split()) if "flags" in text \
        else set()
    if "constant_tsc" not in flags or "aperfmperf" in flags:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    return int(float(m.group(1)) * 1000) if m else None


def boot_args(accel: str) -> str:
    khz = host_tsc_khz() if accel != "kvm" else None
    return BOOT_ARGS + (f" tsc_early_khz={khz}" if khz else "")


def _refuse_vlan(spec: InstanceSpec) -> None:
    """macvlan and ipvlan are container modes here: a VM's counterpart (libvirt's
    <interface type='direct'>, a macvtap on the run's parent, reached through the same
    host shim) is not built."""
    if spec.network in VLAN_MODES:
        raise NotApplicable(f"libvirt: network {spec.network!r} is not offered (a VM's "
                            "counterpart would be a macvtap, which cvbench does not make); "
                            "use none or bridge")


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as e:
        raise BackendUnavailable("libvirt", "the libvirt Python binding is not installed",
                                 "pip install libvirt-python (needs libvirt-dev, "
                                 "pkg-config; scripts/provision installs them)") from e
    # libvirt prints every error to stderr by default; they reach us as exceptions.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _enc(value: str) -> str:
    """One word of the guest's command line: base64 of x<value>x (the guest strips the
    x's, which keeps empty values and trailing newlines through the shell's $(...))."""
    return base64.b64encode(f"x{value}x".encode()).decode()


def _vm_cache() -> Path:
    return image_mod.cache_dir().parent / "vm"


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@cache
def _modules_for(version: str, names: tuple[str, ...]) -> tuple[str, ...]:
    k = kernel.find(version)
    return tuple(n for n, _ in kernel.module_files(k, list(names)))


def guest_memory(limit: int | None, initramfs_size: int) -> int:
    """Bytes of guest RAM for a workload memory limit (see the module's mapping)."""
    work = limit or DEFAULT_MEMORY
    total = work + GUEST_BASE_MIB * MIB + 2 * initramfs_size + work // 64
    return -(-total // MIB) * MIB  # whole MiB


def vcpus_and_quota(cpus: float | None) -> tuple[int, int | None]:
    """(vCPUs, per-vCPU CFS quota in µs per 100 ms, or None when the vCPUs are whole)."""
    if not cpus:
        return 1, None
    n = max(1, math.ceil(cpus))
    return n, None if cpus == n else int(cpus / n * 100_000)


def _env(spec: InstanceSpec) -> dict[str, str]:
    """The workload's environment as the VM init exports it (the image's and the
    scenario's over cvbench's defaults, and the init's own CVBENCH_ names)."""
    return {"PATH": image_mod.PATH_ENV, "HOME": "/root", "HOSTNAME": spec.hostname,
            "CVBENCH_HOSTNAME": spec.hostname, "CVBENCH_WORKDIR": spec.workdir,
            "CVBENCH_NONCE": spec.nonce, **spec.env}


def _flags(spec: InstanceSpec) -> list[str]:
    """The VM init's variables ("NAME=value") for the instance's network, agent, user."""
    words = ["CVBENCH_NET=eth0"] if spec.network == "bridge" else []
    if spec.network_name:
        words.append("CVBENCH_NAMES=" + ",".join(dict.fromkeys((spec.hostname,
                                                                *spec.aliases))))
    if spec.agent:
        words.append("CVBENCH_AGENT=1")
    if uid_gid(spec.user) != (0, 0):
        words.append("CVBENCH_USER={}:{}".format(*uid_gid(spec.user)))
    return words


def _cgroup_usage(pid: int) -> int | None:
    """Memory charged to the cgroup libvirt put QEMU in (v1 memory controller or v2)."""
    cg = memory.memory_cgroup(pid)
    return memory.cgroup_usage(cg) if cg is not None else None


# Whether QEMU may open the disks in a directory with O_DIRECT (cache=none): asked once
# per directory, not on every instance's create.
_direct_io_ok = cache(disk.direct_io_ok)

VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def virtlogd_problem(sock: Path = VIRTLOGD_SOCK, qemu_conf: Path = QEMU_CONF) -> str | None:
    """Why libvirtd's QEMU driver cannot start a domain for want of virtlogd, or None.

    libvirtd hands each QEMU's stdout/stderr to virtlogd (stdio_handler "logd", the
    default) and fails every domain start when virtlogd does not answer; a killed virtlogd
    leaves its socket file behind, so only a connection tells."""
    with contextlib.suppress(OSError):
        if re.search(r'^\s*stdio_handler\s*=\s*"file"', qemu_conf.read_text(), re.M):
            return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(sock))
        except OSError as e:
            return (f"virtlogd does not answer on {sock} ({e.strerror or e}): libvirtd "
                    "would fail every domain start")
    return None


@dataclass(eq=False, slots=True)
class VmInstance(Instance):
    """A transient domain (libvirt's virDomain), its directory and its serial console,
    connected while the vCPUs are still paused."""

    dir: Path | None = None
    cfg: domain.DomainConfig | None = None
    root: Path | None = None  # libvirt:disk: the instance's qcow2 overlay
    dom: Any = None  # libvirt.virDomain (the binding has no type information)
    console: socket.socket | None = None
    out: _proc.Stream | None = None
    exited: bool = False
    agent: socket.socket | None = None
    mac: str | None = None  # a libvirt:restore clone's own MAC (the template's NIC's is shared)
    requests: int = 0
    published: bool = False  # DNAT rules for its published ports may exist

    def stream(self) -> _proc.Stream:
        if self.out is None:
            raise InstanceError(f"{self.spec.name}: no console")
        return self.out


class LibvirtRuntime:
    """QEMU guests through libvirtd; `libvirt:microvm` uses QEMU's microvm machine,
    `libvirt:disk` boots into a per-instance qcow2 overlay disk instead of RAM."""

    flavours: ClassVar[tuple[str, ...]] = ("microvm", "disk", "restore", "restore-save")

    def __new__(cls, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> Self:
        # `libvirt:restore(-save)` is an object of its own class, so that isinstance(rt, Pool)
        # tells it from the flavours that boot every instance (a runtime_checkable
        # Protocol sees methods, never a flavour).
        target = LibvirtRestore if flavour in ("restore", "restore-save") \
            and cls is LibvirtRuntime else cls
        return cast(Self, object.__new__(target))

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        self.hooks = hooks
        if flavour not in (None, *self.flavours):
            raise UsageError(f"unknown libvirt flavour {flavour!r}; known: "
                             f"{', '.join(self.flavours)}")
        self.machine: domain.Machine = "microvm" if flavour == "microvm" else "pc"
        self.root_disk = flavour == "disk"
        self.name = f"libvirt:{flavour}" if flavour else "libvirt"
        self._conn: Any = None
        self._accel: tuple[str, str] | None = None
        self._cpu_disabled: tuple[str, ...] = ()  # host CPU features KVM guests go without

    # --- connection, availability, acceleration ------------------------------------

    def _conn_alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except Exception:
            return False

    def conn(self) -> Any:
        if self._conn is not None and not self._conn_alive():
            # libvirtd restarted under us: the old connection is dead for good, reconnect.
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._conn is None:
            lv = _libvirt()
            try:
                self._conn = lv.open(URI)
            except lv.libvirtError as e:
                raise BackendUnavailable(self.name, f"cannot connect to libvirtd at {URI}: "
                                         f"{e.get_error_message()}",
                                         "run scripts/provision (starts libvirtd)") from e
        return self._conn

    def _versions(self) -> dict[str, str]:
        def dotted(v: int) -> str:
            return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"

        c = self.conn()
        return {"libvirt": dotted(c.getLibVersion()), "qemu": dotted(c.getVersion()),
                "guest_kernel": kernel.find().version}

    def availability(self) -> Availability:
        if (emu := emulated_cpu()) is not None:
            # A VM in an emulated machine is emulated twice (even a KVM the emulator
            # offers runs on emulated hardware): minutes per boot, figures of neither
            return Availability(
                ok=False, reason=f"this host is itself an emulated machine ({emu}): a VM "
                                 "here would be emulation inside emulation",
                fix="run the libvirt backend on a host with hardware virtualisation (KVM)")
        try:
            versions = self._versions()
            if (why_not := virtlogd_problem()) is not None:
                return Availability(ok=False, reason=why_not, versions=versions,
                                    fix="run scripts/provision (starts virtlogd)")
            accel, why = self.accel()
        except BackendUnavailable as e:
            return Availability(ok=False, reason=e.reason, fix=e.fix)
        except BenchError as e:  # the guest image for the probe could not be built
            return Availability(ok=False, reason=f"cannot build the guest: {e}",
                                fix="run scripts/provision (e2fsprogs, qemu-utils, kmod)")
        if not Path(domain.DomainConfig.emulator).exists():
            return Availability(ok=False, reason="qemu-system-x86_64 is not installed",
                                fix="apt-get install qemu-system-x86", versions=versions)
        if self.machine == "microvm" and accel != "kvm" and host_tsc_khz() is None:
            return Availability(
                ok=False, versions=versions,
                reason="microvm under TCG needs the host's TSC rate, which this CPU does "
                       "not report reliably (constant_tsc without aperfmperf): the guest "
                       "has no timer to calibrate its TSC against and hangs",
                fix="use the `libvirt` backend (pc), or a host with working KVM")
        label = "kvm" if accel == "kvm" else "tcg (EMULATED: no working KVM)"
        return Availability(ok=True, versions=versions,
                            details={"accel": label, "why": why, "machine": self.machine})

    def accel(self) -> tuple[str, str]:
        """("kvm" | "tcg", why): a short probe boot decides, cached on disk."""
        if self._accel is None:
            self._accel = self._decide_accel()
        return self._accel

    def _decide_accel(self) -> tuple[str, str]:
        forced = os.environ.get("CVBENCH_LIBVIRT_ACCEL")
        if forced in ("kvm", "tcg"):
            return forced, "forced by CVBENCH_LIBVIRT_ACCEL"
        if not os.path.exists("/dev/kvm"):
            return "tcg", "/dev/kvm does not exist (no KVM module, or no hardware support)"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg", "/dev/kvm is not accessible to this user"
        k = kernel.find()
        st = os.stat("/dev/kvm")
        key = {"host_kernel": os.uname().release, "kvm_dev": st.st_rdev,
               "qemu": self.conn().getVersion(), "guest_kernel": k.version,
               "machine": self.machine, "boot": BOOT_ARGS, "probe": 2}
        path = _vm_cache() / f"accel-{self.machine}.json"
        with _flock(path.with_suffix(".lock")):
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(path.read_text())
                if saved.get("key") == key:
                    self._cpu_disabled = tuple(saved.get("cpu_disabled", ()))
                    return saved["accel"], saved["why"]
            accel, why = self._probe_kvm()
            path.write_text(json.dumps({"key": key, "accel": accel, "why": why,
                                        "cpu_disabled": list(self._cpu_disabled)}))
        return accel, why

    def _probe_kvm(self) -> tuple[str, str]:
        """Boot the base image under KVM with `true` as the workload; KVM works if the
        guest reports the workload's exit within PROBE_TIMEOUT. On hosts that are VMs
        themselves, /dev/kvm may exist and still fail: QEMU cannot set an MSR of the host
        CPU model (then the probe retries without that feature), or the guest crawls and
        dies with "KVM internal error"."""
        prepared = self.prepare(image_mod.build(image_mod.Recipe()))
        failures = []
        for disabled in ((), ("arch-capabilities",)):
            run_id = new_run_id()
            spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-kvmprobe",
                                argv=("true",))
            t0 = time.monotonic()
            inst: Instance | None = None
            cpu = "host-passthrough" + "".join(f",-{f}" for f in disabled)
            # held as a live run, so that a concurrent gc leaves the probe's VM alone
            with self.hooks.hold_run(run_id, "kvm probe"):
                try:
                    inst = self._create(spec, prepared, "kvm", disabled)
                    self.start(inst)
                    ex = self.wait_exit(inst, PROBE_TIMEOUT)
                    if ex.code == 0:
                        self._cpu_disabled = disabled
                        return "kvm", (f"KVM probe boot ({cpu}) reached the workload in "
                                       f"{time.monotonic() - t0:.1f} s")
                    failures.append(f"{cpu}: the probe's workload exited {ex.code}")
                except (InstanceError, UsageError, OSError) as e:
                    log = _qemu_log_tail(spec.name)
                    failures.append(f"{cpu}: " + (f"QEMU: {log}" if log else str(e)[:160]))
                finally:
                    if inst is not None:
                        self.remove(inst)
            if "MSR" not in failures[-1]:
                break  # only a CPU feature QEMU cannot set is worth another try
        return "tcg", "KVM probe boot failed; " + "; ".join(failures)

    def traits(self) -> Traits:
        accel, why = self.accel()
        return Traits(kind="vm", accel=accel, emulated=accel != "kvm",
                      not_applied=frozenset({"limits.pids", "limits.rlimits"}), settings={
                "accel_reason": why, "machine": self.machine,
                "domain": "transient (createXML), paused until start",
                "root": "qcow2 overlay per instance on the image's qcow2 (virtio-blk vda)"
                        if self.root_disk else "the initramfs, in guest RAM",
                "boot_args": boot_args(accel), "console": "serial ttyS0 on a unix socket",
                "memory_mapping": f"guest RAM = limit (default {DEFAULT_MEMORY // MIB} MiB) "
                                  f"+ {GUEST_BASE_MIB} MiB + 2 x initramfs + limit/64",
                "vcpus": "ceil(cpus), fractional rest as a CFS quota", **self._versions()})

    # --- images ----------------------------------------------------------------------

    def prepare(self, image: Image) -> Prepared:
        """Kernel, initramfs and the rootfs as raw and qcow2 disks, cached by (image
        digest, guest kernel version)."""
        if not self.root_disk and image.size > MAX_INITRAMFS_IMAGE:
            raise UsageError(
                f"{self.name}: the image ({image.size / MIB:.0f} MiB) is above the "
                f"{MAX_INITRAMFS_IMAGE // MIB} MiB this backend unpacks into guest RAM at "
                "every boot; use libvirt:disk (the image as a qcow2 root disk)")
        k = kernel.find()
        cache = _vm_cache()
        vmlinux, boot = kernel.boot_image(k, cache)
        d = cache / image.digest / k.version
        with _flock(d.parent / f".{k.version}.lock"):
            # The disk flavour's initramfs holds no image (its root is the disk).
            ird = d / f"initramfs{'-disk' if self.root_disk else ''}-{initramfs.VERSION}.cpio"
            raw, qcow = d / "rootfs.raw", d / "rootfs.qcow2"
            if not ird.exists():
                initramfs.build(None if self.root_disk else image.tar,
                                kernel.module_files(k, list(INITRAMFS_MODULES)), ird)
            if not raw.exists():
                disk.mkfs(raw, max(disk.DISK_SIZE, 2 * image.size), source=image.rootfs)
            if not qcow.exists():
                disk.to_qcow2(raw, qcow)
        disks = {"raw": disk.info(raw), "qcow2": disk.info(qcow)}
        # "image" is the VM image as stored, allocated bytes as `qemu-img info` gives its
        # disk size: the raw ext4 root disk, or for libvirt:disk the qcow2 copy its
        # instances' overlays are backed by. The other disk, the kernel and the initramfs
        # (what the guest boots from) are listed beside it.
        used, other = ("qcow2", "raw") if self.root_disk else ("raw", "qcow2")
        return Prepared(
            image=image, backend=self.name, ref=str(ird),
            footprint={"image": disks[used]["actual_size"],
                       "image.virtual": disks[used]["virtual_size"],
                       other: disks[other]["actual_size"],
                       f"{other}.virtual": disks[other]["virtual_size"],
                       "initramfs": ird.stat().st_size, "kernel": vmlinux.stat().st_size},
            details={"kernel": str(vmlinux), "kernel_version": k.version, "boot": boot,
                     "initramfs": str(ird), "disk_raw": str(raw), "disk_qcow2": str(qcow),
                     "disks": disks})

    # --- instances -------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return state_dir() / "libvirt" / name

    def volume_path(self, name: str, run_id: str) -> Path:
        """The disk image of volume `name` of run `run_id`: kept across the run's
        instances, named with the run's prefix so gc removes it once the run is over."""
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"libvirt: invalid volume name {name!r}")
        own = f"{PREFIX}{run_id}-"
        file = name if name.endswith((".qcow2", ".raw")) else f"{name}.raw"
        return state_dir() / "libvirt" / "volumes" / (file if file.startswith(own)
                                                       else own + file)

    def _devices(self, spec: InstanceSpec, root: Path | None = None,
                 ) -> tuple[list[domain.Disk], list[str], set[str]]:
        """Disks, guest mount lines and the extra modules the spec's mounts need; `root`
        (an instance's overlay, libvirt:disk) comes first, as vda."""
        disks: list[domain.Disk] = []
        lines: list[str] = []
        mods: set[str] = set()
        cache_mode: str | None = None
        if root is not None:
            cache_mode = "none" if _direct_io_ok(root.parent.parent) else "writeback"
            disks.append(domain.Disk(str(root), "qcow2", "vda", False, cache_mode))
            mods |= EXT4_MODULES
        for m in spec.mounts:
            if not m.target.startswith("/") or any(c.isspace() for c in m.target):
                raise UsageError(f"libvirt: mount target {m.target!r} must be an absolute "
                                 "path without spaces")
            if m.type == "bind":
                raise NotApplicable(f"libvirt: a bind mount ({m.source} -> {m.target}) cannot "
                                 "be shared into a VM (no host directory is exported to the "
                                 "guest); use a volume (a disk image) or a tmpfs")
            if m.type == "tmpfs":
                opts = ",".join([*([f"size={m.size}"] if m.size else []),
                                 "ro" if m.readonly else "rw"])
                lines.append(f"tmpfs tmpfs {opts} {m.target}")
                continue
            path = disk.volume(self.volume_path(m.source or "", spec.run_id),
                               m.size or disk.DISK_SIZE)
            if cache_mode is None:
                cache_mode = "none" if _direct_io_ok(path.parent) else "writeback"
            dev = f"vd{chr(ord('a') + len(disks))}"
            disks.append(domain.Disk(str(path), "qcow2" if path.suffix == ".qcow2" else "raw",
                                     dev, m.readonly, cache_mode))
            lines.append(f"ext4 /dev/{dev} {'ro' if m.readonly else 'rw'} {m.target}")
            mods |= EXT4_MODULES
        return disks, lines, mods

    def cmdline(self, spec: InstanceSpec, modules: Sequence[str], mounts: Sequence[str],
                accel: str = "tcg", root: str | None = None, template: bool = False) -> str:
        """The guest's command line: the boot's own words, then the instance's variables
        (instance_vars); a template's (libvirt:restore) has none of those but its nonce:
        its clones get theirs in the hand-over."""
        words = [boot_args(accel), "CVBENCH_VM=1", "CVBENCH_MODULES=" + ",".join(modules)]
        if mounts:
            words.append("CVBENCH_MOUNTS=" + ",".join(_enc(m) for m in mounts))
        if root is not None:
            words.append(f"CVBENCH_ROOT={root}")
        words += [f"CVBENCH_NONCE={spec.nonce}", "CVBENCH_TEMPLATE=1"] if template \
            else self.instance_vars(spec)
        line = " ".join(words)
        if len(line) > MAX_CMDLINE:
            raise UsageError(f"libvirt: argv, env and mounts take {len(line)} bytes of the "
                             f"guest kernel's command line; the limit is {MAX_CMDLINE}")
        return line

    @staticmethod
    def instance_vars(spec: InstanceSpec) -> list[str]:
        """The VM init's variables ("NAME=value") of one instance: its workload (argv,
        env, nonce, user), names and network."""
        return [f"CVBENCH_NONCE={spec.nonce}",
                "CVBENCH_ENV=" + ",".join(_enc(f"{k}={v}") for k, v in _env(spec).items()),
                "CVBENCH_ARGV=" + ",".join(_enc(a) for a in spec.argv), *_flags(spec)]

    @staticmethod
    def handover_script(spec: InstanceSpec) -> str:
        """A restored clone's instance_vars as the shell text its VM init evals: every
        value quoted for the shell, argv as CVBENCH_ARGS (words the init `set`s), so
        that the guest decodes the whole once instead of running two processes a word."""
        words = [f"CVBENCH_NONCE={spec.nonce}", *_flags(spec),
                 *(f"{k}={v}" for k, v in _env(spec).items())]
        return "".join(f"export {shlex.quote(w)}\n" for w in words) + \
            f"CVBENCH_ARGS={shlex.quote(shlex.join(spec.argv))}\n"

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        return self._create(spec, prepared, self.accel()[0], self._cpu_disabled)

    def _create(self, spec: InstanceSpec, prepared: Prepared, accel: str,
                cpu_disabled: tuple[str, ...] = (), template: bool = False,
                memory_file: Path | None = None) -> VmInstance:
        """A paused domain of `spec`; a `template` (libvirt:restore) boots up to the
        hand-over, with the agent's port (the hand-over's way in) whatever spec.agent,
        and its RAM in `memory_file` (mapped shared) if given."""
        lv = _libvirt()
        if spec.network == "host":
            raise NotApplicable("libvirt: network 'host' is impossible for a VM (it has its own "
                             "kernel and network stack); use none or bridge")
        _refuse_vlan(spec)
        check_publish(self.name, spec)
        if spec.more_networks:
            # The guest's init configures one NIC (eth0, by DHCP) and one resolver: a
            # second network would be a NIC without an address or names.
            raise NotApplicable("libvirt: a VM joins one network here (the guest's init "
                                "configures eth0 alone); this instance asks for "
                                f"{1 + len(spec.more_networks)}")
        idir = self._dir(spec.name)
        idir.mkdir(parents=True)
        root: Path | None = None
        try:
            if self.root_disk:
                root = disk.overlay(Path(str(prepared.details["disk_qcow2"])), idir / "root.qcow2")
            disks, mount_lines, mods = self._devices(spec, root)
        except BaseException:
            shutil.rmtree(idir, ignore_errors=True)
            raise
        net = None
        if spec.network == "bridge":
            net = self._private(spec.run_id, spec.network_name) if spec.network_name \
                else self._network()
            mods.add("virtio_net")
        if spec.agent or template:
            mods.add("virtio_console")
        det = prepared.details
        modules = _modules_for(str(det["kernel_version"]),
                               ("virtio_pci", "virtio_balloon", *sorted(mods)))
        vcpus, quota = vcpus_and_quota(spec.limits.cpus)
        console = idir / "console.sock"
        cfg = domain.DomainConfig(
            name=spec.name, domain_type="kvm" if accel == "kvm" else "qemu",
            machine=self.machine,
            memory_kib=guest_memory(spec.limits.memory,
                                    int(prepared.footprint["initramfs"])) // 1024,
            vcpus=vcpus, quota_us=quota, cpuset=spec.limits.cpuset, kernel=str(det["kernel"]),
            initrd=str(det["initramfs"]),
            cmdline=self.cmdline(spec, modules, mount_lines, accel,
                                 "/dev/vda" if root is not None else None, template),
            console=str(console),
            disks=tuple(disks), network=net, cpu_host=accel == "kvm", cpu_migratable=template,
            disabled_cpu_features=cpu_disabled,
            agent=str(idir / "agent.sock") if spec.agent or template else None,
            memory_file=str(memory_file) if memory_file else None,
            memory_file_shared=memory_file is not None)
        inst = VmInstance(spec=spec, prepared=prepared, dir=idir, cfg=cfg, root=root)
        try:
            try:
                inst.dom = self.conn().createXML(domain.to_xml(cfg),
                                                 lv.VIR_DOMAIN_START_PAUSED)
            except lv.libvirtError as e:
                raise InstanceError(f"libvirt: cannot create {spec.name}: "
                                    f"{e.get_error_message()}") from e
            self._attach(inst)
        except BaseException:
            self.remove(inst)
            raise
        return inst

    def _attach(self, inst: VmInstance) -> None:
        """Connect to a new paused domain's console (and agent port) and find its QEMU.
        QEMU listens on the socket without waiting for a client: whatever the guest
        writes before we connect is lost, so connect while the vCPUs are paused."""
        assert inst.cfg is not None
        sock = inst.console = socket.socket(socket.AF_UNIX,
                                            socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.connect(inst.cfg.console)
        sock.setblocking(False)
        inst.out = _proc.Stream(sock.fileno(), inst.spec.capture)
        if inst.cfg.agent:
            inst.agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            inst.agent.connect(inst.cfg.agent)
        pid = _qemu_pid(inst.spec.name)
        inst.pids = [pid] if pid else []

    def _network(self) -> str:
        """The libvirt network NICs join; started if defined but inactive."""
        lv = _libvirt()
        name = os.environ.get("CVBENCH_LIBVIRT_NETWORK", "default")
        try:
            net = self.conn().networkLookupByName(name)
            if not net.isActive():
                net.create()
        except lv.libvirtError as e:
            raise UsageError(f"libvirt: network {name!r} is not usable: "
                             f"{e.get_error_message()} (set CVBENCH_LIBVIRT_NETWORK)") from e
        return name

    def _private(self, run_id: str, name: str) -> str:
        """The run's network `name` (see the module's mapping), made on first use."""
        lv = _libvirt()
        full = f"{PREFIX}{run_id}-{name}"
        with _flock(state_dir() / "locks" / "libvirt-networks.lock"):
            try:
                self.conn().networkLookupByName(full)
                return full
            except lv.libvirtError:
                pass
            used = set()
            for n in self.conn().listAllNetworks():
                used.update(re.findall(r"<ip address='([\d.]+)'", n.XMLDesc()))
            pool = ipaddress.IPv4Network(os.environ.get("CVBENCH_LIBVIRT_NETWORKS",
                                                        "10.205.0.0/16"))
            net = next((n for n in pool.subnets(new_prefix=24)
                        if not any(ipaddress.IPv4Address(u) in n for u in used)), None)
            if net is None:
                raise InstanceError(f"libvirt: no free /24 left in {pool} for a network")
            hosts = list(net.hosts())
            xml = (f"<network><name>{full}</name><bridge name='cvl"
                   f"{hashlib.sha1(full.encode()).hexdigest()[:8]}' stp='off' delay='0'/>"
                   f"<ip address='{hosts[0]}' netmask='{net.netmask}'><dhcp><range "
                   f"start='{hosts[1]}' end='{hosts[-1]}'/></dhcp></ip></network>")
            try:
                self.conn().networkCreateXML(xml)
            except lv.libvirtError as e:
                raise InstanceError(f"libvirt: cannot create network {full}: "
                                    f"{e.get_error_message()}") from e
        return full

    def remove_network(self, run_id: str, name: str) -> None:
        lv = _libvirt()
        try:
            self.conn().networkLookupByName(f"{PREFIX}{run_id}-{name}").destroy()
        except lv.libvirtError as e:
            if not _gone(e):
                raise InstanceError(f"libvirt: cannot remove network {name}: "
                                    f"{e.get_error_message()}") from e

    def exec(self, inst: Instance, argv: Sequence[str], *, user: str = "",
             env: Mapping[str, str] | None = None, workdir: str = "/",
             timeout: float = 30.0, detach: bool = False) -> Exit:
        """One request to the guest agent (see runtimes/vm/initramfs.py); env None: the
        workload's defaults (PATH, HOME) and its env."""
        inst = own(inst, VmInstance)
        if inst.agent is None or not inst.spec.agent:  # (a clone's port: its hand-over)
            raise InstanceError(f"libvirt: {inst.spec.name} runs no guest agent "
                                "(InstanceSpec.agent)")
        inst.requests += 1
        rid = inst.requests
        full = {"PATH": image_mod.PATH_ENV, "HOME": "/root",
                **(inst.spec.env if env is None else env)}
        uid, gid = uid_gid(user)
        line = " ".join([str(rid), "1" if detach else "0", str(uid), str(gid),
                         str(max(1, math.ceil(timeout))), _enc(workdir),
                         ",".join(_enc(f"{k}={v}") for k, v in full.items()) or "-",
                         ",".join(_enc(a) for a in argv)])
        sock = inst.agent
        deadline = time.monotonic() + timeout + 5  # (the guest kills it at the timeout)
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(line.encode() + b"\n")
            buf = b""
            while True:
                while b"\n" not in buf:
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise InstanceError(f"libvirt: the guest agent of {inst.spec.name} "
                                            "closed its port")
                    buf += chunk
                reply, _, buf = buf.partition(b"\n")
                got, code, out = [*reply.decode().split(" ", 2), "", ""][:3]
                if got == str(rid):
                    break
        except TimeoutError:
            raise InstanceError(f"libvirt: exec {argv[0]}: no answer from the guest agent "
                                f"within {timeout:g} s") from None
        except OSError as e:
            raise InstanceError(f"libvirt: exec {argv[0]}: {e}") from e
        text = out.removesuffix("-")
        code_n = int(code)
        if code_n == 137 and not detach:  # busybox timeout's SIGKILL
            raise InstanceError(f"libvirt: exec {argv[0]}: still running after {timeout:g} s")
        return Exit(code=code_n, t_ns=time.monotonic_ns(),
                    stdout=base64.b64decode(text) if text else b"")

    def start(self, inst: Instance) -> None:
        lv = _libvirt()
        try:
            own(inst, VmInstance).dom.resume()
        except lv.libvirtError as e:
            raise InstanceError(f"libvirt: cannot resume {inst.spec.name}: "
                                f"{e.get_error_message()}") from e

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        vm = own(inst, VmInstance)
        t = _proc.ready(inst, vm.stream(), timeout)
        if inst.spec.publish:  # the guest's address is its DHCP lease: known by now
            addr = self.address(inst)
            if addr is None:
                raise InstanceError(f"libvirt: {inst.spec.name} has no address to "
                                    "forward its published ports to")
            vm.published = True
            _publish.publish(self.name, inst.spec.name, addr, inst.spec.publish)
        return t

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        out = own(inst, VmInstance).stream()
        return _proc.wait_match([out], pattern, time.monotonic() + timeout)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        """Read the console to its end (QEMU closes it when it exits), then wait until
        libvirt reports the domain shut off: that moment is the exit."""
        inst = own(inst, VmInstance)
        out = inst.stream()
        deadline = time.monotonic() + timeout
        while not out.eof:
            left = deadline - time.monotonic()
            if _proc.readable(out.fd, max(0.0, left)):
                out.read_some()
            elif left <= 0:  # (timeout 0: one look, a poll)
                raise InstanceError(f"the guest did not power off within {timeout:g} s "
                                    f"(console: {bytes(out.data[-300:])!r})")
        while self._alive(inst):
            if time.monotonic() > deadline:
                raise InstanceError("QEMU closed the console but the domain is still running")
            time.sleep(0.001)
        t_exit = time.monotonic_ns()
        inst.exited = True
        text = bytes(out.data).replace(b"\r\n", b"\n")
        m = EXIT_LINE.search(text)
        if m is None:
            raise InstanceError("the guest ended without reporting the workload's exit "
                                f"(console: {text[-400:]!r})")
        body = text[:m.start()]
        ready = inst.spec.ready_line + b"\n"
        if body.startswith(ready):  # readiness "exit": wait_ready did not consume it
            body = body[len(ready):]
        return Exit(code=int(m.group(1)), t_ns=t_exit,
                    oom_killed=bool(m.group(2) and int(m.group(2)) > 0), stdout=body)

    def _alive(self, inst: VmInstance) -> bool:
        """True while the domain exists and is not shut off (a transient domain is gone
        from libvirt once it has shut off)."""
        lv = _libvirt()
        try:
            state, _ = inst.dom.state()
        except lv.libvirtError:
            return False
        return bool(state != lv.VIR_DOMAIN_SHUTOFF)

    def stats(self, inst: Instance) -> Stats:
        inst = own(inst, VmInstance)
        pids = [p for p in inst.pids if os.path.exists(f"/proc/{p}")]
        m = memory.processes_memory(pids)
        guest: dict[str, int] = {}
        with contextlib.suppress(Exception):
            # KiB from the balloon driver: actual (RAM given), rss (QEMU's), unused,
            # available, usable (the guest's own view, once virtio_balloon is loaded).
            guest = {k: v * 1024 for k, v in inst.dom.memoryStats().items()
                     if k != "last_update"}
        view: dict[str, Json] = {"guest_total": guest["available"],  # the guest's MemTotal
                "guest_used": guest["available"] - guest["usable"]} \
            if "available" in guest and "usable" in guest else {}
        return Stats(pids=tuple(pids), pss=m.pss, uss=m.uss, rss=m.rss,
                     cgroup=_cgroup_usage(pids[0]) if pids else None,
                     extra={"guest": dict(guest),
                            "guest_ram": inst.cfg.memory_kib * 1024 if inst.cfg else None,
                            **view})

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        """Destroy the domain: the guest has no ACPI power-button handler (its PID 1 is
        the workload's shell), so a graceful shutdown would only wait `grace` for nothing."""
        inst = own(inst, VmInstance)
        if inst.dom is None or inst.exited:
            return
        lv = _libvirt()
        try:
            inst.dom.destroy()
        except lv.libvirtError as e:
            if not _gone(e):  # the domain may still run: not stopped, and not removed
                raise InstanceError(f"libvirt: cannot destroy {inst.spec.name}: "
                                    f"{e.get_error_message()}") from e
        inst.exited = True

    def daemons(self) -> dict[str, list[int]]:
        """libvirtd (or the modular virtqemud) and virtlogd (QEMU's console log), each by
        the process on its socket, its unit's MainPID or its pid file; virtlockd where
        it runs (only with a lock manager configured)."""
        out: dict[str, list[int]] = {}
        for name, alt, needed in (("libvirtd", "virtqemud", True), ("virtlogd", "", True),
                                  ("virtlockd", "", False)):
            names = [n for n in (name, alt) if n]
            pid = memory.daemon_pid(
                [f"/run/libvirt/{'libvirt' if n == 'libvirtd' else n}-sock" for n in names],
                [f"{n}.service" for n in names], [f"/run/{n}.pid" for n in names])
            if pid or needed:
                out[name] = [pid] if pid else []
        return out

    def disk_usage(self, inst: Instance) -> int | None:
        """libvirt:disk: the allocated size of the instance's overlay (`qemu-img info`).
        Otherwise None: the guest's root is its initramfs, in RAM; volumes are shared."""
        root = own(inst, VmInstance).root
        return None if root is None else int(disk.info(root)["actual_size"])

    def address(self, inst: Instance) -> str | None:
        if inst.spec.network != "bridge":
            return None
        lv = _libvirt()
        deadline = time.monotonic() + 60
        while True:
            try:
                ifs = own(inst, VmInstance).dom.interfaceAddresses(
                    lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
            except lv.libvirtError:
                ifs = {}
            for i in ifs.values():
                for a in i.get("addrs") or []:
                    if a["type"] == lv.VIR_IP_ADDR_TYPE_IPV4:
                        return str(a["addr"])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def remove(self, inst: Instance) -> None:
        self.stop(inst, grace=0)
        inst = own(inst, VmInstance)
        if inst.console is not None:
            inst.console.close()
            inst.console = None
        if inst.agent is not None:
            inst.agent.close()
            inst.agent = None
        if inst.published:
            _publish.unpublish(self.name, inst.spec.name)
            inst.published = False
        if inst.dir is not None:
            rmtree(inst.dir)
            inst.dir = None

    # --- leftovers -------------------------------------------------------------------

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        found = [Leftover(self.name, "domain", d.name(), run_of(d.name()))
                 for d in self.conn().listAllDomains()
                 if d.name().startswith(PREFIX) and run_of(d.name()) not in live_runs]
        found += [Leftover(self.name, "network", n.name(), run_of(n.name()))
                  for n in self.conn().listAllNetworks()
                  if n.name().startswith(PREFIX) and run_of(n.name()) not in live_runs]
        root = state_dir() / "libvirt"
        for d in (root, root / "volumes"):
            if d.is_dir():
                found += [Leftover(self.name, _kind(p), str(p), run_of(p.name))
                          for p in sorted(d.iterdir())
                          if p.name.startswith(PREFIX) and run_of(p.name) not in live_runs]
        found += [Leftover(self.name, "dnat", n, run_of(n)) for n in _publish.rules(self.name)
                  if run_of(n) not in live_runs]
        return found

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        lv = _libvirt()

        def remove(item: Leftover) -> None:
            try:
                if item.kind == "domain":
                    dom = self.conn().lookupByName(item.name)
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefine()
                elif item.kind == "network":
                    self.conn().networkLookupByName(item.name).destroy()
            except lv.libvirtError as e:
                if not _gone(e):  # gone meanwhile: removed; else it is still there
                    raise InstanceError(e.get_error_message()) from e
            if item.kind in ("volume", "template"):
                Path(item.name).unlink(missing_ok=True)
            elif item.kind == "dnat":
                _publish.unpublish(self.name, item.name)
            elif item.kind == "dir":
                rmtree(item.name)

        return remove_each(self.name, self.leftovers(live_runs), remove)


@dataclass(eq=False)
class _Template:
    """The pool of libvirt:restore(-save): one template VM of `spec`, booted to the
    hand-over and saved: to `files[0]` (virDomainSave's file; with shared memory, QEMU's
    device state, then the RAM file `files[1]`). `cfg` once saved."""

    spec: InstanceSpec
    prepared: Prepared
    size: int
    files: tuple[Path, ...]
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    booting: VmInstance | None = None
    cfg: domain.DomainConfig | None = None  # the template's domain, once it is saved
    image: template.SaveImage | None = None  # virDomainSave's file, parsed
    error: str | None = None
    # libvirt:restore: the prepared clones, paused domains waiting for the state, and
    # what the filler waits on (a clone taken, or the pool drained)
    vms: list[VmInstance] = field(default_factory=list)
    wake: threading.Condition = field(default_factory=threading.Condition)


class LibvirtRestore(LibvirtRuntime):
    """`libvirt:restore`, `libvirt:restore-save`: VMs cloned from a template VM saved
    at the hand-over (the Pool protocol).

    fill() boots one template VM per image and spec (in the background, outside any
    timed path) until its VM init waits for the hand-over on the agent's port, and
    saves it there, to files named `<state>/libvirt/cvbench-<run id>-template-<n>.*`;
    the template domain is gone once saved.

    `libvirt:restore` (the default) is Kata Containers' VM templating: the template's
    RAM is a file (`.mem`) it maps shared, QEMU's migration capability x-ignore-shared
    leaves the RAM out of the device state it writes (`.stream`, over QMP), and a clone
    is a new domain whose QEMU maps that file privately (copy-on-write) and loads the
    device state (`-incoming defer`, then migrate-incoming over QMP): its start reads
    about 1 MiB instead of the guest's memory, and it reads only the pages it touches
    and shares the rest. As Kata's VM cache, the pool keeps `size` such clones prepared
    (paused, their QEMU started, waiting for the state; `_keep_prepared`): create()
    takes one and loads the state, and the filler prepares the next; with none left, the
    clone is made on the spot (Instance.warm "template"). That needs QEMU command-line
    passthrough and QMP commands behind libvirt's back (the domain is marked tainted,
    libvirt's own RAM object goes unused, and x-ignore-shared is an experimental
    capability). `libvirt:restore-save` uses libvirt's API only: it saves with
    virDomainSave (`.save`), and create() restores a clone from that file
    (virDomainRestoreFlags), paused, under the clone's own name, UUID, MAC and sockets
    (runtimes/vm/template.py): every clone reads the template's memory (all of it the
    guest ever wrote) and holds its own copy.

    start() resumes a clone and hands over what clones must not share and then the
    workload's argv, env, nonce and user (runtimes/vm/initramfs.py): new randomness
    (host bytes credited with RNDADDENTROPY, then RNDRESEEDCRNG), the host's clock, its
    own MAC (then its own DHCP lease, so its own IP), a new /etc/machine-id (bind-mounted
    over the image's) and its hostname. Ready is the workload's ready line, as for a
    cold boot. A template is not used up: every create() while it is saved is a clone
    (`ready()` is the pool's size then), and one before it is saved, or for a spec the
    template does not fit (another image, limits, network or mounts), is a cold boot
    (Instance.warm "cold"). Volumes are refused: the template has their filesystem
    mounted, and each clone would resume with its own stale view of a disk the others
    write.
    """

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        super().__init__(flavour, hooks=hooks)
        self.shared = flavour != "restore-save"
        self._pool: _Template | None = None
        self._lock = threading.Lock()

    def availability(self) -> Availability:
        a = super().availability()
        if a.ok and self.shared and self.conn().getLibVersion() < 8_002_000:
            # virDomainQemuMonitorCommandWithFiles: the state file goes to QEMU as an fd
            return dataclasses.replace(a, ok=False, reason=f"{self.name} needs "
                                       "libvirt 8.2 or later (QMP commands with files)",
                                       fix="use libvirt:restore-save (virDomainSave)")
        return a

    def traits(self) -> Traits:
        t = super().traits()
        start = ("cloned from a template VM whose RAM file each clone maps copy-on-write "
                 "(QEMU x-ignore-shared, by command-line passthrough and QMP), the pool's "
                 "clones prepared ahead (paused, waiting for the device state)" if self.shared
                 else "restored from a template VM's memory saved at the hand-over "
                 "(virDomainSave, virDomainRestoreFlags through a FIFO per clone)")
        return dataclasses.replace(t, settings={
            **t.settings, "start": start,
            "clone": "new randomness (RNDADDENTROPY + RNDRESEEDCRNG), clock, MAC and "
                     "DHCP lease, machine-id and hostname handed over before the workload"})

    # --- the pool -----------------------------------------------------------------

    def fill(self, spec: InstanceSpec, prepared: Prepared, size: int) -> None:
        self.drain()
        if size <= 0:
            return
        self._refuse(spec)
        self.accel()  # decided here, once, not in the filling thread
        name = f"{PREFIX}{spec.run_id}-template-{secrets.token_hex(3)}"
        root = state_dir() / "libvirt"
        files = (root / f"{name}.stream", root / f"{name}.mem") if self.shared \
            else (root / f"{name}.save",)
        t = _Template(spec=spec, prepared=prepared, size=size, files=files)
        t.thread = threading.Thread(target=self._make_template, args=(t, name),
                                    name=f"template {name}", daemon=True)
        with self._lock:
            self._pool = t
        t.thread.start()

    def _make_template(self, t: _Template, name: str) -> None:
        """Boot the template to the hand-over and save it (the fill's thread)."""
        nonce = secrets.token_hex(8)
        tspec = dataclasses.replace(t.spec, name=name, nonce=nonce, argv=(), capture=False,
                                    publish=())
        inst: VmInstance | None = None
        try:
            accel = self.accel()[0]
            t.files[0].parent.mkdir(parents=True, exist_ok=True)
            inst = t.booting = self._create(tspec, t.prepared, accel, self._cpu_disabled,
                                            template=True,
                                            memory_file=t.files[1] if self.shared else None)
            if t.stop.is_set():
                return
            self.start(inst)
            _proc.wait_line(inst.stream(), b"CVBENCH-TEMPLATE " + nonce.encode(),
                            time.monotonic() + TEMPLATE_TIMEOUT)
            # Saved with the console and agent connected: a port whose host side closed
            # would answer the guest's read with EOF, in the template and its clones.
            if self.shared:
                inst.dom.suspend()
                _migrate(inst.dom, "migrate", t.files[0], os.O_WRONLY | os.O_CREAT)
                self.stop(inst)
            else:
                inst.dom.save(str(t.files[0]))
                inst.exited = True  # saving ends the domain
                t.image = template.SaveImage.read(t.files[0])
            t.cfg = inst.cfg
        except Exception as e:  # a failed fill is reported by ready(), not lost here
            t.error = f"{type(e).__name__}: {e}"[:500]
        finally:
            t.booting = None
            if inst is not None:
                with contextlib.suppress(Exception):
                    self.remove(inst)
            if t.cfg is None:
                for f in t.files:
                    f.unlink(missing_ok=True)
        if self.shared and t.cfg is not None:
            self._keep_prepared(t)

    def _keep_prepared(self, t: _Template) -> None:
        """Keep `t.size` clones prepared (the fill's thread, once the template is
        saved), as Kata's VM cache does: each a paused domain of its own whose QEMU
        maps the template's RAM file and waits for the device state, which create()
        then loads. Refilled as they are taken, until the pool is drained.

        The domains are made through a libvirt connection of the filler's own: a
        domain's start holds up every other call on its connection (diagnosed: a loop
        of QMP calls on another domain made 11 calls during one createXML on a shared
        connection, 355 on its own), and the requests' calls must not wait for it."""
        conn = _libvirt().open(URI)
        try:
            self._fill_prepared(t, conn)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _fill_prepared(self, t: _Template, conn: Any) -> None:
        while True:
            with t.wake:
                while len(t.vms) >= t.size and not t.stop.is_set():
                    t.wake.wait()
                if t.stop.is_set():
                    return
            spec = dataclasses.replace(t.spec, name=f"{PREFIX}{t.spec.run_id}-clone-"
                                       f"{secrets.token_hex(4)}")
            try:
                vm = self._new_clone(t, spec, t.prepared, conn)
            except Exception as e:  # reported by ready(), not lost here
                t.error = f"a prepared clone: {type(e).__name__}: {e}"[:500]
                return
            try:  # its later calls (the request's) on the runtime's connection
                vm.dom = self.conn().lookupByName(spec.name)
            except Exception as e:
                t.error = f"a prepared clone: {type(e).__name__}: {e}"[:500]
                self.remove(vm)
                return
            with t.wake:
                if not t.stop.is_set():
                    t.vms.append(vm)
                    continue
            self.remove(vm)  # drained while it was made
            return

    def ready(self) -> int:
        t = self._pool
        if t is None:
            return 0
        if t.error is not None:
            raise InstanceError(f"{self.name}: the template VM could not be made: {t.error}")
        if t.cfg is None:
            return 0
        return len(t.vms) if self.shared else t.size

    def slots(self) -> list[Slot]:
        """libvirt:restore: the prepared clones (QEMU's process each), with an equal
        share of the template's files' allocated bytes (the RAM file is sparse);
        libvirt:restore-save: the template's save file, no process."""
        t = self._pool
        if t is None or t.cfg is None:
            return []
        disk = sum(f.stat().st_blocks * 512 for f in t.files)
        details: dict[str, Json] = {"template": [str(f) for f in t.files]}
        if not self.shared:
            return [Slot(pids=(), disk_bytes=disk, details={**details, "clones": "any number"})]
        with t.wake:
            vms = list(t.vms)
        shares = [disk // len(vms) + (disk % len(vms) if i == 0 else 0)
                  for i in range(len(vms))]  # (they add up to the files' bytes)
        return [Slot(pids=tuple(vm.pids), disk_bytes=share,
                     details={**details, "domain": vm.spec.name,
                              "disk_bytes": "a share of the template's files"})
                for vm, share in zip(vms, shares, strict=True)]

    def drain(self) -> None:
        with self._lock:
            t, self._pool = self._pool, None
        if t is None:
            return
        with t.wake:
            t.stop.set()
            t.wake.notify_all()
        if (inst := t.booting) is not None:
            with contextlib.suppress(Exception):  # ends the thread's wait for the line
                self.stop(inst, grace=0)
        if t.thread is not None:
            t.thread.join(TEMPLATE_TIMEOUT)
        with t.wake:
            vms, t.vms = t.vms, []
        for vm in vms:
            with contextlib.suppress(Exception):
                self.remove(vm)
        for f in t.files:
            f.unlink(missing_ok=True)

    # --- instances ----------------------------------------------------------------

    def _refuse(self, spec: InstanceSpec) -> None:
        if spec.network == "host":
            raise NotApplicable("libvirt: network 'host' is impossible for a VM (it has its "
                                "own kernel and network stack); use none or bridge")
        _refuse_vlan(spec)
        if any(m.type == "volume" for m in spec.mounts):
            raise NotApplicable(f"{self.name}: volumes cannot be restored: the template "
                                "has their filesystem mounted, and each clone would resume "
                                "with a stale view of a disk the others write")

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        self._refuse(spec)
        t = self._pool
        if t is None or t.cfg is None or not _fits(t, spec, prepared):
            inst = super().create(spec, prepared)
            inst.warm = "cold"
            return inst
        check_publish(self.name, spec)
        if spec.more_networks:
            # The guest's init configures one NIC (eth0, by DHCP) and one resolver: a
            # second network would be a NIC without an address or names.
            raise NotApplicable("libvirt: a VM joins one network here (the guest's init "
                                "configures eth0 alone); this instance asks for "
                                f"{1 + len(spec.more_networks)}")
        if not self.shared:
            return self._new_clone(t, spec, prepared)
        with t.wake:
            vm = t.vms.pop(0) if t.vms else None
            t.wake.notify_all()  # the filler makes the next one
        if vm is None:  # none prepared (a burst past the pool): a clone made now
            vm = self._new_clone(t, spec, prepared)
            vm.warm = "template"
        else:
            # The prepared clone's name (its domain's) stays; the rest is the request's.
            # Its console has carried nothing yet: the guest has not run since the save.
            assert vm.console is not None
            vm.spec = dataclasses.replace(spec, name=vm.spec.name)
            vm.prepared = prepared
            vm.out = _proc.Stream(vm.console.fileno(), spec.capture)
        try:
            _migrate(vm.dom, "migrate-incoming", t.files[0], os.O_RDONLY)
        except BaseException:
            self.remove(vm)
            raise
        return vm

    def _new_clone(self, t: _Template, spec: InstanceSpec, prepared: Prepared,
                   conn: Any = None) -> VmInstance:
        """A clone of template `t` under `spec`'s name, with its own UUID, MAC and
        sockets: restored from the save file (paused), or (restore) a paused domain
        mapping the template's RAM, waiting for the device state, made through `conn`
        (None: the runtime's connection)."""
        assert t.cfg is not None
        idir = self._dir(spec.name)
        idir.mkdir(parents=True)
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3)) \
            if spec.network == "bridge" else None
        cfg = dataclasses.replace(t.cfg, name=spec.name, console=str(idir / "console.sock"),
                                  agent=str(idir / "agent.sock"), mac=mac,
                                  memory_file_shared=False, incoming=self.shared)
        inst = VmInstance(spec=spec, prepared=prepared, dir=idir, cfg=cfg, warm="slot",
                          mac=mac)
        try:
            if self.shared:
                self._clone_shared(inst, conn or self.conn())
            else:
                self._clone_saved(inst, t)
        except BaseException:
            self.remove(inst)
            raise
        return inst

    def _clone_saved(self, inst: VmInstance, t: _Template) -> None:
        """virDomainRestoreFlags of the template's save file as this clone's."""
        lv = _libvirt()
        assert t.image is not None and t.cfg is not None and t.cfg.agent and inst.dir
        name = inst.spec.name
        xml = template.clone_xml(t.image.xml, name=name, uuid=str(uuid.uuid4()),
                                 mac=inst.mac, dirs={str(Path(t.cfg.agent).parent): str(inst.dir)})

        def restore(path: str) -> None:
            try:
                self.conn().restoreFlags(path, None, lv.VIR_DOMAIN_SAVE_PAUSED)
            except lv.libvirtError as e:
                raise InstanceError(f"libvirt: cannot restore {name}: "
                                    f"{e.get_error_message()}") from e

        template.restore_through_fifo(t.image, xml, inst.dir / "restore.fifo", restore)
        inst.dom = self.conn().lookupByName(name)
        self._attach(inst)

    def _clone_shared(self, inst: VmInstance, conn: Any) -> None:
        """A new paused domain mapping the template's RAM file privately, waiting for
        the template's device state (x-ignore-shared: the RAM is not in it)."""
        lv = _libvirt()
        assert inst.cfg is not None
        try:
            inst.dom = conn.createXML(domain.to_xml(inst.cfg), lv.VIR_DOMAIN_START_PAUSED)
        except lv.libvirtError as e:
            raise InstanceError(f"libvirt: cannot create {inst.spec.name}: "
                                f"{e.get_error_message()}") from e
        self._attach(inst)

    def start(self, inst: Instance) -> None:
        """Resume; a clone then gets its hand-over (see the class)."""
        super().start(inst)
        vm = own(inst, VmInstance)
        if inst.warm not in ("slot", "template"):  # a boot, or the template itself
            return
        assert vm.agent is not None
        # struct rand_pool_info: 256 bits credited for 64 bytes of the host's randomness
        seed = struct.pack("<ii", 256, 64) + secrets.token_bytes(64)
        words = [base64.b64encode(seed).decode(), str(round(time.time())),
                 secrets.token_hex(16), vm.mac or "-",
                 base64.b64encode(self.handover_script(inst.spec).encode()).decode()]
        try:
            vm.agent.settimeout(10)
            vm.agent.sendall(" ".join(words).encode() + b"\n")
        except OSError as e:
            raise InstanceError(f"libvirt: hand-over to {inst.spec.name}: {e}") from e


def _qmp(dom: Any, command: str, files: Sequence[int] = (), **args: Json) -> Any:
    """One QMP command to the domain's QEMU through libvirt (libvirt marks the domain
    "tainted: custom-monitor"); `files` are passed along (for getfd)."""
    lv = _libvirt()
    import libvirt_qemu

    text = json.dumps({"execute": command, **({"arguments": args} if args else {})})
    try:
        out = libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, list(files), 0)[0] \
            if files else libvirt_qemu.qemuMonitorCommand(dom, text, 0)
    except lv.libvirtError as e:
        raise InstanceError(f"QMP {command}: {e.get_error_message()}") from e
    reply = json.loads(out)
    if "error" in reply:
        raise InstanceError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return")


def _migrate(dom: Any, command: str, path: Path, flags: int) -> None:
    """`migrate` (to) or `migrate-incoming` (from) the file `path` with x-ignore-shared,
    until QEMU says the migration is over. The file goes to QEMU as a descriptor (getfd):
    QEMU's sandbox forbids the `exec:` URI's fork."""
    _qmp(dom, "migrate-set-capabilities",
         capabilities=[{"capability": "x-ignore-shared", "state": True}])
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        _qmp(dom, "getfd", [fd], fdname="cvbench-state")
    finally:
        os.close(fd)
    _qmp(dom, command, uri="fd:cvbench-state")
    deadline = time.monotonic() + TEMPLATE_TIMEOUT
    while (st := _qmp(dom, "query-migrate").get("status")) not in ("completed", "failed",
                                                                    "cancelled"):
        if time.monotonic() > deadline:
            raise InstanceError(f"QMP {command}: still {st} after {TEMPLATE_TIMEOUT:g} s")
        time.sleep(0.002)
    if st != "completed":
        raise InstanceError(f"QMP {command}: the migration {st}")


def _fits(t: _Template, spec: InstanceSpec, prepared: Prepared) -> bool:
    """Whether a clone of template `t` is what `spec` asks: what the template fixed (the
    image, the guest's RAM and vCPUs, its NIC, its mounts) is the same."""
    return (prepared.image.digest == t.prepared.image.digest
            and (spec.limits, spec.network, spec.network_name, spec.mounts)
            == (t.spec.limits, t.spec.network, t.spec.network_name, t.spec.mounts))


def _kind(path: Path) -> str:
    """What a file of a run under <state>/libvirt is: an instance's directory, a
    template's saved memory (libvirt:restore), or a volume's disk image."""
    return "dir" if path.is_dir() else "template" \
        if path.suffix in (".save", ".stream", ".mem") else "volume"


def _gone(e: Any) -> bool:
    """A libvirt error saying the domain or network is gone already or not running:
    what an idempotent stop or removal expects; any other leaves it in place."""
    lv = _libvirt()
    return e.get_error_code() in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_NO_NETWORK,
                                  lv.VIR_ERR_OPERATION_INVALID)


def _qemu_pid(name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    return None


def _qemu_log_tail(name: str) -> str:
    """The last error QEMU wrote to its domain log (e.g. "KVM internal error")."""
    with contextlib.suppress(OSError):
        lines = Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")
        errs = [re.sub(r"^\S+ qemu-system-\w+: (error: )?", "", ln)
                for ln in lines.splitlines() if "error" in ln.lower()]
        return " | ".join(dict.fromkeys(errs[-3:]))[:300]
    return ""


if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from runtimes.base import Exec, Networks, Pool, Runtime, RuntimeClass

    _networks: Networks = LibvirtRuntime()  # it runs stacks: private networks, exec
    _exec: Exec = LibvirtRuntime()
    _instance: Runtime = LibvirtRuntime()
    _class: RuntimeClass = LibvirtRuntime
    _pool: Pool = LibvirtRestore("restore")
