"""The docker/podman backends without a daemon: the InstanceSpec mapping, the attach
stream's demultiplexing, and what `bench doctor` says when a daemon is missing."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from harness.core.errors import InstanceError, UsageError
from runtimes import _engine, _proc
from runtimes.base import InstanceSpec, Limits, Mount, publish_address
from runtimes.docker import DockerRuntime
from runtimes.podman import PodmanRuntime, nofile_configured


def spec(**kw: object) -> InstanceSpec:
    return InstanceSpec(run_id="abcdef0123", name="cvbench-abcdef0123-1", argv=("true",),
                        **kw)  # type: ignore[arg-type]


def test_limits_network_runtime_map_to_host_config() -> None:
    hc = _engine.host_config(spec(limits=Limits(cpus=1.5, memory=256 << 20, pids=128),
                                  network="host"), {}, "crun")
    assert hc["nano_cpus"] == 1_500_000_000
    assert hc["mem_limit"] == hc["memswap_limit"] == 256 << 20  # no swap beyond the limit
    assert hc["pids_limit"] == 128
    assert hc["network_mode"] == "host" and hc["runtime"] == "crun"
    bare = _engine.host_config(spec(), {}, None)
    assert bare == {"network_mode": "none", "mounts": []}


def test_publish_and_cpuset_map_to_port_bindings_and_cpuset_cpus() -> None:
    s = spec(limits=Limits(cpuset="1"), network="bridge", publish=((20080, 80),))
    hc = _engine.host_config(s, {}, None)
    assert hc["cpuset_cpus"] == "1"
    assert hc["port_bindings"] == {80: (publish_address(), 20080)}


def test_publish_needs_a_bridge() -> None:
    with pytest.raises(UsageError, match="published ports need network bridge"):
        DockerRuntime().check(spec(network="host", publish=((20080, 80),)))


def test_mounts_map_to_engine_mounts() -> None:
    mounts = (Mount("bind", "/in", "/host/dir", readonly=True),
              Mount("volume", "/vol", "data"),
              Mount("tmpfs", "/tmp", size=1 << 20))
    hc = _engine.host_config(spec(mounts=mounts), {"data": "cvbench-abcdef0123-data"}, None)
    bind, vol, tmp = hc["mounts"]
    assert (bind["Type"], bind["Source"], bind["Target"], bind["ReadOnly"]) == \
        ("bind", "/host/dir", "/in", True)
    assert (vol["Type"], vol["Source"], vol["ReadOnly"]) == \
        ("volume", "cvbench-abcdef0123-data", False)
    assert (tmp["Type"], tmp["TmpfsOptions"]["SizeBytes"]) == ("tmpfs", 1 << 20)


def test_environment_carries_the_nonce() -> None:
    s = spec(env={"A": "1"})
    env = _engine.environment(s)
    assert env["CVBENCH_NONCE"] == s.nonce and env["A"] == "1" and "PATH" in env


def test_runsc_refuses_a_network_it_cannot_have() -> None:
    rt = DockerRuntime("runsc")
    rt.check(spec(network="none"))
    with pytest.raises(UsageError, match="runsc"):
        rt.check(spec(network="bridge"))
    DockerRuntime("crun").check(spec(network="bridge"))


def test_flavour_names_and_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    assert (DockerRuntime().name, DockerRuntime().runtime) == ("docker", "runc")
    assert (DockerRuntime("crun").name, DockerRuntime("crun").runtime) == ("docker:crun", "crun")
    assert PodmanRuntime().socket_path == "/run/podman/podman.sock"
    assert PodmanRuntime("runc").socket_path == "/run/podman/podman-runc.sock"


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


def test_attach_stream_demultiplexes_split_frames() -> None:
    a, b = socket.socketpair()
    out = _engine.AttachStream(a, keep_all=True)
    payload = frame(2, b"warn\n") + frame(1, b"CVBENCH-READY n1\nhello\n") + frame(1, b"x")
    for i in range(0, len(payload), 5):  # the engine may cut frames anywhere
        b.sendall(payload[i:i + 5])
        time.sleep(0.001)
    t = _proc.wait_line(out, b"CVBENCH-READY n1", time.monotonic() + 5)
    assert t > 0
    b.close()
    out.drain(time.monotonic() + 5)
    assert bytes(out.data) == b"hello\nx" and bytes(out.err.data) == b"warn\n"
    out.close()
    out.close()  # idempotent


def test_attach_stream_ends_before_ready_line() -> None:
    a, b = socket.socketpair()
    out = _engine.AttachStream(a, keep_all=False)
    b.sendall(frame(2, b"exec failed\n"))
    b.close()
    with pytest.raises(InstanceError, match="before the ready line"):
        _proc.wait_line(out, b"CVBENCH-READY x", time.monotonic() + 5)
    out.close()


def test_doctor_says_daemon_not_running(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(_engine.shutil, "which", lambda *a, **k: "/usr/sbin/dockerd")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    a = DockerRuntime().availability()
    assert not a.ok and "not running" in a.reason and "make provision" in a.fix
    # a socket file nobody listens on: the daemon died
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "docker.sock"))
    s.close()
    a = DockerRuntime().availability()
    assert not a.ok and "does not answer" in a.reason and "dockerd.log" in a.fix


def test_doctor_says_binary_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine.shutil, "which", lambda *a, **k: None)
    a = PodmanRuntime().availability()
    assert not a.ok and "not installed" in a.reason and "podman" in a.fix


def test_podman_ulimits_found_in_containers_conf(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    conf = tmp_path / "containers.conf"
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    conf.write_text("[containers]\n")
    assert not nofile_configured()
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000"]\n')
    assert nofile_configured()


class _Df:
    def __init__(self, rows: list[dict[str, object]]) -> None:
        self.rows = rows

    def df(self) -> dict[str, object]:
        return {"Images": self.rows}


@pytest.mark.parametrize(("info", "rows", "expected"), [
    ({"Id": "sha256:ab", "Size": 100}, [{"Id": "sha256:ab", "Size": 100, "SharedSize": 30}],
     {"image": 100, "image.shared": 30, "image.unique": 70}),
    # SharedSize -1: the engine did not compute it (was read as 0 shared, all unique)
    ({"Id": "sha256:ab", "Size": 100}, [{"Id": "sha256:ab", "Size": 100, "SharedSize": -1}],
     {"image": 100}),
    ({"Id": "sha256:ab"}, [], {}),  # no size reported: absent, not an image of 0 bytes
])
def test_an_image_footprint_the_engine_did_not_report_is_absent(
        info: dict[str, object], rows: list[dict[str, object]],
        expected: dict[str, int]) -> None:
    rt = DockerRuntime()
    rt._client = _Df(rows)  # type: ignore[assignment]
    assert rt._footprint(info) == expected
