"""fio inside the workload: the jobs, the command line, and figures read from its JSON.

Every figure the io study reports is one field of fio's own `--output-format=json`
document, scaled only to the unit of the metric (bytes/s, operations/s, seconds); each
figure carries the path of its field, and the raw document is kept in the result, so
anyone can check a number against fio's.

Jobs run one after the other (`stonewall`) on one file (`filename`), writes first so
the reads find the file laid out: seqwrite, seqread (1 MiB blocks, iodepth 1), then
randwrite, randread (4 KiB blocks, the scenario's iodepth), each for `runtime` seconds
(`time_based`), with libaio. Latency figures are fio's completion latency (clat:
submission to completion) percentiles, the ones fio computes by default. A job that
lacks a field, or counted no I/O in its direction (its figures would be zeros), fails
the sample with what fio counted (total_ios, io_bytes, runtime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from harness.core.errors import InstanceError

# name -> (fio rw, block size, direction in fio's JSON); in the order they run.
JOBS: dict[str, tuple[str, str, str]] = {
    "seqwrite": ("write", "1M", "write"),
    "seqread": ("read", "1M", "read"),
    "randwrite": ("randwrite", "4k", "write"),
    "randread": ("randread", "4k", "read"),
}
# metric suffix -> (path below the job's direction, scale to the metric's unit, unit)
FIELDS: dict[str, tuple[tuple[str, ...], float, str]] = {
    "bw": (("bw_bytes",), 1.0, "B/s"),
    "iops": (("iops",), 1.0, "op/s"),
    "lat_p50": (("clat_ns", "percentile", "50.000000"), 1e-9, "s"),
    "lat_p99": (("clat_ns", "percentile", "99.000000"), 1e-9, "s"),
}
METRICS: dict[str, str] = {f"io.{job}.{name}": unit for job in JOBS
                           for name, (_p, _s, unit) in FIELDS.items()}
FILENAME = "cvbench-fio"


@dataclass(frozen=True)
class Figure:
    """A metric's value and the field of fio's JSON it comes from (value = field * scale)."""

    metric: str
    value: float
    path: tuple[str | int, ...]
    scale: float

    def as_dict(self) -> dict[str, Any]:
        return {"path": list(self.path), "scale": self.scale}


def fio_args(size: int, runtime: float, iodepth: int) -> list[str]:
    """fio's arguments (after the directory and --direct, which depend on the target)."""
    out = ["--output-format=json", f"--filename={FILENAME}", f"--size={size}",
           f"--runtime={max(1, round(runtime * 1000))}ms", "--time_based",
           "--ioengine=libaio", "--group_reporting=0"]
    for job, (rw, bs, _d) in JOBS.items():
        depth = 1 if job.startswith("seq") else iodepth
        out += [f"--name={job}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}",
                "--stonewall"]
    return out


def lookup(doc: Any, path: tuple[str | int, ...] | list[str | int]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def figures(doc: dict[str, Any]) -> list[Figure]:
    """Every io metric of one fio run, from its JSON document."""
    try:
        jobs = doc["jobs"]
    except (KeyError, TypeError):
        raise InstanceError("fio's JSON has no jobs") from None
    out: list[Figure] = []
    for i, job in enumerate(jobs):
        name = job.get("jobname")
        if name not in JOBS:
            continue
        if job.get("error"):
            raise InstanceError(f"fio job {name} failed with error {job['error']}")
        direction = JOBS[name][2]
        done = _counts(job.get(direction))
        ios = done["total_ios"]
        if isinstance(ios, bool) or not isinstance(ios, int) or ios <= 0:
            # no operation counted: its figures would be zeros, not a measurement
            raise InstanceError(f"fio job {name}: no {direction} I/O counted ("
                                + ", ".join(f"{k} {v}" for k, v in done.items()) + ")")
        for suffix, (sub, scale, _unit) in FIELDS.items():
            path: tuple[str | int, ...] = ("jobs", i, direction, *sub)
            try:
                raw = lookup(doc, path)
            except (KeyError, IndexError, TypeError):
                raise InstanceError(f"fio's JSON lacks {'.'.join(map(str, path))} ("
                                    + ", ".join(f"{k} {v}" for k, v in done.items())
                                    + ")") from None
            out.append(Figure(f"io.{name}.{suffix}", float(raw) * scale, path, scale))
    found = {f.metric.split(".")[1] for f in out}
    missing = set(JOBS) - found
    if missing:
        raise InstanceError(f"fio's JSON lacks the jobs {', '.join(sorted(missing))} "
                            f"({len(found)} of {len(JOBS)} jobs found)")
    return out


def _counts(section: Any) -> dict[str, Any]:
    """What a job's direction says it did (operations, bytes, milliseconds)."""
    section = section if isinstance(section, dict) else {}
    return {k: section.get(k, "absent") for k in ("total_ios", "io_bytes", "runtime")}


def parse_json(text: str) -> dict[str, Any]:
    """fio's JSON document in `text` (which may carry other lines before it, and a
    console's carriage returns)."""
    text = text.replace("\r", "")
    start = text.find("{")
    if start < 0:
        raise InstanceError(f"no JSON in fio's output: {text[-300:]!r}")
    try:
        doc, _end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise InstanceError(f"fio's JSON does not parse: {e}") from None
    if not isinstance(doc, dict):
        raise InstanceError("fio's JSON is not an object")
    return doc


def sections(output: str, begin: str, end: str) -> dict[str, tuple[str, str, str]]:
    """Split an instance's output into sections `<begin> NAME INFO` ... `<end> NAME INFO`:
    NAME -> (info of the begin line, body, info of the end line)."""
    out: dict[str, tuple[str, str, str]] = {}
    current: str | None = None
    info = ""
    body: list[str] = []
    for line in output.replace("\r", "").split("\n"):
        words = line.strip().split()
        if len(words) >= 2 and words[0] == begin:
            current, info, body = words[1], " ".join(words[2:]), []
        elif len(words) >= 2 and words[0] == end and words[1] == current:
            out[current] = (info, "\n".join(body), " ".join(words[2:]))
            current = None
        elif current is not None:
            body.append(line)
    return out
