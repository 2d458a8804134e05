"""What ns and oci (its yardstick) share: where the writable layer lives, the state
dirs every run uses, the parent cgroups (removed once nothing is left in them), and the
protections ns applies, which oci:* asks its CLI for as well."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.core.errors import UsageError
from runtimes.base import Leftover
from runtimes.ns import cgroups
from runtimes.ns.config import DEVICE_RULES, MASKED_PATHS, READONLY_PATHS, RLIMITS, caps


def protected_caps() -> tuple[str, ...]:
    """ns's capability set here (root, not bare): Docker's, minus CAP_MKNOD where ns
    has no device cgroup to guard the nodes (see config.caps)."""
    rules = os.geteuid() == 0 and bool(cgroups.new(device_rules=DEVICE_RULES).device_rules)
    return caps(rules)


def runner_rlimits() -> tuple[tuple[str, int, int], ...]:
    """The runner's own rlimits, by name: what ns sets explicitly (as Docker's
    containers inherit the daemon's)."""
    import resource

    return tuple((name, *resource.getrlimit(res)) for name, res in RLIMITS.items())


# Filesystems whose files live in memory: an upper dir on one of them is not on disk.
MEMORY_FS = frozenset({"tmpfs", "ramfs"})


def refuse_upper_env() -> None:
    """CVBENCH_NS_UPPER once chose where plain `ns` (and oci:*) kept the writable layer;
    the backend's name says it now, so a stale setting is refused, not silently ignored."""
    if "CVBENCH_NS_UPPER" in os.environ:
        raise UsageError("CVBENCH_NS_UPPER: no longer read (unset it); the backend's name "
                         "chooses the writable layer: ns (on disk, as Docker's overlay2) "
                         "or ns:tmpfs (in RAM)")


def filesystem(path: Path) -> str:
    """The type of the filesystem `path` (or, before it exists, its nearest existing
    parent) is on, from /proc/self/mountinfo: the longest mount point above it."""
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    best, fstype = "", "?"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            target = fields.split()[4].encode().decode("unicode_escape")  # (\040: a space)
            inside = str(p) == target or str(p).startswith(target.rstrip("/") + "/")
            if inside and len(target) >= len(best):
                best, fstype = target, rest.split()[0]
    return fstype


def writable_layer(upper: str, where: Path) -> dict[str, str]:
    """The settings that record where an instance's writes to its root filesystem land:
    `writable_layer` "tmpfs" (in RAM: a private tmpfs, or a state dir on a memory
    filesystem) or "disk", and `rootfs`, how."""
    if upper == "tmpfs":
        return {"writable_layer": "tmpfs",
                "rootfs": "overlay, upper in a tmpfs private to the instance (volatile)"}
    fs = filesystem(where)
    return {"writable_layer": "tmpfs" if fs in MEMORY_FS else "disk",
            "rootfs": f"overlay, upper on {fs} under {where} (fsync honoured)"}


def cgroup_parents(backend: str, cg: cgroups.Manager) -> list[Leftover]:
    """The `cvbench` parent cgroups, once nothing is left below them."""
    return [Leftover(backend, "cgroup-parent", str(p), None) for p in cg.parents()
            if not any(c.is_dir() for c in p.iterdir())]


def empty_dirs(*paths: Path) -> list[Path]:
    """Those of `paths` that are empty directories, or hold only earlier ones of them."""
    out: list[Path] = []
    for p in paths:
        with contextlib.suppress(OSError):
            if not set(p.iterdir()) - set(out):
                out.append(p)
    return out


def with_rlimits(defaults: tuple[tuple[str, int, int], ...],
                 asked: tuple[tuple[str, int, int], ...]) -> tuple[tuple[str, int, int], ...]:
    """`defaults` with the scenario's `asked` rlimits over them, by name."""
    merged = {n: (s, h) for n, s, h in defaults} | {n: (s, h) for n, s, h in asked}
    return tuple((n, s, h) for n, (s, h) in merged.items())


def _lim(v: int) -> str:
    import resource

    return "unlimited" if v == resource.RLIM_INFINITY else str(v)


def protection_lines(rlimits: tuple[tuple[str, int, int], ...],
                     recursive_ro: bool) -> tuple[str, ...]:
    """The protection lines ns and oci:* word alike (see NsRuntime.protections)."""
    line = " ".join(f"{n}={_lim(s)}:{_lim(h)}" for n, s, h in rlimits)
    return (
        "namespaces: pid, mnt, uts, ipc, net (not with network host), cgroup",
        "no_new_privs: yes (Docker: no)",
        f"masked paths: {', '.join(MASKED_PATHS)}",
        f"read-only paths: {', '.join(READONLY_PATHS)}",
        "mounts: /proc, /dev/shm, /dev/mqueue nosuid,nodev,noexec; /dev/pts nosuid,noexec; "
        "/sys ro,nosuid,nodev,noexec; tmpfs mounts nosuid,nodev,noexec; read-only binds "
        + ("recursive" if recursive_ro else "top mount only"),
        "rlimits: " + (f"{line} (the runner's, set explicitly)" if line
                       else "none set, the runner's inherited (ns:bare)"),
    )
