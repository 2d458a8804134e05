"""A run's own layer-2 segment for network macvlan and ipvlan (ns, docker, podman).

The parent interface is the run's, never the host's uplink: a veth pair (`cvvp` + 8 hex
digits, its peer `cvvq` + the same), both ends up on the host and attached to nothing
else, so nothing an instance sends leaves the machine. (A dummy link would do as well;
a veth is used because some kernels, this machine's among them, have no dummy driver.)
There is one segment per run, backend and mode; the parent's alias (`ip link show`)
holds `cvbench-<run id>-<backend>-<mode>` for `leftovers()`/`gc()`. Deleting the parent
deletes every macvlan or ipvlan on it, in whatever namespace, and its peer.

The host reaches its instances through a shim: a macvlan (mode bridge) or ipvlan (mode
l2) of its own on the same parent (`cvvs` + 8 hex digits), holding the segment's first
address (the instances' gateway). Without it the host cannot talk to its children: a
macvlan's or ipvlan's lower device never sees the traffic between its children and
itself. Through the shim, host <-> instance traffic takes the mode's own data path on
both ends (the driver's switch between two devices of one parent), as two containers on
one parent would, and never the parent's wire (here a veth, elsewhere a NIC).

The segment's /24 comes from CVBENCH_VLAN_SUBNETS (default 10.206.0.0/16): the first one
that no route of the host overlaps, chosen under a lock; the shim's address adds its
route, so the next segment made sees it taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import InstanceError, NotApplicable
from runtimes.base import PREFIX, state_dir

PARENT, PEER, SHIM, TMP = "cvvp", "cvvq", "cvvs", "cvvt"
DEFAULT_SUBNETS = "10.206.0.0/16"  # carved into /24s, one per segment
# The mode each device is made in: macvlan's bridge mode and ipvlan's l2 mode switch
# between the devices of one parent, which the host's shim needs.
LINK_TYPE = {"macvlan": ("type", "macvlan", "mode", "bridge"),
             "ipvlan": ("type", "ipvlan", "mode", "l2")}


_made: dict[str, Segment] = {}  # this process's segments, by name


@dataclass(frozen=True)
class Segment:
    name: str  # cvbench-<run id>-<backend>-<mode>
    mode: str
    parent: str
    shim: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        """The shim's address: the host's on the segment."""
        return str(next(self.subnet.hosts()))


def _ip(*args: str, stdin: str | None = None, netns: int | None = None) -> str:
    argv = ["ip", *args] if netns is None else \
        ["nsenter", f"--net=/proc/{netns}/ns/net", "ip", *args]
    try:
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                             check=False, timeout=30)
    except FileNotFoundError as e:
        raise InstanceError(f"network macvlan/ipvlan needs iproute2's `ip`: {e}") from e
    if out.returncode != 0:
        raise InstanceError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _exists(link: str) -> bool:
    return Path(f"/sys/class/net/{link}").exists()


def _hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def subnets() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(os.environ.get("CVBENCH_VLAN_SUBNETS", DEFAULT_SUBNETS))


def _routed() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the host routes (all tables), as networks."""
    out = []
    for r in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = r.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                out.append(ipaddress.IPv4Network(dst, strict=False))
    return out


def free_subnet(pool: ipaddress.IPv4Network, taken: Sequence[ipaddress.IPv4Network]
                ) -> ipaddress.IPv4Network | None:
    """The first /24 of `pool` that overlaps none of `taken` (the host's routes)."""
    return next((n for n in pool.subnets(new_prefix=24)
                 if not any(n.overlaps(t) for t in taken)), None)


def _shim_subnet(shim: str) -> ipaddress.IPv4Network | None:
    for link in json.loads(_ip("-j", "-4", "addr", "show", "dev", shim) or "[]"):
        for a in link.get("addr_info", []):
            return ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
    return None


def segment(run_id: str, backend: str, mode: str) -> Segment:
    """The segment of `run_id`, `backend` and `mode` ("macvlan" | "ipvlan"), made on
    first use: the parent veth pair, the host's shim and its address. NotApplicable
    where the kernel has no driver for the mode."""
    name = f"{PREFIX}{run_id}-{backend}-{mode}"
    h = _hash(name)
    parent, shim = PARENT + h, SHIM + h
    if name in _made and _exists(shim):  # (no lock, no `ip` on an instance's create)
        return _made[name]
    locks = state_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "vlan.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        net = _shim_subnet(shim) if _exists(shim) else None
        if net is None:
            if _exists(parent):  # half made (an error between the steps): start again
                remove(parent)
            net = free_subnet(subnets(), _routed())
            if net is None:
                raise InstanceError(f"network {mode}: no free /24 left in {subnets()} "
                                    "(CVBENCH_VLAN_SUBNETS)")
            _ip("-batch", "-", stdin=f"link add {parent} type veth peer name {PEER + h}\n"
                f"link set {parent} alias {name}\nlink set {PEER + h} alias {name}\n"
                f"link set {PEER + h} up\nlink set {parent} up\n")
            try:
                _ip("link", "add", "link", parent, "name", shim, *LINK_TYPE[mode])
            except InstanceError as e:
                remove(parent)
                if "Unknown device type" in str(e):
                    raise NotApplicable(f"network {mode}: this kernel has no {mode} driver "
                                        f"(CONFIG_{mode.upper()})") from None
                raise
            try:
                _ip("-batch", "-", stdin=f"addr add {next(net.hosts())}/24 dev {shim}\n"
                    f"link set {shim} up\n")
            except BaseException:
                remove(parent)
                raise
    seg = _made[name] = Segment(name=name, mode=mode, parent=parent, shim=shim, subnet=net)
    return seg


def attach(seg: Segment, pid: int, addr: ipaddress.IPv4Address) -> None:
    """Give the network namespace of `pid` an `eth0` of the segment's mode on its parent,
    with `addr` and a default route through the host's shim."""
    # Made under a name of its own, renamed eth0 inside: the kernel checks a new link's
    # name in the namespace `ip` runs in (the host's), so `name eth0 netns PID` fails
    # with EEXIST on a host that has an eth0 of its own (Debian 13's guest has).
    tmp = f"{TMP}{pid:x}"[:15]
    _ip("link", "add", "link", seg.parent, "name", tmp, "netns", str(pid),
        *LINK_TYPE[seg.mode])
    _ip("-batch", "-", netns=pid, stdin=f"link set {tmp} name eth0\n"
        f"addr add {addr}/{seg.subnet.prefixlen} dev eth0\n"
        f"link set eth0 up\nroute add default via {seg.gateway}\n")


def parents(backend: str, links: Path = Path("/sys/class/net")) -> dict[str, str]:
    """The segments of `backend` that exist: parent link -> segment name (by the
    parents' aliases, under sysfs' `links`)."""
    out: dict[str, str] = {}
    for p in links.glob(PARENT + "*"):
        with contextlib.suppress(OSError):
            alias = (p / "ifalias").read_text().strip()
            if alias.startswith(PREFIX) and alias.endswith(
                    tuple(f"-{backend}-{m}" for m in LINK_TYPE)):
                out[p.name] = alias
    return out


def remove(parent: str) -> None:
    """Delete a segment by its parent (its peer, shim and every child go with it); one
    gone already is fine."""
    try:
        _ip("link", "del", parent)
    except InstanceError:
        if _exists(parent):
            raise
