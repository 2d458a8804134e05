"""Network macvlan and ipvlan on ns, docker and podman, against the kernel's own view.

A busybox httpd in the instance serves /bench; the host fetches a file of the image
from the instance's address. The kernel says the rest: inside the instance's network
namespace `ip -d link` shows an eth0 of the mode whose lower device is the run's parent
(a veth pair of the run, never the host's uplink), and the host's route to the address
goes out of a device of the same mode on the same parent (the shim). Afterwards no link
of the run is left, nor an engine network; and `bench gc` removes the parent of a run
whose process was killed. Kernels without ipvlan (this machine's) and engines without
the driver (Podman 4.3's netavark) skip with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import image
from harness.core.errors import NotApplicable
from runtimes.base import InstanceSpec, Runtime
from tests.conftest import backend_or_skip, http_get_until, require

pytestmark = pytest.mark.root
BACKENDS = ["ns", "docker", "podman"]
MODES = ["macvlan", "ipvlan"]


def _ip(*args: str, pid: int | None = None) -> list[dict[str, object]]:
    pre = ["nsenter", f"--net=/proc/{pid}/ns/net"] if pid else []
    out = subprocess.run([*pre, "ip", "-j", "-d", *args], capture_output=True, text=True,
                         check=True)
    return list(json.loads(out.stdout or "[]"))


def _run_links(run_id: str) -> list[str]:
    """Host links whose alias names the run (the kernel's list)."""
    return [f"{x['ifname']} ({x['ifalias']})" for x in _ip("link", "show")
            if run_id in str(x.get("ifalias", ""))]


def _engine_networks(name: str, run_id: str) -> list[str]:
    out = subprocess.run([name, "network", "ls", "-q", "--filter",
                          f"label=cvbench.run={run_id}"], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def _gc_run(rt: Runtime, run_id: str) -> None:
    """The end of the run: what it made, removed (as bookkeeping.finish does)."""
    from harness.bookkeeping import collect, live_runs

    collect(rt, [r for r in live_runs() if r != run_id], run_id)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", BACKENDS)
def test_answers_over_the_mode(name: str, mode: str, run_id: str) -> None:
    rt: Runtime = backend_or_skip(name)  # type: ignore[assignment]
    prepared = rt.prepare(image.build(image.Recipe()))
    spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", network=mode,  # type: ignore[arg-type]
                        argv=("httpd", "-f", "-p", "8080", "-h", "/bench"))
    try:
        try:
            inst = rt.create(spec, prepared)
        except NotApplicable as e:  # a declared inability: only ipvlan's is expected
            if mode == "ipvlan":
                require("ipvlan", str(e))
            raise
        try:
            rt.start(inst)
            rt.wait_ready(inst, 120)
            addr = rt.address(inst)
            assert addr is not None
            body = http_get_until(f"http://{addr}:8080/init", time.monotonic() + 60)
            assert body == (Path(prepared.image.rootfs) / "bench" / "init").read_bytes()
            pid = next(p for p in rt.stats(inst).pids
                       if Path(f"/proc/{p}/comm").read_text().strip() == "httpd")
            eth0 = _ip("link", "show", "eth0", pid=pid)[0]
            assert eth0["linkinfo"]["info_kind"] == mode  # type: ignore[index]
            assert [a["local"] for a in _ip("addr", "show", "eth0", pid=pid)[0]["addr_info"]  # type: ignore[union-attr]
                    if a["family"] == "inet"] == [addr]
            # The host's way there: a device of the same mode on the same parent, a
            # link of this run (its alias names it).
            via = _ip("route", "get", addr)[0]["dev"]
            shim = _ip("link", "show", str(via))[0]
            assert shim["linkinfo"]["info_kind"] == mode  # type: ignore[index]
            parent = _ip("link", "show", str(shim["link"]))[0]
            assert run_id in str(parent["ifalias"]) and parent["linkinfo"]["info_kind"] == "veth"  # type: ignore[index]
        finally:
            rt.stop(inst, grace=0)
            rt.remove(inst)
    finally:
        _gc_run(rt, run_id)
    assert _run_links(run_id) == []
    if name != "ns":
        assert _engine_networks(name, run_id) == []


KILLED_RUN = """
import sys, time
from harness.bookkeeping import RunLock
from harness.core import image
from runtimes import registry
from runtimes.base import InstanceSpec
run_id, name = sys.argv[1], sys.argv[2]
lock = RunLock(run_id, "test")
rt = registry.get(name)
spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", network="macvlan",
                    argv=("sleep", "600"))
inst = rt.create(spec, rt.prepare(image.build(image.Recipe())))
rt.start(inst)
print("made", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("name", BACKENDS)
def test_gc_removes_a_killed_runs_segment(name: str, repo: Path) -> None:
    backend_or_skip(name)
    from runtimes.base import new_run_id

    run_id = new_run_id()
    with subprocess.Popen([sys.executable, "-c", KILLED_RUN, run_id, name], cwd=repo,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "made"
            assert _run_links(run_id)  # the parent veth pair and its alias
        finally:
            os.kill(proc.pid, signal.SIGKILL)
    bench = Path(sys.executable).parent / "bench"
    out = subprocess.run([str(bench), "gc", "--run", run_id], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _run_links(run_id) == []
    if name != "ns":
        assert _engine_networks(name, run_id) == []


CTRL_C = """name = "vlan-ctrl-c"
study = "network"
backends = ["{backend}"]
network = "macvlan"
[workload]
image = {{ recipe = "net", binaries = ["sockperf", "iperf3"] }}
argv = ["true"]
[params]
duration = 5
[sampling]
warmups = 0
min_samples = 50
max_samples = 50
metric = "network.lat_p50"
"""


def test_ctrl_c_removes_the_runs_segment(tmp_path: Path) -> None:
    """`bench run network` on macvlan, interrupted while it measures: the run's end
    deletes its parent link (and everything on it) and its engine network."""
    backend = "docker"
    backend_or_skip(backend)
    toml = tmp_path / "s.toml"
    toml.write_text(CTRL_C.format(backend=backend))
    before = {x["ifname"] for x in _ip("link", "show")}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(toml), "--out",
                             str(tmp_path / "D")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (made := [x for x in _ip("link", "show") if x["ifname"] not in before
                            and str(x.get("ifalias", "")).endswith(f"-{backend}-macvlan")]):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(2)  # a sample under way
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    run_id = str(made[0]["ifalias"]).split("-")[1]
    assert _run_links(run_id) == []
    assert _engine_networks(backend, run_id) == []
