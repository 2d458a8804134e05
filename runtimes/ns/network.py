"""Networking of an instance.

none:   a private network namespace with only the loopback device, brought up by the
        child itself (namespaces.loopback_up, one ioctl): nothing on the host is touched.
bridge: the same private namespace, plus a veth pair: one end (`eth0`) is created
        directly inside the instance's namespace, the other is a port of the host bridge
        `cvbench0`. The instance gets the next free address of the subnet
        (CVBENCH_NS_SUBNET, default 10.203.0.0/16; the bridge holds the first address and
        is the default gateway). With CVBENCH_NS_NAT=1 the subnet is masqueraded to the
        host's other interfaces (and IPv4 forwarding is switched on); without it the
        instance reaches the bridge's address and its sibling instances only.
host:   no network namespace at all.
A private network of the run (InstanceSpec.network_name, a stack's): the same veth, into
        a bridge of its own (`cvb` + 8 hex digits of its name, the name as the bridge's
        alias) with a /24 of its own out of CVBENCH_NS_NETWORKS (default
        10.204.0.0/16), and a hosts file every instance on it gets bind-mounted over its
        /etc/hosts: each instance adds "<address> <hostname> <aliases>" when it is made
        and takes it out when it is removed (written in place, under a lock, so every
        bind mount sees it), as Docker's /etc/hosts of linked containers did before its
        embedded DNS. It lives in <state>/ns/nets/<cvbench-run-name>/ (subnet, hosts,
        leases) until the stack removes it or gc does.
        An instance on several (InstanceSpec.more_networks) gets a veth into each (eth0,
        eth1, ...; the default route on eth0's) and a hosts file of its own, a view:
        the union of its networks' hosts files, rewritten (in place, under one lock for
        all the hosts files) whenever one of them changes. A network's `viewers/`
        names the views to rewrite; the view lives in its first network's `views/`.

Like runc, which leaves networking to CNI plugins, the host side is done by iproute2's
`ip` (it is not on the hot path: `none` is what startup studies use). Interface names are
limited to 15 characters, so the host end is `cvbench` + 8 hex digits of the instance
name, and its alias (ip link show) holds the full `cvbench-<run id>-<n>` name for gc.
The veth pair dies with the instance's network namespace; the bridge stays until gc.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import InstanceError
from runtimes.base import rmtree

BRIDGE = "cvbench0"
LINK_PREFIX = "cvbench"
NET_PREFIX = "cvb"  # bridges of private networks: cvb + 8 hex digits
DEFAULT_SUBNET = "10.203.0.0/16"
DEFAULT_NETWORKS = "10.204.0.0/16"  # carved into /24s, one per private network
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NAT_COMMENT = "cvbench"


def subnet() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(os.environ.get("CVBENCH_NS_SUBNET", DEFAULT_SUBNET))


def nat_wanted() -> bool:
    return os.environ.get("CVBENCH_NS_NAT", "") in ("1", "true", "yes")


def link_name(instance: str) -> str:
    return LINK_PREFIX + hashlib.sha1(instance.encode()).hexdigest()[:8]


def _ip(*args: str, stdin: str | None = None) -> str:
    try:
        out = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True,
                             check=False, timeout=30)
    except FileNotFoundError as e:
        raise InstanceError("ns: network bridge needs iproute2's `ip`") from e
    if out.returncode != 0:
        raise InstanceError(f"ns: ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _make_bridge(name: str, net: ipaddress.IPv4Network, alias: str = "") -> None:
    if not _link_exists(name):
        with contextlib.suppress(InstanceError):  # a concurrent run may win the race
            _ip("-batch", "-", stdin=f"link add {name} type bridge\n"
                f"addr add {next(net.hosts())}/{net.prefixlen} dev {name}\n"
                + (f"link set {name} alias {alias}\n" if alias else "")
                + f"link set {name} up\n")
        if not _link_exists(name):
            raise InstanceError(f"ns: cannot create the bridge {name}")


def ensure_bridge() -> None:
    """Create and address the cvbench0 bridge (and the NAT rule) unless present."""
    net = subnet()
    _make_bridge(BRIDGE, net)
    if nat_wanted():
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        rule = ["POSTROUTING", "-s", str(net), "!", "-o", BRIDGE, "-j", "MASQUERADE",
                "-m", "comment", "--comment", NAT_COMMENT]
        check = subprocess.run(["iptables", "-t", "nat", "-C", *rule], capture_output=True,
                               check=False)
        if check.returncode != 0:
            subprocess.run(["iptables", "-t", "nat", "-A", *rule], capture_output=True,
                           check=True)


class Leases:
    """Addresses handed out, one file per address under the state dir, holding the
    instance name: O_EXCL creation makes allocation safe across concurrent runs."""

    def __init__(self, root: Path, net: ipaddress.IPv4Network | None = None) -> None:
        self.root = root
        self.net = net

    def acquire(self, instance: str) -> ipaddress.IPv4Address:
        self.root.mkdir(parents=True, exist_ok=True)
        hosts = (self.net or subnet()).hosts()
        next(hosts)  # the bridge's own address
        for addr in hosts:
            try:
                fd = os.open(self.root / str(addr), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             0o644)
            except FileExistsError:
                continue
            os.write(fd, instance.encode())
            os.close(fd)
            return addr
        raise InstanceError(f"ns: no free address left in {self.net or subnet()}")

    def release(self, addr: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / addr).unlink()

    def owners(self) -> dict[str, str]:
        """address -> instance name."""
        out: dict[str, str] = {}
        if self.root.is_dir():
            for p in self.root.iterdir():
                with contextlib.suppress(OSError):
                    out[p.name] = p.read_text()
        return out


def mac_of(addr: ipaddress.IPv4Address) -> str:
    """The instance's MAC for `addr`, made from it as Docker makes its own (02:42 and the
    four bytes of the address: locally administered, unicast). An address is leased
    again as soon as it is free; with a random MAC the host's neighbour entry for it
    still named the last holder's (REACHABLE, for up to ~30 s) while other instances
    kept the bridge up (tests/integration/test_ns.py shows it): a scale study's rolling
    update waited 34 s on ns and not on Docker, and 1.3 s with this."""
    return "02:42:" + ":".join(f"{b:02x}" for b in addr.packed)


def attach(pid: int, instance: str, addr: ipaddress.IPv4Address,
           private: PrivateNet | None = None, index: int = 0) -> str:
    """Give the instance whose first process is `pid` a veth into the bridge (cvbench0,
    or a private network's): `eth<index>`, the default route through eth0's; return the
    host end's name. Runs in the parent while the child waits to exec."""
    if private is None:
        ensure_bridge()
    net, bridge = (private.subnet, private.bridge) if private else (subnet(), BRIDGE)
    host_end = link_name(instance if index == 0 else f"{instance}/{index}")
    dev = f"eth{index}"
    _ip("-batch", "-", stdin=(
        f"link add {host_end} type veth peer name {dev} address {mac_of(addr)} "
        f"netns {pid}\n"
        f"link set {host_end} alias {instance}\n"
        f"link set {host_end} master {bridge} up\n"))
    try:
        cmd = ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-batch", "-"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30,
                             input=f"addr add {addr}/{net.prefixlen} dev {dev}\n"
                                   f"link set {dev} up\n"
                                   + (f"route add default via {next(net.hosts())}\n"
                                      if index == 0 else ""))
        if out.returncode != 0:
            raise InstanceError(f"ns: configuring {dev} of {instance}: "
                                f"{out.stderr.strip()}")
    except BaseException:
        with contextlib.suppress(InstanceError):
            _ip("link", "del", host_end)
        raise
    return host_end


@dataclass(frozen=True)
class PrivateNet:
    """A private network of a run: its bridge, /24 and state dir (hosts file, leases)."""

    name: str  # cvbench-<run id>-<network_name>
    bridge: str
    subnet: ipaddress.IPv4Network
    dir: Path

    @property
    def hosts(self) -> Path:
        return self.dir / "hosts"

    @property
    def leases(self) -> Leases:
        return Leases(self.dir / "ipam", self.subnet)

    def add_host(self, addr: str, names: Sequence[str]) -> None:
        self._edit(lambda lines: [*lines, f"{addr}\t{' '.join(names)}"])

    def remove_host(self, addr: str) -> None:
        self._edit(lambda lines: [ln for ln in lines if ln.split("\t")[0] != addr])

    def _edit(self, change: Callable[[list[str]], list[str]]) -> None:
        with _hosts_lock(self.dir.parent):
            with contextlib.suppress(FileNotFoundError):
                _rewrite(self.hosts, change(self.hosts.read_text().splitlines()))
            viewers = self.dir / "viewers"
            for reg in sorted(viewers.iterdir()) if viewers.is_dir() else ():
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    info = json.loads(reg.read_text())
                    _write_view(Path(info["view"]), [Path(d) for d in info["nets"]])


@contextlib.contextmanager
def _hosts_lock(root: Path) -> Iterator[None]:
    """One lock for every hosts file and view under `root` (a view reads several)."""
    with open(root / "hosts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _rewrite(path: Path, lines: Sequence[str]) -> None:
    # In place (the same inode): instances have this very file bind-mounted.
    with open(path, "r+") as f:
        f.truncate()
        f.write("\n".join(lines) + "\n")


def _write_view(path: Path, nets: Sequence[Path]) -> None:
    lines = HOSTS.splitlines()
    for d in nets:
        with contextlib.suppress(FileNotFoundError):
            lines += [ln for ln in (d / "hosts").read_text().splitlines() if ln not in lines]
    _rewrite(path, lines)


def view(nets: Sequence[PrivateNet], instance: str) -> Path:
    """The hosts file of an instance on all of `nets`: the union of theirs, kept so."""
    with _hosts_lock(nets[0].dir.parent):
        path = nets[0].dir / "views" / instance
        path.parent.mkdir(exist_ok=True)
        path.touch()
        info = json.dumps({"view": str(path), "nets": [str(n.dir) for n in nets]})
        for n in nets:
            (n.dir / "viewers").mkdir(exist_ok=True)
            (n.dir / "viewers" / instance).write_text(info)
        _write_view(path, [n.dir for n in nets])
    return path


def drop_view(nets: Sequence[PrivateNet], instance: str) -> None:
    """Forget the view of `instance` (its file goes with its first network's dir)."""
    with _hosts_lock(nets[0].dir.parent):
        for n in nets:
            with contextlib.suppress(FileNotFoundError):
                (n.dir / "viewers" / instance).unlink()


def networks_pool() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(os.environ.get("CVBENCH_NS_NETWORKS", DEFAULT_NETWORKS))


def private_net(root: Path, name: str) -> PrivateNet:
    """The private network `name` (cvbench-<run>-<n>), made on first use: a free /24 of
    the pool, its bridge, an empty hosts file."""
    d = root / name
    bridge = NET_PREFIX + hashlib.sha1(name.encode()).hexdigest()[:8]
    root.mkdir(parents=True, exist_ok=True)
    locks = root.parent.parent / "locks"  # (the state dir's, as the engines' import lock)
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "ns-networks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / "subnet").exists():
            used = {p.read_text() for p in root.glob("*/subnet")}
            free = (n for n in networks_pool().subnets(new_prefix=24) if str(n) not in used)
            net = next(free, None)
            if net is None:
                raise InstanceError(f"ns: no free /24 left in {networks_pool()} for a "
                                    "private network (CVBENCH_NS_NETWORKS)")
            (d / "ipam").mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(HOSTS)
            (d / "subnet").write_text(str(net))
    net = ipaddress.IPv4Network((d / "subnet").read_text())
    _make_bridge(bridge, net, alias=name)
    # Where br_netfilter passes bridged frames through iptables and FORWARD drops them
    # (dockerd sets that policy), instances on one bridge cannot reach each other
    # without this rule; Docker adds the same for each of its bridges.
    # And traffic from it to another of cvbench's bridges is dropped whatever the
    # FORWARD policy (Docker's isolation chains do the same between its networks): two
    # networks of a stack stay apart even routed through the host. (-I puts each on
    # top: this network's ACCEPT comes before its DROP.)
    for rule in (_isolate_rule(bridge, name), _forward_rule(bridge, name)):
        if subprocess.run(["iptables", "-C", *rule], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["iptables", "-I", *rule], capture_output=True, check=False)
    return PrivateNet(name=name, bridge=bridge, subnet=net, dir=d)


def _forward_rule(bridge: str, name: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT", "-m", "comment",
            "--comment", name]


def _isolate_rule(bridge: str, name: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", NET_PREFIX + "+", "-j", "DROP", "-m", "comment",
            "--comment", name]


def remove_private_net(root: Path, name: str) -> None:
    """Its bridge and state dir (the instances' veths went with their namespaces)."""
    bridge = NET_PREFIX + hashlib.sha1(name.encode()).hexdigest()[:8]
    for rule in (_forward_rule(bridge, name), _isolate_rule(bridge, name)):
        while subprocess.run(["iptables", "-D", *rule], capture_output=True,
                             check=False).returncode == 0:
            pass
    if _link_exists(bridge):
        delete_link(bridge)
    rmtree(root / name)


def private_nets(root: Path) -> list[str]:
    """Names of the private networks that exist: state dirs and bridges (by alias)."""
    found = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    for p in Path("/sys/class/net").glob(NET_PREFIX + "*"):
        with contextlib.suppress(OSError):
            alias = (p / "ifalias").read_text().strip()
            if alias.startswith("cvbench-") and not p.name.startswith(LINK_PREFIX):
                found.add(alias)
    return sorted(found)


def links() -> dict[str, str]:
    """Host veth ends we made: name -> alias (the instance name)."""
    out: dict[str, str] = {}
    for p in Path("/sys/class/net").glob(LINK_PREFIX + "*"):
        if p.name == BRIDGE:
            continue
        with contextlib.suppress(OSError):
            out[p.name] = (p / "ifalias").read_text().strip()
    return out


def delete_link(name: str) -> None:
    """Delete a host link; one gone already is fine, any other failure raises (the link
    is still there, and links() lists it for `bench gc`)."""
    try:
        _ip("link", "del", name)
    except InstanceError:
        if _link_exists(name):
            raise


def bridge_in_use() -> bool:
    return any(Path(f"/sys/class/net/{BRIDGE}/brif").iterdir()) \
        if _link_exists(BRIDGE) else False


def remove_bridge() -> bool:
    """Delete the bridge and the NAT rule; False when absent."""
    subprocess.run(["iptables", "-t", "nat", "-D", "POSTROUTING", "-s", str(subnet()), "!",
                    "-o", BRIDGE, "-j", "MASQUERADE", "-m", "comment", "--comment",
                    NAT_COMMENT], capture_output=True, check=False)
    if not _link_exists(BRIDGE):
        return False
    delete_link(BRIDGE)
    return True
