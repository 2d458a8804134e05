"""`make test-host`: cvbench on a host with systemd, cgroup v2 and current engines.

scripts/testhost builds (or reuses) a Debian 13 image, boots it as a libvirt guest, and
the guest is used as a new user would: the checkout copied in, `scripts/provision` (its
systemd path), `make venv`, then ns's cgroup v2 and namespace tests and one startup run
on ns, docker and podman. Skips are failures there (CVBENCH_REQUIRE). The run's result
comes back to results/testhost/; the guest, its overlay and its network are removed and
the test checks that nothing of them is left. Under TCG this takes a long time (see the
README, Test host): it is not part of `make test`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = pytest.mark.testhost

REQUIRE = "host,ns,docker,podman,cgroup2"
IN_GUEST = f"""set -e
cd /srv/cvbench
scripts/provision
make venv EXTRAS=dev
CVBENCH_REQUIRE={REQUIRE} .venv/bin/pytest -q -p no:cacheprovider \\
    tests/integration/test_cgroups_v2.py tests/integration/test_ns.py
.venv/bin/bench run startup --backends ns,docker,podman --out results/testhost \\
    --warmups 1 --min-samples 3 --max-samples 3
"""


def _testhost(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / "scripts/testhost"), *args], text=True, check=False)


def test_in_debian13_guest(repo: Path) -> None:
    require("root", None if os.geteuid() == 0 else "needs root (debootstrap, libvirt)")
    assert _testhost(repo, "build").returncode == 0
    try:
        assert _testhost(repo, "up").returncode == 0
        assert _testhost(repo, "push").returncode == 0
        assert _testhost(repo, "ssh", IN_GUEST).returncode == 0
        assert _testhost(repo, "pull", "/srv/cvbench/results/testhost",
                        str(repo / "results/testhost")).returncode == 0
    finally:
        assert _testhost(repo, "down").returncode == 0
    status = subprocess.run([str(repo / "scripts/testhost"), "status"], text=True,
                            capture_output=True, check=False).stdout
    assert "domain:  cvbench.testhost absent" in status, status
    assert "network: cvbench.testhost absent" in status, status
    assert "overlay: absent" in status, status
    assert list((repo / "results/testhost").glob("*.json")), "the guest's run wrote no result"
