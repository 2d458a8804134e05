"""Readiness that means serving: the kinds, the host-side probes against a real local
server, the startup study's serving spans, and validation (network none refused)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import scenario, studies, validate
from harness.core import image
from harness.core.errors import InstanceError, ReadyTimeout, ScenarioError
from harness.core.probes import serving
from harness.core.probes.timing import Timeline
from harness.sampling import Cell, Context
from harness.studies import _lifecycle as life
from runtimes.base import Exit
from tests.unit.fakes import FakeRuntime


@pytest.mark.parametrize(("text", "expected"), [
    ("marker", serving.Readiness("marker")),
    ("exit", serving.Readiness("exit")),
    ("tcp:6379", serving.Readiness("tcp", port=6379)),
    ("http:80", serving.Readiness("http", port=80, path="/")),
    ("http:8080/health/ready?x=1", serving.Readiness("http", port=8080, path="/health/ready?x=1")),
    ("log:ready to accept", serving.Readiness("log", pattern="ready to accept")),
])
def test_kinds_parse_and_print_back(text: str, expected: serving.Readiness) -> None:
    got = serving.parse(text)
    assert got == expected
    assert serving.parse(str(got)) == got
    assert got.serving == (got.kind in ("tcp", "http", "log"))
    assert got.needs_address == (got.kind in ("tcp", "http"))


@pytest.mark.parametrize(("text", "fragment"), [
    ("soon", "is not one of"), ("tcp:", "port"), ("tcp:99999", "port"), ("http:x/", "port"),
    ("tcp:80/x", "no path"), ("log:", "empty"), ("log:(", "regular expression"),
    ("marker:1", "is not one of"), ("http:80/a b", "spaces"),
])
def test_bad_kinds_say_why(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        serving.parse(text)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path != "/moved" else 302)
        self.send_header("Location", "/")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Server = tuple[int, list[int]]


@pytest.fixture
def late() -> Iterator[Callable[[], Server]]:
    """Starts an HTTP server on 127.0.0.1 that listens 0.3 s later: its port, and a list
    that gets the monotonic ns just before its listen() and just after it, taken by the
    server itself (a connect can complete from the moment listen() runs)."""
    servers: list[http.server.HTTPServer] = []
    threads: list[threading.Thread] = []

    def start() -> Server:
        port = _free_port()
        listened: list[int] = []

        def serve() -> None:
            time.sleep(0.3)
            srv = http.server.HTTPServer(("127.0.0.1", port), _Handler,
                                         bind_and_activate=False)
            srv.server_bind()
            listened.append(time.monotonic_ns())
            srv.server_activate()  # listen()
            listened.append(time.monotonic_ns())
            servers.append(srv)
            srv.serve_forever(poll_interval=0.05)

        threads.append(threading.Thread(target=serve, daemon=True))
        threads[-1].start()
        return port, listened

    yield start
    for t in threads:
        while t.is_alive() and len(servers) < len(threads):
            time.sleep(0.01)
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def late_server(late: Callable[[], Server]) -> Server:
    return late()


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_poll_answers_at_the_first_attempt_after_the_server_listens(
        late_server: tuple[int, list[int]], kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked against the server's own clock: no answer before it called listen(),
    and (tcp: the kernel completes the handshake from then on) the first attempt that
    began after listen() returned is the one that answers. No wall-clock bound."""
    port, listened = late_server
    attempts: list[tuple[int, bool]] = []  # (when it began, whether it answered)
    real = serving.answers

    def counted(r: serving.Readiness, address: str, timeout: float = 1.0) -> bool:
        began = time.monotonic_ns()
        ok = real(r, address, timeout)
        attempts.append((began, ok))
        return ok

    monkeypatch.setattr(serving, "answers", counted)
    probe = serving.parse(f"{kind}:{port}" + ("/" if kind == "http" else ""))
    t0 = time.monotonic_ns()
    answered = serving.poll(probe, "127.0.0.1", 0.05, time.monotonic() + 30)
    assert answered is not None
    # the server's thread notes the end of listen() after the kernel may already have
    # completed a handshake (under load the probe can get there first): wait for it
    deadline = time.monotonic() + 30
    while len(listened) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(listened) == 2
    before_listen, after_listen = listened
    assert t0 < before_listen <= answered
    if kind == "http":  # an answer needs the server's loop, which runs after listen()
        assert answered >= after_listen
    assert all(not ok for began, ok in attempts if began < before_listen)
    assert attempts[-1][1] and sum(ok for _, ok in attempts) == 1
    if kind == "tcp":  # no attempt that began after listen() went unanswered
        assert [ok for began, ok in attempts if began >= after_listen] == [True], attempts


def test_http_needs_a_2xx_or_3xx(late_server: tuple[int, list[int]]) -> None:
    port, _ = late_server
    assert serving.poll(serving.parse(f"http:{port}/"), "127.0.0.1", 0.02,
                        time.monotonic() + 10) is not None
    assert serving.answers(serving.parse(f"http:{port}/moved"), "127.0.0.1")
    _Handler.status = 503
    try:
        assert not serving.answers(serving.parse(f"http:{port}/"), "127.0.0.1")
        assert serving.poll(serving.parse(f"http:{port}/"), "127.0.0.1", 0.02,
                            time.monotonic() + 0.2) is None
    finally:
        _Handler.status = 200


def test_nothing_listening_gives_up_at_the_deadline() -> None:
    t0 = time.monotonic()
    assert serving.poll(serving.parse(f"tcp:{_free_port()}"), "127.0.0.1", 0.02,
                        t0 + 0.3) is None
    assert time.monotonic() - t0 < 2


def test_timeline_of_a_service() -> None:
    ms = 1_000_000
    tl = Timeline(0, 10 * ms, 12 * ms, 20 * ms, 20 * ms, 90 * ms, serve=50 * ms)
    m = tl.metrics()
    assert "startup.exit" not in m
    assert m["startup.to_serving"] == pytest.approx(0.050)
    assert m["startup.serving"] == pytest.approx(0.038)  # start returned -> first answer
    assert m["startup.to_ready"] == pytest.approx(0.020)
    assert m["startup.remove"] == pytest.approx(0.040) and m["startup.total"] == pytest.approx(0.09)
    # without a service: the phases as ever, no serving spans
    plain = Timeline(0, 1, 2, 3, 4, 5).metrics()
    assert "startup.to_serving" not in plain and "startup.exit" in plain


def _cell(tmp_path: Path, rt: FakeRuntime, readiness: str, network: str = "host") -> Cell:
    scen = scenario.parse({"name": "t", "network": network,
                           "workload": {"readiness": readiness, "argv": ["srv"],
                                        "probe_interval": 0.02}}, "t.toml")
    v = scen.variants[0]
    img = image.build(image.Recipe(), tmp_path / "cache")
    return Cell(backend=rt.name, variant=v, config=scen.config(v), runtime=rt,
                prepared=rt.prepare(img), traits=rt.traits())


def test_startup_sample_of_a_service_has_serving_spans(
        tmp_path: Path, late: Callable[[], Server]) -> None:
    rt = FakeRuntime(addr="127.0.0.1")
    _cell(tmp_path, rt, "tcp:1")  # builds the image now, before the server's 0.3 s run
    ctx = Context("abcdef0123", 10)
    ctx.probe_interval = 0.02
    port, listened = late()
    cell = _cell(tmp_path, rt, f"http:{port}/")
    got = {m.metric: m.value for m in studies.get("startup").sample(ctx, cell)}
    assert listened and "startup.exit" not in got
    # The server listens 0.3 s after late() was called, and building the cell takes part
    # of that (more on a loaded machine): so no lower bound beyond "after create"
    assert 0 < got["startup.to_serving"] < 5
    assert got["startup.serving"] <= got["startup.to_serving"]
    assert rt.live == {} and listened  # removed once it answered


def test_log_probe_reads_the_workload_output(tmp_path: Path) -> None:
    rt = FakeRuntime(output=b"starting\nready to accept connections\n")
    cell = _cell(tmp_path, rt, "log:ready to accept")
    ctx = Context("abcdef0123", 5)
    inst = rt.create(ctx.spec(cell), cell.prepared)
    assert life.serve(ctx, cell, inst, time.monotonic() + 5) is not None
    quiet = FakeRuntime(output=b"starting\n")
    cell = _cell(tmp_path, quiet, "log:ready to accept")
    # (its output over without the line, the fake's workload exits when waited for)
    with pytest.raises(InstanceError, match=r"exited with status 0.*before a line matched"):
        life.serve(ctx, cell, quiet.create(ctx.spec(cell), cell.prepared),
                   time.monotonic() + 5)


def test_an_unreachable_instance_fails_its_probe(tmp_path: Path) -> None:
    rt = FakeRuntime(addr=None)
    cell = _cell(tmp_path, rt, "tcp:80")
    ctx = Context("abcdef0123", 5)
    with pytest.raises(InstanceError, match="no address"):
        life.serve(ctx, cell, rt.create(ctx.spec(cell), cell.prepared), time.monotonic() + 5)


def test_a_probe_from_the_host_is_refused_for_network_none(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    head = 'name = "s"\nstudy = "startup"\nbackends = ["host"]\n'
    path.write_text(head + '[workload]\nreadiness = "http:80/"\n')
    with pytest.raises(ScenarioError) as exc:
        validate.check(scenario.load(str(path)))
    assert exc.value.key == "workload.readiness" and "none" in exc.value.message
    path.write_text(head + 'network = "bridge"\n[workload]\n'
                    'readiness = "tcp:80"\n[variants]\nnetwork = ["bridge", "none"]\n')
    with pytest.raises(ScenarioError) as exc:
        validate.check(scenario.load(str(path)))
    assert exc.value.key == "variants (network=none) workload.readiness"
    path.write_text(head + '[workload]\nreadiness = "log:up"\n')
    validate.check(scenario.load(str(path)))  # a log probe needs no address


def test_probe_interval_is_recorded(tmp_path: Path) -> None:
    scen = scenario.parse({"name": "t", "workload": {"readiness": "tcp:1",
                                                     "probe_interval": 0.005}}, "t.toml")
    assert scen.as_dict()["workload"]["probe_interval"] == 0.005
    with pytest.raises(ScenarioError, match="probe_interval"):
        scenario.parse({"name": "t", "workload": {"probe_interval": 0}}, "t.toml")


def test_a_probe_stops_when_its_instance_is_gone() -> None:
    asked: list[int] = []

    def ended() -> str | None:
        asked.append(1)
        return None if len(asked) < 3 else "exited with status 3: 'no config'"

    with pytest.raises(InstanceError) as exc:
        serving.poll(serving.parse(f"tcp:{_free_port()}"), "127.0.0.1", 0.01,
                     time.monotonic() + 600, ended)
    assert len(asked) == 3
    assert "exited with status 3" in str(exc.value) and "no config" in str(exc.value)
    assert "timeout" not in str(exc.value)


@pytest.mark.parametrize("readiness", ["tcp:{port}", "http:{port}/", "log:listening"])
def test_a_dead_server_fails_its_probe_with_its_exit(tmp_path: Path, readiness: str) -> None:
    dead = Exit(code=3, t_ns=time.monotonic_ns(), stderr=b"bad option --nope\n")
    rt = FakeRuntime(addr="127.0.0.1", ended=dead, output=b"starting\n")
    cell = _cell(tmp_path, rt, readiness.format(port=_free_port()))
    ctx = Context("abcdef0123", 600)
    with pytest.raises(InstanceError) as exc:
        life.serve(ctx, cell, rt.create(ctx.spec(cell), cell.prepared),
                   time.monotonic() + 600)
    assert not isinstance(exc.value, ReadyTimeout)
    assert "exited with status 3" in str(exc.value) and "bad option --nope" in str(exc.value)
