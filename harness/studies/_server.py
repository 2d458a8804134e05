"""What the server studies share (http, kv, db): one sample = one fresh server instance.

Each sample creates the server's instance, waits until its port answers from the host
(the readiness probe), warms it with `warmup` seconds of load, then loads it for
`duration` seconds with a generator on the host (wrk, redis-benchmark, pgbench) aimed at
the instance only, and removes it: never two servers at once. While the measured load
runs, the instance's PSS and its engine's daemons' PSS are sampled every
`pss_interval` seconds; the peak of each is recorded (`<study>.pss_loaded`,
`<study>.daemon_pss_loaded`, 0 for a daemonless backend): what `bench capacity` plans a
loaded instance with. A reading that fails (no process of the instance, a daemon not
found by its socket or pid file) fails the sample: never a 0.

Network (the scenario's `network`, usually a variant): bridge = the instance's own
address; publish = the instance on its bridge, reached at a port published on the
host's address (the engine's NAT, ns' and libvirt's DNAT); host = 127.0.0.1 on the
host's own stack. A backend without the mode closes the cell as not applicable.

An emulated VM (Traits.emulated: TCG) serves so slowly that a 1 MiB answer over 16
connections does not complete within seconds; its samples stretch warm-up, duration
and the per-request timeout by `emulated_scale`, recorded in each sample (time_scale):
rates stay comparable, the run is longer, and the report marks TCG anyway.

CPU placement: the server gets the scenario's `limits.cpuset`, the generator runs under
`taskset -c <client_cpuset>`; both go into every sample's extra fields (cpuset,
client_cpuset). The generator's raw output is kept as an artifact per run (also when the
run fails the sample); a generator error, a timeout or a failed request fails the
sample with its counts, never a zero figure.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import InstanceError
from harness.core.probes.memory import processes_memory
from harness.sampling import Cell, Context, Measurement
from harness.studies import Base
from harness.studies import _lifecycle as life
from runtimes.base import Instance, Runtime, publish_address

NETWORKS = ("bridge", "publish", "host")
COMMON_PARAMS: dict[str, Any] = {"warmup": 1.0, "duration": 3.0, "client_cpuset": "0",
                                  "pss_interval": 0.25, "emulated_scale": 5.0}
# The parameters an emulated backend's sample stretches by emulated_scale (those present).
SCALED = ("warmup", "duration", "timeout", "time_limit")


def run_tool(ctx: Context, argv: Sequence[str], p: dict[str, Any], timeout: float,
             kind: str, **about: Any) -> tuple[str, int]:
    """Run a load generator on the host on the client CPUs, bounded by `timeout`; keep
    its output as an artifact (`kind`); (stdout + stderr, exit status)."""
    cmd = ["taskset", "-c", str(p["client_cpuset"]), *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        ctx.artifact(kind, out, command=cmd, exit=None, **about)
        raise InstanceError(f"{argv[0]}: no end within {timeout:g} s: "
                            f"{out[-300:]!r}") from None
    except OSError as e:
        raise InstanceError(f"{argv[0]}: {e}") from e
    ctx.artifact(kind, out, command=cmd, exit=code, **about)
    return out, code


def free_ports(n: int) -> list[int]:
    """`n` TCP ports free on the host now, below the kernel's ephemeral range (where a
    client's port could take it between now and the server's bind: with network host, a
    server's port is the host's)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng, out = random.Random(), list[int]()
    while len(out) < n:
        port = rng.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port not in out:
            out.append(port)
    return out


class PeakPss:
    """The peak PSS of an instance and of its engine's daemons, sampled by a thread
    every `interval` seconds while the body runs; None until a reading (a read that
    fails is `error`, never a 0)."""

    def __init__(self, rt: Runtime, inst: Instance, interval: float) -> None:
        self.rt, self.inst, self.interval = rt, inst, interval
        self.daemon_pids = life.daemon_pids(rt)
        self.instance: int | None = None
        self.daemons: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: Exception | None = None

    def _take(self) -> None:
        pss = life.memory_of(self.rt, self.inst).pss
        daemons = processes_memory(self.daemon_pids).pss
        self.instance = max(self.instance or 0, pss)
        self.daemons = max(self.daemons or 0, daemons)

    def _run(self) -> None:
        while True:
            try:
                self._take()
            except Exception as e:  # reported by the caller, not lost in the thread
                self.error = e
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is None:
            self._take()  # and once at the end, so a short load has a figure


class ServerStudy(Base):
    """A server study: subclasses say how the server starts and how it is loaded."""

    name: str
    metrics: dict[str, str]
    params: ClassVar[dict[str, Any]]
    tools: ClassVar[dict[str, str]]  # generator binary -> the Debian package with it

    def server(self, port: int, p: dict[str, Any]) -> tuple[tuple[str, ...], str]:
        """The server's argv and readiness (e.g. "tcp:<port>") for a sample."""
        raise NotImplementedError

    def prepare(self, ctx: Context, addr: str, port: int, p: dict[str, Any]) -> None:
        """Set the ready server up for the load (e.g. pgbench -i), before the warm-up."""

    def load(self, ctx: Context, addr: str, port: int, p: dict[str, Any], duration: float,
             warm: bool) -> list[Measurement]:
        """Run the generator against addr:port for `duration` seconds; the figures (the
        warm-up's are discarded). Raises LoadFailed / InstanceError on a bad run."""
        raise NotImplementedError

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        scale = float(p["emulated_scale"]) if cell.traits.emulated else 1.0
        p.update({k: type(p[k])(p[k] * scale) for k in SCALED if k in p})
        mode = cell.config.network
        life.network_applicable(cell, mode, NETWORKS)
        port, host_port = free_ports(2)
        argv, readiness = self.server(port, p)
        publish = ((host_port, port),) if mode == "publish" else ()
        spec = ctx.spec(cell, argv=argv, readiness=readiness, publish=publish)
        rt = cell.runtime
        with life.instance(ctx, cell, spec) as inst:
            addr = publish_address() if publish else rt.address(inst)
            if addr is None:
                raise InstanceError(f"{self.name}: {cell.backend} gives no address for "
                                    f"network {mode}")
            target = host_port if publish else port
            self.prepare(ctx, addr, target, p)
            if p["warmup"] > 0:
                self.load(ctx, addr, target, p, float(p["warmup"]), warm=True)
            with PeakPss(rt, inst, float(p["pss_interval"])) as pss:
                figures = self.load(ctx, addr, target, p, float(p.get("duration", 0)),
                                    warm=False)
            if pss.error is not None or pss.instance is None or pss.daemons is None:
                raise InstanceError(f"{self.name}: memory under load: "
                                    f"{pss.error or 'not read'}")
            figures += [Measurement(f"{self.name}.pss_loaded", pss.instance),
                        Measurement(f"{self.name}.daemon_pss_loaded", pss.daemons)]
        extra: dict[str, Any] = {"cpuset": cell.config.limits.cpuset,
                                 "client_cpuset": str(p["client_cpuset"])}
        if scale != 1:
            extra["time_scale"] = scale
        return [replace(m, extra=extra) for m in figures]
