"""ns: the hosts file of an instance on several private networks (a view) is the union
of its networks' hosts files, kept in place (the same inode: it is bind-mounted) as
instances come and go on any of them, and forgotten with the instance."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from runtimes.ns import network


def net(root: Path, name: str, subnet: str) -> network.PrivateNet:
    d = root / name
    (d / "ipam").mkdir(parents=True)
    (d / "hosts").write_text(network.HOSTS)
    return network.PrivateNet(name=name, bridge="cvbtest", subnet=ipaddress.IPv4Network(subnet),
                              dir=d)


def entries(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and "localhost" not in ln]


def test_a_view_is_the_union_kept_in_place(tmp_path: Path) -> None:
    a = net(tmp_path, "cvbench-r-a", "10.9.1.0/24")
    b = net(tmp_path, "cvbench-r-b", "10.9.2.0/24")
    a.add_host("10.9.1.2", ["db"])
    view = network.view((a, b), "cvbench-r-3")
    inode = view.stat().st_ino
    assert entries(view) == ["10.9.1.2\tdb"]
    b.add_host("10.9.2.2", ["web", "www"])  # a change on the other network shows
    a.add_host("10.9.1.3", ["mid"])
    b.add_host("10.9.2.3", ["mid"])
    assert entries(view) == ["10.9.1.2\tdb", "10.9.1.3\tmid", "10.9.2.2\tweb www",
                             "10.9.2.3\tmid"]
    assert entries(a.hosts) == ["10.9.1.2\tdb", "10.9.1.3\tmid"]  # the networks stay apart
    assert entries(b.hosts) == ["10.9.2.2\tweb www", "10.9.2.3\tmid"]
    b.remove_host("10.9.2.2")
    assert "web" not in view.read_text() and view.stat().st_ino == inode
    network.drop_view((a, b), "cvbench-r-3")
    a.add_host("10.9.1.4", ["late"])  # no longer kept
    assert "late" not in view.read_text()
    assert not list((b.dir / "viewers").iterdir())


def test_further_networks_need_a_first_one() -> None:
    import pytest

    from harness.core.errors import UsageError
    from runtimes.base import InstanceSpec, check_networks

    spec = InstanceSpec(run_id="r", name="cvbench-r-1", argv=("true",), network="bridge",
                        more_networks=("b",))
    with pytest.raises(UsageError, match="without a network_name"):
        check_networks("ns", spec)
    check_networks("ns", InstanceSpec(run_id="r", name="cvbench-r-1", argv=("true",),
                                      network="bridge", network_name="a",
                                      more_networks=("b",)))
