"""The warm study against fakes: its arithmetic (refill rate, burst), the idle cost read
from the host, a sample of any Pool (a fake one) and of a backend without a pool, a pool
that cannot be filled, its [params] checks; its chapter and the claims on warm.to_ready
from synthetic results."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness import cli, scenario, validate
from harness.core import image
from harness.core.errors import InstanceError
from harness.core.records import Sample
from harness.report import claims
from harness.report.studies import warm as chapter
from harness.studies import warm
from runtimes.base import Instance, InstanceSpec, Pool, Prepared, Slot
from tests.unit import report_synth as synth
from tests.unit.test_studies_runner import OPEN, StudyFake, make


@pytest.fixture(autouse=True)
def _close_journals() -> Iterator[None]:
    """The journals `make` opens (it keeps them in OPEN), closed after each test."""
    yield
    while OPEN:
        OPEN.pop().close()


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path / "state"))


@pytest.fixture
def img(tmp_path: Path) -> image.Image:
    return image.build(image.Recipe(), tmp_path / "cache")


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A real process whose memory stays put while it is read twice."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.05)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def pss_of(pid: int) -> int:
    """Pss of /proc/PID/smaps_rollup, read here: the kernel's figure, not cvbench's.
    (It moves a little as other processes map or drop the libraries it shares, so it is
    compared within 10 %: its RSS, or another process's PSS, is several times off.)"""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Pss line")


class FakePool(StudyFake):
    """A Pool whose filler works only while someone looks (each ready() makes one slot),
    so a burst, which never looks, empties it: the fall back to cold is deterministic."""

    def __init__(self, slot_pid: int = 0, fail: str = "") -> None:
        super().__init__("fakepool")
        self.slot_pid, self.fail = slot_pid, fail
        self.size = 0
        self.slots_ready: list[str] = []
        self.fills: list[int] = []
        self.drains = 0
        self.want: InstanceSpec | None = None

    def fill(self, spec: InstanceSpec, prepared: Prepared, size: int) -> None:
        self.want, self.size = spec, size
        self.fills.append(size)

    def ready(self) -> int:
        if self.fail:
            raise InstanceError(self.fail)
        if len(self.slots_ready) < self.size:
            self.slots_ready.append(f"slot{len(self.slots_ready)}")
        return len(self.slots_ready)

    def slots(self) -> list[Slot]:
        return [Slot(pids=(self.slot_pid,) if self.slot_pid else (), disk_bytes=4096,
                     details={"name": s}) for s in self.slots_ready]

    def drain(self) -> None:
        self.drains += 1
        self.size, self.want = 0, None
        self.slots_ready.clear()

    def create(self, spec: Any, prepared: Prepared) -> Instance:
        inst = super().create(spec, prepared)
        inst.warm = "cold"
        if self.slots_ready:
            self.slots_ready.pop()
            inst.warm = "slot"
        return inst


def test_refill_rate_and_burst_arithmetic() -> None:
    assert warm.refill_rate(4, 1_000_000_000, 3_000_000_000) == 2.0
    with pytest.raises(ValueError):
        warm.refill_rate(4, 5, 5)
    reqs = [warm.Request(0, 100_000_000, "slot"), warm.Request(100_000_000, 150_000_000, "slot"),
            warm.Request(150_000_000, 500_000_000, "cold"),
            warm.Request(500_000_000, 1_000_000_000, "cold")]
    assert warm.burst_figures(reqs) == {"warm.burst.rate": 4.0, "warm.burst.slots": 2.0,
                                        "warm.burst.cold": 2.0}
    with pytest.raises(ValueError):
        warm.burst_figures([])


def test_idle_cost_from_the_kernel(sleeper: int, tmp_path: Path) -> None:
    v1, v2, old = tmp_path / "v1", tmp_path / "v2", tmp_path / "v2old"
    for d in (v1, v2, old):
        d.mkdir()
    (v1 / "memory.kmem.usage_in_bytes").write_text("12345\n")
    (v2 / "memory.stat").write_text("anon 10\nkernel 777\nslab 5\n")
    (old / "memory.stat").write_text("anon 10\nkernel_stack 1\npagetables 2\npercpu 3\n"
                                     "sock 4\nslab 5\nfile 99\n")
    cost = warm.idle_cost(Slot(pids=(sleeper,), cgroup=str(v1), disk_bytes=42))
    assert cost.pop("warm.idle.pss") == pytest.approx(pss_of(sleeper), rel=0.1)
    assert cost == {"warm.idle.kernel": 12345.0, "warm.idle.disk": 42.0}
    assert warm.idle_cost(Slot(cgroup=str(v2), namespaces=6)) == {
        "warm.idle.pss": 0.0, "warm.idle.kernel": 777.0, "warm.idle.namespaces": 6.0}
    assert warm.idle_cost(Slot(cgroup=str(old)))["warm.idle.kernel"] == 15.0
    # a slot without processes costs no PSS (a true 0); what it cannot tell is absent
    assert warm.idle_cost(Slot()) == {"warm.idle.pss": 0.0}


def by_metric(samples: list[Sample]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in samples:
        out.setdefault(s.metric, []).append(float(s.value))
    return out


def test_a_sample_of_any_pool(tmp_path: Path, img: image.Image, sleeper: int) -> None:
    rt = FakePool(slot_pid=sleeper)
    assert isinstance(rt, Pool)
    r, _cells, journal = make(tmp_path, img, "warm", [rt], params={"pool": 2, "burst": 5},
                              metric="warm.to_ready", warmups=0, min_samples=2,
                              max_samples=2)
    r.run()
    got = by_metric(journal.samples)
    assert len(got["warm.refill_rate"]) == 2 and all(v > 0 for v in got["warm.refill_rate"])
    assert got["warm.idle.pss"] == pytest.approx([pss_of(sleeper)] * 4, rel=0.1)  # 2 x 2
    assert got["warm.idle.disk"] == [4096.0] * 4
    assert "warm.idle.kernel" not in got  # the fake's slots have no cgroup
    assert got["warm.from_slot"] == [1.0, 1.0]
    assert got["warm.burst.slots"] == [2.0, 2.0] and got["warm.burst.cold"] == [3.0, 3.0]
    assert len(got["warm.burst.to_ready"]) == 10
    assert got["warm.burst.from_slot"] == [1.0, 1.0, 0.0, 0.0, 0.0] * 2
    assert {"warm.to_ready", "warm.create", "warm.start", "warm.ready", "warm.pss"} <= set(got)
    assert rt.fills == [2, 2] and rt.drains == 4  # before and after each sample
    assert rt.live == {}  # every instance removed
    # the pool was filled for the study's spec: the instances' but for name and nonce
    assert rt.specs and all(s.argv == rt.specs[0].argv for s in rt.specs)


def test_a_backend_without_a_pool_is_its_cold_start(tmp_path: Path, img: image.Image) -> None:
    rt = StudyFake("docker")
    assert not isinstance(rt, Pool)
    r, _cells, journal = make(tmp_path, img, "warm", [rt], params={"pool": 1, "burst": 3},
                              metric="warm.to_ready", warmups=0, min_samples=1,
                              max_samples=1)
    r.run()
    got = by_metric(journal.samples)
    assert got["warm.from_slot"] == [0.0]
    assert got["warm.burst.slots"] == [0.0] and got["warm.burst.cold"] == [3.0]
    assert not {"warm.refill_rate", "warm.idle.pss"} & set(got)


def test_a_pool_that_cannot_be_filled_fails_the_sample(tmp_path: Path,
                                                       img: image.Image) -> None:
    rt = FakePool(fail="fakepool: the pool cannot be filled: daemon gone")
    r, cells, journal = make(tmp_path, img, "warm", [rt], params={"pool": 2, "burst": 3},
                             metric="warm.to_ready", warmups=0, min_samples=1,
                             max_samples=1)
    r.run()
    assert journal.samples == []
    failed = [e for e in journal.events if e["kind"] == "sample_failed"]
    assert failed and "daemon gone" in failed[0]["error"]
    assert cells[0].failures >= 1 and rt.drains >= 2


@pytest.mark.parametrize(("params", "readiness", "field"), [
    ({"pool": 0}, "marker", "params.pool"),
    ({"pool": 4, "burst": 4}, "marker", "params.burst"),
    ({}, "exit", "workload.readiness")])
def test_params_checks_name_the_field(tmp_path: Path, params: dict[str, Any], readiness: str,
                                      field: str, capsys: pytest.CaptureFixture[str]) -> None:
    s = scenario.parse({"name": "w", "study": "warm", "backends": ["host"], "params": params,
                        "workload": {"argv": ["sleep", "60"], "readiness": readiness},
                        "sampling": {"metric": "warm.to_ready"}}, "w.toml")
    errors = validate.check_study(s)
    assert [str(e) for e in errors] and field in str(errors[0]), errors
    path = tmp_path / "w.toml"
    path.write_text(f'name = "w"\nstudy = "warm"\nbackends = ["host"]\n'
                    f'[workload]\nargv = ["sleep", "60"]\nreadiness = "{readiness}"\n'
                    f'[params]\n' + "".join(f"{k} = {v}\n" for k, v in params.items())
                    + '[sampling]\nmetric = "warm.to_ready"\n')
    with pytest.raises(SystemExit) as ended:
        cli.main(["run", str(path), "--out", str(tmp_path / "D")])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and field in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_shipped_scenario_validates(repo: Path) -> None:
    s = scenario.load(str(repo / "scenarios" / "warm.toml"))
    assert validate.check_study(s) == []


# --- the chapter and the claims, from synthetic results ----------------------------------

WARM_BACKENDS: dict[str, dict[str, Any]] = {
    "host": {"kind": "process"}, "docker": {"kind": "container"},
    "docker:precreated": {"kind": "container"},
    "libvirt": {"kind": "vm", "accel": "tcg", "emulated": True}}
TO_READY = {"host": 0.002, "docker": 0.35, "docker:precreated": 0.0021, "libvirt": 4.0}


def warm_results(out: Path, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    s: list[dict[str, Any]] = []
    for b, t in TO_READY.items():
        pool = b == "docker:precreated"
        for r in range(n):
            s.append(synth._s(b, "default", "warm.to_ready", "s", t * rng.lognormal(0, 0.05), r))
            s.append(synth._s(b, "default", "warm.from_slot", "bool", float(pool), r))
            s.append(synth._s(b, "default", "warm.burst.rate", "instances/s", 3.0, r))
            s.append(synth._s(b, "default", "warm.burst.slots", "instances", 4.0 * pool, r))
            s.append(synth._s(b, "default", "warm.burst.cold", "instances",
                              8.0 - 4.0 * pool, r))
            for i in range(8):
                s.append(synth._s(b, "default", "warm.burst.to_ready", "s",
                                  t if (pool and i < 4) else TO_READY["docker"], r, i))
                s.append(synth._s(b, "default", "warm.burst.from_slot", "bool",
                                  float(pool and i < 4), r, i))
            if pool:
                s.append(synth._s(b, "default", "warm.refill_rate", "slots/s", 10.0, r))
                for i in range(4):
                    s.append(synth._s(b, "default", "warm.idle.pss", "B", 0.0, r, i))
                    s.append(synth._s(b, "default", "warm.idle.disk", "B", 4096.0, r, i))
    return synth.load([synth.write_result(out, "warm", s, WARM_BACKENDS)])[1]


def test_chapter_marks_warm_and_cold_and_tabulates_costs(tmp_path: Path) -> None:
    from harness.report.draw import Look

    df = warm_results(tmp_path)
    look = Look.of(df)
    fig = chapter.warm(df, look)
    assert fig is not None
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert any(x.startswith("docker:precreated") and x.endswith("· warm") for x in labels)
    assert any(x.startswith("docker ") and x.endswith("· cold") for x in labels), labels
    fig = chapter.burst(df, look)
    assert fig is not None
    # the pooled backend's first 4 requests are diamonds (from a slot), the rest hollow
    marks = fig.axes[0].collections
    precreated = [m for m in marks if len(m.get_offsets()) and len(m.get_facecolor())
                  and tuple(m.get_facecolor()[0][:3]) == draw_rgb(look.colour("docker:precreated"))]
    assert sorted(len(m.get_offsets()) for m in precreated) == [4]
    t = chapter.warm_table(df, False)
    assert t is not None
    rows = {r[0]: dict(zip(t.columns, r, strict=True)) for r in t.rows}
    assert rows["docker:precreated"]["start"] == "warm"
    assert rows["docker"]["start"] == "cold"
    assert rows["docker:precreated"]["refill"].startswith("10 slots/s")
    assert rows["docker"]["refill"] == "—"
    assert rows["docker:precreated"]["burst: slot / cold"] == "4 / 4"
    assert rows["docker"]["burst: slot / cold"] == "0 / 8"


def draw_rgb(colour: Any) -> tuple[float, ...]:
    from matplotlib.colors import to_rgb

    return tuple(to_rgb(colour))


def test_seed_claims_judged_on_warm_to_ready(tmp_path: Path) -> None:
    t = claims.evaluate(warm_results(tmp_path))
    t = t[t["metric"] == "warm.to_ready"]
    near = t[t["claim"] == "start-overhead"].set_index("a")
    # the pooled container is within 25 % of the host's cold start, the cold one is not
    assert near.loc["docker:precreated", "verdict"] == claims.HOLDS
    assert near.loc["docker", "verdict"] == claims.FAILS
    vs_vm = t[t["claim"] == "start"]
    assert set(vs_vm["a"]) == {"docker", "docker:precreated"}
    assert set(vs_vm["verdict"]) == {claims.HOLDS}


def test_the_run_drains_every_pool_at_its_end(tmp_path: Path) -> None:
    """A run's clean-up stops every pool's filler and removes its slots before its gc;
    a pool that cannot be drained is a problem reported, and the others are drained."""
    from harness.plan import Plan
    from harness.session import Session

    class Stuck(FakePool):
        def drain(self) -> None:
            super().drain()
            raise InstanceError("dockerd gone")

    s = scenario.parse({"name": "w", "study": "warm", "backends": ["host"],
                        "sampling": {"metric": "warm.to_ready"}}, "w.toml")
    full, stuck, plain = FakePool(), Stuck(), StudyFake("docker")
    full.size, full.slots_ready = 2, ["slot0", "slot1"]
    sess = Session(s, None, tmp_path, reporter=None)  # type: ignore[arg-type]
    sess.plan = Plan(s, ["a", "b", "c"], {"a": full, "b": stuck, "c": plain}, {})
    problems = sess.cleanup()
    assert full.drains == 1 and full.ready() == 0
    assert stuck.drains == 1 and problems == ["b: draining its pool: dockerd gone "
                                              "(run `bench gc`)"]


def test_startup_chart_draws_pooled_backends_beside_cold_starts(tmp_path: Path) -> None:
    """A report of a startup run and a warm run: the startup chart gets the pooled
    backend's warm.to_ready as a row marked warm, its values the warm samples."""
    from harness.report.draw import Look
    from harness.report.studies import startup as startup_chapter

    warm_df = warm_results(tmp_path / "w")
    cold = [synth._s(b, "default", "startup.to_ready", "s", TO_READY["docker"], r)
            for b in ("host", "docker") for r in range(5)]
    cold_df = synth.load([synth.write_result(tmp_path / "c", "startup", cold,
                                             {b: WARM_BACKENDS[b] for b in ("host", "docker")})])[1]
    df = pd.concat([cold_df, warm_df], ignore_index=True)
    fig = startup_chapter.startup(df, Look.of(df))
    assert fig is not None
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    warm_rows = [x for x in labels if x.endswith("· warm")]
    assert len(warm_rows) == 1 and warm_rows[0].startswith("docker:precreated"), labels
    assert not any(x.startswith("libvirt") for x in labels)  # cold-only warm rows stay out
    # the warm row's points are the warm study's own samples
    row = labels.index(warm_rows[0])
    pts = [m.get_offsets() for m in fig.axes[0].collections if len(m.get_offsets())]
    xs = sorted(float(x) for o in pts for x, y in o if abs(y - row) < 0.3)
    want = sorted(warm_df[(warm_df["metric"] == "warm.to_ready")
                          & (warm_df["backend"] == "docker:precreated")]["value"])
    assert xs == pytest.approx(want)
    # without warm data the chart is as before: no warm row
    fig = startup_chapter.startup(cold_df, Look.of(cold_df))
    assert fig is not None
    assert not any("warm" in t.get_text() for t in fig.axes[0].get_yticklabels())
