"""`cvbench-ns update`, `pause`/`resume` and `events --stats`: a created container's
cgroup changed, frozen or read.

update takes linux.resources (--resources FILE, "-" for stdin, or runc's flags) and
writes them through the cgroup manager, refusing what oci_bundle refuses at create.
pause/resume: the cgroup v1 freezer (a cgroup named like the container's, which every
process of the container is moved into), or cgroup.freeze on v2; a marker file in the
state dir makes `state` say "paused" without reading the cgroup. events --stats: one
JSON object in runc's shape ({"type": "stats", "id", "data": {cpu, memory, pids}}) from
the cgroup's own counters, what `docker stats` reads through the shim."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from runtimes.ns import oci_bundle
from runtimes.ns.cgroups._common import write
from runtimes.ns.oci_cli import CliError, Usage, _cgroup, flag, state_dir, status, value

TYPE_CHECKING = False  # (typing costs each cvbench-ns call: only mypy reads these)
if TYPE_CHECKING:
    from typing import Any

FREEZER = Path("/sys/fs/cgroup/freezer")


def update(st: dict[str, Any], opts: dict[str, list[str]]) -> int:
    if status(st) == "stopped":
        raise CliError(f"container {st['id']} is not running")
    res: dict[str, Any] = {}
    if value(opts, "resources"):
        src = value(opts, "resources")
        try:
            res = json.loads(sys.stdin.read() if src == "-" else Path(src).read_text())
        except (OSError, ValueError) as e:
            raise Usage(f"update: --resources {src}: {e}") from None
    for flag_name, (section, key) in {"memory": ("memory", "limit"),
                                      "memory-swap": ("memory", "swap"),
                                      "cpu-quota": ("cpu", "quota"),
                                      "cpu-period": ("cpu", "period"),
                                      "pids-limit": ("pids", "limit")}.items():
        if value(opts, flag_name):
            res.setdefault(section, {})[key] = int(value(opts, flag_name))
    oci_bundle.WHERE = "update"
    limits = oci_bundle._limits({k: v for k, v in res.items() if k != "devices"})
    if res.get("devices"):
        raise oci_bundle.bad("devices", "cannot be changed by update in cvbench-ns")
    cg = _cgroup(st)
    d = cg.path(st["cgroup"]["name"])
    # The manager's create() writes limits into a new cgroup; an existing one takes the
    # same files, written here for each limit given (v1 or v2 names).
    v2 = cg.mode == "v2"
    if limits.memory is not None:
        if v2:
            write(d / "memory.max", str(limits.memory))
        else:
            mem = limits.memory
            swap = limits.swap if limits.swap is not None else mem
            memsw = d / "memory.memsw.limit_in_bytes"
            # raising: memsw first (it must stay >= the limit); lowering: the limit first
            order = [(memsw, swap), (d / "memory.limit_in_bytes", mem)]
            current = int((d / "memory.limit_in_bytes").read_text())
            for f, v in order if mem > current else reversed(order):
                if f.exists():
                    write(f, str(v))
    if limits.cpus is not None:
        quota = max(1000, int(limits.cpus * 100_000))
        if v2:
            write(d / "cpu.max", f"{quota} 100000")
        else:
            write(_hierarchy(cg, st, "cpu") / "cpu.cfs_quota_us", str(quota))
    if limits.pids is not None:
        write((d if v2 else _hierarchy(cg, st, "pids")) / "pids.max", str(limits.pids))
    return 0


def _hierarchy(cg: Any, st: dict[str, Any], controller: str) -> Path:
    """The container's cgroup directory in the v1 hierarchy of `controller`."""
    for procs in cg.join_files(st["cgroup"]["name"]):
        d = Path(procs).parent
        top = d.parents[len(Path(st["cgroup"]["parent"]).parts)].name
        if controller in top.split(","):
            return d
    raise CliError(f"no cgroup v1 {controller} hierarchy for {st['id']}")


def freeze(st: dict[str, Any], frozen: bool) -> int:
    stat = status(st)
    if frozen and stat != "running":
        raise CliError(f"cannot pause container {st['id']}: it is {stat}")
    if not frozen and stat != "paused":
        raise CliError(f"cannot resume container {st['id']}: it is {stat}")
    cg = _cgroup(st)
    name = st["cgroup"]["name"]
    if cg.mode == "v2":
        write(cg.path(name) / "cgroup.freeze", "1" if frozen else "0")
    else:
        d = FREEZER / st["cgroup"]["parent"] / name
        if frozen:
            d.mkdir(parents=True, exist_ok=True)
            for pid in cg.pids(name):  # (a process forked meanwhile: see the loop below)
                write(d / "cgroup.procs", str(pid))
            write(d / "freezer.state", "FROZEN")
            for pid in cg.pids(name):  # one forked before it froze joins and is frozen
                write(d / "cgroup.procs", str(pid))
        else:
            write(d / "freezer.state", "THAWED")
    marker = Path(state_dir(st["id"])) / "paused"
    if frozen:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)
    return 0


def stats(st: dict[str, Any]) -> dict[str, Any]:
    cg = _cgroup(st)
    name = st["cgroup"]["name"]
    data: dict[str, Any] = {"pids": {"current": len(cg.pids(name))}}
    usage = cg.memory_usage(name)
    mem: dict[str, Any] = {"usage": {"usage": usage or 0}}
    d = cg.path(name)
    if cg.mode == "v2":
        limit = (d / "memory.max").read_text().strip()
        mem["usage"]["limit"] = 2**64 - 1 if limit == "max" else int(limit)
        cpu_usage = _field(d / "cpu.stat", "usage_usec") * 1000
    else:
        mem["usage"]["limit"] = int((d / "memory.limit_in_bytes").read_text())
        mem["usage"]["max"] = int((d / "memory.max_usage_in_bytes").read_text())
        try:
            acct = _hierarchy(cg, st, "cpuacct")
            cpu_usage = int((acct / "cpuacct.usage").read_text())
        except (CliError, OSError):
            cpu_usage = 0
    mem["stats"] = {k: v for k, v in _pairs(d / "memory.stat").items()}
    data["memory"] = mem
    data["cpu"] = {"usage": {"total": cpu_usage}}
    return {"type": "stats", "id": st["id"], "data": data}


def _pairs(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


def _field(path: Path, key: str) -> int:
    return _pairs(path).get(key, 0)


def events(st: dict[str, Any], opts: dict[str, list[str]]) -> int:
    """--stats: one stats object; otherwise one per --interval (default 5 s) until the
    container stops (runc also reports OOM events there: not done here)."""
    interval = float(value(opts, "interval", "5s").rstrip("s") or 5)
    while True:
        if status(st) == "stopped":
            if flag(opts, "stats"):
                raise CliError(f"container {st['id']} is not running")
            return 0
        print(json.dumps(stats(st)), flush=True)
        if flag(opts, "stats"):
            return 0
        time.sleep(interval)
