"""The overlay study without daemons: its params (the worker is an ssh destination from an
untrusted scenario), not applicable without a worker, the ssh command line, the parsing
of the tools' raw outputs, the tear-down on both nodes (fakes), and the report's chapter
from a synthetic result."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from harness import scenario, studies
from harness.core import image
from harness.core.errors import InstanceError, NotApplicable
from harness.sampling import Cell, Context
from harness.studies import overlay
from harness.studies.network import sockperf_latency
from runtimes.base import Prepared
from tests.unit.fakes import FakeRuntime
from tests.unit.test_studies_probes import SOCKPERF

IPERF3 = '{"start": {}, "end": {"sum_received": {"bits_per_second": 8e9}}}'


def parse(params: dict[str, Any]) -> scenario.Scenario:
    return scenario.parse({"name": "s", "study": "overlay", "backends": ["docker:swarm"],
                           "network": "bridge", "workload": {"argv": ["true"]},
                           "params": params}, "s.toml")


def problems(params: dict[str, Any]) -> dict[str, str]:
    return dict(studies.get("overlay").check_params(parse(params)))


@pytest.mark.parametrize("worker", ["root@10.126.26.2", "10.126.26.2", "bench_1@10.0.0.7",
                                    "fe80::1"])
def test_a_worker_destination_is_accepted(worker: str) -> None:
    assert problems({"worker": worker}) == {}


@pytest.mark.parametrize("worker", [
    "-oProxyCommand=touch /tmp/x", "root@-oProxyCommand=x", "root@host x", "root@host;id",
    "root@$(id)", "@host", "root@", "root@host%h", "a@b@c", "root@host\n", " host",
    "-host"])
def test_a_worker_that_is_no_plain_destination_is_refused(worker: str) -> None:
    assert "params.worker" in problems({"worker": worker, "advertise": ["10.0.0.1",
                                                                         "10.0.0.2"]})
    assert overlay.check_worker(worker) is not None
    with pytest.raises(InstanceError):  # never reaches ssh, even unchecked
        overlay.Worker(worker, 1.0)


def test_advertise_is_two_addresses_and_needed_for_a_host_name() -> None:
    assert problems({}) == {}  # no worker: fine (the cells are not applicable)
    assert problems({"worker": "root@node2", "advertise": ["10.0.0.1", "10.0.0.2"]}) == {}
    assert "needed" in problems({"worker": "root@node2"})["params.advertise"]
    assert "two addresses" in problems({"worker": "node2", "advertise": ["10.0.0.1"]})[
        "params.advertise"]
    assert "not an IP" in problems({"worker": "node2",
                                    "advertise": ["10.0.0.1", "x; id"]})["params.advertise"]
    assert "whole number" in problems({"duration": 0})["params.duration"]


def test_addresses_default_to_the_workers_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_SWARM_ADDR", "192.0.2.1")
    p = {"worker": "root@10.126.26.2", "advertise": []}
    assert overlay.addresses(p) == ("192.0.2.1", "10.126.26.2")
    assert overlay.addresses({**p, "advertise": ["10.126.26.1", "10.0.0.9"]}) == \
        ("10.126.26.1", "10.0.0.9")


def test_ssh_is_batch_mode_with_the_users_config_only(monkeypatch: pytest.MonkeyPatch) -> None:
    w = overlay.Worker("root@10.126.26.2", 5.0)
    monkeypatch.delenv(overlay.SSH_CONFIG, raising=False)
    assert w.argv("docker info") == ["ssh", "-o", "BatchMode=yes", "root@10.126.26.2",
                                     "docker info"]
    monkeypatch.setenv(overlay.SSH_CONFIG, "/tmp/cfg")
    assert w.argv("docker info") == ["ssh", "-o", "BatchMode=yes", "-F", "/tmp/cfg",
                                     "root@10.126.26.2", "docker info"]


def cell_of(rt: Any) -> Cell:
    scen = parse({})
    v = scen.variants[0]
    img = image.Image("x", "0" * 64, Path("/nonexistent"), Path("/nonexistent"), 0)
    return Cell(backend=rt.name, variant=v, config=scen.config(v), runtime=rt,
                prepared=Prepared(image=img, backend=rt.name, ref="sha256:" + "0" * 64),
                traits=FakeRuntime("docker:swarm").traits())


def test_without_a_worker_every_cell_is_not_applicable() -> None:
    ctx = Context("abcdef0123", 1.0)
    ctx.params = {"worker": ""}
    with pytest.raises(NotApplicable, match=overlay.NEEDS_WORKER):
        studies.get("overlay").sample(ctx, cell_of(FakeRuntime("docker:swarm")))
    ctx.params = {"worker": "root@10.0.0.2"}
    with pytest.raises(NotApplicable, match="runs on docker:swarm"):
        studies.get("overlay").sample(ctx, cell_of(FakeRuntime("docker")))


def test_figures_are_the_tools_own() -> None:
    f = overlay.figures(SOCKPERF, IPERF3)
    assert f == {"overlay.lat_p50": pytest.approx(6.840e-6),
                 "overlay.lat_p99": pytest.approx(32.818e-6), "overlay.bw": 1e9}
    with pytest.raises(InstanceError):  # a server not up yet: no figures, tried again
        overlay.figures("sockperf: connect: Connection refused", IPERF3)
    with pytest.raises(InstanceError, match="refused"):
        overlay.figures(SOCKPERF, '{"error": "unable to connect to server: refused"}')


def test_retry_until_the_server_answers(tmp_path: Path) -> None:
    flag = tmp_path / "up"
    script = f"if [ -e {flag} ]; then cat; else touch {flag}; echo refused; fi"
    out = overlay._retry(["sh", "-c", script + " <<'E'\n" + SOCKPERF + "E\n"], 10.0,
                         sockperf_latency)
    assert "percentile 50.000" in out
    with pytest.raises(InstanceError):
        overlay._retry(["sh", "-c", "echo refused"], 0.1, sockperf_latency)


@pytest.mark.parametrize(("model", "virt", "tcg"), [
    ("QEMU TCG CPU version 2.5+", "qemu\n", True), ("Intel(R) Xeon(R) Gold", "qemu\n", True),
    ("Intel(R) Xeon(R) Gold", "kvm\n", False), ("AMD EPYC 7B13", "none\n", False)])
def test_an_emulated_worker_is_told(model: str, virt: str, tcg: bool) -> None:
    assert overlay.is_tcg(model, virt) is tcg


# --- the tear-down on both nodes ---------------------------------------------------------

class FakeWorker(overlay.Worker):
    def __init__(self, state: str = "inactive", gwbridge: bool = False) -> None:
        super().__init__("root@10.0.0.2", 1.0)
        self.cmds: list[str] = []
        self.state, self.gwbridge = state, gwbridge

    def run(self, cmd: str, *, check: bool = True, stdin: int | None = None) -> str:
        self.cmds.append(cmd)
        if "swarm leave" in cmd:
            self.state = "inactive"
        if "network rm docker_gwbridge" in cmd:
            self.gwbridge = False
        if "LocalNodeState" in cmd:
            return self.state + "\n"
        if "network ls" in cmd:
            return "abc\n" if self.gwbridge else ""
        return ""


class FakeApi:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def nodes(self) -> list[dict[str, Any]]:
        return [{"ID": "me", "Status": {"Addr": "10.0.0.1"}, "Spec": {"Role": "manager"}},
                {"ID": "w1", "Status": {"Addr": "10.0.0.2"}, "Spec": {"Role": "worker"}},
                {"ID": "w2", "Status": {"Addr": "10.0.0.3"}, "Spec": {"Role": "worker"}}]

    def remove_node(self, node: str, force: bool) -> None:
        self.removed.append(node)


class FakeService:
    name = "cvbench-abcdef0123-overlay1"

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def steps(worker: FakeWorker, **kw: Any) -> tuple[overlay.Steps, FakeApi, FakeService]:
    api, svc = FakeApi(), FakeService()
    rt = type("Rt", (), {"api": api})()
    s = overlay.Steps(cast(Any, rt), cast(Any, svc), worker, "sha256:" + "1" * 64,
                      "10.0.0.2", "cvbench-abcdef0123-plain1", **kw)
    return s, api, svc


def test_teardown_undoes_what_the_sample_made_on_both_nodes() -> None:
    w = FakeWorker(state="active", gwbridge=True)
    s, api, svc = steps(w, joined=True, loaded=True, gwbridge=True)
    assert s.teardown() == []
    assert svc.closed
    script = w.cmds[0]
    assert script.index("docker rm -f cvbench-abcdef0123-plain1") < \
        script.index("com.docker.swarm.service.name=cvbench-abcdef0123-overlay1") < \
        script.index("docker swarm leave --force") < script.index("network rm docker_gwbridge")
    assert script.endswith(f"docker image rm sha256:{'1' * 64} >/dev/null")
    assert api.removed == ["w1"]  # the worker's node only, not another worker


def test_teardown_leaves_what_it_found() -> None:
    w = FakeWorker()
    s, api, _ = steps(w)  # the join never happened; the image was there; gwbridge too
    assert s.teardown() == []
    assert "swarm leave" not in w.cmds[0] and "image rm" not in w.cmds[0]
    assert "docker_gwbridge" not in w.cmds[0]
    assert api.removed == []


def test_a_worker_still_in_a_swarm_is_a_problem() -> None:
    class Stuck(FakeWorker):
        def run(self, cmd: str, *, check: bool = True, stdin: int | None = None) -> str:
            out = super().run(cmd, check=check, stdin=stdin)
            self.state = "active"  # the leave did not take
            return out if "LocalNodeState" not in cmd else "active\n"
    s, _, _ = steps(Stuck(state="active"), joined=True)
    found = s.teardown()
    assert len(found) == 1 and "still in a swarm" in found[0]
    assert "docker swarm leave --force" in found[0]


# --- the report's chapter -----------------------------------------------------------------

PLAIN = {"overlay.lat_p50": 100e-6, "overlay.lat_p99": 300e-6, "overlay.bw": 400e6}
COST = {"overlay.lat_p50": 2.0, "overlay.lat_p99": 1.5, "overlay.bw": 0.5}


def overlay_frame(tmp_path: Path, tcg: bool) -> Any:
    import numpy as np

    from tests.unit import report_synth as synth
    rng = np.random.default_rng(5)
    samples = []
    for rnd in range(1, 6):
        drift = rng.uniform(0.9, 1.1)  # both paths of a sample alike: the ratio stays
        for metric, v in PLAIN.items():
            unit = "B/s" if metric == "overlay.bw" else "s"
            for path, k in (("plain", 1.0), ("overlay", COST[metric])):
                s = synth._s("docker:swarm", f"path={path}", metric, unit, v * k * drift, rnd)
                samples.append({**s, "worker_tcg": tcg, "worker_cpu": "QEMU TCG CPU"
                                if tcg else "Synthetic CPU"})
    backends = {"docker:swarm": {"kind": "container"}}
    return synth.load([synth.write_result(tmp_path, "overlay", samples, backends)])[1]


def test_chapter_draws_both_paths_and_the_paired_ratio(tmp_path: Path) -> None:
    from harness.report import draw
    from harness.report.studies import overlay as chapter
    df = overlay_frame(tmp_path, tcg=False)
    look = draw.Look.of(df, "paper")
    fig = chapter.overlay(df, look)
    assert fig is not None
    for metric in PLAIN:
        for path in ("overlay", "plain"):
            (pt,) = fig.findobj(lambda a, m=metric, p=path: str(a.get_gid()).startswith(  # type: ignore[misc]
                f"{m}|{p}|docker:swarm"))
            want = df[(df["metric"] == metric) & (df["variant"] == f"path={path}")]["value"]
            assert cast(Any, pt).get_xdata()[0] == pytest.approx(want.median())
    assert "TCG" not in fig.texts[0].get_text()
    table = chapter.overlay_table(df, False)
    assert table is not None
    assert [r[1] for r in table.rows] == ["overlay", "plain", "overlay / plain"]
    assert table.rows[2][2:] == ["×2.00 ±0.0%", "×1.50 ±0.0%", "×0.50 ±0.0%"]
    fig.savefig(tmp_path / "overlay.png")  # it renders
    assert (tmp_path / "overlay.png").stat().st_size > 0


def test_an_emulated_worker_is_in_the_title_and_the_rows(tmp_path: Path) -> None:
    from harness.report import draw
    from harness.report.studies import overlay as chapter
    df = overlay_frame(tmp_path, tcg=True)
    fig = chapter.overlay(df, draw.Look.of(df, "slides"))
    assert fig is not None
    assert chapter.TCG_MARK in fig.texts[0].get_text()
    table = chapter.overlay_table(df, False)
    assert table is not None and all(chapter.TCG_MARK in r[0] for r in table.rows)
    fig.savefig(tmp_path / "overlay.svg")


# --- a whole sample against fakes of both daemons ----------------------------------------

class FakeSwarmApi(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.joined = False

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"NodeID": "me", "RemoteManagers": [
            {"NodeID": "me", "Addr": "10.0.0.1:2377"}]}}

    def nodes(self) -> list[dict[str, Any]]:
        me = {"ID": "me", "Status": {"Addr": "10.0.0.1", "State": "ready"},
              "Spec": {"Role": "manager"}, "Description": {"Hostname": "here"}}
        w = {"ID": "w1", "Status": {"Addr": "10.0.0.2", "State": "ready"},
             "Spec": {"Role": "worker"}, "Description": {"Hostname": "guest"}}
        return [me, w] if self.joined and "w1" not in self.removed else [me]

    def services(self) -> list[dict[str, Any]]:
        return []

    def inspect_swarm(self) -> dict[str, Any]:
        return {"JoinTokens": {"Worker": "SWMTKN-1-abc"}}


def fake_swarm(api: FakeSwarmApi, fail: str = "") -> tuple[Any, list[str]]:
    from runtimes import _swarm
    from runtimes.base import Replica
    from runtimes.swarm import DockerSwarm, SwarmService

    calls: list[str] = []

    class Svc(SwarmService):
        def deploy(self, spec: Any, prepared: Any, port: int) -> str:
            calls.append(f"deploy max_per_node={self.max_per_node} port={port}")
            return ""

        def scale(self, n: int) -> None:
            calls.append(f"scale {n}")
            if fail == "scale":
                raise InstanceError("scale failed")

        def replicas(self) -> list[Replica]:
            return [Replica("t1", details={"container": "c1"}),
                    Replica("t2", node="guest", details={
                        "overlay": {self.name: ["10.0.1.5/24"]}})]

        def close(self) -> None:
            calls.append("close")

    class Rt(DockerSwarm):
        @property
        def api(self) -> Any:
            return api

        @property
        def socket_path(self) -> str:
            return "/run/docker.sock"

        def join(self, run_id: str, addr: str | None = None) -> _swarm.Use:
            calls.append(f"join {addr}")
            return _swarm.Use(made=True, node="me", maker=run_id)

        def replica_set(self, run_id: str, name: str) -> Any:
            return Svc(self, run_id, name)

    rt = Rt()  # (flavour "swarm" would make a DockerSwarm itself: docker.py's __new__)
    rt.name = "docker:swarm"
    return rt, calls


def run_overlay(monkeypatch: pytest.MonkeyPatch, fail: str = ""
                ) -> tuple[list[Any], FakeWorker, FakeSwarmApi, list[str], list[Any]]:
    api = FakeSwarmApi()
    rt, calls = fake_swarm(api, fail)
    worker = FakeWorker()
    real_run = worker.run

    def run(cmd: str, *, check: bool = True, stdin: int | None = None) -> str:
        if "swarm join" in cmd:
            api.joined = True
            worker.state = "active"
            worker.gwbridge = True
        if "model name" in cmd:
            return "model name\t: QEMU TCG CPU version 2.5+\n"
        if "image inspect" in cmd:  # the worker holds the image already
            return rt_ref + "\n"
        return real_run(cmd, check=check, stdin=stdin)
    worker.run = run  # type: ignore[method-assign]
    rt_ref = "sha256:" + "0" * 64
    monkeypatch.setattr(overlay, "Worker", lambda dest, timeout: worker)
    clients: list[Any] = []

    def retry(argv: list[str], timeout: float, ok: Any) -> str:
        clients.append(argv)
        out = SOCKPERF if "sockperf pp" in argv[-1] else IPERF3
        ok(out)
        return out
    monkeypatch.setattr(overlay, "_retry", retry)
    ctx = Context("abcdef0123", 5.0)
    ctx.params = {"worker": "root@10.0.0.2", "advertise": ["10.0.0.1", "10.0.0.2"],
                  "duration": 2, "message": 64}
    events: list[Any] = []
    ctx.event = lambda kind, **data: events.append((kind, data))
    cell = cell_of(rt)
    try:
        out = studies.get("overlay").sample(ctx, cell)
    except InstanceError:
        out = []
    return out, worker, api, calls, [*clients, *events]


def test_a_sample_measures_both_paths_and_leaves_both_nodes_as_found(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out, worker, api, calls, clients = run_overlay(monkeypatch)
    assert calls == ["join 10.0.0.1", "deploy max_per_node=1 port=15201", "scale 2", "close"]
    joins = [c for c in worker.cmds if "swarm join" in c]
    assert joins == ["docker swarm join --token SWMTKN-1-abc --advertise-addr 10.0.0.2 "
                     "10.0.0.1:2377"]
    # overlay: from the local replica to the remote one's overlay address; plain: the
    # worker's address from a host-network container
    assert clients[0][:5] == ["docker", "-H", "unix:///run/docker.sock", "exec", "c1"]
    assert "-i 10.0.1.5 " in clients[0][-1]
    assert "--network" in clients[2] and "-i 10.0.0.2 " in clients[2][-1]
    assert any("--network host" in c and "cvbench-abcdef0123-plain" in c
               for c in worker.cmds)
    got = {(m.metric, m.variant) for m in out}
    assert got == {(m, f"path={p}") for m in overlay.METRICS for p in overlay.PATHS}
    assert all(m.extra and m.extra["worker_tcg"] is True and m.extra["worker_node"] == "guest"
               for m in out)
    assert worker.state == "inactive" and not worker.gwbridge
    assert api.removed == ["w1"]
    assert not [c for c in worker.cmds if "image rm" in c]  # found there: kept


def test_a_failed_sample_still_leaves_both_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    out, worker, api, calls, _ = run_overlay(monkeypatch, fail="scale")
    assert out == []
    assert calls[-1] == "close"
    assert any("docker swarm leave --force" in c for c in worker.cmds)
    assert worker.state == "inactive" and not worker.gwbridge and api.removed == ["w1"]


def test_the_services_network_is_removed_again_once_the_worker_left() -> None:
    w = FakeWorker(state="active")
    s, _, svc = steps(w, joined=True)
    tries: list[str] = []

    def close() -> None:  # the overlay network is in use while the worker's task is
        tries.append(w.state)
        if w.state != "inactive":
            raise InstanceError("network cvbench-abcdef0123-overlay1 is in use by task")
    svc.close = close  # type: ignore[method-assign]
    assert s.teardown() == []
    assert tries == ["active", "inactive"]
