"""http: nginx serving two static files, loaded by wrk from the host (see _server.py for
what one sample is, the network modes and the CPU placement).

The instance writes its own site and configuration before it execs nginx (so the image's
default site plays no part): one worker process, no access log, sendfile, keep-alive,
`/small` (512 bytes) and `/1MiB` (1 MiB) under /srv/cvbench. Per sample, wrk runs once
per file (`sub` "small" and "1MiB") with `connections` connections on one thread for
`duration` seconds, after `warmup` seconds on the small page:

  http.rps       wrk's Requests/sec
  http.lat_p50   wrk's --latency distribution, 50 % and 99 %
  http.lat_p99
  http.bw        wrk's Transfer/sec (bytes/s)

A wrk run with non-2xx answers, socket errors (timeouts included: `timeout` seconds per
request), no completed request, or fewer bytes than the requests' bodies fails the
sample (harness.core.probes.loadgen).

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

FILES = {"small": 512, "1MiB": 1 << 20}
METRICS = {"http.rps": "req/s", "http.lat_p50": "s", "http.lat_p99": "s", "http.bw": "B/s",
           "http.pss_loaded": "B", "http.daemon_pss_loaded": "B"}
CONF = ("worker_processes 1; pid /run/cvbench-nginx.pid; error_log stderr; "
        "events { worker_connections 4096; } "
        "http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; "
        "server { listen {port}; root /srv/cvbench; "
        "location / { default_type application/octet-stream; } } }")
SITE = ("mkdir -p /srv/cvbench && cd /srv/cvbench && "
        "head -c 512 /dev/zero | tr '\\0' a > small && head -c 1048576 /dev/zero > 1MiB && "
        "echo '{conf}' > /srv/cvbench.conf && "
        "exec nginx -c /srv/cvbench.conf -g 'daemon off;'")


class Http(ServerStudy):
    name = "http"
    metrics = METRICS
    params: ClassVar[dict[str, Any]] = {**COMMON_PARAMS, "connections": 16, "timeout": 2}
    tools: ClassVar[dict[str, str]] = {"wrk": "wrk", "taskset": "util-linux"}

    def server(self, port: int, p: dict[str, Any]) -> tuple[tuple[str, ...], str]:
        script = SITE.format(conf=CONF.replace("{port}", str(port)))
        return ("sh", "-c", script), f"http:{port}/small"

    def load(self, ctx: Context, addr: str, port: int, p: dict[str, Any], duration: float,
             warm: bool) -> list[Measurement]:
        out: list[Measurement] = []
        for sub, body in FILES.items():
            if warm and sub != "small":
                continue
            argv = loadgen.wrk_args(f"http://{addr}:{port}/{sub}", duration=duration,
                                    connections=int(p["connections"]),
                                    timeout=int(p["timeout"]))
            text, code = run_tool(ctx, argv, p, duration + 30, "wrk",
                                  variant=None if warm else sub, warmup=warm)
            run = loadgen.parse_wrk(text)
            loadgen.check_wrk(run, body)
            if code != 0:
                raise loadgen.LoadFailed("wrk", f"exit status {code}", run.counts)
            out += [Measurement("http.rps", run.rps, variant=sub),
                    Measurement("http.lat_p50", run.latency["50"], variant=sub),
                    Measurement("http.lat_p99", run.latency["99"], variant=sub),
                    Measurement("http.bw", run.transfer, variant=sub)]
        return out


STUDY: Study = Http()
