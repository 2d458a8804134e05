"""The studies against a fake backend, and what the runner does with their records:
sub-variants, artifacts per sample, NotApplicable cells, scenario params."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import results, scenario, studies
from harness.core import image
from harness.core.errors import InstanceError, NotApplicable, UsageError
from harness.sampling import Cell, Context, Measurement, Runner
from runtimes.base import Exit, Instance, Prepared, Stats, Traits
from tests.unit.fakes import FakeRuntime
from tests.unit.test_studies_probes import fio_doc

OPEN: list[results.Journal] = []


@pytest.fixture(autouse=True)
def _close_journals() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVBENCH_STATE", str(tmp_path / "state"))  # the io study's bind dirs


@pytest.fixture
def img(tmp_path: Path) -> image.Image:
    return image.build(image.Recipe(), tmp_path / "cache")


class StudyFake(FakeRuntime):
    """A fake backend whose figures a test sets."""

    def __init__(self, name: str = "fake", stdout: Any = b"", usage: int | None = 4096,
                 footprint: dict[str, int] | None = None, not_applied: Iterable[str] = (),
                 volume_formats: tuple[str, ...] = (), extra: dict[str, Any] | None = None,
                 code: int = 0) -> None:
        super().__init__(name, traits=Traits("container", not_applied=frozenset(not_applied),
                                             volume_formats=volume_formats))
        self.stdout, self.usage, self.code = stdout, usage, code
        self.footprint = footprint or {"image": 1000}
        self.extra = extra or {}
        self.specs: list[Any] = []
        self.pids: tuple[int, ...] = (1,)  # the instance's host processes (found)
        self.daemon_pids: dict[str, list[int]] = {}

    def prepare(self, img: image.Image) -> Prepared:
        return Prepared(image=img, backend=self.name, ref="fake", footprint=self.footprint)

    def create(self, spec: Any, prepared: Prepared) -> Instance:
        self.specs.append(spec)
        return super().create(spec, prepared)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        out = self.stdout(inst.spec) if callable(self.stdout) else self.stdout
        return Exit(code=self.code, t_ns=time.monotonic_ns(), stdout=out)

    def stats(self, inst: Instance) -> Stats:
        return Stats(pids=self.pids, pss=100, uss=50, rss=300, cgroup=400, extra=self.extra)

    def daemons(self) -> dict[str, list[int]]:
        return self.daemon_pids

    def disk_usage(self, inst: Instance) -> int | None:
        return self.usage

    def address(self, inst: Instance) -> str | None:
        return "127.0.0.1"


def make(tmp_path: Path, img: image.Image, study: str, rts: list[FakeRuntime],
         params: dict[str, Any] | None = None, metric: str = "memory.pss",
         **sampling: Any) -> tuple[Runner, list[Cell], results.Journal]:
    scen = scenario.parse({"name": "t", "study": study, "backends": ["host"],
                           "params": params or {},
                           "sampling": {"metric": metric, **sampling}}, "t.toml")
    variant = scen.variants[0]
    cells = [Cell(backend=rt.name, variant=variant, config=scen.config(variant), runtime=rt,
                  prepared=rt.prepare(img), traits=rt.traits()) for rt in rts]
    journal = results.Journal(tmp_path / f"{study}.journal", {"run_id": "abcdef0123",
                                                              "schema": 1})
    OPEN.append(journal)
    st = studies.get(study)
    r = Runner(scen, cells, journal, st.sample, lambda m: studies.unit_of(st, m), seed=1)
    return r, cells, journal


@pytest.mark.parametrize(("what", "why"), [
    ("daemon", "dockerd not found (by its socket, unit or pid file)"),
    ("processes", "no host process of the instance was found")])
def test_memory_that_cannot_be_read_fails_the_sample_not_a_zero(
        tmp_path: Path, img: image.Image, what: str, why: str) -> None:
    rt = StudyFake()
    if what == "daemon":  # found by name before: a daemon not found read as 0 bytes
        rt.daemon_pids = {"dockerd": [], "containerd": [os.getpid()]}
    else:
        rt.pids = ()
    r, _cells, journal = make(tmp_path, img, "memory", [rt],
                             params={"instances": 2, "settle": 0.0},
                             warmups=0, min_samples=1, max_samples=1)
    r.run()
    assert not [s for s in journal.samples if s.metric in ("memory.pss", "memory.daemon")]
    failed = [e for e in journal.events if e["kind"] == "sample_failed"]
    assert failed and all(why in e["error"] for e in failed), failed
    assert rt.live == {}


def test_every_study_is_known_and_its_scenario_parses(repo: Path) -> None:
    from harness import validate

    for name in ("memory", "disk", "io", "limits", "network"):
        st = studies.get(name)
        s = scenario.load(str(repo / "scenarios" / f"{name}.toml"))
        assert s.study == name
        assert validate.check_study(s) == []
        assert studies.unit_of(st, s.sampling.metric)


def test_memory_per_instance_daemon_apart_and_guest_view(tmp_path: Path,
                                                         img: image.Image) -> None:
    rt = StudyFake(extra={"guest_used": 12345, "note": "x",
                          "guest": {"usable": 5, "last_update": True}})
    r, _cells, journal = make(tmp_path, img, "memory", [rt],
                             params={"instances": 3, "settle": 0.0},
                             warmups=0, min_samples=1, max_samples=1)
    r.run()
    rows = journal.samples
    pss = [s for s in rows if s.metric == "memory.pss"]
    assert sorted(s.instance for s in pss) == [0, 1, 2]
    assert {s.value for s in pss} == {100}
    daemon = [s for s in rows if s.metric == "memory.daemon"]
    assert len(daemon) == 1 and daemon[0].instance is None and daemon[0].value == 0
    guest = [s for s in rows if s.metric == "memory.guest_used"]
    assert len(guest) == 3 and guest[0].unit == "B"
    assert {s.metric for s in rows} == {"memory.pss", "memory.uss", "memory.rss",
                                           "memory.cgroup", "memory.daemon",
                                           "memory.guest_used"}
    assert rt.live == {}


def test_disk_records_footprint_and_instances(tmp_path: Path, img: image.Image) -> None:
    rt = StudyFake(footprint={"image": 5000, "image.virtual": 9000, "disk.raw": 7},
                   usage=2 << 20)
    r, _cells, journal = make(tmp_path, img, "disk", [rt], params={"write": "1M"},
                             metric="disk.image", warmups=0, min_samples=1, max_samples=1)
    r.run()
    got = {s.metric: s.value for s in journal.samples}
    assert got == {"disk.image": 5000, "disk.image.virtual": 9000, "disk.raw": 7,
                   "disk.instance_idle": 2 << 20, "disk.instance": 2 << 20}
    writer = rt.specs[1]
    assert "count=16" in writer.argv[-1] and "sleep" in writer.argv[-1]


def test_disk_waits_for_the_written_bytes(tmp_path: Path, img: image.Image) -> None:
    class Growing(StudyFake):
        def disk_usage(self, inst: Instance) -> int | None:
            self.usage = min((self.usage or 0) + (300 << 10), 1 << 20)
            return self.usage

    rt = Growing(usage=0)
    r, cells, _journal = make(tmp_path, img, "disk", [rt], params={"write": "1M"},
                              metric="disk.image")
    ms = studies.get("disk").sample(r.ctx, cells[0])
    assert {m.metric: m.value for m in ms}["disk.instance"] == 1 << 20


def test_disk_writes_nothing_where_there_is_no_instance_layer(tmp_path: Path,
                                                              img: image.Image) -> None:
    rt = StudyFake(usage=None)
    r, _cells, journal = make(tmp_path, img, "disk", [rt], metric="disk.image",
                             warmups=0, min_samples=1, max_samples=1)
    r.run()
    assert {s.metric for s in journal.samples} == {"disk.image"}
    assert len(rt.specs) == 1 and rt.live == {}  # created, never started, removed


def _fio_output(targets: list[str]) -> Any:
    """What the io script of each target prints (found in the instance's argv)."""
    import json
    import re

    from harness.studies.io import BEGIN, END

    def out(spec: Any) -> bytes:
        t = re.search(rf"{BEGIN} (\S+) direct", spec.argv[-1]).group(1)  # type: ignore[union-attr]
        if t not in targets:
            return b"fio did not run"
        return f"{BEGIN} {t} direct=1\n{json.dumps(fio_doc())}\n{END} {t} rc=0\n".encode()
    return out


def test_io_targets_are_sub_variants_with_fio_json_artifacts(tmp_path: Path,
                                                            img: image.Image) -> None:
    targets = ["rootfs", "volume", "bind", "tmpfs"]
    rt = StudyFake(stdout=_fio_output(targets))
    r, cells, journal = make(tmp_path, img, "io", [rt], metric="io.randread.iops",
                             warmups=1, min_samples=2, max_samples=2)
    r.run()
    assert {s.variant for s in journal.samples} == {f"target={t}" for t in targets}
    assert len(journal.artifacts) == 2 * 4  # warmup artifacts dropped
    for a in journal.artifacts:
        assert a["kind"] == "fio" and a["direct"] is True and a["round"] in (1, 2)
        rows = [s for s in journal.samples if (s.variant, s.round) ==
                (a["variant"], a["round"])]
        assert len(rows) == 16
        for s in rows:
            f = a["fields"][s.metric]
            from harness.core.probes.io import lookup

            assert s.value == lookup(a["data"], f["path"]) * f["scale"]
    assert [[m.type for m in spec.mounts] for spec in rt.specs[-4:]] == \
        [[], ["volume"], ["bind"], ["tmpfs"]]
    assert cells[0].sub_values.keys() == {f"target={t}" for t in targets}
    assert list((tmp_path / "state" / "io").iterdir()) == []  # bind sources removed


def test_io_only_rootfs_where_mounts_are_not_applied(tmp_path: Path,
                                                     img: image.Image) -> None:
    rt = StudyFake(stdout=_fio_output(["rootfs"]), not_applied=["mounts"])
    r, _cells, journal = make(tmp_path, img, "io", [rt], metric="io.randread.iops",
                             warmups=0, min_samples=1, max_samples=1)
    r.run()
    assert {s.variant for s in journal.samples} == {"target=rootfs"}
    assert rt.specs[0].mounts == ()


def test_io_missing_target_output_fails_the_sample(tmp_path: Path, img: image.Image) -> None:
    rt = StudyFake(stdout=_fio_output(["rootfs"]))
    r, cells, _journal = make(tmp_path, img, "io", [rt], metric="io.randread.iops",
                              warmups=0, min_samples=1, max_samples=1)
    with pytest.raises(InstanceError, match="no fio output for target volume"):
        studies.get("io").sample(r.ctx, cells[0])


def test_io_refused_targets_are_skipped_and_formats_added(tmp_path: Path,
                                                         img: image.Image) -> None:
    class NoBind(StudyFake):
        def create(self, spec: Any, prepared: Prepared) -> Instance:
            if any(m.type == "bind" for m in spec.mounts):
                raise NotApplicable("fake: no host directory is shared")
            return super().create(spec, prepared)

    rt = NoBind(stdout=_fio_output(["rootfs", "volume", "volume.qcow2", "tmpfs"]),
                volume_formats=("raw", "qcow2"), not_applied=["mounts.tmpfs"])
    r, _cells, journal = make(tmp_path, img, "io", [rt], metric="io.randread.iops",
                              warmups=0, min_samples=1, max_samples=1)
    r.run()
    assert {s.variant for s in journal.samples} == \
        {"target=rootfs", "target=volume", "target=volume.qcow2"}
    assert [m.source for s in rt.specs for m in s.mounts if m.type == "volume"] == \
        ["cvbench-abcdef0123-io", "cvbench-abcdef0123-io.qcow2"]
    refused = [a for a in journal.artifacts if a["kind"] == "target_refused"]
    assert len(refused) == 1 and refused[0]["variant"] == "target=bind"
    assert rt.live == {}


def test_limits_memory_hog_figures(tmp_path: Path, img: image.Image) -> None:
    from harness.studies.limits import HOG

    limit = 64 << 20
    sizes = [int(limit * f) for f in (0.5, 1.1, 2.0)]
    out = "".join(f"{HOG} {b} {rc}\n" for b, rc in zip(sizes, (0, 137, 137), strict=True))
    rt = StudyFake(stdout=out.encode())
    r, cells, _ = make(tmp_path, img, "limits", [rt], metric="limits.cpu_ratio",
                       params={"hog": [0.5, 1.1, 2.0], "memory": "64M"})
    ms = studies.get("limits").memory(r.ctx, cells[0], limit, [0.5, 1.1, 2.0])
    got = {m.metric: m.value for m in ms}
    assert got == {"limits.mem_max_ok": sizes[0], "limits.mem_killed_at": sizes[1],
                   "limits.mem_enforced": 1.0}
    assert {m.variant for m in ms} == {f"limits.memory={limit}"}
    assert rt.specs[-1].limits.memory == limit
    rt.stdout = b""  # the hog said nothing: an error, not a figure
    with pytest.raises(InstanceError, match="memory hog"):
        studies.get("limits").memory(r.ctx, cells[0], limit, [0.5])


def test_limits_cpu_share_of_a_real_busy_process(tmp_path: Path) -> None:
    import os

    from harness.studies.limits import cpu_seconds, idle_seconds

    c0, i0 = cpu_seconds([os.getpid()]), idle_seconds()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert cpu_seconds([os.getpid()]) - c0 >= 0.1
    assert idle_seconds() >= i0
    assert cpu_seconds([2 ** 22 + 7]) == 0  # gone processes count nothing


def test_network_not_applicable_where_modes_are_not_applied(tmp_path: Path,
                                                            img: image.Image) -> None:
    rt = StudyFake(not_applied=["network"])
    scen_cells = make(tmp_path, img, "network", [rt], metric="network.lat_p50",
                      warmups=0, min_samples=1, max_samples=3)
    r, cells, journal = scen_cells
    r.run()  # the scenario's default network is none
    assert cells[0].status == "not_applicable" and cells[0].samples == 0
    assert journal.samples == []
    assert [e["kind"] for e in journal.events] == ["not_applicable"]


class Refuses(StudyFake):
    """A backend whose create raises `error` for every instance (with a bind mount, if
    `bind_only`)."""

    def __init__(self, error: Exception, bind_only: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.error, self.bind_only = error, bind_only

    def create(self, spec: Any, prepared: Prepared) -> Instance:
        if not self.bind_only or any(m.type == "bind" for m in spec.mounts):
            raise self.error
        return super().create(spec, prepared)


def test_only_a_declared_inability_at_create_is_not_applicable(tmp_path: Path,
                                                               img: image.Image) -> None:
    rt = Refuses(NotApplicable("fake: network none is impossible here"))
    r, cells, journal = make(tmp_path / "a", img, "network", [rt], metric="network.lat_p50",
                             warmups=0, min_samples=1, max_samples=3)
    r.run()
    assert cells[0].status == "not_applicable" and cells[0].failures == 0
    # Any other UsageError at create (the harness's spec, a bad name...) fails the sample.
    rt = Refuses(UsageError("workload.user: no user 'x' in the image's /etc/passwd"))
    r, cells, journal = make(tmp_path / "b", img, "network", [rt], metric="network.lat_p50",
                             warmups=0, min_samples=1, max_samples=3)
    r.run()
    assert cells[0].status == "failed" and cells[0].failures == 3
    assert [e["kind"] for e in journal.events] == ["sample_failed"] * 3 + ["cell_failed"]
    assert "no user 'x'" in journal.events[0]["error"]


def test_io_fails_on_an_undeclared_refusal_of_a_target(tmp_path: Path,
                                                      img: image.Image) -> None:
    rt = Refuses(UsageError("fake: bind source is not a directory"), bind_only=True,
                 stdout=_fio_output(["rootfs", "volume", "tmpfs"]))
    r, cells, journal = make(tmp_path, img, "io", [rt], metric="io.randread.iops",
                             warmups=0, min_samples=1, max_samples=1)
    r.run()
    assert cells[0].status == "failed" and journal.samples == []
    assert not [a for a in journal.artifacts if a["kind"] == "target_refused"]
    assert rt.live == {}


def test_runner_sub_variants_join_the_cell_variant_and_gate_the_stop(
        tmp_path: Path, img: image.Image) -> None:
    calls = 0

    def sample(ctx: Context, cell: Cell) -> list[Measurement]:
        nonlocal calls
        calls += 1
        ctx.artifact("raw", {"n": calls}, variant="x=1")
        if calls == 2:
            raise InstanceError("one failure: its artifact is kept, marked failed")
        # x=1 is steady at once; x=2 alternates wildly, so only it keeps the cell going
        return [Measurement("memory.pss", 10.0, variant="x=1"),
                Measurement("memory.pss", 1.0 if calls % 2 else 100.0, variant="x=2")]

    scen = scenario.parse({"name": "t", "study": "memory",
                           "variants": {"network": ["host"]},
                           "sampling": {"metric": "memory.pss", "warmups": 0,
                                        "min_samples": 3, "max_samples": 6,
                                        "target_ci": 0.05}}, "t.toml")
    variant = scen.variants[0]
    rt = FakeRuntime("a")
    cell = Cell(backend="a", variant=variant, config=scen.config(variant), runtime=rt,
                prepared=Prepared(image=img, backend="a", ref="x"), traits=rt.traits())
    journal = results.Journal(tmp_path / "j.journal", {"run_id": "abcdef0123", "schema": 1})
    OPEN.append(journal)
    Runner(scen, [cell], journal, sample, lambda m: "B", seed=1).run()
    assert cell.status == "max_samples" and cell.samples == 6
    assert {s.variant for s in journal.samples} == {"network=host,x=1", "network=host,x=2"}
    assert len(journal.artifacts) == 7
    assert all(a["variant"] == "network=host,x=1" for a in journal.artifacts)
    assert [a["data"]["n"] for a in journal.artifacts] == [1, 2, 3, 4, 5, 6, 7]
    assert [a["data"]["n"] for a in journal.artifacts if a.get("failed")] == [2]


def test_network_clients_are_the_hosts_tools_never_the_images(
        tmp_path: Path, img: image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image's /usr/bin/sockperf and iperf3 (here scripts that leave a marker) never
    run on the host: the clients are the host's tools from PATH, recorded with their
    path and version next to the server's (the image's copy, asked in an instance)."""
    import re
    import socket
    import stat

    from harness.studies import network
    from tests.unit.test_studies_probes import SOCKPERF

    marker = tmp_path / "ran-on-the-host"
    for tool in ("sockperf", "iperf3"):  # the image's copies: hostile
        f = img.rootfs / "usr" / "bin" / tool
        f.unlink(missing_ok=True)
        f.write_text(f"#!/bin/sh\ntouch {marker}\n")
        f.chmod(0o755)
    host_bin = tmp_path / "host-bin"  # the host's installed tools (fakes)
    host_bin.mkdir()
    bw = '{"end": {"sum_received": {"bits_per_second": 8e9}}}'
    for tool, out, version in (("sockperf", SOCKPERF, "sockperf, version 3.7"),
                               ("iperf3", bw, "iperf 3.12 (cJSON 1.7.15)")):
        f = host_bin / tool
        f.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && {{ echo '{version}'; exit 0; }}\n"
                     f"cat <<'END'\n{out}\nEND\n")
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{host_bin}:/usr/bin:/bin")

    socks: list[socket.socket] = []

    class Servers(StudyFake):
        """Listens on the ports of the servers' command; answers the version probe."""

        def start(self, inst: Instance) -> None:
            cmd = inst.spec.argv[-1]
            if "sockperf sr" in cmd:
                for port in re.findall(r" -p (\d+)", cmd):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", int(port)))
                    s.listen()
                    socks.append(s)

        def remove(self, inst: Instance) -> None:
            while socks:
                socks.pop().close()
            super().remove(inst)

    versions = (f"{network.BEGIN} sockperf-version\nsockperf, version 3.6\n"
                f"{network.END} sockperf-version rc=0\n{network.BEGIN} iperf3-version\n"
                f"iperf 3.12 (cJSON 1.7.15)\n{network.END} iperf3-version rc=0\n").encode()
    rt = Servers(stdout=lambda spec: versions)
    scen = scenario.parse({"name": "t", "study": "network", "network": "host",
                           "params": {"duration": 1},
                           "sampling": {"metric": "network.lat_p50", "warmups": 0,
                                        "min_samples": 1, "max_samples": 1}}, "t.toml")
    variant = scen.variants[0]
    cell = Cell(backend="fake", variant=variant, config=scen.config(variant), runtime=rt,
                prepared=rt.prepare(img), traits=rt.traits())
    journal = results.Journal(tmp_path / "n.journal", {"run_id": "abcdef0123", "schema": 1})
    OPEN.append(journal)
    st = studies.get("network")
    Runner(scen, [cell], journal, st.sample, lambda m: studies.unit_of(st, m), seed=1).run()
    assert not marker.exists()
    assert cell.samples == 1, journal.events
    got = {a["kind"]: a for a in journal.artifacts}
    assert got["sockperf"]["client_path"] == str(host_bin / "sockperf")
    assert got["sockperf"]["client_version"] == "sockperf, version 3.7"
    assert got["sockperf"]["server_version"] == "sockperf, version 3.6"
    assert got["sockperf"]["same_version"] is False
    assert got["iperf3"]["client_path"] == str(host_bin / "iperf3")
    assert got["iperf3"]["same_version"] is True
    assert rt.live == {}
