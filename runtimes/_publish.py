"""Published ports by iptables DNAT, for the backends no engine publishes for (ns, libvirt).

What Docker's DOCKER chain does for `-p ADDR:HOST:PORT` without its proxy: a nat rule
rewrites TCP connections to ADDR:HOST (publish_address(), the host's own address) to the
instance's address and port. The rule sits in OUTPUT, so it applies to clients on the
host (the load generators); connections from elsewhere are not forwarded (that would
need PREROUTING plus FORWARD rules on the host's firewall, which cvbench leaves alone).
Each rule carries the instance's name and the backend as its comment
(`cvbench-<run id>-<n>@ns`), so an instance's rules are removed with it and a dead run's
are found by its backend's `leftovers()`.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable

from harness.core.errors import InstanceError
from runtimes.base import PREFIX, publish_address

CHAIN = "OUTPUT"


def _iptables(*args: str) -> str:
    try:
        proc = subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstanceError(f"iptables: {e}") from e
    if proc.returncode != 0:
        raise InstanceError(f"iptables -t nat {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def publish(backend: str, name: str, to_addr: str, ports: Iterable[tuple[int, int]]
            ) -> None:
    """DNAT publish_address():host_port to to_addr:port for each (host_port, port)."""
    addr = publish_address()
    for host_port, port in ports:
        _iptables("-I", CHAIN, "-d", f"{addr}/32", "-p", "tcp", "--dport", str(host_port),
                  "-m", "comment", "--comment", f"{name}@{backend}",
                  "-j", "DNAT", "--to-destination", f"{to_addr}:{port}")


def rules(backend: str) -> dict[str, list[list[str]]]:
    """The backend's DNAT rules by instance name, as `iptables -S` lists them."""
    out: dict[str, list[list[str]]] = {}
    for line in _iptables("-S", CHAIN).splitlines():
        words = shlex.split(line)
        if "--comment" in words:
            name, _, owner = words[words.index("--comment") + 1].partition("@")
            if name.startswith(PREFIX) and owner == backend:
                out.setdefault(name, []).append(words)
    return out


def unpublish(backend: str, name: str) -> None:
    """Remove the instance's rules (idempotent)."""
    for words in rules(backend).get(name, []):
        _iptables("-D", *words[1:])  # words: -A OUTPUT <match...>
