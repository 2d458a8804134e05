"""What ns and oci (its yardstick) share: where the writable layer lives, the state
dirs every run uses and the parent cgroups, removed once nothing is left in them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.core.errors import InstanceError
from runtimes.base import Leftover
from runtimes.ns import cgroups


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
