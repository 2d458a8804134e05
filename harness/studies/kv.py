"""kv: redis-server loaded by redis-benchmark from the host (see _server.py for what one
sample is, the network modes and the CPU placement).

The server runs with persistence off (`--save ''`, `--appendonly no`) on the sample's
port. redis-benchmark runs the GET and SET tests, `requests` requests each (its bound;
the subprocess is bounded in time too: redis-benchmark 7.0 spins forever on a refused
connection), with `clients` connections and `pipeline` commands per round trip:

  kv.ops                 its rps per test (`sub` "GET", "SET")
  kv.lat_p50, kv.lat_p99 its p50 and p99 latency per test

`duration` is not a redis-benchmark option: a run lasts requests / rate; `warmup`
seconds of warm-up are `warmup * warmup_rate` SET+GET requests.

On a 2-core host: the shipped scenario puts the server on CPU 1 (`limits.cpuset`) and
the load generator on CPU 0 (`client_cpuset`), so a figure is one server core against
one client core, and the generator may limit it as much as the server. Ratios between
backends on the same placement are meaningful; absolute figures are not comparable with
many-core published ones, and costs that scale with cores (several workers, interrupts
spread over CPUs) do not show.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.core.probes import loadgen
from harness.sampling import Context, Measurement
from harness.studies import Study
from harness.studies._server import COMMON_PARAMS, ServerStudy, run_tool

TESTS = ("SET", "GET")
METRICS = {"kv.ops": "ops/s", "kv.lat_p50": "s", "kv.lat_p99": "s",
           "kv.pss_loaded": "B", "kv.daemon_pss_loaded": "B"}


class Kv(ServerStudy):
    name = "kv"
    metrics = METRICS
    params: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in COMMON_PARAMS.items() if k != "duration"},
        "requests": 100_000, "clients": 16, "pipeline": 1, "warmup_rate": 10_000,
        "time_limit": 120}
    tools: ClassVar[dict[str, str]] = {"redis-benchmark": "redis-tools",
                                       "taskset": "util-linux"}

    def server(self, port: int, p: dict[str, Any]) -> tuple[tuple[str, ...], str]:
        return ("redis-server", "--port", str(port), "--bind", "0.0.0.0",
                "--protected-mode", "no", "--save", "", "--appendonly", "no"), f"tcp:{port}"

    def load(self, ctx: Context, addr: str, port: int, p: dict[str, Any], duration: float,
             warm: bool) -> list[Measurement]:
        requests = max(1, int(duration * p["warmup_rate"])) if warm else int(p["requests"])
        argv = loadgen.redis_args(addr, port, tests=tuple(t.lower() for t in TESTS),
                                  requests=requests, clients=int(p["clients"]),
                                  pipeline=int(p["pipeline"]))
        text, code = run_tool(ctx, argv, p, float(p["time_limit"]), "redis-benchmark",
                              warmup=warm)
        tests = loadgen.parse_redis(text, code, TESTS)
        return [Measurement(f"kv.{name}", value, variant=t.test)
                for t in tests.values() if t.test in TESTS
                for name, value in (("ops", t.rps), ("lat_p50", t.lat_p50),
                                    ("lat_p99", t.lat_p99))]


STUDY: Study = Kv()
