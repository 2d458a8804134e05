"""memory acceptance: for one idle ns instance, the reported PSS equals the sum of `Pss:`
over /proc/PID/smaps_rollup of its processes (found independently, by their cgroup)
within 5 %."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.core import image
from runtimes.base import InstanceSpec, Runtime
from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.root]


def pss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


def processes_in_cgroup_named(name: str) -> list[int]:
    """Every process whose /proc/PID/cgroup mentions `name` (any hierarchy)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"/{name}\n" in (entry / "cgroup").read_text():
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def test_ns_idle_instance_pss_matches_smaps_rollup(run_id: str) -> None:
    rt: Runtime = backend_or_skip("ns")  # type: ignore[assignment]
    prepared = rt.prepare(image.build(image.Recipe()))
    spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", argv=("sleep", "600"))
    inst = rt.create(spec, prepared)
    try:
        rt.start(inst)
        rt.wait_ready(inst, 30)
        time.sleep(0.5)
        reported = rt.stats(inst)
        pids = processes_in_cgroup_named(spec.name)
        assert pids and sorted(pids) == sorted(reported.pids)
        truth = sum(pss_of(p) for p in pids)
    finally:
        rt.stop(inst, grace=0)
        rt.remove(inst)
    assert truth > 0
    assert abs(reported.pss - truth) <= 0.05 * truth, (reported.pss, truth)
