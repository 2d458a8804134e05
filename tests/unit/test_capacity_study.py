"""The density study's ramp on a fake backend: stop conditions, batches, clean-up."""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Any

import pytest

from harness import results, scenario, studies, validate
from harness.core import hostinfo, image
from harness.core.errors import InstanceError, ScenarioError
from harness.core.probes import kernel_limits
from harness.sampling import Cell, Context, Measurement, Runner
from harness.studies import density
from runtimes.base import Instance, Prepared, Stats
from tests.unit.fakes import FakeRuntime

GIB = 2**30
MIB = 2**20


class SlowFake(FakeRuntime):
    """Instances whose start takes `delay`; each costs `cost` bytes of MemAvailable."""

    def __init__(self, host: FakeHost, delay: float = 0.0, cost: int = 0,
                 fail_at: int = 0) -> None:
        super().__init__("fake", delay=delay)
        self.host, self.cost, self.fail_at = host, cost, fail_at
        self.error: Exception = InstanceError("no more room")

    def create(self, spec: Any, prepared: Prepared) -> Instance:
        if self.fail_at and self.created + 1 == self.fail_at:
            self.created += 1
            raise self.error
        inst = super().create(spec, prepared)
        self.host.used += self.cost
        return inst

    def remove(self, inst: Instance) -> None:
        if inst.spec.name in self.live:
            self.host.used -= self.cost
        super().remove(inst)

    def stats(self, inst: Instance) -> Stats:
        return Stats(pids=(1,), pss=MIB, uss=MIB // 2, rss=2 * MIB, cgroup=2 * MIB)

    def daemons(self) -> dict[str, list[int]]:
        return {}


class FakeHost:
    def __init__(self, avail: int = 16 * GIB) -> None:
        self.avail, self.used = avail, 0

    def meminfo(self) -> dict[str, int]:
        return {"MemAvailable": self.avail - self.used, "SUnreclaim": 100 * MIB,
                "KernelStack": 4 * MIB, "PageTables": 2 * MIB, "Percpu": MIB}


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    h = FakeHost()
    monkeypatch.setattr(hostinfo, "meminfo", h.meminfo)
    return h


@pytest.fixture
def img(tmp_path: Path) -> image.Image:
    return image.build(image.Recipe(), tmp_path / "cache")


def make_cell(img: image.Image, rt: FakeRuntime) -> Cell:
    scen = scenario.parse({"name": "d", "study": "density", "backends": ["host"],
                           "workload": {"argv": ["sleep", "3600"]}}, "d.toml")
    v = scen.variants[0]
    return Cell(backend=rt.name, variant=v, config=scen.config(v), runtime=rt,
                prepared=Prepared(image=img, backend=rt.name, ref="x"),
                  traits=rt.traits())


def run_ramp(img: image.Image, rt: FakeRuntime, **params: Any
             ) -> tuple[list[Measurement], list[dict[str, Any]], Context]:
    events: list[dict[str, Any]] = []
    ctx = Context("abcdef0123", timeout=5)
    ctx.params = {"settle": 0.0, "min_mem_available": "1G", **params}
    ctx.event = lambda kind, **data: events.append({"kind": kind, **data})
    out = studies.get("density").sample(ctx, make_cell(img, rt))
    return out, events, ctx


def values(out: list[Measurement], metric: str) -> dict[int, float]:
    return {m.instance: m.value for m in out if m.metric == metric and m.instance is not None}


def test_ramp_to_max_instances_records_every_step(host: FakeHost, img: image.Image) -> None:
    rt = SlowFake(host, cost=10 * MIB)
    out, events, ctx = run_ramp(img, rt, max_instances=5)
    assert sorted(values(out, "density.mem_available")) == [0, 1, 2, 3, 4, 5]
    assert values(out, "density.mem_available")[5] == 16 * GIB - 50 * MIB
    assert values(out, "density.pss_total")[3] == 3 * MIB
    assert values(out, "density.cgroup_total")[3] == 6 * MIB
    assert 0 not in values(out, "density.cgroup_total")
    assert sorted(values(out, "density.start_latency")) == [1, 2, 3, 4, 5]
    assert events[-1]["reason"] == "max_instances" and events[-1]["instances"] == 5
    assert rt.live == {} and ctx.live == {} and host.used == 0


def test_batches_of_concurrency(host: FakeHost, img: image.Image) -> None:
    rt = SlowFake(host)
    out, events, _ = run_ramp(img, rt, max_instances=7, concurrency=3)
    assert sorted(values(out, "density.pss_total")) == [0, 3, 6, 7]  # last batch trimmed
    assert sorted(values(out, "density.start_latency")) == list(range(1, 8))
    assert events[-1]["concurrency"] == 3 and rt.live == {}


def test_hard_floor_stops_before_the_host_is_at_risk(host: FakeHost, img: image.Image
                                                     ) -> None:
    host.avail = 2 * GIB
    rt = SlowFake(host, cost=300 * MIB)
    out, events, _ = run_ramp(img, rt, max_instances=50, min_mem_available="1G",
                              max_memory_fraction=0.9)
    # 2 GiB - 3 x 300 MiB = 1.12 GiB; a fourth would go below the 1 GiB floor.
    assert values(out, "density.mem_available")[0] == 2 * GIB
    assert min(values(out, "density.mem_available").values()) >= 1 * GIB
    assert events[-1]["reason"] == "min_mem_available" and events[-1]["instances"] == 3
    assert host.used == 0


def test_memory_fraction(host: FakeHost, img: image.Image) -> None:
    rt = SlowFake(host, cost=1 * GIB)
    _, events, _ = run_ramp(img, rt, max_instances=50, max_memory_fraction=0.25)
    assert events[-1]["reason"] == "max_memory_fraction"
    assert events[-1]["instances"] == 4  # 4 GiB of 16; a fifth would pass 25 %


def test_slo_stop(host: FakeHost, img: image.Image) -> None:
    rt = SlowFake(host, delay=0.03)
    out, events, _ = run_ramp(img, rt, max_instances=50, slo_start=0.01, slo_consecutive=2)
    assert events[-1]["reason"] == "slo_start" and events[-1]["instances"] == 2
    assert all(v > 0.01 for v in values(out, "density.start_latency").values())


def test_interrupt_ends_the_ramp_and_removes_everything(host: FakeHost, img: image.Image
                                                        ) -> None:
    rt = SlowFake(host)
    calls = iter(range(100))
    ctx_params: dict[str, Any] = {"max_instances": 50}
    events: list[dict[str, Any]] = []
    ctx = Context("abcdef0123", timeout=5)
    ctx.params = {"settle": 0.0, **ctx_params}
    ctx.event = lambda kind, **data: events.append({"kind": kind, **data})
    ctx.stop_requested = lambda: next(calls) >= 4
    out = studies.get("density").sample(ctx, make_cell(img, rt))
    assert events[-1]["reason"] == "interrupted" and events[-1]["instances"] == 4
    assert max(values(out, "density.pss_total")) == 4
    assert rt.live == {} and ctx.live == {}


@pytest.mark.parametrize("error, reason", [
    (InstanceError("no more room"), "instance failed: no more room"),
    (OSError(errno.ENOMEM, "Cannot allocate memory"),
     "limit memory: instance failed: OSError: [Errno 12] Cannot allocate memory"),
])
def test_failed_instance_keeps_the_steps_taken(host: FakeHost, img: image.Image,
                                               error: Exception, reason: str) -> None:
    rt = SlowFake(host, fail_at=4)
    rt.error = error
    out, events, _ = run_ramp(img, rt, max_instances=10)
    assert max(values(out, "density.pss_total")) == 3
    assert events[-1]["reason"] == reason
    assert rt.live == {}


@pytest.mark.parametrize("error", [KeyError("pss"), TypeError("bad"), AssertionError(),
                                   ConnectionError("daemon gone")])
def test_a_harness_error_after_the_first_step_fails_the_sample(
        host: FakeHost, img: image.Image, error: Exception) -> None:
    """Neither a named limit nor the instance's own failure: not a stop reason."""
    rt = SlowFake(host, fail_at=4)
    rt.error = error
    with pytest.raises(type(error)):
        run_ramp(img, rt, max_instances=10)
    assert rt.live == {}


def test_first_instance_failing_fails_the_sample(host: FakeHost, img: image.Image) -> None:
    rt = SlowFake(host, fail_at=1)
    events: list[dict[str, Any]] = []
    ctx = Context("abcdef0123", timeout=5)
    ctx.params = {"settle": 0.0, "max_instances": 10}
    ctx.event = lambda kind, **data: events.append({"kind": kind, **data})
    with pytest.raises(InstanceError):
        studies.get("density").sample(ctx, make_cell(img, rt))
    assert events[-1]["reason"] == "failed: no more room" and events[-1]["instances"] == 0
    assert rt.live == {}


def test_runner_records_instance_counts_and_the_stop_event(
        host: FakeHost, img: image.Image, tmp_path: Path) -> None:
    scen = scenario.parse({"name": "d", "study": "density", "backends": ["host"],
                           "workload": {"argv": ["sleep", "3600"]},
                           "sampling": {"warmups": 0, "min_samples": 2, "max_samples": 2,
                                        "metric": "density.start_latency"},
                           "params": {"max_instances": 3, "settle": 0.0}}, "d.toml")
    rt = SlowFake(host)
    cell = make_cell(img, rt)
    journal = results.Journal(tmp_path / "d.journal", {"run_id": "abcdef0123", "schema": 1})
    study = studies.get("density")
    try:
        Runner(scen, [cell], journal, study.sample, lambda m: studies.unit_of(study, m),
               seed=1).run()
    finally:
        journal.close()
    assert cell.samples == 2 and cell.status == "max_samples"
    lat = [s for s in journal.samples if s.metric == "density.start_latency"]
    assert sorted((s.round, s.instance) for s in lat) == [(r, n) for r in (1, 2)
                                                                for n in (1, 2, 3)]
    stops = [e for e in journal.events if e["kind"] == "ramp_stopped"]
    assert [e["round"] for e in stops] == [1, 2]
    assert rt.live == {}


def parse(params: dict[str, Any], **top: Any) -> scenario.Scenario:
    data = {"name": "d", "study": "density", "backends": ["host", "ns"],
            "workload": {"argv": ["sleep", "3600"]},
            "sampling": {"metric": "density.start_latency"}, "params": params, **top}
    return scenario.parse(data, "d.toml")


@pytest.mark.parametrize("params, key", [
    ({"concurrency": 0}, "params.concurrency"),
    ({"max_memory_fraction": 1.5}, "params.max_memory_fraction"),
    ({"min_mem_available": "lots"}, "params.min_mem_available"),
    ({"per_backend": {"dockr": {"max_instances": 3}}}, "params.per_backend.dockr"),
    ({"per_backend": {"ns": {"max_instance": 3}}}, "params.per_backend.ns.max_instance"),
    ({"per_backend": {"ns": {"slo_start": "1s"}}}, "params.per_backend.ns.slo_start"),
    ({"per_backend": {"ns": 3}}, "params.per_backend.ns"),
])
def test_bad_params_name_the_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(ScenarioError) as e:
        validate.check(parse(params))
    assert e.value.key == key


def test_density_needs_marker_readiness() -> None:
    s = parse({}, workload={"argv": ["true"], "readiness": "exit"})
    with pytest.raises(ScenarioError) as e:
        validate.check(s)
    assert e.value.key == "workload.readiness"


def test_per_backend_overrides() -> None:
    params = {"max_instances": 40, "per_backend": {"libvirt": {"max_instances": 6},
                                                   "docker:runsc": {"concurrency": 2}}}
    assert density.resolve(params, "ns").max_instances == 40
    assert density.resolve(params, "libvirt").max_instances == 6
    runsc = density.resolve(params, "docker:runsc")
    assert runsc.concurrency == 2 and runsc.max_instances == 40
    assert density.resolve({}, "ns").min_mem_available == 2 * GIB


def test_shipped_scenario_is_valid() -> None:
    s = scenario.load("density")
    assert s.study == "density" and s.sampling.warmups == 0
    for check in validate.CHECKS:
        if check is not validate.check_backends:  # engines may not be installed here
            assert check(s) == [], check



def test_memory_measured_every_kth_count_at_scale(host: FakeHost, img: image.Image) -> None:
    """Every count up to DENSE, then every measure_every-th, and always the top; the start
    latency of every instance."""
    rt = SlowFake(host, cost=MIB)
    out, events, _ = run_ramp(img, rt, max_instances=73, measure_every=10)
    measured = sorted(values(out, "density.pss_total"))
    assert measured == [*range(density.DENSE + 1), 60, 70, 73]
    assert sorted(values(out, "density.tasks")) == measured  # the counters with them
    assert len(values(out, "density.start_latency")) == 73
    assert events[-1]["measure_every"] == 10 and events[-1]["instances"] == 73
    # auto: about POINTS measured counts past DENSE
    p = density.resolve({"max_instances": 2000}, "ns")
    assert p.measure_every == math.ceil((2000 - density.DENSE) / density.POINTS)


class Counters:
    """A host whose task count grows by `per` with every live instance of `rt`."""

    def __init__(self, rt: SlowFake, per: int, pid_max: int) -> None:
        self.rt, self.per, self.pid_max = rt, per, pid_max

    def usage(self, daemon_pids: Any = ()) -> dict[str, int]:
        return {"tasks": 100 + self.per * len(self.rt.live), "keys": 3}

    def ceilings(self, daemon_pids: Any = ()) -> dict[str, int]:
        return {"pid_max": self.pid_max, "maxkeys": 200}


def test_a_kernel_limit_stops_the_ramp_before_it_is_reached(
        host: FakeHost, img: image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = SlowFake(host)
    c = Counters(rt, per=10, pid_max=1100)
    monkeypatch.setattr(kernel_limits, "usage", c.usage)
    monkeypatch.setattr(kernel_limits, "ceilings", c.ceilings)
    out, events, _ = run_ramp(img, rt, max_instances=500)
    # 100 + 10 n must stay within 95 % of 1,100: n = 94 is the last step that fits.
    reason = events[-1]["reason"]
    assert reason.startswith("limit pid_max: tasks") and "kernel.pid_max 1,100" in reason
    assert events[-1]["instances"] == 94 and max(values(out, "density.tasks").values()) == 1040
    assert events[-1]["limits"] == {"pid_max": 1100, "maxkeys": 200}
    assert rt.live == {}


def test_a_failure_at_a_limit_names_it(host: FakeHost, img: image.Image,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rt = SlowFake(host, fail_at=30)
    rt.error = OSError(errno.EMFILE, "Too many open files")
    _, events, _ = run_ramp(img, rt, max_instances=100)
    assert events[-1]["reason"].startswith("limit nofile: instance failed")
    # A failure far from every ceiling stays an instance failure.
    rt = SlowFake(host, fail_at=30)
    c = Counters(rt, per=10, pid_max=10**6)
    monkeypatch.setattr(kernel_limits, "usage", c.usage)
    monkeypatch.setattr(kernel_limits, "ceilings", c.ceilings)
    _, events, _ = run_ramp(img, rt, max_instances=100)
    assert events[-1]["reason"] == "instance failed: no more room"
    # ... and one at a ceiling names the limit.
    rt = SlowFake(host, fail_at=30)
    c = Counters(rt, per=10, pid_max=430)
    monkeypatch.setattr(kernel_limits, "usage", c.usage)
    monkeypatch.setattr(kernel_limits, "ceilings", c.ceilings)
    _, events, _ = run_ramp(img, rt, max_instances=100)
    assert events[-1]["reason"].startswith("limit pid_max") and \
        events[-1]["reason"].endswith("instance failed: no more room")
