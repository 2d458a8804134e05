"""Published ports and limits.cpuset on every backend, against the real kernel and daemons.

A busybox httpd in the instance listens on 8080; with a published port the host reaches
it at publish_address():<host port> (the engines' NAT, the DNAT of ns and libvirt), and
the instance's processes run only on the CPUs of its cpuset. Nothing of the run is left
afterwards (the DNAT rules included).
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import pytest

from harness.core import image
from runtimes.base import InstanceSpec, Limits, Runtime, publish_address
from tests.conftest import backend_or_skip, http_get_until, require

pytestmark = pytest.mark.root
FAST = ["ns", "docker", "podman"]


def _affinity(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split()[1]
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def _check(name: str, run_id: str) -> None:
    rt: Runtime = backend_or_skip(name)  # type: ignore[assignment]
    require("2-cpus", None if len(os.sched_getaffinity(0)) >= 2 else
            "needs 2 CPUs to pin an instance to the second")
    prepared = rt.prepare(image.build(image.Recipe()))
    host_port = random.randint(20000, 60000)
    spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", network="bridge",
                        argv=("httpd", "-f", "-p", "8080", "-h", "/bench"),
                        limits=Limits(cpuset="1"), publish=((host_port, 8080),))
    inst = rt.create(spec, prepared)
    try:
        rt.start(inst)
        rt.wait_ready(inst, 300)
        body = http_get_until(f"http://{publish_address()}:{host_port}/init",
                              time.monotonic() + 120)
        assert body == (Path(prepared.image.rootfs) / "bench" / "init").read_bytes()
        # the workload (a VM: QEMU), not an engine's shim, which stays outside the cgroup
        pids = [p for p in rt.stats(inst).pids
                if Path(f"/proc/{p}/comm").read_text().strip().startswith(("httpd", "qemu"))]
        assert pids and {_affinity(p) for p in pids} == {"1"}, name
    finally:
        rt.stop(inst, grace=0)
        rt.remove(inst)
    with socket.socket() as s:  # the forward went with the instance
        s.settimeout(2)
        assert s.connect_ex((publish_address(), host_port)) != 0
    assert not [x for x in rt.leftovers() if x.run_id == run_id]


@pytest.mark.parametrize("name", FAST)
def test_published_port_and_cpuset(name: str, run_id: str) -> None:
    _check(name, run_id)


@pytest.mark.slow
def test_published_port_and_cpuset_libvirt(run_id: str) -> None:
    _check("libvirt", run_id)


def test_host_cpuset_is_its_affinity(run_id: str) -> None:
    rt: Runtime = backend_or_skip("host")  # type: ignore[assignment]
    prepared = rt.prepare(image.build(image.Recipe()))
    spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", argv=("sleep", "30"),
                        limits=Limits(cpuset="0"))
    inst = rt.create(spec, prepared)
    try:
        rt.start(inst)
        rt.wait_ready(inst, 60)
        assert {_affinity(p) for p in rt.stats(inst).pids} == {"0"}
    finally:
        rt.stop(inst, grace=0)
        rt.remove(inst)
