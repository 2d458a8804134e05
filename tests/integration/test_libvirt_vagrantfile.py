"""The Vagrantfile is valid for Vagrant (`vagrant validate`), with Debian's vagrant.

Vagrant (and vagrant-libvirt, so the libvirt provider's settings are validated too) is
installed from Debian's packages when missing; the test is skipped only where the package
cannot be had (not root, no apt, or no `vagrant` candidate in apt's lists).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = [pytest.mark.slow]


def _candidate(package: str) -> bool:
    policy = subprocess.run(["apt-cache", "policy", package], capture_output=True,
                            text=True, check=False).stdout
    return "Candidate:" in policy and "Candidate: (none)" not in policy


def _installed(package: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                         capture_output=True, text=True, check=False).stdout
    return "ok installed" in out


def _install_vagrant() -> tuple[str | None, bool]:
    """(the vagrant binary or None, whether the vagrant-libvirt provider is there)."""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        wanted = [p for p in ("vagrant", "vagrant-libvirt")
                  if not _installed(p) and _candidate(p)]
        if wanted:
            proc = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted],
                capture_output=True, text=True, check=False, timeout=900,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            assert proc.returncode == 0, f"apt-get install {wanted}: {proc.stderr[-800:]}"
    return shutil.which("vagrant"), _installed("vagrant-libvirt")


def test_vagrant_validate(repo: Path, tmp_path: Path) -> None:
    vagrant, libvirt_provider = _install_vagrant()
    require("vagrant", None if vagrant else "Debian's vagrant package is not installable here")
    assert vagrant is not None
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
    # With vagrant-libvirt the libvirt provider's block is validated as well; without any
    # provider plugin, Vagrant can only validate the common configuration.
    argv = [vagrant, "validate"] + ([] if libvirt_provider else ["--ignore-provider"])
    # A copy, so Vagrant's .vagrant/ state dir lands in the test's tmp dir, not the repo.
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(repo / "Vagrantfile", work / "Vagrantfile")
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully" in proc.stdout
