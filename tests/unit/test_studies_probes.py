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
    full = {"bw_bytes": bw, "iops": iops, "total_ios": 10, "io_bytes": 40960, "runtime": 2,
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


# A real fio 3.33 run of the io study's jobs (fio_args(4 MiB, 0.3 s, iodepth 4), direct
# I/O on ext4), saved as fio wrote it.
REAL_FIO = Path(__file__).parent / "data" / "tools" / "fio-3.33-cvbench-jobs.json"


def test_fio_fields_map_to_the_numbers_in_a_real_fio_document() -> None:
    """Each expected value was read by hand from the file (the line in the comment), so
    a wrong path, direction or scale in FIELDS/JOBS fails here."""
    by = {f.metric: f.value for f in io.figures(io.parse_json(REAL_FIO.read_text()))}
    assert by == pytest.approx({
        "io.seqwrite.bw": 2950644093,  # l. 74: jobs[0].write.bw_bytes
        "io.seqwrite.iops": 2813.953488,  # l. 76
        "io.seqwrite.lat_p50": 257024e-9,  # l. 101: write.clat_ns.percentile 50.000000
        "io.seqwrite.lat_p99": 522240e-9,  # l. 107
        "io.seqread.bw": 1295914524,  # l. 277: jobs[1].read.bw_bytes
        "io.seqread.iops": 1235.880399,  # l. 279
        "io.seqread.lat_p50": 741376e-9,  # l. 304
        "io.seqread.lat_p99": 872448e-9,  # l. 310
        "io.randwrite.bw": 123927813,  # l. 566: jobs[2].write.bw_bytes
        "io.randwrite.iops": 30255.813953,  # l. 568
        "io.randwrite.lat_p50": 87552e-9,  # l. 593
        "io.randwrite.lat_p99": 489472e-9,  # l. 599
        "io.randread.bw": 148054750,  # l. 769: jobs[3].read.bw_bytes
        "io.randread.iops": 36146.179402,  # l. 771
        "io.randread.lat_p50": 95744e-9,  # l. 796
        "io.randread.lat_p99": 218112e-9,  # l. 802
    }, rel=1e-12)


def test_a_fio_job_missing_a_field_or_without_io_fails_with_its_counts() -> None:
    doc = io.parse_json(REAL_FIO.read_text())
    del doc["jobs"][2]["write"]["clat_ns"]["percentile"]
    with pytest.raises(InstanceError, match=r"lacks jobs.2.write.clat_ns.percentile.50.000000 "
                       r"\(total_ios 9107, io_bytes 37302272, runtime 301\)"):
        io.figures(doc)
    doc = io.parse_json(REAL_FIO.read_text())
    doc["jobs"][3]["read"].update(total_ios=0, io_bytes=0)
    with pytest.raises(InstanceError, match=r"randread: no read I/O counted \(total_ios 0, "
                       r"io_bytes 0, runtime 301\)"):
        io.figures(doc)
    doc = io.parse_json(REAL_FIO.read_text())
    del doc["jobs"][0]["write"]["total_ios"]
    with pytest.raises(InstanceError, match=r"seqwrite: no write I/O counted \(total_ios "
                       r"absent"):
        io.figures(doc)
    doc = io.parse_json(REAL_FIO.read_text())
    del doc["jobs"][1]
    with pytest.raises(InstanceError, match=r"lacks the jobs seqread \(3 of 4 jobs found\)"):
        io.figures(doc)


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
