"""network: request/response latency and throughput between the host and an instance.

The network mode is the scenario's (`network`, usually a variant over none, bridge,
host, macvlan and ipvlan). Two Debian tools run on both ends (in the image as recipe
binaries, and on the host, where provision installs their packages): sockperf, whose
ping-pong mode sends a `message`-byte request and waits for the echo, one at a time, for
`duration` seconds, and iperf3, a bulk TCP stream for `duration` seconds.

  network.lat_p50, network.lat_p99   sockperf's latency percentiles: one-way, i.e. half
                                     of each request's round trip, as sockperf reports
  network.bw                         iperf3's received throughput (bytes/s)

With network host, bridge, macvlan or ipvlan, the servers run in the instance and the
clients on the host, against `address()` (127.0.0.1 for host, the instance's own address
for the others). macvlan and ipvlan (docker, podman, ns) put the instance on a segment
the run makes (runtimes/_vlan.py): a parent veth pair of its own, never the host's
uplink. The host cannot talk to its own children through their parent, so it talks
through a shim: a macvlan (bridge mode) or ipvlan (l2 mode) of its own on the same
parent, holding the segment's first address. Host <-> instance traffic then takes the
mode's own path on both ends, the driver's switch between two devices of one parent,
as between two containers on one parent: what the mode costs next to bridge's veth and
bridge, without a physical wire (which would measure the NIC and the switch). The
clients are the host's own installed tools (found on PATH; the study's `tools` name
their packages), never the image's files: an image's binaries run only inside an
instance. With network none the host cannot reach the instance, so servers
and clients all run inside it, over its own loopback. Traffic only ever goes to
loopback or the instance's own address. The raw outputs (sockperf's summary, iperf3's
JSON) are kept as artifacts, with the client's path and version and the server's version
(the image's copy, asked inside an instance once per image): `same_version` says
whether the two ends ran the same release.

A backend that applies no network isolation (host) is measured in mode host only; one
that does not apply or refuses a mode (metadata's not_applied "network.<mode>", or its
NotApplicable at create: a declared inability) closes that cell as not applicable; any
other error at create fails the sample.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import InstanceError, NotApplicable
from harness.core.probes import serving
from harness.core.probes.io import parse_json, sections
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base, Study
from harness.studies import _lifecycle as life
from harness.studies._server import free_ports
from runtimes.base import NETWORK_MODES, Instance

BEGIN, END = "CVBENCH-NET-BEGIN", "CVBENCH-NET-END"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
METRICS = {"network.lat_p50": "s", "network.lat_p99": "s", "network.bw": "B/s"}
_PERCENTILE = re.compile(r"percentile\s+(\d+\.\d+)\s*=\s*([\d.]+)")

TOOLS = ("sockperf", "iperf3")
# Each tool's version, as sections of an instance's output (the first line is the version).
VERSIONS = "".join(f'echo "{{begin}} {t}-version"; {t} --version 2>&1; '
                   f'echo "{{end}} {t}-version rc=$?"\n' for t in TOOLS)

# One open-files limit for the tools on every backend, set by the instance's shell (a
# process may always lower its own limits): sockperf allocates a slot per possible
# descriptor, and Docker >= 25 under systemd hands a container containerd's "infinity"
# (about 2^30), ENOMEM on a small host. (Not the scenario's [limits] rlimits: ns cannot
# raise a hard limit without CAP_SYS_RESOURCE, and Podman's crun then fails on nproc.)
NOFILE = "ulimit -n 4096; "

INSIDE = NOFILE + VERSIONS + """\
sockperf sr --tcp -i 127.0.0.1 -p {lat_port} >/dev/null 2>&1 & sp=$!
iperf3 -s -B 127.0.0.1 -p {bw_port} >/dev/null 2>&1 & ip=$!
for i in $(seq 100); do
  netstat -ltn | grep -q ":{lat_port} " && netstat -ltn | grep -q ":{bw_port} " && break
  sleep 0.1
done
echo "{begin} sockperf"; sockperf pp --tcp -i 127.0.0.1 -p {lat_port} -t {duration} \
-m {message} 2>&1; echo "{end} sockperf rc=$?"
echo "{begin} iperf3"; iperf3 -c 127.0.0.1 -p {bw_port} -t {duration} -J 2>&1; \
echo "{end} iperf3 rc=$?"
kill $sp $ip
true
"""

SERVERS = (NOFILE + "sockperf sr --tcp -i {bind} -p {lat_port} >/dev/null 2>&1 & "
           "exec iperf3 -s -B {bind} -p {bw_port} >/dev/null 2>&1")


def sockperf_latency(text: str) -> dict[str, float]:
    """sockperf's latency percentiles, in seconds, keyed like "50.000"."""
    found = {p: float(v) * 1e-6 for p, v in _PERCENTILE.findall(_ANSI.sub("", text))}
    if "50.000" not in found or "99.000" not in found:
        raise InstanceError(f"no latency percentiles in sockperf's output: {text[-400:]!r}")
    return found


def iperf3_bandwidth(doc: dict[str, Any]) -> float:
    """Bytes/s the receiver got (iperf3's end.sum_received.bits_per_second / 8)."""
    if "error" in doc:
        raise InstanceError(f"iperf3: {doc['error']}")
    try:
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 8
    except (KeyError, TypeError):
        raise InstanceError("iperf3's JSON has no end.sum_received") from None


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()), "?")


def image_versions(output: str) -> dict[str, str]:
    """Each tool's version from an instance's VERSIONS sections ("?" where it gave none)."""
    found = sections(output, BEGIN, END)
    return {t: _first_line(found[f"{t}-version"][1]) if f"{t}-version" in found else "?"
            for t in TOOLS}


def host_tool(name: str) -> str:
    """The path of the host's own `name` (the Debian package of the same name)."""
    path = shutil.which(name)
    if path is None:
        raise InstanceError(f"network: {name} is not installed on this host (Debian package "
                            f"{Network.tools[name]}; `make provision` installs it)")
    return path


@functools.cache
def host_version(path: str) -> str:
    """The first line of `path --version` (a host tool's)."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    return _first_line(proc.stdout + proc.stderr)


class Network(Base):
    name = "network"
    metrics: dict[str, str] = METRICS
    params: ClassVar[dict[str, Any]] = {"duration": 2, "message": 64}
    # The clients run on the host (network host and bridge): its own tools, never the image's.
    tools: ClassVar[dict[str, str]] = {"sockperf": "sockperf", "iperf3": "iperf3"}

    def __init__(self) -> None:
        self.server_versions: dict[str, dict[str, str]] = {}  # image digest -> tool -> version

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        mode = cell.config.network
        life.network_applicable(cell, mode, NETWORK_MODES)
        ports = free_ports(2)
        fmt = {"lat_port": ports[0], "bw_port": ports[1], "duration": int(p["duration"]),
               "message": int(p["message"]), "begin": BEGIN, "end": END,
               "bind": "127.0.0.1" if mode == "host" else "0.0.0.0"}
        addr: str | None = None
        digest = cell.prepared.image.digest
        clients: dict[str, dict[str, str]] = {}
        if mode == "none":  # unreachable from the host: everything inside, over loopback
            spec = ctx.spec(cell, argv=("sh", "-c", INSIDE.format(**fmt)), readiness="exit",
                            capture=True)
            inst, ex = life.run(ctx, cell, spec)
            life.finish(ctx, cell, inst)
            life.check(ex, "network")
            found = sections(life.text(ex.stdout), BEGIN, END)
            for tool in TOOLS:
                if tool not in found or found[tool][2] != "rc=0":
                    raise InstanceError(f"network: {tool} failed inside the instance: "
                                        f"{life.text(ex.stdout)[-400:]!r}")
            lat_text, bw_text = found["sockperf"][1], found["iperf3"][1]
            self.server_versions[digest] = image_versions(life.text(ex.stdout))
        else:
            spec = ctx.spec(cell, argv=("sh", "-c", SERVERS.format(**fmt)),
                            readiness="marker")
            address = getattr(cell.runtime, "address", None)
            if address is None:  # a backend that predates address() in the protocol
                raise NotApplicable(f"{cell.backend} does not implement address(): the "
                                    f"host cannot find an instance with network {mode}")
            with life.instance(ctx, cell, spec) as inst:
                addr = address(inst)
                if addr is None:
                    raise InstanceError(f"network: {cell.backend} gives no address for an "
                                        f"instance with network {mode}")
                clients = {t: {"path": host_tool(t)} for t in TOOLS}
                lat_text, bw_text = self.from_host(ctx, cell, inst, addr, fmt, clients)
            if digest not in self.server_versions:
                self.server_versions[digest] = self.ask_versions(ctx, cell)
        lat = sockperf_latency(lat_text)
        bw_doc = parse_json(bw_text)
        where = "inside" if addr is None else "host"
        server = self.server_versions[digest]
        for t, data in (("sockperf", _ANSI.sub("", lat_text)), ("iperf3", bw_doc)):
            # Inside, one copy (the image's) is both ends.
            c = clients.get(t) or {"path": f"{t} (the image's, in the instance)",
                                   "version": server[t]}
            c.setdefault("version", host_version(c["path"]))
            ctx.artifact(t, data, client=where, address=addr, client_path=c["path"],
                         client_version=c["version"], server_version=server[t],
                         same_version=c["version"] == server[t])
        return [Measurement("network.lat_p50", lat["50.000"]),
                Measurement("network.lat_p99", lat["99.000"]),
                Measurement("network.bw", iperf3_bandwidth(bw_doc))]

    def ask_versions(self, ctx: Context, cell: Cell) -> dict[str, str]:
        """The versions of the image's tools, asked inside a short instance of the cell
        (the servers' own output is not kept)."""
        spec = ctx.spec(cell, argv=("sh", "-c", VERSIONS.format(begin=BEGIN, end=END)),
                        readiness="exit", capture=True)
        inst, ex = life.run(ctx, cell, spec)  # (a backend's own inability: NotApplicable)
        life.finish(ctx, cell, inst)
        return image_versions(life.text(ex.stdout))

    def from_host(self, ctx: Context, cell: Cell, inst: Instance, addr: str,
                  fmt: dict[str, Any], clients: dict[str, dict[str, str]]) -> tuple[str, str]:
        """Run the clients (the host's tools, `clients[tool]["path"]`) against the
        instance's servers at `addr`, once the latency server listens (a server that died
        fails the sample at once)."""
        listening = serving.Readiness("tcp", port=fmt["lat_port"])
        if serving.poll(listening, addr, 0.1, time.monotonic() + ctx.timeout,
                        life.ended(cell.runtime, inst)) is None:
            raise InstanceError(f"network: nothing listens on {addr}:{fmt['lat_port']}")
        dur = fmt["duration"]
        lat = _run([clients["sockperf"]["path"], "pp", "--tcp", "-i", addr, "-p",
                    str(fmt["lat_port"]), "-t", str(dur), "-m", str(fmt["message"])],
                   dur + 30)
        for attempt in range(10):  # the iperf3 server may come up after sockperf's
            bw = _run([clients["iperf3"]["path"], "-c", addr, "-p", str(fmt["bw_port"]),
                       "-t", str(dur), "-J"], dur + 30, check=False)
            if "error" not in json.loads(bw or "{}") or attempt == 9:
                break
            time.sleep(0.3)
        return lat, bw


def _run(argv: list[str], timeout: float, check: bool = True) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstanceError(f"network: {Path(argv[0]).name}: {e}") from e
    if check and proc.returncode != 0:
        raise InstanceError(f"network: {Path(argv[0]).name} exited with {proc.returncode}: "
                            f"{(proc.stdout + proc.stderr)[-400:]!r}")
    return proc.stdout


STUDY: Study = Network()
