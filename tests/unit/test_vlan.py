"""Network macvlan and ipvlan without privileges: the scenario's values, the engines'
mapping, the backends that refuse them, and how a segment's /24 is chosen."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from harness import scenario
from harness.core.errors import NotApplicable, ScenarioError
from runtimes import _engine, _vlan, libvirt
from runtimes.base import InstanceSpec
from runtimes.docker import DockerRuntime
from runtimes.ns import validate
from runtimes.podman import PodmanRuntime

SCENARIO = '''name = "s"
study = "network"
backends = ["ns"]
network = "{network}"
[workload]
image = {{ recipe = "net", binaries = ["sockperf", "iperf3"] }}
argv = ["true"]
[variants]
network = ["bridge", "macvlan", "ipvlan"]
'''


def spec(**kw: object) -> InstanceSpec:
    return InstanceSpec(run_id="abcdef0123", name="cvbench-abcdef0123-1", argv=("true",),
                        **kw)  # type: ignore[arg-type]


def test_scenario_takes_macvlan_and_ipvlan(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(SCENARIO.format(network="macvlan"))
    s = scenario.load(p)
    assert s.network == "macvlan"
    assert sorted(s.config(v).network for v in s.variants) == ["bridge", "ipvlan", "macvlan"]
    p.write_text(SCENARIO.format(network="vlan"))
    with pytest.raises(ScenarioError, match="ipvlan"):  # the error lists the modes
        scenario.load(p)


def test_shipped_network_scenario_measures_both(repo: Path) -> None:
    s = scenario.load(repo / "scenarios" / "network.toml")
    assert {"macvlan", "ipvlan"} <= {s.config(v).network for v in s.variants}


def test_engines_put_the_container_on_the_runs_network() -> None:
    hc = _engine.host_config(spec(network="macvlan"), {"": "cvbench-abcdef0123-docker-macvlan"},
                             None)
    assert hc["network_mode"] == "cvbench-abcdef0123-docker-macvlan"
    # each engine's name of the mode option (docker -o macvlan_mode=, podman -o mode=)
    assert DockerRuntime.vlan_mode_key.format(mode="ipvlan") == "ipvlan_mode"
    assert PodmanRuntime.vlan_mode_key.format(mode="ipvlan") == "mode"


@pytest.mark.parametrize("mode", ["macvlan", "ipvlan"])
def test_refused_where_not_built(mode: str) -> None:
    with pytest.raises(NotApplicable, match="macvtap"):
        libvirt._refuse_vlan(spec(network=mode))
    with pytest.raises(NotApplicable, match="needs root"):
        validate.spec(spec(network=mode), rootless=True)
    libvirt._refuse_vlan(spec(network="bridge"))


def test_a_segment_takes_the_first_unrouted_slash_24() -> None:
    pool = ipaddress.IPv4Network("10.206.0.0/16")
    net = ipaddress.IPv4Network
    assert _vlan.free_subnet(pool, []) == net("10.206.0.0/24")
    assert _vlan.free_subnet(pool, [net("10.206.0.0/24"), net("10.206.1.7/32"),
                                    net("192.168.0.0/16")]) == net("10.206.2.0/24")
    assert _vlan.free_subnet(pool, [net("10.0.0.0/8")]) is None  # all routed elsewhere


def test_each_backend_finds_its_own_segments(tmp_path: Path) -> None:
    for link, alias in (("cvvp00000001", "cvbench-abcdef0123-ns-macvlan"),
                        ("cvvp00000002", "cvbench-abcdef0123-podman-ipvlan"),
                        ("cvvq00000001", "cvbench-abcdef0123-ns-macvlan"),  # a peer
                        ("cvvp00000003", "someone else's")):
        (tmp_path / link).mkdir()
        (tmp_path / link / "ifalias").write_text(alias + "\n")
    assert _vlan.parents("ns", tmp_path) == {"cvvp00000001": "cvbench-abcdef0123-ns-macvlan"}
    assert _vlan.parents("podman", tmp_path) == {
        "cvvp00000002": "cvbench-abcdef0123-podman-ipvlan"}
    assert _vlan.parents("docker", tmp_path) == {}
