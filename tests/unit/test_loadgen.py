"""wrk and redis-benchmark parsers against saved real outputs (tests/unit/data/loadgen):
nginx 1.22 and redis 7.0 from Debian bookworm, the tools from the host (wrk 4.1,
redis-benchmark 7.0), including failing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import InstanceError
from harness.core.probes import loadgen

DATA = Path(__file__).parent / "data" / "loadgen"


def text(name: str) -> str:
    return (DATA / name).read_text()


def test_wrk_small_page_figures_are_the_printed_ones() -> None:
    run = loadgen.parse_wrk(text("wrk-small.txt"))
    assert run.requests == 328224 and run.seconds == pytest.approx(3.10)
    assert run.rps == 105899.89
    assert run.transfer == pytest.approx(77.26 * 2**20)
    assert run.bytes_read == pytest.approx(239.46 * 2**20)
    assert run.latency == pytest.approx({"50": 65e-6, "75": 79e-6, "90": 97e-6,
                                         "99": 1.46e-3})
    assert run.non_2xx == 0 and run.socket_errors == {}
    loadgen.check_wrk(run, body=512)


def test_wrk_1mib_bytes_match_the_requests() -> None:
    run = loadgen.parse_wrk(text("wrk-1MiB.txt"))
    assert (run.requests, run.rps) == (7271, 2422.73)
    assert run.bytes_read == pytest.approx(7.10 * 2**30)
    assert run.latency["99"] == pytest.approx(5.03e-3)
    loadgen.check_wrk(run, body=2**20)
    with pytest.raises(loadgen.LoadFailed, match="fewer bytes"):
        loadgen.check_wrk(run, body=2 * 2**20)  # a body twice as large was not moved


def test_wrk_non_2xx_fails_with_the_count() -> None:
    run = loadgen.parse_wrk(text("wrk-non2xx.txt"))
    assert run.non_2xx == run.requests == 290616
    with pytest.raises(loadgen.LoadFailed, match="non_2xx 290616") as e:
        loadgen.check_wrk(run, body=0)
    assert e.value.counts["non_2xx"] == 290616


def test_wrk_socket_errors_fail_with_the_counts() -> None:
    run = loadgen.parse_wrk(text("wrk-readerr.txt"))
    assert run.socket_errors == {"connect": 0, "read": 40111, "write": 0, "timeout": 0}
    with pytest.raises(loadgen.LoadFailed, match="read 40111"):
        loadgen.check_wrk(run, body=0)


def test_wrk_zero_requests_is_a_failure_not_a_zero_figure() -> None:
    run = loadgen.parse_wrk(text("wrk-noanswer.txt"))
    assert run.requests == 0 and run.rps == 0.0
    with pytest.raises(loadgen.LoadFailed, match="no request completed"):
        loadgen.check_wrk(run, body=512)


def test_wrk_without_a_summary_is_an_error() -> None:
    with pytest.raises(InstanceError, match="no summary"):
        loadgen.parse_wrk("unable to connect to 127.0.0.1:18099 Connection refused\n")


def test_wrk_args_are_bounded_in_time() -> None:
    args = loadgen.wrk_args("http://10.0.0.2:80/small", duration=2.4, connections=8)
    assert args[0] == "wrk" and "--duration=2s" in args and "--latency" in args


def test_redis_csv_figures_are_the_printed_ones() -> None:
    tests = loadgen.parse_redis(text("redis-ok.txt"))
    s = tests["SET"]
    assert s.rps == 39572.62
    assert (s.lat_p50, s.lat_p99) == pytest.approx((0.071e-3, 3.519e-3))
    assert tests["GET"].rps == 38402.46
    assert tests["GET"].lat_p99 == pytest.approx(4.135e-3)


def test_redis_server_error_fails_the_run() -> None:
    with pytest.raises(loadgen.LoadFailed, match="OOM command not allowed"):
        loadgen.parse_redis(text("redis-oom.txt"), returncode=1)


def test_redis_unreachable_fails_the_run() -> None:
    # redis-benchmark 7.0 prints this and then spins: the caller's timeout ends it
    with pytest.raises(loadgen.LoadFailed, match="Could not connect"):
        loadgen.parse_redis(text("redis-refused.txt"), returncode=-15)


def test_redis_output_with_only_one_of_the_tests_asked_fails_with_the_counts() -> None:
    only_set = "\n".join(line for line in text("redis-ok.txt").splitlines()
                         if not line.startswith('"GET"'))
    with pytest.raises(loadgen.LoadFailed, match=r"no result row for GET \(results 1, "
                       r"asked 2\)") as e:
        loadgen.parse_redis(only_set, 0, ("SET", "GET"))
    assert e.value.counts == {"results": 1, "asked": 2}
    assert set(loadgen.parse_redis(text("redis-ok.txt"), 0, ("SET", "GET"))) == {"SET", "GET"}
