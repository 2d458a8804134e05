"""The runner: interleaved shuffled rounds, adaptive stop, failures, interruption."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import plan, results, sampling, scenario, studies
from harness.core import image
from harness.core.errors import InstanceError
from harness.core.records import Sample
from harness.sampling import Cell, Context, Measurement, Runner
from runtimes.base import Prepared, Traits
from tests.unit.fakes import FakeRuntime


@pytest.fixture
def img(tmp_path: Path) -> image.Image:
    return image.build(image.Recipe(), tmp_path / "cache")


OPEN: list[results.Journal] = []


@pytest.fixture(autouse=True)
def _close_journals() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def make(tmp_path: Path, img: image.Image, rts: list[FakeRuntime], **sampling: object
         ) -> tuple[Runner, list[Cell], results.Journal]:
    scen = scenario.parse({"name": "t", "study": "startup", "backends": ["host"],
                           "workload": {"argv": ["true"]}, "sampling": sampling}, "t.toml")
    variant = scen.variants[0]
    cells = [Cell(backend=rt.name, variant=variant, config=scen.config(variant), runtime=rt,
                  prepared=Prepared(image=img, backend=rt.name, ref="x"),
                  traits=rt.traits()) for rt in rts]
    journal = results.Journal(tmp_path / "t.journal", {"run_id": "abcdef0123", "schema": 1})
    OPEN.append(journal)
    study = studies.get("startup")
    r = Runner(scen, cells, journal, study.sample, lambda m: studies.unit_of(study, m), seed=1)
    return r, cells, journal


def test_rounds_interleave_every_cell_once(tmp_path: Path, img: image.Image) -> None:
    rts = [FakeRuntime("a"), FakeRuntime("b"), FakeRuntime("c")]
    r, cells, journal = make(tmp_path, img, rts, warmups=1, min_samples=5, max_samples=5)
    order: list[str] = []
    orig = r.sample

    def spy(ctx: Context, cell: Cell) -> list[Measurement]:
        order.append(cell.backend)
        return orig(ctx, cell)

    r.sample = spy
    out = r.run()
    assert out.rounds == 5
    assert all(c.samples == 5 and c.status == "max_samples" for c in cells)
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert len(rounds) == 6  # 1 warmup + 5 rounds
    assert all(sorted(rd) == ["a", "b", "c"] for rd in rounds)
    assert len({tuple(rd) for rd in rounds}) > 1  # the order is shuffled
    per_round = {(s.backend, s.round) for s in journal.samples}
    assert len(per_round) == 15
    assert all(rt.live == {} for rt in rts)


def test_adaptive_stop_on_target(tmp_path: Path, img: image.Image) -> None:
    r, cells, _ = make(tmp_path, img, [FakeRuntime("a", delay=0.002)], warmups=0,
                       min_samples=4, max_samples=200, target_ci=0.5)
    r.run()
    assert cells[0].status == "target"
    assert 4 <= cells[0].samples < 200


def test_failures_are_recorded_and_cell_given_up(tmp_path: Path, img: image.Image) -> None:
    bad = FakeRuntime("bad", fail_every=1)
    good = FakeRuntime("good")
    r, cells, journal = make(tmp_path, img, [bad, good], warmups=0, min_samples=5,
                             max_samples=5)
    r.run()
    by = {c.backend: c for c in cells}
    assert by["bad"].status == "failed" and by["bad"].samples == 0
    assert by["good"].samples == 5
    kinds = [e["kind"] for e in journal.events]
    assert kinds.count("sample_failed") == sampling.FAILURES_TO_GIVE_UP
    assert "cell_failed" in kinds


def test_interrupt_removes_live_instances_and_keeps_samples(tmp_path: Path,
                                                            img: image.Image) -> None:
    rt = FakeRuntime("a")
    r, cells, journal = make(tmp_path, img, [rt], warmups=0, min_samples=50, max_samples=50)
    orig = r.sample

    def interrupting(ctx: Context, cell: Cell) -> list[Measurement]:
        if cell.samples == 3:
            spec = ctx.spec(cell)
            inst = rt.create(spec, cell.prepared)  # an instance left live mid-sample
            ctx.track(cell, inst)
            raise KeyboardInterrupt
        return orig(ctx, cell)

    r.sample = interrupting
    out = r.run()
    assert out.interrupted
    assert cells[0].samples == 3 and cells[0].status == "interrupted"
    assert rt.live == {}
    assert len(journal.samples) == 3 * 7
    assert journal.events[-1]["kind"] == "interrupted"


def test_time_budget_caps_the_run(tmp_path: Path, img: image.Image) -> None:
    r, cells, journal = make(tmp_path, img, [FakeRuntime("a", delay=0.01)], warmups=0,
                             min_samples=1000, max_samples=1000, time_budget=0.2)
    out = r.run()
    assert cells[0].status == "budget"
    assert 0 < cells[0].samples < 1000
    assert out.elapsed < 5
    assert any(e["kind"] == "budget_spent" for e in journal.events)


def test_context_specs_carry_run_id_and_the_cells_config(tmp_path: Path,
                                                         img: image.Image) -> None:
    r, cells, _ = make(tmp_path, img, [FakeRuntime("a")])
    spec = r.ctx.spec(cells[0])
    assert spec.name.startswith("cvbench-abcdef0123-")
    assert r.ctx.spec(cells[0]).name != spec.name
    cfg = cells[0].config
    assert (spec.argv, spec.limits, spec.network) == (cfg.workload.argv, cfg.limits,
                                                      cfg.network)
    over = r.ctx.spec(cells[0], argv=("x",), readiness="exit")
    assert (over.argv, over.readiness, over.limits) == (("x",), "exit", cfg.limits)


def test_startup_sample_raises_on_failed_workload(tmp_path: Path, img: image.Image) -> None:
    class Failing(FakeRuntime):
        def wait_exit(self, inst, timeout):  # type: ignore[no-untyped-def]
            from runtimes.base import Exit
            return Exit(code=1, t_ns=0, stderr=b"boom")

    rt = Failing("f")
    r, cells, _ = make(tmp_path, img, [rt])
    with pytest.raises(InstanceError, match="exited with 1"):
        studies.get("startup").sample(r.ctx, cells[0])
    assert rt.live == {}


def test_unenforced_limits_are_named_per_backend() -> None:

    scen = scenario.parse({"name": "t", "study": "startup", "backends": ["a", "b", "c"],
                           "limits": {"memory": "64M", "pids": 10},
                           "variants": {"limits.cpus": [0.5, 1.0]}}, "t.toml")
    rts = {"a": FakeRuntime("a", traits=Traits("container", not_applied=frozenset({"limits"}))),
           "b": FakeRuntime("b", traits=Traits("container",
                                                not_applied=frozenset({"limits.pids"}))),
           "c": FakeRuntime("c")}
    p = plan.Plan(scenario=scen, backends=list(rts), runtimes=dict(rts), skipped={})
    assert plan.unenforced_limits(p) == {
        "a": ["cpus=0.5", "cpus=1", "memory=64.0 MiB", "pids=10"], "b": ["pids=10"]}


def test_restore_rebuilds_sub_variants_and_rounds(tmp_path: Path, img: image.Image) -> None:
    """A resumed run of a study with sub-variants (io's targets) gets back each cell's
    sample count, its stop metric's values per sub-variant, and the round to go on from;
    samples written before `sub` was stored are matched by their variant name."""
    r, cells, _ = make(tmp_path, img, [FakeRuntime("a")], min_samples=5, max_samples=9)

    def sample(round_: int, sub: str, value: float, with_sub: bool = True,
               backend: str = "a") -> Sample:
        return Sample(backend, sub, "startup.total", "s", value, round_,
                      sub=sub if with_sub else None)

    old = [sample(1, "target=rootfs", 1.0, False), sample(1, "target=tmpfs", 2.0, False)]
    new = [sample(2, "target=rootfs", 1.1), sample(2, "target=tmpfs", 2.1),
           sample(2, "target=tmpfs", 5.0, backend="gone")]  # a cell not in the run
    r.restore(old + new, [{"kind": "sample_failed", "backend": "a", "variant": "default"}])
    (cell,) = cells
    assert cell.samples == 2 and cell.failures == 1 and r.round == 2
    assert cell.values == [1.0, 2.0, 1.1, 2.1]
    assert cell.sub_values == {"target=rootfs": [1.0, 1.1], "target=tmpfs": [2.0, 2.1]}
    assert cell.status == "running"


def test_a_failed_samples_tool_output_is_kept_marked_failed(tmp_path: Path,
                                                            img: image.Image) -> None:
    """The output that made a sample fail (a generator's errors) stays in the result,
    marked failed; no figure of that sample is recorded."""
    r, _cells, journal = make(tmp_path, img, [FakeRuntime("a")], warmups=0, min_samples=1,
                              max_samples=1)

    def failing(ctx: Context, cell: Cell) -> list[Measurement]:
        ctx.artifact("wrk", "0 requests in 2.00s, 0.00B read")
        raise InstanceError("wrk: no request completed (requests 0)")

    r.sample = failing
    r.run()
    assert journal.samples == []
    assert [(a["kind"], a["failed"]) for a in journal.artifacts][:1] == [("wrk", True)]
