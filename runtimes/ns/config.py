"""Pure data: everything the container's first process needs, resolved by the parent.

Built from an InstanceSpec by NsRuntime._config(); the child (process.py) only turns it
into system calls, so nothing on the start path parses, looks up or decides. The config
is pickled to the fork server (forkserver.py), so it holds only plain values.
"""

from __future__ import annotations

from harness.core.record import record
from runtimes.ns import namespaces as ns

# Docker's default capability set (moby oci/caps/defaults.go); everything else is dropped.
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")

# What ns keeps where no device cgroup guards the device nodes (rootless; ns:bare; a host
# with neither a v1 devices hierarchy nor a kernel that loads an eBPF device program):
# Docker's set minus CAP_MKNOD. With CAP_MKNOD a root workload could `mknod sda b 8 0` and
# read the host's disk; Docker can leave it because its device cgroup refuses to open any
# node outside an allow-list.
NO_MKNOD_CAPS = tuple(c for c in DEFAULT_CAPS if c != "CAP_MKNOD")


def caps(device_rules: bool) -> tuple[str, ...]:
    """The capability set of ns, and of oci:* (its yardstick: the same set, always)."""
    return DEFAULT_CAPS if device_rules else NO_MKNOD_CAPS


# runc's defaults (libcontainer/specconv/example.go): hidden, or read-only.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (name, mode, major, minor): the only device nodes an instance gets.
DEVICES = (("null", 0o666, 1, 3), ("zero", 0o666, 1, 5), ("full", 0o666, 1, 7),
           ("random", 0o666, 1, 8), ("urandom", 0o666, 1, 9), ("tty", 0o666, 5, 0))

# The device cgroup's allow-list (after "deny a"; on cgroup v2 the same rules as an eBPF
# program, cgroups/devices_bpf.py), as runc's for Docker's containers
# (libcontainer/specconv AllowedDevices) with only the nodes ns makes: any node may be
# made (m), only these opened; plus the pty devices of the instance's own devpts.
DEVICE_RULES = ("c *:* m", "b *:* m",
                *(f"c {major}:{minor} rwm" for _, _, major, minor in DEVICES),
                "c 136:* rwm", "c 5:2 rwm")

# Resource limits set explicitly (by name, as `ulimit`/Docker's --ulimit call them).
RLIMITS = {"core": 4, "nofile": 7, "nproc": 6, "memlock": 8, "stack": 3}

BASE_FLAGS = ns.CLONE_NEWNS | ns.CLONE_NEWPID | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC


@record
class MountPoint:
    """One mount inside the new root. `target` is relative to the new root."""

    source: str | None
    target: str
    fstype: str | None
    flags: int = 0
    data: str | None = None
    readonly_remount: bool = False  # bind mounts need a second mount to become read-only
    recursive_readonly: bool = False  # ...or mount_setattr, for every mount below as well
    file: bool = False  # the target is a file (a bound device node), not a directory
    # A bind mount takes no flags but MS_BIND/MS_REC: nosuid, nodev, noexec, ro... need a
    # remount (MS_REMOUNT | MS_BIND | these) after it (cvbench-ns: an OCI mount's options)
    bind_flags: int = 0
    propagation: int = 0  # MS_PRIVATE, MS_SLAVE... (| MS_REC) applied to it afterwards


@record
class NetConfig:
    """What the child does to its network namespace once the parent has moved the veth
    end in (bridge mode). Addresses are IPv4 dotted quads."""

    ifname: str = "eth0"
    address: str = ""
    netmask: str = ""
    gateway: str = ""


@record
class ContainerConfig:
    name: str
    lower: str  # the image rootfs, shared read-only by every instance
    dev_layer: str  # a layer above it holding dev/ ("" = a tmpfs on /dev, rootless)
    upper: str  # per-instance writable layer ("" = a tmpfs private to the instance)
    work: str  # overlayfs' work dir, on the same filesystem as upper
    scratch: str  # a fixed empty dir: the private tmpfs is mounted there (upper "")
    argv: tuple[str, ...]
    env: tuple[str, ...]  # "KEY=value"
    hostname: str
    workdir: str
    clone_flags: int
    cgroup_join: tuple[tuple[str, str], ...]  # (parent dir, "<name>/cgroup.procs") to join
    mounts: tuple[MountPoint, ...]
    loopback_up: bool
    caps: tuple[int, ...]  # capability numbers kept; every other one is dropped
    last_cap: int  # /proc/sys/kernel/cap_last_cap of the host
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    userns_map: tuple[int, int] | None = None  # (host uid, host gid) mapped to root inside
    net: NetConfig | None = None  # bridge: wait for the veth, then configure it
    # (path, is a directory): see rootfs.masks(); None: a path in the container's root,
    # looked up there (cvbench-ns: a bundle's maskedPaths)
    masked: tuple[tuple[str, bool | None], ...] = ()
    readonly: tuple[str, ...] = ()  # of READONLY_PATHS, those this kernel has
    devices: tuple[tuple[str, int, int, int], ...] = DEVICES
    no_new_privs: bool = True
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard), set before caps drop
    keyring: bool = True  # a new session keyring, not the runner's
    seccomp: bytes = b""  # a compiled BPF program (struct sock_filter[]), loaded last
    # ns:intocgroup: cloned into its cgroup (clone3 CLONE_INTO_CGROUP; the cgroup's fd comes
    # with the request, after the four others): the first process writes no cgroup.procs
    # (an exec's process still joins through cgroup_join)
    into_cgroup: bool = False
    # ns:pool's slot: it joins its cgroup (made before the clone) and cgroup namespace,
    # is confined, then execs `waiter` (the built runtimes/ns/slot_waiter.c), which says
    # it is set up and waits for the HANDED_OVER values with the go byte
    pooled: bool = False
    waiter: str = ""

    # What the OCI CLI (cvbench-ns, oci_cli.py) sets from a bundle; the defaults are the
    # backend's behaviour.
    die_with_parent: bool = True  # PR_SET_PDEATHSIG: off when the CLI exits after create
    bind_root: bool = False  # `lower` is the root as it is (bound on itself), no overlay
    readonly_root: bool = False  # root.readonly: remounted read-only after the set-up
    root_propagation: int = 0  # rootfsPropagation for "/" after pivot_root (0: rslave)
    sysctl: tuple[tuple[str, str], ...] = ()  # written under /proc/sys once it is mounted
    join: tuple[tuple[str, int], ...] = ()  # (namespace file, CLONE_NEW*) to setns first
    inheritable: tuple[int, ...] | None = None  # None: the same as `caps`
    ambient: tuple[int, ...] = ()  # raised after capset (root only: oci_bundle checks)
    umask: int = 0o022
    terminal: bool = False  # fd 0 is a terminal: a new session with it as its controlling tty
    cgroupns: bool = True  # a new cgroup namespace, once in the instance's cgroup
    # OCI hooks run by the child itself, in the container's namespaces: (path, argv, env,
    # timeout in s or 0) each; createContainer before pivot_root, startContainer after
    # start, before the exec. Their stdin gets `hook_state` (JSON) with @PID@ replaced.
    hooks_create: tuple[tuple[str, tuple[str, ...], tuple[str, ...], float], ...] = ()
    hooks_start: tuple[tuple[str, tuple[str, ...], tuple[str, ...], float], ...] = ()
    hook_state: bytes = b""


# What a pool's slot (ns:pool) is handed when it is taken, over its config: the
# workload's command, environment (its nonce in it), workdir and user. The rest of the
# config, every protection, is the slot's own, made for a spec that asks the same.
HANDED_OVER = ("argv", "env", "workdir", "uid", "gid")


@record
class ExecConfig:
    """A further process in a running instance (exec, process.exec_main): `container` is
    the ContainerConfig the instance was created with, its argv, env, workdir and user
    replaced by the exec's, so every protection is the very value its first process got.
    `container.clone_flags` names the namespaces to join."""

    container: ContainerConfig
