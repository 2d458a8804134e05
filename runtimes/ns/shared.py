"""What ns and oci (its yardstick) share: where the writable layer lives, the state
dirs every run uses, the parent cgroups (removed once nothing is left in them), and the
protections ns applies, which oci:* asks its CLI for as well."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.core.errors import InstanceError
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


def upper_mode() -> str:
    """Where an instance's writable layer goes by default: tmpfs, or disk."""
    mode = os.environ.get("CVBENCH_NS_UPPER", "tmpfs")
    if mode not in ("disk", "tmpfs"):
        raise InstanceError(f"CVBENCH_NS_UPPER={mode!r}: use disk or tmpfs")
    return mode


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
