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

Like runc, which leaves networking to CNI plugins, the host side is done by iproute2's
`ip` (it is not on the hot path: `none` is what startup studies use). Interface names are
limited to 15 characters, so the host end is `cvbench` + 8 hex digits of the instance
name, and its alias (ip link show) holds the full `cvbench-<run id>-<n>` name for gc.
The veth pair dies with the instance's network namespace; the bridge stays until gc.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import subprocess
from pathlib import Path

from harness.core.errors import InstanceError

BRIDGE = "cvbench0"
LINK_PREFIX = "cvbench"
DEFAULT_SUBNET = "10.203.0.0/16"
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


def ensure_bridge() -> None:
    """Create and address the cvbench0 bridge (and the NAT rule) unless present."""
    net = subnet()
    gw = next(net.hosts())
    if not _link_exists(BRIDGE):
        with contextlib.suppress(InstanceError):  # a concurrent run may win the race
            _ip("-batch", "-", stdin=f"link add {BRIDGE} type bridge\n"
                f"addr add {gw}/{net.prefixlen} dev {BRIDGE}\nlink set {BRIDGE} up\n")
        if not _link_exists(BRIDGE):
            raise InstanceError(f"ns: cannot create the bridge {BRIDGE}")
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

    def __init__(self, root: Path) -> None:
        self.root = root

    def acquire(self, instance: str) -> ipaddress.IPv4Address:
        self.root.mkdir(parents=True, exist_ok=True)
        hosts = subnet().hosts()
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
        raise InstanceError(f"ns: no free address left in {subnet()}")

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


def attach(pid: int, instance: str, addr: ipaddress.IPv4Address) -> str:
    """Give the instance whose first process is `pid` a veth into the bridge; return the
    host end's name. Runs in the parent while the child waits to exec."""
    ensure_bridge()
    net = subnet()
    host_end = link_name(instance)
    _ip("-batch", "-", stdin=(
        f"link add {host_end} type veth peer name eth0 netns {pid}\n"
        f"link set {host_end} alias {instance}\n"
        f"link set {host_end} master {BRIDGE} up\n"))
    try:
        cmd = ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-batch", "-"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30,
                             input=f"addr add {addr}/{net.prefixlen} dev eth0\n"
                                   f"link set eth0 up\n"
                                   f"route add default via {next(net.hosts())}\n")
        if out.returncode != 0:
            raise InstanceError(f"ns: configuring eth0 of {instance}: {out.stderr.strip()}")
    except BaseException:
        with contextlib.suppress(InstanceError):
            _ip("link", "del", host_end)
        raise
    return host_end


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
    with contextlib.suppress(InstanceError):
        _ip("link", "del", name)


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
