"""Driving the Debian 13 test host (scripts/testhost) from a test: up, push, commands in
the guest, pull, down, and the check that nothing of the guest is left."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require

# The guest's own steps, as a new user takes them in a fresh checkout: provision, and
# `make venv` from nothing (offline, from the image's wheels: 10-15 minutes under TCG).
# EXTRAS=dev: the guest is a fleet member, never a controller (no Ansible in its wheels).
SETUP = "scripts/provision && rm -rf .venv && make venv EXTRAS=dev"
# The lean part: the image's venv already holds the dependencies (installed when the
# image was made); only the project itself goes in, without resolving anything.
QUICK_SETUP = ("scripts/provision && .venv/bin/pip install -q --no-deps --no-build-isolation "
               "-e . && touch .venv/.cvbench-installed")


def run_testhost(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / "scripts/testhost"), *args], text=True, check=False)


def in_guest(repo: Path, script: str, timings: dict[str, float], step: str) -> None:
    """Run a shell script in the guest (in /srv/cvbench), its output passed through; the
    step's wall time is kept for the summary."""
    t0 = time.monotonic()
    res = run_testhost(repo, "ssh", f"set -e; cd /srv/cvbench; {script}")
    timings[step] = time.monotonic() - t0
    assert res.returncode == 0, f"in the guest: {step} failed (exit {res.returncode})"


@contextmanager
def guest(repo: Path, timings: dict[str, float], setup: str = SETUP) -> Iterator[None]:
    """The guest booted with this checkout pushed and provisioned; removed after, and
    checked to be gone (domain, network, overlay)."""
    require("root", None if os.geteuid() == 0 else "needs root (debootstrap, libvirt)")
    t0 = time.monotonic()
    assert run_testhost(repo, "build").returncode == 0
    timings["image (build or reuse)"] = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        assert run_testhost(repo, "up").returncode == 0
        timings["boot"] = time.monotonic() - t0
        assert run_testhost(repo, "push").returncode == 0
        in_guest(repo, setup, timings, "provision + venv")
        yield
    finally:
        assert run_testhost(repo, "down").returncode == 0
        print("test host timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    status = subprocess.run([str(repo / "scripts/testhost"), "status"], text=True,
                            capture_output=True, check=False).stdout
    assert "domain:  cvbench.testhost absent" in status, status
    assert "network: cvbench.testhost absent" in status, status
    assert "overlay: absent" in status, status
