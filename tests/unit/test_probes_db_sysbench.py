"""pgbench and sysbench parsers against real outputs saved from the tools (tests/unit/data/
tools: pgbench 15.18 against PostgreSQL 15, sysbench 1.0.20), failing ones included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.core.errors import InstanceError
from harness.core.probes import pgbench, sysbench

DATA = Path(__file__).parent / "data" / "tools"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_pgbench_figures_are_its_own() -> None:
    run = pgbench.parse(read("pgbench-select-only.txt"))
    assert run == pgbench.Run(tps=29781.787184, lat_mean=0.134 / 1000, processed=88251, failed=0)
    run = pgbench.parse(read("pgbench-tpcb-like.txt"))
    assert (run.tps, run.lat_mean, run.processed) == (653.664443, 3.060 / 1000, 650)


def test_pgbench_p99_is_the_nearest_rank_of_its_transaction_log() -> None:
    log = read("pgbench-tpcb-like.log")
    counts = pgbench.latencies(log, processed=650)
    lats = sorted(int(line.split()[2]) for line in log.splitlines())
    assert len(lats) == 650
    assert pgbench.percentile(counts, 0.99) == lats[math.ceil(0.99 * 650) - 1] / 1e6
    assert pgbench.percentile(counts, 0.5) == lats[324] / 1e6
    # the mean of the log agrees with pgbench's own "latency average" (3.060 ms)
    assert sum(lats) / len(lats) / 1e6 == pytest.approx(3.060e-3, rel=0.02)


def test_a_transaction_log_that_does_not_match_the_summary_fails() -> None:
    log = read("pgbench-tpcb-like.log")
    with pytest.raises(InstanceError, match="649 transactions, its summary 650"):
        pgbench.latencies("\n".join(log.splitlines()[:-1]), processed=650)
    with pytest.raises(InstanceError, match="line 1"):
        pgbench.latencies("garbage\n", processed=1)


@pytest.mark.parametrize(("name", "message"), [
    ("pgbench-refused.txt", r"Connection refused.*\(0 transactions processed, 0 failed"),
    ("pgbench-no-tables.txt", r"pgbench_branches.*does not exist"),
    ("pgbench-aborted.txt", r"client 1 aborted.*\(807 transactions processed, 0 failed; "
                            r"3 error line"),
])
def test_failing_pgbench_runs_fail_with_their_counts(name: str, message: str) -> None:
    with pytest.raises(InstanceError, match=message):
        pgbench.parse(read(name))


def test_failed_transactions_or_none_fail() -> None:
    text = read("pgbench-select-only.txt")
    with pytest.raises(InstanceError, match="88251 transactions processed, 3 failed"):
        pgbench.parse(text.replace("failed transactions: 0 (0.000%)",
                                   "failed transactions: 3 (0.003%)"))
    with pytest.raises(InstanceError, match="no transaction"):
        pgbench.parse(text.replace("processed: 88251", "processed: 0"))


def test_pgbench_command_lines() -> None:
    assert pgbench.run_args("10.0.0.2", 5432, "select-only", 4, 2.4, "/tmp/x/tx") == [
        "pgbench", "-h", "10.0.0.2", "-p", "5432", "-U", "postgres", "-S", "-c", "4",
        "-j", "1", "-T", "2", "-n", "-l", "--log-prefix=/tmp/x/tx", "postgres"]
    assert "-S" not in pgbench.run_args("h", 1, "tpcb-like", 1, 0.2, None)
    assert pgbench.server_argv(5433)[-1] == "5433"


def test_sysbench_figures_are_its_own() -> None:
    cpu = sysbench.parse(read("sysbench-cpu.txt"))
    assert (cpu.events_per_s, cpu.events, cpu.seconds, cpu.bytes_per_s) == \
        (2332.77, 4669, 2.0004, None)
    read_ = sysbench.parse(read("sysbench-memory-read.txt"))
    assert read_.bytes_per_s == 7048.13 * 2**20 and read_.events == 21
    write = sysbench.parse(read("sysbench-memory-write.txt"))
    assert write.bytes_per_s == 3854.78 * 2**20 and write.events == 12


@pytest.mark.parametrize(("name", "message"), [
    ("sysbench-memory-fatal.txt", "FATAL: Failed to allocate buffer"),
    ("sysbench-cpu-badarg.txt", "Invalid value for the 'cpu_max_prime'"),
    ("sysbench-cpu-truncated.txt", "no summary"),
])
def test_failing_sysbench_runs_fail(name: str, message: str) -> None:
    with pytest.raises(InstanceError, match=message):
        sysbench.parse(read(name))


def test_sysbench_bytes_moved_must_match_operations() -> None:
    text = read("sysbench-memory-read.txt").replace("21504.00 MiB transferred",
                                                     "20480.00 MiB transferred")
    with pytest.raises(InstanceError, match="does not match"):
        sysbench.parse(text)
    with pytest.raises(InstanceError, match="no event"):
        sysbench.parse(read("sysbench-cpu.txt").replace("events:              4669",
                                                        "events:              0"))


def test_sysbench_command_lines() -> None:
    assert sysbench.memory_args("read", 1 << 30, 3.0) == [
        "sysbench", "memory", "--memory-block-size=1048576K", "--memory-total-size=100T",
        "--memory-oper=read", "--memory-access-mode=seq", "--threads=1", "--time=3", "run"]
    assert sysbench.cpu_args(0.4, 10000)[-2:] == ["--time=1", "run"]
