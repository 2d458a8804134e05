"""Clean-up that reports what it did: a removal that failed is reported with its reason
and stays findable (tracked by the run, listed by the backend for `bench gc`); nothing
that is still there is reported as removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from harness import cli, results, scenario
from harness.core import image
from harness.core.errors import CleanupError, InstanceError
from harness.sampling import Cell, Context, Runner
from harness.studies import stack
from runtimes import libvirt as lv_backend
from runtimes import registry
from runtimes.base import Instance, Leftover, Prepared, remove_each
from tests.unit.fakes import FakeRuntime


def leftover(kind: str, name: str) -> Leftover:
    return Leftover("fake", kind, name, "abcdef0123")


def test_remove_each_goes_on_past_a_failure_and_names_it() -> None:
    tried: list[str] = []

    def remove(item: Leftover) -> bool | None:
        tried.append(item.name)
        if item.name == "b":
            raise OSError(16, "Device or resource busy")
        return False if item.name == "shared" else None

    found = [leftover("dir", n) for n in ("a", "b", "shared", "c")]
    with pytest.raises(CleanupError) as e:
        remove_each("fake", found, remove)
    assert tried == ["a", "b", "shared", "c"]
    assert e.value.failed == ["dir b: [Errno 16] Device or resource busy"]
    # "shared" was left on purpose: neither removed nor a failure
    assert [x.name for x in e.value.removed if isinstance(x, Leftover)] == ["a", "c"]
    assert str(e.value) == "fake: could not remove dir b: [Errno 16] Device or resource busy"


class VirError(libvirt.libvirtError):
    def __init__(self, code: int, message: str) -> None:
        Exception.__init__(self, message)
        self.code, self.message = code, message

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


class Domain:
    def __init__(self, fail: VirError | None) -> None:
        self.fail = fail

    def isActive(self) -> bool:  # libvirt's names
        return True

    def isPersistent(self) -> bool:
        return False

    def destroy(self) -> None:
        if self.fail:
            raise self.fail


class Conn:
    def __init__(self) -> None:
        self.domains = {
            "cvbench-abcdef0123-1": Domain(None),
            "cvbench-abcdef0123-2": Domain(VirError(libvirt.VIR_ERR_SYSTEM_ERROR,
                                                    "Failed to terminate process 4242")),
            "cvbench-abcdef0123-3": Domain(VirError(libvirt.VIR_ERR_OPERATION_INVALID,
                                                    "domain is not running"))}

    def lookupByName(self, name: str) -> Domain:
        if name not in self.domains:
            raise VirError(libvirt.VIR_ERR_NO_DOMAIN, f"no domain {name}")
        return self.domains[name]


def test_libvirt_gc_reports_a_domain_it_could_not_destroy(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    rt = lv_backend.LibvirtRuntime()
    conn = Conn()
    names = [*conn.domains, "cvbench-abcdef0123-4"]  # 4: gone meanwhile
    monkeypatch.setattr(rt, "conn", lambda: conn)
    monkeypatch.setattr(rt, "leftovers", lambda live=(): [
        Leftover(rt.name, "domain", n, "abcdef0123") for n in names])
    with pytest.raises(CleanupError) as e:
        rt.gc()
    assert e.value.failed == ["domain cvbench-abcdef0123-2: Failed to terminate process 4242"]
    assert [x.name for x in e.value.removed if isinstance(x, Leftover)] == \
        ["cvbench-abcdef0123-1", "cvbench-abcdef0123-3", "cvbench-abcdef0123-4"]


class Stuck(FakeRuntime):
    """Removing the instances named in `stuck` fails (a busy mount, a daemon error)."""

    def __init__(self, stuck: set[str]) -> None:
        super().__init__("stuck")
        self.stuck = stuck
        self.networks_removed: list[str] = []

    def remove(self, inst: Instance) -> None:
        if inst.spec.name in self.stuck:
            raise InstanceError(f"stuck: cannot remove {inst.spec.name}: device busy")
        super().remove(inst)

    def remove_network(self, run_id: str, name: str) -> None:
        self.networks_removed.append(name)


@pytest.fixture
def img(tmp_path: Path) -> image.Image:
    return image.build(image.Recipe(), tmp_path / "cache")


def cell_of(img: image.Image, rt: FakeRuntime) -> Cell:
    scen = scenario.parse({"name": "t", "study": "startup", "backends": ["host"]}, "t.toml")
    v = scen.variants[0]
    return Cell(backend=rt.name, variant=v, config=scen.config(v), runtime=rt,
                prepared=Prepared(image=img, backend=rt.name, ref="x"), traits=rt.traits())


def test_a_stack_whose_instance_would_not_go_says_so_and_keeps_it_tracked(
        img: image.Image) -> None:
    rt = Stuck({"cvbench-abcdef0123-2"})
    cell = cell_of(img, rt)
    ctx = Context("abcdef0123", timeout=5)
    events: list[dict[str, Any]] = []
    ctx.event = lambda kind, **data: events.append({"kind": kind, **data})
    st = stack.PerService(ctx, cell, rt, "stack1")  # type: ignore[arg-type]
    for _ in range(3):
        inst = rt.create(ctx.spec(cell), cell.prepared)
        ctx.track(cell, inst)
        st.instances.append(inst)
    with pytest.raises(InstanceError, match="cvbench-abcdef0123-2: stuck: cannot remove"):
        st.down()
    assert events == [{"kind": "cleanup_failed", "backend": "stuck", "variant": "default",
                       "errors": ["cvbench-abcdef0123-2: stuck: cannot remove "
                                  "cvbench-abcdef0123-2: device busy"]}]
    assert [i.spec.name for _w, i in ctx.live.values()] == ["cvbench-abcdef0123-2"]
    assert rt.networks_removed == ["stack1"]


def test_the_run_retries_and_records_a_removal_that_failed(tmp_path: Path,
                                                          img: image.Image) -> None:
    rt = Stuck({"cvbench-abcdef0123-1"})
    cell = cell_of(img, rt)
    scen = scenario.parse({"name": "t", "study": "startup", "backends": ["host"],
                           "sampling": {"warmups": 0, "min_samples": 1, "max_samples": 1}},
                          "t.toml")
    journal = results.Journal(tmp_path / "t.journal", {"run_id": "abcdef0123", "schema": 1})

    def sample(ctx: Context, c: Cell) -> list[Any]:
        ctx.track(c, c.runtime.create(ctx.spec(c), c.prepared))
        raise InstanceError("the workload failed")

    try:
        outcome = Runner(scen, [cell], journal, sample, lambda m: "s", seed=1).run()
    finally:
        journal.close()
    failed = [e for e in journal.events if e["kind"] == "sample_failed"]
    assert failed[0]["cleanup_errors"] == [
        "stuck: cvbench-abcdef0123-1: stuck: cannot remove cvbench-abcdef0123-1: device busy"]
    # still tracked after the sample's clean-up: the run's last clean-up tried it again
    assert outcome.cleanup_errors == failed[0]["cleanup_errors"]
    assert [e["errors"] for e in journal.events if e["kind"] == "cleanup_failed"] == \
        [outcome.cleanup_errors]


class GcFails(FakeRuntime):
    def leftovers(self, live_runs: Any = ()) -> list[Leftover]:
        return [Leftover(self.name, "domain", f"cvbench-abcdef0123-{i}", "abcdef0123")
                for i in (1, 2)]

    def gc(self, live_runs: Any = ()) -> list[Leftover]:
        found = self.leftovers(live_runs)
        raise CleanupError(self.name, [f"domain {found[1].name}: busy"], [found[0]])


def test_bench_gc_lists_what_it_removed_and_fails_on_what_it_could_not(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(registry, "base_names", lambda: ["fake"])
    monkeypatch.setattr(registry, "get", lambda name, hooks=None: GcFails("fake"))
    run = CliRunner().invoke(cli.cli, ["gc"])
    assert "removed fake domain cvbench-abcdef0123-1" in run.output
    assert "could not remove domain cvbench-abcdef0123-2: busy" in run.output
    assert "removed fake domain cvbench-abcdef0123-2" not in run.output
    assert run.exit_code == 1 and isinstance(run.exception, CleanupError)
