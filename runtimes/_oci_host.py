"""What the OCI runtime CLIs (crun, runc, runsc) need on this kind of host, shared by
`oci:*` (which runs them directly) and the engines (which hand containers to them)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

PROVISION = "run `make provision` (scripts/provision) as root"


def version_line(binary: str) -> str:
    """The first line `<binary> --version` prints, or "?"."""
    try:
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                           check=False)
    except OSError:
        return "?"
    lines = (p.stdout or p.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def crun_refusal() -> tuple[str, str] | None:
    """Why crun refuses this host, with the fix; None where it runs. crun 1.8 rejects a
    cgroup v1/hybrid host unless the hugetlb controller is mounted as a v1 hierarchy,
    and one whose cgroup2 mount holds controllers."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return None  # unified (v2): no quirk
    fix = f"mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb ({PROVISION} does it)"
    mounts = Path("/proc/mounts").read_text()
    if " /sys/fs/cgroup/memory cgroup" in mounts and \
            " /sys/fs/cgroup/hugetlb cgroup" not in mounts:
        return ("cgroup problem: crun refuses this cgroup v1/hybrid host because the "
                "hugetlb controller is not mounted", fix)
    ctrl = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    with contextlib.suppress(OSError):
        held = ctrl.read_text().split()
        if held:
            return (f"crun refuses a hybrid cgroup host whose cgroup2 holds controllers "
                    f"({' '.join(held)})", "mount them as v1 hierarchies: " + fix)
    return None


# runsc here: the ptrace platform (no working KVM), and its own network stack off (it
# cannot run in this VM): the engines register it with --network=none.
RUNSC_PLATFORM = "--platform=ptrace"


def runsc_network_problem(backend: str, network: str) -> str | None:
    if network == "none":
        return None
    return (f"{backend}: runsc runs with --network=none here (its netstack cannot run in "
            f"this VM); network {network!r} is not available")
