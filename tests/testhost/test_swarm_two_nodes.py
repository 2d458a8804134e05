"""Two daemons: `bench run overlay --backends docker:swarm` with the Debian 13 test host's
dockerd as the worker (harness/studies/overlay.py does the experiment: a two-node swarm,
a replica on each node on the run's overlay network, sockperf and iperf3 over the
overlay and over the plain libvirt network, the swarm's state removed on both nodes).

This test only drives it: it boots the guest, writes an ssh configuration with
scripts/testhost's key and known_hosts for CVBENCH_SSH_CONFIG, runs `bench run` on a
scenario naming the guest as the worker (2 samples: a CI), and checks the result against
what the study does not compute itself: `docker service ps`'s raw output on the manager
during the run (a running task of the overlay service on the guest's hostname and one on
this host's), the plain path's latency against TCP connects to a closed port of the
guest (its kernel's RST) timed here, the worker's CPU model against its /proc/cpuinfo,
and, afterwards, `docker info` on both daemons (the guest in no swarm, this host as it
was found), no docker_gwbridge and no image left on the guest. The result is copied to
results/testhost/ and its figures printed (diagnostics of this setup under TCG, not
measurements of Docker)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.testhost._guest import guest

pytestmark = [pytest.mark.testhost, pytest.mark.slow]

HOST_IP, GUEST_IP = "10.126.26.1", "10.126.26.2"  # scripts/testhost's defaults
CACHE = Path(os.environ.get("CVBENCH_TESTHOST_CACHE")
             or Path.home() / ".cache/cvbench/testhost")  # (as scripts/testhost)
_OVERLAY_SERVICE = re.compile(r"^cvbench-[0-9a-f]+-overlay\d+$")


def ssh(repo: Path, cmd: str) -> str:
    res = subprocess.run([str(repo / "scripts/testhost"), "ssh", cmd], text=True,
                         capture_output=True, check=False)
    assert res.returncode == 0, f"in the guest: {cmd}: exit {res.returncode}: {res.stderr}"
    return res.stdout


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout


def ssh_config(path: Path) -> Path:
    """What `scripts/testhost ssh` uses (its key, the guest's known host keys), as an ssh
    configuration file for CVBENCH_SSH_CONFIG."""
    path.write_text(f"Host {GUEST_IP}\n"
                    f"  IdentityFile {CACHE / 'id_ed25519'}\n"
                    "  IdentitiesOnly yes\n"
                    f"  UserKnownHostsFile {CACHE / 'known_hosts'}\n"
                    "  StrictHostKeyChecking yes\n"
                    "  ConnectTimeout 5\n"
                    "  ServerAliveInterval 15\n")
    return path


def scenario(repo: Path, path: Path) -> Path:
    """The shipped scenario with the guest as the worker, 2 samples of 2 s runs."""
    text = (repo / "scenarios/overlay.toml").read_text()
    text = re.sub(r'(?m)^worker = "".*$', f'worker = "root@{GUEST_IP}"', text)
    text = re.sub(r"(?m)^advertise = \[\].*$", f'advertise = ["{HOST_IP}", "{GUEST_IP}"]',
                  text)
    text = re.sub(r"(?m)^(min_samples|max_samples) = \d+", r"\1 = 2", text)
    text = re.sub(r"(?m)^timeout = \d+", "timeout = 600", text)  # steps under TCG
    assert f'worker = "root@{GUEST_IP}"' in text and "max_samples = 2" in text
    path.write_text(text)
    return path


def nodes_seen(proc: subprocess.Popen[str]) -> dict[str, set[str]]:
    """While `proc` runs: per overlay service on this dockerd, the nodes `docker service
    ps` (raw output) showed a task of it running on."""
    seen: dict[str, set[str]] = {}
    while proc.poll() is None:
        try:
            names = _docker("service", "ls", "--format", "{{.Name}}").split()
        except subprocess.CalledProcessError:  # not a swarm manager (yet, or any more)
            names = []
        for name in filter(_OVERLAY_SERVICE.match, names):
            try:
                out = _docker("service", "ps", "--format", "{{.Node}}|{{.CurrentState}}",
                              name)
            except subprocess.CalledProcessError:  # removed meanwhile
                continue
            for line in out.splitlines():
                node, _, state = line.partition("|")
                if state.startswith("Running"):
                    seen.setdefault(name, set()).add(node)
        time.sleep(1)
    return seen


def connect_rtt(addr: str, port: int = 9, n: int = 20) -> float:
    """The fastest of `n` TCP connects to a closed port addr:port, timed here (s): a
    SYN and the RST the guest's kernel answers with. (Not sshd's port: OpenSSH 10's
    PerSourcePenalties takes connections that never authenticate for an attack and
    refuses this host's next ssh sessions.)"""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            with socket.create_connection((addr, port), timeout=5):
                raise AssertionError(f"something listens on {addr}:{port}")
        except ConnectionRefusedError:
            best = min(best, time.perf_counter() - t0)
    return best


def figures(result: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """path -> metric -> values, from the result's samples."""
    out: dict[str, dict[str, list[float]]] = {}
    for s in result["samples"]:
        path = str(s["sub"]).removeprefix("path=")
        out.setdefault(path, {}).setdefault(s["metric"], []).append(float(s["value"]))
    return out


def test_two_node_swarm_overlay_vs_plain(repo: Path, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    manager_before = json.loads(_docker("info", "--format", "{{json .Swarm}}"))
    with guest(repo, timings, setup="true"):
        assert ssh(repo, "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == \
            "inactive"
        worker_host = ssh(repo, "hostname").strip()
        cpuinfo = ssh(repo, "grep -m1 'model name' /proc/cpuinfo")
        virt = ssh(repo, "systemd-detect-virt --vm || true").strip()
        gwbridge_before = ssh(repo, "docker network ls -q --filter name=^docker_gwbridge$")
        env = {**os.environ, "CVBENCH_SSH_CONFIG": str(ssh_config(tmp_path / "ssh_config"))}
        t0 = time.monotonic()
        with subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "run",
                 str(scenario(repo, tmp_path / "overlay.toml")), "--backends",
                 "docker:swarm", "--out", str(tmp_path / "runs")],
                cwd=repo, env=env, text=True) as proc:
            seen = nodes_seen(proc)
        timings["bench run overlay"] = time.monotonic() - t0
        assert proc.returncode == 0
        rtt = connect_rtt(GUEST_IP)
        # afterwards: the guest in no swarm, nothing of the run's left on it
        assert ssh(repo, "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == \
            "inactive"
        assert ssh(repo, "docker network ls -q --filter name=^docker_gwbridge$") == \
            gwbridge_before
        assert ssh(repo, "docker ps -aq --filter label=cvbench.run").strip() == ""
        (res_path,) = [p for p in (tmp_path / "runs").glob("overlay-*.json")
                       if not p.name.endswith(".pyperf.json")]
        result = json.loads(res_path.read_text())
        ref = result["backends"]["docker:swarm"]["prepared"]["ref"]
        assert ssh(repo, f"docker image ls -q --no-trunc {ref}").strip() == ""
    manager_after = json.loads(_docker("info", "--format", "{{json .Swarm}}"))
    assert manager_after["LocalNodeState"] == manager_before["LocalNodeState"]
    if manager_after["LocalNodeState"] == "active":  # a swarm found here: the worker gone
        assert worker_host not in _docker("node", "ls", "--format", "{{.Hostname}}").split()
    dest = repo / "results/testhost/swarm-two-nodes.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(res_path, dest)
    f = figures(result)
    print(f"two-node swarm ({dest}): {json.dumps(f, indent=2)}\nseen: {seen}\n"
          f"TCP connect RTT to the guest: {rtt * 1e6:.0f} µs")
    # the replicas ran on both nodes, per docker service ps (one service per sample)
    assert len(seen) == 2, seen
    local = socket.gethostname()
    assert all(nodes == {local, worker_host} for nodes in seen.values()), seen
    for path in ("overlay", "plain"):
        for metric in ("overlay.lat_p50", "overlay.lat_p99", "overlay.bw"):
            values = f[path][metric]
            assert len(values) == 2 and all(v > 0 for v in values), f
    # sockperf's one-way latency on the plain path: half a TCP round trip through two
    # containers' user space; against a SYN/SYN-ACK timed here (the kernel's answer):
    # not below a quarter of half of it, not above a hundred times it (a unit's slip)
    p50 = sorted(f["plain"]["overlay.lat_p50"])[0]
    assert rtt / 8 <= p50 <= rtt * 100, (p50, rtt)
    extra = result["samples"][0]
    assert extra["worker_cpu"] == cpuinfo.split(":", 1)[1].strip()
    assert extra["worker_tcg"] == ("QEMU TCG CPU" in cpuinfo or virt == "qemu")
