"""The scale study without backends: its params, the HAProxy configuration, the
sampling logic against a fake ReplicaSets (its front and replicas answered in-process),
gc of dead runs' fronts, and the update image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import scenario, studies
from harness.core import image
from harness.core.errors import ReadyTimeout
from harness.sampling import Cell, Context, Measurement
from harness.studies import _haproxy, scale
from runtimes.base import InstanceSpec, Prepared, Replica, Replicas, ReplicaSets
from tests.unit.fakes import FakeRuntime

WRK = (Path(__file__).parent / "data" / "loadgen" / "wrk-small.txt").read_text()
STUB = "Active connections: 1 \nserver accepts handled requests\n 7 7 {n} \n" \
       "Reading: 0 Writing: 1 Waiting: 0 \n"


def parse(params: dict[str, Any]) -> scenario.Scenario:
    return scenario.parse({"name": "s", "study": "scale", "backends": ["ns"],
                           "network": "bridge", "workload": {"argv": ["true"]},
                           "params": params}, "s.toml")


@pytest.mark.parametrize(("replicas", "problem"), [
    ([1, 2, 4], None), ([], "list of whole numbers"), ([0, 2], "list of whole numbers"),
    ([1, 1], "twice"), ([True], "list of whole numbers")])
def test_replicas_param_is_checked(replicas: list[Any], problem: str | None) -> None:
    found = studies.get("scale").check_params(parse({"replicas": replicas}))
    if problem is None:
        assert found == []
    else:
        assert found and found[0][0] == "params.replicas" and problem in found[0][1]


def test_other_params_are_checked() -> None:
    found = dict(studies.get("scale").check_params(parse({"duration": 0, "warmup": -1})))
    assert set(found) == {"params.duration", "params.warmup"}


# --- the HAProxy configuration ---------------------------------------------------------

def test_config_lists_every_replica_and_binds_loopback() -> None:
    text = _haproxy.config(18080, [("r1", "10.0.0.2:80"), ("r2", "10.0.0.3:80")])
    assert "bind 127.0.0.1:18080" in text
    servers = [line.split() for line in text.splitlines() if line.strip().startswith("server")]
    assert servers == [["server", "r1", "10.0.0.2:80"], ["server", "r2", "10.0.0.3:80"]]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("servers", [[], [("r1", "10.0.0.2:80"), ("r7", "10.0.0.9:8080")]])
def test_config_is_valid_for_haproxy_itself(tmp_path: Path, servers: list[tuple[str, str]]
                                            ) -> None:
    cfg = tmp_path / "h.cfg"
    cfg.write_text(_haproxy.config(18080, servers))
    r = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stub_status_and_id_are_parsed() -> None:
    assert scale.requests_of(STUB.format(n=42)) == 42
    assert scale.parse_id("2f1c-aa 2\n") == ("2f1c-aa", "2")
    with pytest.raises(Exception, match="stub_status"):
        scale.requests_of("<html>404</html>")


def test_server_command_is_the_http_studys_site_with_id_and_status() -> None:
    argv = scale.server_argv(8080)
    assert argv[:2] == ("sh", "-c")
    assert "listen 8080;" in argv[2] and "stub_status" in argv[2]
    assert "exec nginx" in argv[2] and "/srv/cvbench/id" in argv[2]


# --- the sampling logic against a fake ReplicaSets -------------------------------------

@dataclass
class FakeReplica:
    id: str
    marker: str
    revision: str
    address: str | None
    node: str = ""
    count: int = 0  # requests it served (its stub_status count)
    silent: bool = False  # never answers through the front


@dataclass
class FakeSet:
    """An orchestrator's service: replicas made at once, a round-robin front."""

    front: str = "front:80"
    live: list[FakeReplica] = field(default_factory=list)
    made: int = 0
    revision: str = "1"
    rr: int = 0
    closed: bool = False
    remote: bool = False  # its replicas on another node
    silent: bool = False  # its second replica never answers through the front
    calls: list[str] = field(default_factory=list)

    def deploy(self, spec: InstanceSpec, prepared: Prepared, port: int) -> str:
        self.calls.append("deploy")
        return self.front

    def _new(self) -> FakeReplica:
        self.made += 1
        rid = f"r{self.made}"
        return FakeReplica(rid, f"m{self.made}", self.revision,
                           None if self.remote else f"{rid}:80",
                           node="node2" if self.remote else "",
                           silent=self.silent and self.made == 2)

    def scale(self, n: int) -> None:
        self.calls.append(f"scale {n}")
        while len(self.live) < n:
            self.live.append(self._new())
        del self.live[n:]

    def replicas(self) -> list[Replica]:
        return [Replica(r.id, r.node, r.address, () if r.node else (os.getpid(),))
                for r in self.live]

    def update(self, prepared: Prepared) -> None:
        self.calls.append("update")
        self.revision = "2"
        self.live = [self._new() for _ in self.live]

    def close(self) -> None:
        self.closed = True
        self.live = []

    def get(self, address: str, path: str, timeout: float = 2.0) -> tuple[int, str] | None:
        if address == self.front:
            answering = [r for r in self.live if not r.silent]
            if not answering:
                return 503, "no server"
            r = answering[self.rr % len(answering)]
            self.rr += 1
            r.count += 1
            return 200, f"{r.marker} {r.revision}\n"
        r = next((x for x in self.live if x.address == address), None)
        if r is None:
            return None
        r.count += 1
        if path == "/id":
            return 200, f"{r.marker} {r.revision}\n"
        return 200, STUB.format(n=r.count)


class FakeOrchestrator(FakeRuntime):
    def __init__(self, svc: FakeSet, traits: Any = None) -> None:
        super().__init__("fake:swarm", traits=traits)
        self.svc = svc

    def replica_set(self, run_id: str, name: str) -> Replicas:
        return self.svc


def run_sample(monkeypatch: pytest.MonkeyPatch, svc: FakeSet, timeout: float = 5.0,
               **params: Any) -> tuple[list[Measurement], list[dict[str, Any]]]:
    monkeypatch.setattr(scale, "get", svc.get)
    monkeypatch.setattr(scale, "run_tool", lambda ctx, argv, p, t, kind, **kw: (WRK, 0))
    monkeypatch.setattr(scale, "Front", None)  # never the HAProxy front for a ReplicaSets
    rt = FakeOrchestrator(svc)
    assert isinstance(rt, ReplicaSets)
    scen = parse({"replicas": [1, 2], **params})
    v = scen.variants[0]
    img = image.Image("x", "0" * 64, Path("/nonexistent"), Path("/nonexistent"), 0)
    cell = Cell(backend=rt.name, variant=v, config=scen.config(v), runtime=rt,
                prepared=Prepared(image=img, backend=rt.name, ref="x"), traits=rt.traits(),
                images={scale.UPDATE: Prepared(image=img, backend=rt.name, ref="y")})
    events: list[dict[str, Any]] = []
    ctx = Context("abcdef0123", timeout=timeout)
    ctx.params = dict(scen.params)
    ctx.probe_interval = 0.0
    ctx.event = lambda kind, **data: events.append({"kind": kind, **data})
    return studies.get("scale").sample(ctx, cell), events


def by(out: list[Measurement], metric: str) -> dict[str | None, list[Measurement]]:
    got: dict[str | None, list[Measurement]] = {}
    for m in out:
        if m.metric == metric:
            got.setdefault(m.variant, []).append(m)
    return got


def test_a_replica_set_is_scaled_up_updated_and_down(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = FakeSet()
    out, events = run_sample(monkeypatch, svc)
    assert svc.calls == ["deploy", "scale 1", "scale 0", "scale 2", "update", "scale 1",
                         "scale 0"]
    assert svc.closed
    for metric in ("scale.to_serving", "scale.spread", "scale.rps", "scale.lat_p99",
                   "scale.daemon_pss"):
        assert set(by(out, metric)) == {"replicas=1", "replicas=2"}, metric
    assert set(by(out, "scale.down")) == {"replicas=2"}
    assert set(by(out, "scale.update")) == {"replicas=2"}
    assert "scale.front_pss" not in {m.metric for m in out}  # the orchestrator's front
    pss = by(out, "scale.pss")
    assert [m.instance for m in pss["replicas=2"]] == [0, 1]
    assert all(m.value > 0 for ms in pss.values() for m in ms)  # this process, read
    assert by(out, "scale.rps")["replicas=1"][0].value == pytest.approx(105899.89)
    assert all(m.extra and m.extra["front"] == "orchestrator" for m in out)
    assert not events


def test_every_replica_was_reached_through_the_front(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spread is over: each replica's own count is above what the study asked it
    itself."""
    svc = FakeSet()
    served: list[FakeReplica] = []
    real_scale = svc.scale

    def keep(n: int) -> None:
        real_scale(n)
        served.extend(r for r in svc.live if r not in served)
    svc.scale = keep  # type: ignore[method-assign]
    run_sample(monkeypatch, svc, update=False)
    assert all(r.count >= 3 for r in served)  # /id, /status, and >= 1 from the front


def test_a_replica_that_never_answers_fails_the_sample(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    svc = FakeSet(silent=True)
    with pytest.raises(ReadyTimeout, match=r"2 replicas serving.*1 answered"):
        run_sample(monkeypatch, svc, timeout=0.3)
    assert svc.closed


def test_replicas_on_another_node_have_no_memory_figure(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    svc = FakeSet(remote=True)
    out, events = run_sample(monkeypatch, svc, update=False)
    assert "scale.pss" not in {m.metric for m in out}  # absent, not 0
    assert "scale.spread" not in {m.metric for m in out}
    kinds = [e["kind"] for e in events]
    assert kinds.count("scale_pss_absent") == 3 and kinds.count("scale_spread_absent") == 2
    assert set(by(out, "scale.to_serving")) == {"replicas=1", "replicas=2"}


def test_host_network_is_not_applicable(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.core.errors import NotApplicable
    svc = FakeSet()
    monkeypatch.setattr(scale, "get", svc.get)
    rt = FakeOrchestrator(svc)
    scen = scenario.parse({"name": "s", "study": "scale", "backends": ["ns"],
                           "network": "host", "workload": {"argv": ["true"]}}, "s.toml")
    v = scen.variants[0]
    img = image.Image("x", "0" * 64, Path("/x"), Path("/x"), 0)
    cell = Cell(backend=rt.name, variant=v, config=scen.config(v), runtime=rt,
                prepared=Prepared(image=img, backend=rt.name, ref="x"), traits=rt.traits())
    with pytest.raises(NotApplicable):
        studies.get("scale").sample(Context("abcdef0123", 1.0), cell)
    assert svc.calls == []


# --- the front's replicas, its HAProxy left out ----------------------------------------

def test_front_lists_replicas_as_they_come_and_go(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What each reload lists: new replicas once ready, a rolling update that never has
    fewer than N listed and replaces every old one, scale down before removal."""
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))
    listed: list[list[str]] = []
    monkeypatch.setattr(_haproxy.Front, "_start", lambda self: None)
    monkeypatch.setattr(_haproxy.Front, "_reload",
                        lambda self: listed.append([m.id for m in self.members]))
    rt = FakeRuntime(addr="10.0.0.9")
    tracked: list[str] = []
    front = _haproxy.Front(rt, "abcdef0123", "t", 18080, 5,
                           track=lambda i: tracked.append(i.spec.name),
                           untrack=lambda i: tracked.remove(i.spec.name))
    img = image.Image("x", "0" * 64, Path("/x"), Path("/x"), 0)
    spec = InstanceSpec(run_id="abcdef0123", name="cvbench-abcdef0123-1", argv=("true",))
    assert front.deploy(spec, Prepared(img, "fake", "a"), 80) == "127.0.0.1:18080"
    front.scale(2)
    assert [r.address for r in front.replicas()] == ["10.0.0.9:80"] * 2
    front.update(Prepared(img, "fake", "b"))
    front.scale(1)
    assert listed == [["r1", "r2"], ["r1", "r2", "r3"], ["r2", "r3"], ["r2", "r3", "r4"],
                      ["r3", "r4"], ["r3"]]
    assert [r.id for r in front.replicas()] == ["r3"]
    assert rt.removed == [f"cvbench-abcdef0123-1-r{i}" for i in (1, 2, 4)]
    front.close()
    assert tracked == [] and not rt.live


# --- an orchestrator's replicas behind the study's HAProxy (no front of its own) ---------

class ConfigOnly(_haproxy.Haproxy):
    """The HAProxy part without the process: its configuration written as for the real
    one; each load recorded."""

    def __init__(self) -> None:
        super().__init__("abcdef0123", "b", 18080, 5)
        self.loads: list[list[str]] = []

    def _record(self) -> None:
        self.loads.append([line.split()[1] for line in self.cfg.read_text().splitlines()
                           if line.strip().startswith("server ")])

    def start(self, servers: Sequence[tuple[str, str]] = ()) -> str:
        self.dir.mkdir(parents=True)
        self._write(servers)
        return self.address

    def reload(self, servers: Sequence[tuple[str, str]]) -> None:
        self._write(servers)
        self._record()


@dataclass
class Scripted:
    """An orchestrator's replicas as it would list them, one state per look: (id,
    accepting) pairs; after the script's end, its last state."""

    script: list[list[tuple[str, bool]]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    now: list[tuple[str, bool]] = field(default_factory=list)

    def deploy(self, spec: InstanceSpec, prepared: Prepared, port: int) -> str:
        return ""

    def scale(self, n: int) -> None:
        self.asked.append(f"scale {n}")

    def update(self, prepared: Prepared) -> None:
        self.asked.append("update")

    def replicas(self) -> list[Replica]:
        if self.script:
            self.now = self.script.pop(0)
        return [Replica(rid, "", f"10.0.0.{rid[1:]}:80", ()) for rid, _ in self.now]

    def accepting(self, address: str) -> bool:
        return (f"r{address.split('.')[3].split(':')[0]}", True) in self.now

    def close(self) -> None:
        self.asked.append("close")


def test_behind_lists_exactly_the_accepting_replicas(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas that appear over time, then swarm's rolling replacement (start-first):
    each HAProxy load lists exactly those that accept, never a listed-but-refusing one;
    scale and update return once the set is what was asked."""
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))
    proxy = ConfigOnly()
    inner = Scripted()
    b = _haproxy.Behind(inner, proxy, 5, interval=0, accepts=inner.accepting)
    assert b.start() == "127.0.0.1:18080"
    inner.script = [[], [("r1", False)], [("r1", True), ("r2", False)],
                    [("r1", True), ("r2", False)], [("r1", True), ("r2", True)],
                    [("r1", True), ("r2", True), ("r9", False)]]  # (after: not looked at)
    b.scale(2)
    assert proxy.loads == [["r1"], ["r1", "r2"]]
    assert [r.id for r in b.replicas()] == ["r1", "r2", "r9"]  # passes through
    inner.now = [("r1", True), ("r2", True)]
    proxy.loads = []
    inner.script = [[("r1", True), ("r2", True), ("r3", False)],
                    [("r1", True), ("r2", True), ("r3", True)],
                    [("r2", True), ("r3", True)],
                    [("r2", True), ("r3", True), ("r4", False)],
                    [("r3", True), ("r4", True)]]
    b.update(Prepared(image.Image("x", "0" * 64, Path("/x"), Path("/x"), 0), "f", "b"))
    assert proxy.loads == [["r1", "r2", "r3"], ["r2", "r3"], ["r3", "r4"]]
    assert inner.asked == ["scale 2", "update"]
    # the configuration HAProxy reads now: the two new replicas' own addresses
    assert [line.split()[1:] for line in proxy.cfg.read_text().splitlines()
            if line.strip().startswith("server ")] == [["r3", "10.0.0.3:80"],
                                                       ["r4", "10.0.0.4:80"]]
    inner.script = [[]]
    b.scale(0)
    assert proxy.loads[-1] == []
    b.close()
    assert inner.asked[-1] == "close" and not proxy.dir.exists()


def test_behind_times_out_on_a_replica_that_never_accepts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))
    proxy = ConfigOnly()
    inner = Scripted(script=[[("r1", True), ("r2", False)]])
    b = _haproxy.Behind(inner, proxy, 0.2, interval=0.01, accepts=inner.accepting)
    b.start()
    with pytest.raises(ReadyTimeout, match="2 replicas, 1 accepting"):
        b.scale(2)
    assert proxy.loads == [["r1"]]
    b.close()


# --- gc of the fronts dead runs left ---------------------------------------------------

def test_gc_kills_a_dead_runs_front_and_keeps_a_live_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path))
    procs = {}
    for run in ("dead000001", "live000001"):
        d = tmp_path / "haproxy" / f"cvbench-{run}-scale3"
        d.mkdir(parents=True)
        cfg = d / "haproxy.cfg"
        cfg.write_text("")
        # a stand-in for HAProxy: a process whose command line names the configuration
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(cfg)])
        procs[run] = p
        (d / "master").write_text(str(p.pid))
    # a pid file whose process is gone and whose number another process may have now
    stale = tmp_path / "haproxy" / "cvbench-dead000002-scale1"
    stale.mkdir()
    (stale / "master").write_text(str(os.getpid()))
    try:
        fronts = _haproxy.Fronts()
        found = {(x.run_id, Path(x.name).name) for x in fronts.leftovers(["live000001"])}
        assert found == {("dead000001", "cvbench-dead000001-scale3"),
                         ("dead000002", "cvbench-dead000002-scale1")}
        fronts.gc(["live000001"])
        assert procs["dead000001"].wait(5) is not None
        assert procs["live000001"].poll() is None  # a live run's front stays
        assert sorted(p.name for p in (tmp_path / "haproxy").iterdir()) == \
            ["cvbench-live000001-scale3"]
        # (this test's own process, named by the stale pid file, was not killed)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


# --- the update's image ----------------------------------------------------------------

def test_derived_image_has_the_file_and_another_digest(tmp_path: Path) -> None:
    base = image.build(image.Recipe(), tmp_path / "cache")
    new = image.derive(base, {scale.REVISION_FILE: b"2\n"}, "rev2", tmp_path / "cache")
    assert new.digest != base.digest
    assert (new.rootfs / scale.REVISION_FILE).read_bytes() == b"2\n"
    assert not (base.rootfs / scale.REVISION_FILE).exists()
    assert (new.rootfs / "bench/init").read_bytes() == (base.rootfs / "bench/init").read_bytes()
    assert new.identity["derived_from"] == base.digest
    again = image.derive(base, {scale.REVISION_FILE: b"2\n"}, "rev2", tmp_path / "cache")
    assert again.digest == new.digest


# --- the report's chapter and claim ----------------------------------------------------

TO_SERVING = {"ns": 0.1, "docker": 0.5, "libvirt": 10.0}  # at N = 1; x N at N


def scale_frame(tmp_path: Path) -> Any:
    import numpy as np

    from tests.unit import report_synth as synth
    rng = np.random.default_rng(3)
    samples = []
    for rnd in range(1, 7):
        for b, t in TO_SERVING.items():
            for n in (1, 2):
                v = f"replicas={n}"
                samples += [synth._s(b, v, "scale.to_serving", "s",
                                     t * n * rng.uniform(0.95, 1.05), rnd),
                            synth._s(b, v, "scale.rps", "req/s",
                                     1000 / t * rng.uniform(0.95, 1.05), rnd)]
    path = synth.write_result(tmp_path, "scale", samples, synth.BACKENDS)
    return synth.load([path])[1]


def test_chapter_draws_each_backends_medians_against_n(tmp_path: Path) -> None:
    from harness.report import draw
    from harness.report.studies import scale as chapter
    df = scale_frame(tmp_path)
    look = draw.Look.of(df, "paper")
    fig = chapter.to_serving(df, look)
    assert fig is not None
    for b in TO_SERVING:
        (line,) = fig.findobj(lambda a, b=b: str(a.get_gid()).startswith(  # type: ignore[misc]
            f"scale.to_serving|{b}"))
        assert list(line.get_xdata()) == [1.0, 2.0]
        for n, y in zip((1, 2), line.get_ydata(), strict=True):
            want = df[(df["backend"] == b) & (df["metric"] == "scale.to_serving")
                      & (df["variant"] == f"replicas={n}")]["value"].median()
            assert y == pytest.approx(want)
        assert (line.get_linestyle() == "--") == (b == "libvirt")  # VMs dashed
    assert chapter.throughput(df, look) is not None
    table = chapter.scale_table(df, False)
    assert table is not None and len(table.rows) == 6  # 3 backends x 2 N
    assert not any("HAProxy front" in str(r[0]) for r in table.rows)


def test_chapter_labels_an_orchestrator_behind_the_studys_haproxy(tmp_path: Path) -> None:
    """docker:swarm's samples measured through the study's HAProxy (their `front`, as
    the study records it) are labelled so in the table and the chart's legend."""
    from harness.report import draw
    from harness.report.studies import scale as chapter
    from tests.unit import report_synth as synth
    samples = []
    for rnd in (1, 2, 3):
        for b, front in (("docker", "haproxy"), ("ns", scale.BEHIND)):
            s = synth._s(b, "replicas=1", "scale.to_serving", "s", 0.1 * rnd, rnd)
            samples.append({**s, "front": front})  # extras sit beside the fields on disk
    df = synth.load([synth.write_result(tmp_path, "scale", samples, synth.BACKENDS)])[1]
    table = chapter.scale_table(df, False)
    assert table is not None
    assert sorted(str(r[0]) for r in table.rows) == ["docker",
                                                     "ns (HAProxy front: no routing mesh)"]
    fig = chapter.to_serving(df, draw.Look.of(df, "paper"))
    assert fig is not None
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()] + \
        [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "ns (HAProxy front: no routing mesh)" in legend, legend


def test_claim_containers_scale_out_faster_than_vms_per_n(tmp_path: Path) -> None:
    from harness.report import claims
    df = scale_frame(tmp_path)
    t = claims.evaluate(df)
    t = t[t["claim"] == "scale"]
    assert sorted(zip(t["a"], t["b"], strict=True)) == sorted(
        (f"{b} [{n}]", f"libvirt [{n}] (TCG, emulated)") for b in ("ns", "docker")
        for n in (1, 2))
    assert set(t["verdict"]) == {claims.HOLDS}
    assert (t["ratio_hi"] < 1).all()
