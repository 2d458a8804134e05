"""oci:crun, oci:runc, oci:runsc, oci:ns (cvbench-ns) for real: the same image as an OCI
bundle."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from runtimes.base import Limits, own
from runtimes.oci import OciInstance
from tests.conftest import require
from tests.integration._nsutil import Env, close_env, mounts_of, open_env

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", params=["crun", "runc", "runsc", "ns"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    require("root", None if os.geteuid() == 0 else "the OCI CLIs run as root here")
    e, lock = open_env(f"oci:{request.param}")
    yield e
    assert close_env(e, lock) == []
    assert mounts_of(e.run_id) == []


def test_exit_status_and_streams(env: Env) -> None:
    ex = env.run("echo out; echo err >&2; exit 7", limits=Limits(memory=64 << 20, pids=64,
                                                                 cpus=1.0))
    assert (ex.code, ex.stdout, ex.stderr) == (7, b"out\n", b"err\n")


def test_isolation_matches_ns(env: Env) -> None:
    ex = env.run("hostname; ls /proc | grep -c '^[0-9]'; ls /sys/class/net 2>/dev/null | wc -l; "
                 "echo 1 > /proc/sys/vm/drop_caches && echo WROTE")
    out = ex.stdout.decode().split()
    assert out[0] == "cvbench" and int(out[1]) <= 4 and "WROTE" not in out


def test_oom_is_reported(env: Env) -> None:
    if env.rt.flavour == "runsc":
        pytest.skip("runsc: the sandbox's own memory accounting, not a cgroup OOM kill")
    ex = env.run("head -c 100m /dev/zero | tail > /dev/null", limits=Limits(memory=32 << 20))
    assert ex.code == 137 and not ex.ok
    # Only runc and cvbench-ns keep the cgroup (run --keep) until remove, where the kill
    # is counted.
    assert ex.oom_killed == (env.rt.flavour in ("runc", "ns"))


def test_stats_and_stop(env: Env) -> None:
    inst = env.started(("sleep", "60"), limits=Limits(memory=128 << 20))
    try:
        st = env.rt.stats(inst)
        assert own(inst, OciInstance).pid in st.pids and st.pss > 0
    finally:
        env.rt.stop(inst, grace=0.5)
        env.rt.remove(inst)
    assert not (env.rt.root() / inst.spec.name).exists()


def test_volume_kept_across_instances(env: Env) -> None:
    from runtimes.base import Mount

    vol = (Mount("volume", "/v", "data"),)
    assert env.run("echo kept > /v/f", mounts=vol).code == 0
    assert env.run("cat /v/f", mounts=vol).stdout == b"kept\n"
