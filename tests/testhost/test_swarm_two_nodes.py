"""Two daemons: a two-node swarm, this machine's dockerd the manager (made by the run,
docker:swarm's bookkeeping) and the Debian 13 test host's the worker, joined over the
guest's libvirt network. A service of the network study's image (sockperf and iperf3
servers) with one replica on each node (Placement.MaxReplicas 1) on the run's overlay
network; from the replica on this machine, sockperf ping-pong and iperf3 against the
replica on the guest over the overlay (VXLAN), then the same tools, the same binaries
(the image's, in containers with network host), between the two hosts over the plain
libvirt network: the encapsulation's cost. The figures go to
results/testhost/swarm-two-nodes.json and are printed; the worker is labelled TCG when
the guest is emulated (they are diagnostics of this setup, not measurements of
Docker). Afterwards neither daemon is a swarm member (`docker info` on both), and the
guest is removed.

The image goes to the guest with `docker save | docker load`, so both nodes hold it
under the same id, the id the service names.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.bookkeeping import RunLock, collect, live_runs
from harness.core import image
from harness.core.probes.io import parse_json
from harness.studies.network import iperf3_bandwidth, sockperf_latency
from runtimes.base import RUN_LABEL, InstanceSpec, new_run_id
from runtimes.swarm import DockerSwarm, SwarmService
from tests.testhost._guest import guest

pytestmark = [pytest.mark.testhost, pytest.mark.slow]

HOST_IP, GUEST_IP = "10.126.26.1", "10.126.26.2"  # scripts/testhost's defaults
LAT_PORT, BW_PORT = 11111, 15201  # (Debian 13 runs an iperf3 service on 5201)
DURATION = 5
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # sockperf colours its lines
# sockperf allocates a slot per possible descriptor (RLIMIT_NOFILE): under Docker 26's
# unlimited default (about 2^30) it fails with ENOMEM in the 4 GiB guest
ULIMIT = "ulimit -n 65536; "
SERVERS = (f"{ULIMIT}sockperf sr --tcp -p {LAT_PORT} >/dev/null 2>&1 & "
           f"exec iperf3 -s -p {BW_PORT} >/dev/null 2>&1")


def ssh(repo: Path, cmd: str, stdin: int | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(repo / "scripts/testhost"), "ssh", cmd], text=True,
                         capture_output=True, stdin=stdin, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"in the guest: {cmd}: exit {res.returncode}: {res.stderr}")
    return res


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout


def _until(what: str, check: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(1)


def _clients(run: Callable[[str], str], addr: str) -> dict[str, float]:
    """sockperf's one-way latency p50/p99 (s) and iperf3's received bytes/s against
    `addr`, each tool's raw output parsed by the network study's parsers; once the
    latency server listens (slow to start on an emulated guest), the iperf3 client
    tried again while its server is not up yet, as the network study does."""
    run(f"for i in $(seq 240); do nc -z {addr} {LAT_PORT} && break; sleep 0.5; done")
    lat = sockperf_latency(_ANSI.sub("", run(f"{ULIMIT}sockperf pp --tcp -i {addr} -p {LAT_PORT} "
                                             f"-t {DURATION} -m 64 2>&1")))
    for attempt in range(20):
        doc = parse_json(run(f"iperf3 -c {addr} -p {BW_PORT} -t {DURATION} -J || true"))
        if "error" not in doc or attempt == 19:
            break
        time.sleep(1)
    return {"lat_p50_s": lat["50.000"], "lat_p99_s": lat["99.000"],
            "bw_Bps": iperf3_bandwidth(doc)}


def two_nodes(repo: Path, run_id: str) -> dict[str, object]:
    """The whole experiment on a booted guest; the figures. Leaves nothing of the swarm
    on either daemon (also on failure)."""
    rt = DockerSwarm("swarm")
    assert json.loads(_docker("info", "--format", "{{json .Swarm}}"))["LocalNodeState"] \
        == "inactive", "this machine's dockerd is already in a swarm"
    assert ssh(repo, "docker info --format '{{.Swarm.LocalNodeState}}'").stdout.strip() \
        == "inactive"
    prepared = rt.prepare(image.build(image.Recipe("net", ("sockperf", "iperf3"))))
    save = subprocess.Popen(["docker", "save", prepared.ref], stdout=subprocess.PIPE)
    assert save.stdout is not None
    ssh(repo, "docker load", stdin=save.stdout.fileno())
    save.stdout.close()
    assert save.wait() == 0
    guest_id = ssh(repo, f"docker image inspect -f '{{{{.Id}}}}' {prepared.ref}").stdout
    assert guest_id.strip() == prepared.ref  # the same image on both nodes
    accel = ssh(repo, "grep -m1 'model name' /proc/cpuinfo").stdout.split(":", 1)[-1].strip()
    rs = rt.replica_set(run_id, "net")
    assert isinstance(rs, SwarmService)
    plain_server = f"cvbench-{run_id}-plain"
    out: dict[str, object] = {"worker_cpu": accel, "worker_tcg": "TCG" in accel,
                              "duration_s": DURATION}
    try:
        assert rt.join(run_id, HOST_IP).made
        token = rt.api.inspect_swarm()["JoinTokens"]["Worker"]
        ssh(repo, f"docker swarm join --token {token} --advertise-addr {GUEST_IP} "
                  f"{HOST_IP}:2377")
        _until("the worker ready", lambda: len([n for n in rt.api.nodes()
                                                if n["Status"]["State"] == "ready"]) == 2)
        rs.max_per_node = 1
        rs.deploy(InstanceSpec(run_id=run_id, name="net", argv=("sh", "-c", SERVERS),
                               network="bridge"), prepared, BW_PORT)
        rs.scale(2)
        _until("a replica on each node", lambda: sorted(r.node == "" for r in rs.replicas())
               == [False, True])
        reps = rs.replicas()
        local = next(r for r in reps if r.node == "")
        remote = next(r for r in reps if r.node != "")
        nets = remote.details["overlay"]  # {network: ["ip/prefix"]}
        assert isinstance(nets, dict), remote.details
        remote_ip = str(nets[f"cvbench-{run_id}-net"][0]).split("/")[0]
        cid = str(local.details["container"])
        out["nodes"] = {"manager": "this machine", "worker": remote.node}
        out["overlay_addresses"] = {"local": local.details["overlay"],
                                    "remote": remote.details["overlay"]}
        out["overlay"] = _clients(lambda c: _docker("exec", cid, "sh", "-c", c), remote_ip)
        ssh(repo, f"docker run -d --rm --name {plain_server} --label {RUN_LABEL}={run_id} "
                  f"--network host --entrypoint /bin/sh {prepared.ref} -c '{SERVERS}'")
        out["plain"] = _clients(lambda c: _docker(
            "run", "--rm", "--network", "host", "--label", f"{RUN_LABEL}={run_id}",
            "--entrypoint", "/bin/sh", prepared.ref, "-c", c), GUEST_IP)
    finally:
        rs.close()
        ssh(repo, f"docker rm -f {plain_server}; docker swarm leave --force", check=False)
        with contextlib.suppress(Exception):
            for n in rt.api.nodes():
                if n["Spec"].get("Role") == "worker":
                    rt.api.remove_node(n["ID"], force=True)
        # the end of the run: the swarm it made is left (bench gc's path)
        collect(rt, [r for r in live_runs() if r != run_id], run_id)
    o, p = out["overlay"], out["plain"]
    assert isinstance(o, dict) and isinstance(p, dict)
    out["overlay_vs_plain"] = {k: o[k] / p[k] for k in o}
    return out


def test_two_node_swarm_overlay_vs_plain(repo: Path) -> None:
    timings: dict[str, float] = {}
    run_id = new_run_id()
    lock = RunLock(run_id, "test two-node swarm")
    try:
        with guest(repo, timings, setup="true"):
            figures = two_nodes(repo, run_id)
            worker = ssh(repo, "docker info --format '{{.Swarm.LocalNodeState}}'").stdout
            assert worker.strip() == "inactive"
    finally:
        lock.release()
    manager = json.loads(_docker("info", "--format", "{{json .Swarm}}"))["LocalNodeState"]
    assert manager == "inactive"
    dest = repo / "results/testhost/swarm-two-nodes.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"two-node swarm ({dest}):\n{json.dumps(figures, indent=2)}")
    for k in ("overlay", "plain"):
        f = figures[k]
        assert isinstance(f, dict) and all(v > 0 for v in f.values()), figures
