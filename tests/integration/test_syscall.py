"""The syscall study: its probe makes the system calls it says it times, counted by strace
(the kernel's view through ptrace, independent of the probe), and `bench run syscall`
end to end on host, ns and docker (tiny counts, one sample), libvirt under `slow`.

What can fail here and against what: a loop that makes more or fewer calls than it
reports (strace's per-call counts between two runs that differ only in COUNT), a figure
that is not the probe's own elapsed / count (the raw output kept as the artifact), a
backend that cannot run the static probe from the recipe image."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.studies import syscall
from tests.integration._scenario_run import run_one_sample

TINY = {"count": 500, "warmup": 10}
# strace's names of what each operation calls (x86_64: stat is newfstatat)
STRACE_NAMES = {"getpid": ("getpid",), "openat_close": ("openat", "close"),
                "stat": ("newfstatat",), "mmap_munmap": ("mmap", "munmap"),
                "clock_gettime": ("clock_gettime",), "write": ("write",)}


def strace_counts(probe: Path, count: int, warmup: int, tmp: Path) -> dict[str, int]:
    """System call name -> calls, from `strace -c -f` of one run of the probe."""
    out = tmp / f"strace-{count}-{warmup}.txt"
    subprocess.run(["strace", "-f", "-c", "-o", str(out), str(probe), str(count),
                    str(warmup)], check=True, capture_output=True, timeout=120)
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[3].isdigit():
            calls[parts[-1]] = int(parts[3])
    return calls


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_probe_makes_count_calls_of_each_operation(tmp_path: Path) -> None:
    """Two runs differing only in COUNT (and WARMUP) differ in each system call by exactly
    the iterations added times the calls per iteration: the loop is what it says."""
    probe = syscall.build_probe()
    assert subprocess.run(["readelf", "-l", str(probe)], capture_output=True, text=True,
                          check=True).stdout.count("INTERP") == 0  # static
    small, large = strace_counts(probe, 1000, 0, tmp_path), \
        strace_counts(probe, 3000, 500, tmp_path)
    added = (3000 + 500) - 1000
    seen: dict[str, int] = {}
    for op in syscall.OPS:
        for name in STRACE_NAMES[op]:
            seen[name] = seen.get(name, 0) + added
    for name, want in seen.items():
        assert large.get(name, 0) - small.get(name, 0) == want, (name, small, large)
    assert sum(syscall.CALLS.values()) == sum(len(n) for n in STRACE_NAMES.values())


def test_the_probe_reports_every_operation(tmp_path: Path) -> None:
    res = subprocess.run([str(syscall.build_probe()), "200", "0"], capture_output=True,
                         text=True, check=True, timeout=60)
    found = syscall.parse(res.stdout)
    assert set(found) == set(syscall.OPS)
    assert all(n == 200 and ns > 0 for n, ns in found.values())


def check(doc: dict[str, Any], backends: tuple[str, ...]) -> None:
    raw = {a["backend"]: syscall.parse(a["data"]) for a in doc["artifacts"]
           if a["kind"] == "syscall"}
    for b in backends:
        got = {s["metric"]: s for s in doc["samples"] if s["backend"] == b}
        assert set(got) == {f"syscall.{op}.ns" for op in syscall.OPS}, b
        for op, (n, elapsed) in raw[b].items():
            s = got[f"syscall.{op}.ns"]
            # the figure is the probe's own elapsed ns over its count, in ns
            assert (s["unit"], n) == ("ns", TINY["count"])
            assert s["value"] == pytest.approx(elapsed / n) and s["value"] > 0


@pytest.mark.root
def test_bench_run_syscall_on_host_ns_and_docker(repo: Path, tmp_path: Path) -> None:
    backends = ("host", "ns", "docker")
    p, doc = run_one_sample(repo, tmp_path, "syscall", backends, params=TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    check(doc, backends)
    assert any(b.endswith("/cvbench-syscall") for b in doc["image"]["source"]["binaries"])


@pytest.mark.root
@pytest.mark.slow
def test_bench_run_syscall_in_a_vm_and_under_gvisor(repo: Path, tmp_path: Path) -> None:
    backends = ("ns:bare", "docker:runsc", "libvirt")
    p, doc = run_one_sample(repo, tmp_path, "syscall", backends, params=TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    check(doc, backends)
