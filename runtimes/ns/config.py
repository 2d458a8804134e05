"""Pure data: everything the container's first process needs, resolved by the parent.

Built from an InstanceSpec in `from_spec()`; the child (process.py) only turns it into
system calls, so nothing on the start path parses, looks up or decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtimes.ns import namespaces as ns

# Docker's default capability set (moby oci/caps/defaults.go); everything else is dropped.
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")

# runc's defaults (libcontainer/specconv/example.go): hidden, or read-only.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (name, mode, major, minor): the only device nodes an instance gets.
DEVICES = (("null", 0o666, 1, 3), ("zero", 0o666, 1, 5), ("full", 0o666, 1, 7),
           ("random", 0o666, 1, 8), ("urandom", 0o666, 1, 9), ("tty", 0o666, 5, 0))


@dataclass(frozen=True)
class MountPoint:
    """One mount inside the new root. `target` is relative to the new root."""

    source: str | None
    target: str
    fstype: str | None
    flags: int = 0
    data: str | None = None
    make_dir: bool = True  # create the target directory if missing
    readonly_remount: bool = False  # bind mounts need a second mount to become read-only


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    lower: str  # the image rootfs, shared read-only by every instance
    upper: str
    work: str
    merged: str
    argv: tuple[str, ...]
    env: tuple[str, ...]  # "KEY=value"
    hostname: str
    workdir: str
    clone_flags: int
    cgroup_join: tuple[str, ...]
    new_cgroupns: bool
    mounts: tuple[MountPoint, ...]
    loopback_up: bool
    uid: int = 0
    gid: int = 0
    caps: tuple[str, ...] = DEFAULT_CAPS
    masked: tuple[str, ...] = MASKED_PATHS
    readonly: tuple[str, ...] = READONLY_PATHS
    devices: tuple[tuple[str, int, int, int], ...] = DEVICES
    no_new_privs: bool = True
    extra: dict[str, str] = field(default_factory=dict)


BASE_FLAGS = ns.CLONE_NEWNS | ns.CLONE_NEWPID | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
