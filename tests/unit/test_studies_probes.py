"""Probes of the studies: du -sb, fio's JSON, sections of an instance's output, sockperf."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import InstanceError
from harness.core.probes import io
from harness.core.probes.disk import du_bytes
from harness.studies.network import iperf3_bandwidth, sockperf_latency
from tests.conftest import require


def test_du_bytes_equals_du_sb(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"x" * 12345)
    (tmp_path / "d" / "e" / "b").write_bytes(b"y" * 7)
    os.link(tmp_path / "d" / "a", tmp_path / "d" / "hard")  # counted once, like du
    (tmp_path / "d" / "link").symlink_to("a")
    with open(tmp_path / "d" / "sparse", "wb") as f:
        f.truncate(1 << 20)  # apparent size, not blocks
    require("du", None if shutil.which("du") else "no du on this host")
    du = int(subprocess.run(["du", "-sb", str(tmp_path / "d")], capture_output=True,
                            text=True, check=True).stdout.split()[0])
    assert du_bytes(tmp_path / "d") == du
    assert du_bytes(tmp_path / "missing") == 0


def _job(name: str, direction: str, bw: int, iops: float, p50: int, p99: int
         ) -> dict[str, Any]:
    empty = {"bw_bytes": 0, "iops": 0.0, "clat_ns": {"mean": 0.0}}
    full = {"bw_bytes": bw, "iops": iops,
            "clat_ns": {"percentile": {"50.000000": p50, "99.000000": p99}}}
    other = "write" if direction == "read" else "read"
    return {"jobname": name, "error": 0, direction: full, other: empty}


def fio_doc() -> dict[str, Any]:
    return {"fio version": "fio-3.33", "jobs": [
        _job("seqwrite", "write", 1_000_000, 1.0, 1000, 2000),
        _job("seqread", "read", 2_000_000, 2.0, 3000, 4000),
        _job("randwrite", "write", 400_000, 100.0, 5000, 6000),
        _job("randread", "read", 800_000, 200.0, 7000, 8000)]}


def test_fio_figures_are_fields_of_the_json() -> None:
    doc = fio_doc()
    figs = io.figures(doc)
    assert {f.metric for f in figs} == set(io.METRICS)
    by = {f.metric: f for f in figs}
    assert by["io.seqread.bw"].value == 2_000_000
    assert by["io.randwrite.iops"].value == 100.0
    assert by["io.randread.lat_p99"].value == pytest.approx(8e-6)
    for f in figs:
        assert f.value == io.lookup(doc, f.path) * f.scale


def test_fio_errors_are_instance_errors() -> None:
    doc = fio_doc()
    doc["jobs"][1]["error"] = 5
    with pytest.raises(InstanceError, match="seqread failed"):
        io.figures(doc)
    doc = fio_doc()
    del doc["jobs"][3]
    with pytest.raises(InstanceError, match="randread"):
        io.figures(doc)
    with pytest.raises(InstanceError):
        io.parse_json("fio: no JSON here")


def test_fio_args_run_writes_first_on_one_file() -> None:
    args = io.fio_args(64 << 20, 2.0, 16)
    names = [a.split("=", 1)[1] for a in args if a.startswith("--name=")]
    assert names == ["seqwrite", "seqread", "randwrite", "randread"]
    assert "--runtime=2000ms" in args and f"--filename={io.FILENAME}" in args
    assert args.count("--stonewall") == 4
    assert "--iodepth=16" in args and "--iodepth=1" in args


def test_sections_and_json_amid_console_noise() -> None:
    out = ("boot noise\r\nX-BEGIN rootfs direct=1\r\nfio: warning\r\n{\"jobs\": []}\r\n"
           "X-END rootfs rc=0\r\nX-BEGIN tmpfs direct=0\nnot closed\n")
    found = io.sections(out, "X-BEGIN", "X-END")
    assert list(found) == ["rootfs"]
    info, body, end = found["rootfs"]
    assert (info, end) == ("direct=1", "rc=0")
    assert io.parse_json(body) == {"jobs": []}


SOCKPERF = """\
sockperf: \x1b[2;35m====> avg-latency=9.122 (std-dev=44.499)\x1b[0m
sockperf: ---> <MAX> observation = 5174.823
sockperf: ---> percentile 99.000 =   32.818
sockperf: ---> percentile 90.000 =    7.230
sockperf: ---> percentile 50.000 =    6.840
"""


def test_sockperf_and_iperf3_parsing() -> None:
    lat = sockperf_latency(SOCKPERF)
    assert lat["50.000"] == pytest.approx(6.840e-6)
    assert lat["99.000"] == pytest.approx(32.818e-6)
    with pytest.raises(InstanceError):
        sockperf_latency("sockperf: connection refused")
    assert iperf3_bandwidth({"end": {"sum_received": {"bits_per_second": 8e9}}}) == 1e9
    with pytest.raises(InstanceError, match="refused"):
        iperf3_bandwidth({"error": "unable to connect: refused"})
