"""Host fingerprint: what a result was measured on.

`fingerprint()` returns the facts. They split in two: the hardware identity (CPU model,
cores, memory, architecture: `hardware_id`), which says which machine measured, and the
software on it (kernel, distro, cgroup mode, THP...: `software`), which an upgrade changes
on the same machine. `bench compare` refuses to gate across hardware and notes software
differences; `bench history` keeps one series per hardware identity and annotates its
moves with the software that changed. `fingerprint_id()` (the `id` of every result) hashes
both, as it always has.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__
from harness.core.cgroupfs import cgroup_mode as cgroup_mode
from harness.core.errors import Unreadable

# Facts that make a host what it is; volatile ones (load, free memory) stay out of the id.
ID_KEYS = ("cpu_model", "cores", "mem_total_gib", "kernel", "distro", "cgroup_mode", "thp",
           "arch")
# The machine: what no package upgrade changes.
HARDWARE_KEYS = ("cpu_model", "cores", "mem_total_gib", "arch")
# What runs on it, and its settings: each is something a move can be annotated with.
SOFTWARE_KEYS = ("kernel", "distro", "cgroup_mode", "cgroup_favordynmods", "thp", "ksm",
                 "governor", "python")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith(("model name", "Model", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def mem_available() -> int:
    """MemAvailable in bytes (what the kernel thinks can be allocated without swapping);
    Unreadable on a kernel without it (before 3.14), never 0."""
    info = meminfo()
    if "MemAvailable" not in info:
        raise Unreadable("/proc/meminfo has no MemAvailable")
    return info["MemAvailable"]


def _distro() -> str:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "unknown"


def _bracketed(path: str) -> str | None:
    """The selected value of a sysfs choice file: "always [madvise] never" -> madvise."""
    text = _read(path)
    if text is None:
        return None
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return text


def _version(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = (out.stdout or out.stderr).strip().splitlines()
    return line[0] if line else None


CACHE_ROOT = "/sys/devices/system/cpu/cpu0/cache"
_CACHE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Cache:
    """The last-level cache a CPU sees: the data or unified cache of the highest level
    sysfs lists; `size` is None when it could not be read, and `reason` says why (an
    unknown size is never 0: a check against it would always pass)."""

    level: int | None
    size: int | None  # bytes
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        if self.size is None:
            return {"bytes": None, "unknown": self.reason}
        return {"level": self.level, "bytes": self.size}


def last_level_cache(root: str | None = None) -> Cache:
    """CPU 0's last-level cache from sysfs (`index*/level`, `type`, `size`, e.g. "3",
    "Unified", "32768K"). Instruction caches do not hold a data buffer: left out. Any
    entry that cannot be read makes the answer unknown: the one missing could be the
    last level."""
    root = root or CACHE_ROOT
    try:
        entries = sorted(p for p in Path(root).iterdir() if p.name.startswith("index"))
    except OSError as e:
        return Cache(None, None, f"{e.filename or root}: {e.strerror or e}")
    found: list[tuple[int, int]] = []
    for d in entries:
        try:
            kind = (d / "type").read_text().strip()
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
        except OSError as e:
            return Cache(None, None, f"{e.filename or d}: {e.strerror or e}")
        except ValueError:
            return Cache(None, None, f"{d}/level: not a number")
        if kind not in ("Unified", "Data"):
            continue
        number, unit = size.rstrip("KMG"), size[len(size.rstrip("KMG")):]
        if not number.isdigit() or unit not in _CACHE_UNITS or not int(number):
            return Cache(None, None, f"{d}/size: {size!r} is not a cache size")
        found.append((level, int(number) * _CACHE_UNITS[unit]))
    if not found:
        return Cache(None, None, f"{root}: no data or unified cache listed")
    return Cache(*max(found))


def _virtualization() -> str:
    flags = _read("/proc/cpuinfo") or ""
    if " hypervisor" in flags:
        return "guest"
    return "bare-metal-or-unknown"


def emulated_cpu() -> str | None:
    """Why this machine's CPU is emulated (QEMU's TCG, no hardware virtualisation), else
    None. Every timing taken on such a host is an emulator's, not a CPU's: results record
    it and reports mark the host's timings as they mark a TCG VM's. Two independent
    signs: systemd-detect-virt --vm says "qemu" only for QEMU without KVM (it reads the
    CPUID hypervisor leaf, "TCGTCGTCGTCG" there, "KVMKVMKVM" under KVM), and TCG's own
    CPU models are named "QEMU TCG CPU" (`-cpu max`)."""
    model = _cpu_model() or ""
    if "QEMU TCG CPU" in model:
        return f"the CPU is QEMU's emulated model ({model})"
    if shutil.which("systemd-detect-virt"):
        out = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True,
                             check=False).stdout.strip()
        if out == "qemu":
            return "systemd-detect-virt --vm: qemu (QEMU without KVM: emulated, TCG)"
    return None


def fingerprint() -> dict[str, Any]:
    mem = meminfo()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "mem_total": mem.get("MemTotal", 0),
        "mem_total_gib": round(mem.get("MemTotal", 0) / 2**30),
        "kernel": platform.release(),
        "distro": _distro(),
        "cgroup_mode": cgroup_mode(),
        # Host tuning that changes container start times (scripts/provision.d/25-ns.sh).
        "cgroup_favordynmods": "favordynmods" in (_read("/proc/mounts") or ""),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "thp": _bracketed("/sys/kernel/mm/transparent_hugepage/enabled"),
        "ksm": _read("/sys/kernel/mm/ksm/run"),
        "virtualization": _virtualization(),
        # this host is itself an emulated machine (TCG): every timing here is emulated
        "emulated": emulated_cpu(),
        # What a memory figure must exceed to be the memory's, not the cache's (mem).
        "llc": last_level_cache().as_dict(),
        "kvm_device": os.path.exists("/dev/kvm"),
        "python": platform.python_version(),
        "cvbench": __version__,
        "load_avg": list(os.getloadavg()),
    }
    info["id"] = fingerprint_id(info)
    info["hardware_id"] = hardware_id(info)
    return info


def fingerprint_id(info: dict[str, Any]) -> str:
    key = json.dumps({k: info.get(k) for k in ID_KEYS}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def hardware_id(info: Mapping[str, Any]) -> str | None:
    """The id of the machine alone: recorded in results since it exists; for older ones
    a hash of the same hardware facts (which they hold); a fingerprint with none of them
    has only its `id` to go by."""
    recorded = info.get("hardware_id")
    if isinstance(recorded, str) and recorded:
        return recorded
    if not any(info.get(k) is not None for k in HARDWARE_KEYS):
        hid = info.get("id")
        return hid if isinstance(hid, str) and hid else None
    key = json.dumps({k: info.get(k) for k in HARDWARE_KEYS}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def software(info: Mapping[str, Any]) -> dict[str, str]:
    """The software facts of a fingerprint, as text (absent ones left out)."""
    return {k: str(info[k]) for k in SOFTWARE_KEYS if info.get(k) is not None}


def tool_version(cmd: list[str]) -> str | None:
    """First line of `cmd`'s version output, or None when the tool is missing."""
    return _version(cmd)
