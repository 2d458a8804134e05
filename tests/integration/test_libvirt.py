"""The libvirt backend against the real libvirtd and QEMU.

Each boot costs seconds under TCG, so the tests are few and each checks several things.
Every test runs under a held run lock (`run_id`) and checks that no domain, instance
directory or QEMU process of its run is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.core import image
from runtimes import _proc
from runtimes.base import InstanceSpec, Limits, Mount, Prepared, own, state_dir
from runtimes.libvirt import VmInstance
from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.libvirt, pytest.mark.root]
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def rt() -> Any:
    return backend_or_skip("libvirt")


@pytest.fixture(scope="module")
def prepared(rt: Any) -> Prepared:
    p: Prepared = rt.prepare(image.build(image.Recipe()))
    return p


def _qemu_pids(run_id: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and f"cvbench-{run_id}-".encode() in cmd:
                out.append(int(entry))
    return out


@pytest.fixture
def clean(rt: Any, run_id: str) -> Iterator[str]:
    """Yields the run id; afterwards nothing of this run may remain."""
    yield run_id
    left = [d.name() for d in rt.conn().listAllDomains()
            if d.name().startswith(f"cvbench-{run_id}-")]
    dirs = list((state_dir() / "libvirt").glob(f"cvbench-{run_id}-*"))
    for _ in range(50):  # libvirt reaps QEMU a moment after the domain is gone
        if not _qemu_pids(run_id):
            break
        time.sleep(0.1)
    assert not left and not dirs and not _qemu_pids(run_id), (left, dirs)


def _spec(run_id: str, n: int, argv: tuple[str, ...], **kw: Any) -> InstanceSpec:
    return InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-{n}", argv=argv, **kw)


def test_lifecycle_stats_and_exit_status(rt: Any, prepared: Prepared, clean: str) -> None:
    spec = _spec(clean, 1, ("sh", "-c", "sleep 2; echo out; echo err >&2; nproc; exit 7"),
                 limits=Limits(cpus=1.5, memory=128 << 20), capture=True)
    inst = rt.create(spec, prepared)
    try:
        assert inst.pids, "the qemu pid is known once the domain exists (paused)"
        rt.start(inst)
        t_ready = rt.wait_ready(inst, TIMEOUT)
        assert t_ready > 0
        st = rt.stats(inst)
        assert st.pss > 0 and st.uss > 0 and st.pids == tuple(inst.pids)
        assert st.extra["guest"].get("actual", 0) > 128 << 20  # limit + guest overhead
        ex = rt.wait_exit(inst, TIMEOUT)
    finally:
        rt.remove(inst)
    assert ex.code == 7 and not ex.oom_killed
    assert ex.t_ns >= t_ready
    assert ex.stdout.split() == [b"out", b"err", b"2"]  # 1.5 cpus -> 2 vCPUs
    rt.remove(inst)  # idempotent


def test_mounts_and_bridge_network(rt: Any, prepared: Prepared, clean: str) -> None:
    vol = f"cvbench-{clean}-vol.qcow2"
    spec = _spec(clean, 2, ("sh", "-c", "echo data > /v/f && cat /v/f && "
                            "grep -E ' /(t|v) ' /proc/mounts | cut -d' ' -f2,3 && "
                            "ip -4 -o addr show eth0 | grep -c inet"),
                 mounts=(Mount("tmpfs", "/t", size=1 << 20), Mount("volume", "/v", vol)),
                 network="bridge", capture=True)
    inst = rt.create(spec, prepared)
    try:
        rt.start(inst)
        ex = rt.wait_exit(inst, TIMEOUT)
    finally:
        rt.remove(inst)
        path = rt.volume_path(vol, spec.run_id)
    try:
        assert ex.code == 0, ex.stdout
        assert ex.stdout.split(b"\n")[:4] == [b"data", b"/t tmpfs", b"/v ext4", b"1"]
        assert path.exists()  # a volume outlives the instance
    finally:
        path.unlink(missing_ok=True)


def test_gc_destroys_domains_of_dead_runs(rt: Any, prepared: Prepared, clean: str) -> None:
    from harness.bookkeeping import live_runs

    inst = rt.create(_spec(clean, 3, ("true",)), prepared)  # paused: no boot needed
    others = [r for r in live_runs() if r != clean]  # our run "died"; others are alive
    found = {(x.kind, x.name) for x in rt.leftovers(others)}
    assert ("domain", f"cvbench-{clean}-3") in found
    removed = rt.gc(others)
    assert {x.run_id for x in removed} == {clean}
    assert not [x for x in rt.leftovers(others) if x.run_id == clean]
    rt.remove(inst)  # what the harness does after all; must not fail


def test_disk_flavour_writes_land_in_the_instances_overlay(clean: str) -> None:
    rt = backend_or_skip("libvirt:disk")
    prepared = rt.prepare(image.build(image.Recipe()))
    base = Path(str(prepared.details["disk_qcow2"]))
    before = base.read_bytes()
    spec = _spec(clean, 4, ("sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f1,3; "
                            "dd if=/dev/urandom of=/var/tmp/w bs=64k count=128 2>/dev/null; "
                            "sync; echo written; exec sleep 600"), capture=True)
    inst = rt.create(spec, prepared)
    try:
        overlay = Path(str(own(inst, VmInstance).root))
        assert overlay.parent == state_dir() / "libvirt" / spec.name
        idle = rt.disk_usage(inst)
        rt.start(inst)
        rt.wait_ready(inst, TIMEOUT)
        _proc.wait_line(own(inst, VmInstance).stream(), b"written", time.monotonic() + TIMEOUT)
        used = rt.disk_usage(inst)
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                          str(overlay)], capture_output=True, text=True,
                                         check=True).stdout)
        text = bytes(own(inst, VmInstance).stream().data)
    finally:
        rt.remove(inst)
    assert b"/dev/vda ext4" in text  # the guest's root is the disk, not its RAM
    assert info["backing-filename"] == str(base) and info["format"] == "qcow2"
    # the image as this flavour stores it is the qcow2 its overlays are backed by
    base_info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                           str(base)], capture_output=True, text=True,
                                          check=True).stdout)
    assert prepared.footprint["image"] == base_info["actual-size"]
    assert prepared.footprint["raw"] > 0 and "qcow2" not in prepared.footprint
    assert used >= idle + (8 << 20) and abs(info["actual-size"] - used) < 1 << 20
    assert base.read_bytes() == before  # the image's disk is only read
    assert not overlay.exists()


def test_prepare_footprint_is_qemu_img_info(rt: Any, prepared: Prepared) -> None:
    assert shutil.which("qemu-img")
    for fmt in ("raw", "qcow2"):
        path = prepared.details[f"disk_{fmt}"]
        out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                             capture_output=True, text=True, check=True).stdout
        import json

        info = json.loads(out)
        key = "image" if fmt == "raw" else fmt  # the raw root disk is the VM's image
        assert prepared.footprint[key] == info["actual-size"]
        assert prepared.footprint[f"{key}.virtual"] == info["virtual-size"]
        assert prepared.details["disks"][fmt]["virtual_size"] == info["virtual-size"]
    traits = rt.traits()
    assert traits.accel in ("kvm", "tcg") and traits.emulated == (traits.accel != "kvm")
    daemons = rt.daemons()
    assert daemons["libvirtd"] and daemons["virtlogd"], daemons
    for name, pids in daemons.items():  # found by socket or pid file: the real binary
        exe = Path(os.readlink(f"/proc/{pids[0]}/exe")).name
        assert exe in (name, "virtqemud"), (name, pids, exe)


@pytest.mark.parametrize("backend", ["libvirt", "libvirt:microvm", "libvirt:disk"])
def test_bench_exec_passes_output_and_status(backend: str, run_id: str) -> None:
    backend_or_skip(backend)
    bench = Path(sys.executable).parent / "bench"
    proc = subprocess.run([str(bench), "exec", "--timeout", str(TIMEOUT), backend, "--",
                           "sh", "-c", "echo hello from $(uname -r); exit 3"],
                          capture_output=True, text=True, timeout=TIMEOUT + 60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("hello from ") and "amd64" in proc.stdout
