"""`bench capacity` with an application result (harness.capacity.apps): the counts
by CPU and by memory from the synthetic http result's own medians, which binds, the
refusals, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness import cli, results
from harness.capacity import TargetHost
from harness.capacity import apps as apps_capacity
from harness.core.errors import UsageError
from harness.report import presentation
from tests.unit import report_synth as synth

GiB = 2**30


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    return synth.write_result(tmp_path_factory.mktemp("cap"), "http",
                              synth.app_samples(rng, "http"), synth.BACKENDS,
                              config={"limits": {"cpuset": "1"}})


def app_plan(docs: list[results.Loaded], target: TargetHost, rate: float | None
         ) -> apps_capacity.AppPlan:
    return apps_capacity.plan(docs, target, rate,
                              {name: app.throughput for name, app in presentation.apps().items()})


def medians(path: Path, backend: str, variant: str, metric: str) -> float:
    doc = results.load_result(path)
    v = [s.value for s in doc.samples
         if s.backend == backend and s.variant == variant and s.metric == metric]
    assert v, (backend, variant, metric)
    return float(np.median(v))


def cell(plan: apps_capacity.AppPlan, label: str) -> apps_capacity.AppCell:
    found = [c for c in plan.cells if c.label == label]
    assert len(found) == 1, [c.label for c in plan.cells]
    return found[0]


def test_cpu_binds_from_the_throughput_per_core(http: Path) -> None:
    target = TargetHost(memory=64 * GiB, cpus=32)
    plan = app_plan([(str(http), results.load_result(http))], target, rate=5000)
    c = cell(plan, "docker [publish, small]")
    served = medians(http, "docker", "network=publish,small", "http.rps")
    assert c.throughput == pytest.approx(served)
    assert c.cores == 1 and c.per_core == pytest.approx(served)
    assert c.by_cpu == math.floor(32 * served / 5000)
    assert c.by_cpu_ci[0] <= c.by_cpu <= c.by_cpu_ci[1]
    pss = medians(http, "docker", "network=publish", "http.pss_loaded")
    daemons = medians(http, "docker", "network=publish", "http.daemon_pss_loaded")
    assert c.by_memory == math.floor((64 * GiB * 0.9 - daemons) / pss)
    assert c.instances == c.by_cpu and c.binding == "CPU"
    # a rate above what one instance served on its core is flagged, not hidden
    big = cell(plan, "docker [publish, 1MiB]")
    assert any("assuming throughput scales linearly" in n for n in big.notes)


def test_memory_binds_on_a_small_host_and_the_vm_is_marked(http: Path) -> None:
    target = TargetHost(memory=2 * GiB, cpus=64)
    plan = app_plan([(str(http), results.load_result(http))], target, rate=100)
    vm = cell(plan, "libvirt [bridge, small] (TCG, emulated)")
    assert vm.binding == "memory" and vm.instances == vm.by_memory
    assert vm.by_memory is not None and vm.by_memory < vm.by_cpu
    assert any("TCG" in n for n in vm.notes)
    host = cell(plan, "host [host, small]")
    assert host.daemons == 0.0  # no daemon: nothing paid once per host


def test_without_a_rate_each_instance_gets_its_measured_cores(http: Path) -> None:
    plan = app_plan([(str(http), results.load_result(http))],
                    TargetHost(memory=64 * GiB, cpus=16), rate=None)
    assert {c.by_cpu for c in plan.cells} == {16}


def test_the_samples_cpuset_decides_the_cores(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    kv = synth.write_result(tmp_path, "kv", synth.app_samples(
        rng, "kv", placement={"cpuset": "2-3", "client_cpuset": "0"}), synth.BACKENDS,
        config={"limits": {"cpuset": "1"}})
    plan = app_plan([(str(kv), results.load_result(kv))],
                    TargetHost(memory=64 * GiB, cpus=16), rate=None)
    assert {c.cores for c in plan.cells} == {2.0}
    assert {c.by_cpu for c in plan.cells} == {8}
    assert "cpuset 2-3" in plan.assumptions[0]


def test_refusals(http: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    kv = synth.write_result(tmp_path, "kv", synth.app_samples(rng, "kv"), synth.BACKENDS)
    docs = [(str(p), results.load_result(p)) for p in (http, kv)]
    with pytest.raises(UsageError, match="one application study"):
        app_plan(docs, TargetHost(memory=GiB, cpus=1), rate=None)
    with pytest.raises(UsageError, match="--rate"):
        app_plan(docs[:1], TargetHost(memory=GiB, cpus=1), rate=-1)
    assert apps_capacity.cpuset_cores("0,2-3") == 3
    with pytest.raises(ValueError):
        apps_capacity.cpuset_cores("one")


def test_command_line(http: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke(cli.cli, ["capacity", str(http), "--host-memory", "64G",
                                       "--host-cpus", "32", "--rate", "5000", "--json"])
    assert run.exit_code == 0, run.output
    plan = json.loads(run.output)
    assert plan["study"] == "http" and plan["rate"] == 5000
    assert {c["binding"] for c in plan["cells"]} <= {"CPU", "memory"}
    run = CliRunner().invoke(cli.cli, ["capacity", str(http), "--host-memory", "64G",
                                       "--host-cpus", "32"])
    assert run.exit_code == 0 and "binding" in run.output, run.output
    run = CliRunner().invoke(cli.cli, ["capacity", str(http), "--host-memory", "64G",
                                       "--host-cpus", "32", "--slo-start", "2s"])
    assert run.exit_code == 2 and "density results only" in run.output, run.output
    rng = np.random.default_rng(2)
    density = synth.write_result(tmp_path, "density", synth.density_samples(rng),
                                 synth.BACKENDS)
    run = CliRunner().invoke(cli.cli, ["capacity", str(density), "--host-memory", "64G",
                                       "--host-cpus", "32", "--rate", "5"])
    assert run.exit_code == 2 and "application results only" in run.output


def _hand_made(tmp_path: Path, pss: list[float] | None = None,
               daemons: list[float] | None = None) -> Path:
    """docker on cpuset 0-1 (2 cores) served 9000, 10000, 11000 req/s; 100 MiB PSS under
    load and 200 MiB of daemons in each sample (unless given)."""
    MiB = 2**20
    pss = [100 * MiB] * 3 if pss is None else pss
    daemons = [200 * MiB] * 3 if daemons is None else daemons
    samples: list[dict[str, object]] = []
    for r, rps in enumerate((9000.0, 10000.0, 11000.0)):
        samples.append({"backend": "docker", "variant": "network=bridge,small", "sub": "small",
                        "metric": "http.rps", "unit": "req/s", "value": rps, "round": r})
    samples += [{"backend": "docker", "variant": "network=bridge", "metric": "http.pss_loaded",
                 "unit": "B", "value": v, "round": r} for r, v in enumerate(pss)]
    samples += [{"backend": "docker", "variant": "network=bridge", "unit": "B", "round": r,
                 "metric": "http.daemon_pss_loaded", "value": v} for r, v in enumerate(daemons)]
    return synth.write_result(tmp_path, "http", samples, synth.BACKENDS,
                              config={"limits": {"cpuset": "0-1"}})


@pytest.mark.parametrize(("rate", "workload", "by_cpu", "by_memory", "binding"), [
    # 10000 req/s on 2 cores: 5000 per core; 2500 each needs 0.5 core: 16 cores hold 32.
    # Memory: 8 GiB x 0.9 = 7372.8 MiB, less 200 MiB of daemons, / 100 MiB = 71.7 -> 71.
    ("2500", "0", 32, 71, "CPU"),
    # 500 each needs 0.1 core: 160 by CPU; memory binds at 71.
    ("500", "0", 160, 71, "memory"),
    # 28 MiB of workload memory each: 7172.8 / 128 = 56.04 -> 56.
    ("500", "28M", 160, 56, "memory"),
])
def test_a_plan_at_a_rate_matches_the_hand_computed_count(
        tmp_path: Path, rate: str, workload: str, by_cpu: int, by_memory: int,
        binding: str) -> None:
    path = _hand_made(tmp_path)
    run = CliRunner().invoke(cli.cli, ["capacity", str(path), "--host-memory", "8G",
                                       "--host-cpus", "16", "--rate", rate,
                                       "--workload-memory", workload, "--json"])
    assert run.exit_code == 0, run.output
    [c] = json.loads(run.output)["cells"]
    assert (c["by_cpu"], c["by_memory"], c["binding"]) == (by_cpu, by_memory, binding)
    assert c["instances"] == min(by_cpu, by_memory)
    assert c["cores_needed"] == pytest.approx(int(rate) / 5000)


@pytest.mark.parametrize(("pss", "daemons", "named"), [
    ([], None, "http.pss_loaded"),
    ([0.0, 0.0, 0.0], None, "http.pss_loaded"),  # a failed read of an older result
    (None, [], "http.daemon_pss_loaded"),  # was taken as 0: more instances planned
])
def test_a_plan_without_its_memory_inputs_is_refused_naming_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pss: list[float] | None,
        daemons: list[float] | None, named: str) -> None:
    path = _hand_made(tmp_path, pss, daemons)
    with pytest.raises(UsageError, match=f"docker .*: {named}"):
        app_plan([(str(path), results.load_result(path))],
                 TargetHost(memory=8 * GiB, cpus=16), rate=2500)
    with pytest.raises(SystemExit) as e:
        cli.main(["capacity", str(path), "--host-memory", "8G", "--host-cpus", "16",
                  "--rate", "2500"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and named in err, err
    assert len(err.strip().splitlines()) == 1
