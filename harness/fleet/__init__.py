"""Fleets: one scenario on many hosts through Ansible, driven with ansible-runner.

The work on the hosts is the playbook in fleet/ (usable with plain ansible-playbook); this
module prepares what it ships and runs it:

- prepare: a wheel of this tree (scenarios included) and, optionally, dependency wheels
  (`--wheelhouse`); the scenario's image exported as a file (`bench image export`: a
  recipe image built on another host would copy that host's binaries and get another
  digest), and the scenario with that file as its image;
- run: fleet/playbook.yml on the inventory's hosts, in parallel (or `serial` at a time);
  each host installs, provisions, imports the image and checks its digest, runs `bench
  run` as an async task, and its result files come back to results/fleet/<id>/<host>/;
- stop (Ctrl-C): Ansible's own process is killed, then fleet/stop.yml interrupts every
  host's `bench run` (an async task keeps running when the SSH session goes), runs `bench
  gc` there and fetches what was written; `resume` continues the hosts that did not
  finish, each with its own `bench run --resume`.

The fleet directory holds fleet.json (hosts and how each ended), vars.yml (the
playbook's variables: `ansible-playbook -i INVENTORY fleet/playbook.yml -e @vars.yml`
repeats the run by hand) and one directory per host with its result files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from harness import results, scenario
from harness.core import image as image_mod
from harness.core import provenance
from harness.core.errors import BenchError, UsageError

REPO = Path(__file__).resolve().parents[2]  # the checkout (when cvbench runs from one)
PLAYBOOKS = REPO / "fleet"
MANIFEST = results.FLEET_MANIFEST
VARS = "vars.yml"
# An inventory host name becomes a directory name here: no separators, no leading dot
HOST_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$")
FLEET_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{4}$")
OK, FAILED, INTERRUPTED, PENDING = "ok", "failed", "interrupted", "pending"


def cache() -> Path:
    return image_mod.cache_dir().parent / "fleet"


def new_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(2).hex()}"


def check_host_name(name: str, where: str) -> str:
    if not HOST_NAME.match(name) or ".." in name:
        raise UsageError(f"{where}: host {name!r}: a fleet host's name becomes a directory "
                         "name: letters, digits, '_', '.', '-', ':', '@' only")
    return name


# --- inventory -------------------------------------------------------------------------

def ansible_bin(name: str) -> str:
    """An Ansible program: next to this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise UsageError(f"{name} not found: bench fleet needs Ansible on this machine "
                         "(`make venv` installs it: pip install -e '.[fleet]')")
    return found


def hosts(inventory: Path, limit: str | None = None) -> list[str]:
    """The inventory's host names (those matching `limit`, an Ansible pattern), as
    Ansible reads the inventory (any format it takes), each checked as a directory name."""
    if not inventory.exists():
        raise UsageError(f"{inventory}: no such inventory")
    argv = [ansible_bin("ansible-inventory"), "-i", str(inventory), "--list",
            *(["--limit", limit] if limit else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True"})
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise UsageError(f"{inventory}: {why}")
    return names_of(json.loads(proc.stdout), str(inventory), limit)


def names_of(listing: Mapping[str, Any], where: str, limit: str | None = None) -> list[str]:
    """Host names in `ansible-inventory --list` output: every group's hosts, ungrouped
    included (hostvars list every host, but are empty for hosts without variables)."""
    found: set[str] = set()
    for group, body in listing.items():
        if group != "_meta" and isinstance(body, Mapping):
            found.update(str(h) for h in body.get("hosts", []))
    if not found:
        raise UsageError(f"{where}: no hosts" + (f" match --limit {limit}" if limit else ""))
    return [check_host_name(h, where) for h in sorted(found)]


# --- what the hosts get ------------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    """cvbench as shipped: a directory of wheels (its own, plus dependency wheels)."""

    key: str  # <commit>-<hash of the wheel's contents>: one virtualenv per key on a host
    wheels: Path
    wheel: str  # the file name of cvbench's own wheel
    commit: str
    dirty: bool


def wheel_digest(wheel: Path) -> str:
    """sha256 of the wheel's files (names and contents): the archive's own bytes carry
    build times, so two builds of one tree differ there and nowhere else."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            h.update(name.encode() + b"\0")
            h.update(hashlib.sha256(z.read(name)).digest())
    return h.hexdigest()


def build(wheelhouse: Path | None, say: Callable[[str], None]) -> Build:
    """A wheel of this tree (its commit recorded in it, as `pip wheel` does for any
    install) in a cache directory of its own, with the wheels of `wheelhouse` beside it."""
    state = provenance.git_state(REPO)
    if state is None or not (REPO / "pyproject.toml").exists():
        raise UsageError(f"{REPO}: bench fleet ships the checkout it runs from, and this "
                         "is not one (run it from a git checkout's venv: make venv)")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise UsageError(f"--wheelhouse {wheelhouse}: not a directory")
    say("building the wheel of this tree")
    base = cache() / "wheels"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "-w", tmp, str(REPO)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"pip wheel {REPO} failed: "
                             f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        (wheel,) = Path(tmp).glob("cvbench-*.whl")
        key = f"{state['commit'][:12]}-{wheel_digest(wheel)[:12]}"
        target = base / key
        if not target.is_dir():
            (Path(tmp) / "new").mkdir()
            shutil.copy2(wheel, Path(tmp) / "new" / wheel.name)
            os.rename(Path(tmp) / "new", target)
    for w in sorted(wheelhouse.glob("*.whl")) if wheelhouse else []:
        if not (target / w.name).exists():
            shutil.copy2(w, target / w.name)
    return Build(key, target, wheel.name, state["commit"], bool(state["dirty"]))


@dataclass(frozen=True)
class Shipped:
    """The scenario's image as a file, and the scenario rewritten to run that file."""

    file: Path
    digest: str  # what runs: the image + cvbench's init layer
    rootfs_digest: str  # the image as given
    scenario_toml: str


def ship_image(scen: scenario.Scenario, say: Callable[[str], None],
               sampling: Mapping[str, float] | None = None,
               archive: Path | None = None) -> Shipped:
    """Export the scenario's image (built or cached here) and give the scenario that
    file as its image: <digest>.tar, next to the scenario file on each host (a relative
    archive path is the scenario file's directory's). `sampling`: keys of the
    scenario's [sampling] to override (warmups, min_samples, max_samples, time_budget).
    `archive`: ship this image file (`bench image export` wrote it elsewhere) instead."""
    from harness import session

    if scen.services:
        raise UsageError(f"{scen.source}: a stack's services each have an image; bench "
                         "fleet ships one workload image (not stacks yet)")
    if archive is not None:
        if not archive.is_file():
            raise UsageError(f"--image {archive}: no such file")
        img = session.build_image(image_mod.Archive(str(archive.resolve())), say)
        out = archive.resolve()
    else:
        img = session.build_image(scen.workload.image, say)
        out = cache() / "images" / f"{img.digest}.tar"
    if not out.exists():
        say(f"exporting image {img.digest[:12]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        image_mod.export(img, tmp)
        os.replace(tmp, out)
    raw = dict(scen.raw)
    workload = dict(raw.get("workload", {}))
    workload["image"] = {"archive": f"{img.digest}.tar"}
    raw["workload"] = workload
    if sampling:
        raw["sampling"] = {**dict(raw.get("sampling", {})), **sampling}
    return Shipped(out, img.digest, img.rootfs_digest, to_toml(raw))


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML of a scenario's table: every key at the top, nested tables inline. JSON's
    strings, numbers, booleans and arrays are TOML's too (a string keeps its non-ASCII
    characters: JSON's surrogate-pair escapes are not TOML)."""
    def value(v: Any) -> str:
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{json.dumps(str(k))} = {value(x)}"
                                    for k, x in v.items()) + " }"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, float) and v != v:
            return "nan"
        return json.dumps(v, ensure_ascii=False)

    return "".join(f"{json.dumps(str(k))} = {value(v)}\n" for k, v in data.items())


# --- the fleet directory -----------------------------------------------------------------

@dataclass
class HostState:
    state: str = PENDING
    reason: str = ""
    stage: str = ""
    run_id: str = ""  # the host's own `bench run` id, once it has one


@dataclass
class Fleet:
    """results/fleet/<id>/: fleet.json, vars.yml and a directory per host."""

    id: str
    dir: Path
    inventory: str
    hosts: dict[str, HostState] = field(default_factory=dict)
    extravars: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        import yaml

        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {"fleet_id": self.id, "inventory": self.inventory,
               "scenario": self.extravars.get("cvbench_scenario_name"),
               "commit": self.extravars.get("cvbench_commit"),
               "image_digest": self.extravars.get("cvbench_image_digest"),
               "hosts": {h: vars(s) for h, s in sorted(self.hosts.items())}}
        tmp = self.dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.dir / MANIFEST)
        (self.dir / VARS).write_text(
            "# the playbook's variables of this fleet run: ansible-playbook -i INVENTORY "
            "fleet/playbook.yml -e @vars.yml\n" + yaml.safe_dump(self.extravars))

    def host_dir(self, host: str) -> Path:
        return self.dir / check_host_name(host, str(self.dir / MANIFEST))

    def failed(self) -> list[str]:
        return [h for h, s in self.hosts.items() if s.state != OK]


def open_fleet(base: Path, fleet_id: str) -> Fleet:
    """The fleet run `fleet_id` in `base` (to resume it)."""
    import yaml

    if not FLEET_ID.match(fleet_id):
        raise UsageError(f"--resume: {fleet_id!r} is not a fleet run id (such as "
                         f"{new_id()})")
    d = base / fleet_id
    try:
        doc = json.loads((d / MANIFEST).read_text())
        extravars = yaml.safe_load((d / VARS).read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UsageError(f"{d / MANIFEST}: not a fleet run ({e})") from None
    f = Fleet(fleet_id, d, str(doc.get("inventory", "")), extravars=dict(extravars))
    for h, s in dict(doc.get("hosts", {})).items():
        check_host_name(h, str(d / MANIFEST))
        f.hosts[h] = HostState(**{k: str(v) for k, v in s.items()
                                  if k in HostState.__dataclass_fields__})
    return f


def resume_point(host_dir: Path) -> str:
    """The run id to continue on a host from what came back of it: its newest run's
    journal (a run killed hard) or interrupted result; "" for a fresh run (nothing came
    back, or its newest run finished: `bench run --resume` would refuse it)."""
    newest: tuple[float, str] | None = None
    for p in host_dir.glob("*.journal") if host_dir.is_dir() else []:
        try:
            run_id = str(results.read_journal(p)[0].get("run_id", ""))
        except (BenchError, OSError, ValueError):
            continue
        newest = max(newest or (0.0, ""), (p.stat().st_mtime, run_id))
    for p in results.in_dir(host_dir) if host_dir.is_dir() else []:
        try:
            doc = results.load_result(p)
        except BenchError:
            continue
        newest = max(newest or (0.0, ""),
                     (p.stat().st_mtime, doc.run_id if doc.interrupted else ""))
    return newest[1] if newest else ""


def host_run_id(host_dir: Path) -> str:
    """The run id of the newest result file that came back, or ""."""
    found = [(p.stat().st_mtime, p) for p in host_dir.glob("*.json")
             if not p.name.endswith(".pyperf.json")] if host_dir.is_dir() else []
    for _, p in sorted(found, reverse=True):
        with contextlib.suppress(BenchError):
            return results.load_result(p).run_id
    return ""


# --- running the playbook ------------------------------------------------------------------

class FleetReporter(Protocol):
    """What a fleet run tells the user: each host's stage as it moves, and lines."""

    def host(self, host: str, stage: str) -> None: ...

    def info(self, text: str) -> None: ...


# task name -> the stage a host is in (the playbook's task names start with these)
STAGES = ("Check", "Install", "Provision", "Image", "Run", "Wait", "Fetch", "Stop", "Clean",
          "Done")


def _reason(res: Mapping[str, Any]) -> str:
    """One line from a failed task's result: a command's last line of output and its exit
    status (not Ansible's "non-zero return code"), else the task's message."""
    def last(text: Any) -> str:
        lines = [x.strip() for x in str(text or "").splitlines() if x.strip()]
        return lines[-1][:300] if lines else ""

    if res.get("rc") not in (None, 0):
        said = last(res.get("stderr")) or last(res.get("stdout"))
        if said:
            return f"{said} (exit {res['rc']})"
    return last(res.get("msg")) or last(res.get("module_stderr")) or "failed"


@dataclass
class _Tracker:
    """Follows ansible-runner's events: the stage of each host, how it ended."""

    fleet: Fleet
    progress: FleetReporter
    done_task: str = "Done"
    jobs: dict[str, str] = field(default_factory=dict)  # host -> async job id
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: Mapping[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host = str(data.get("host") or "")
        kind = str(event.get("event", ""))
        if host not in self.fleet.hosts:
            return True
        task = str(data.get("task") or "")
        res = data.get("res") or {}
        with self.lock:
            s = self.fleet.hosts[host]
            if kind == "runner_on_start":
                s.stage = task
                self.progress.host(host, task)
            elif kind == "runner_retry":
                # the host's `bench run` is still going: one more poll of the async task
                self.progress.host(host, f"{task} (poll {res.get('attempts', '?')})")
            elif kind == "runner_on_ok":
                if res.get("ansible_job_id"):
                    self.jobs[host] = str(res["ansible_job_id"])
                if self.done_task and task.startswith(self.done_task):
                    s.state, s.reason = OK, ""
                    self.progress.host(host, "done")
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                s.state, s.reason = FAILED, f"{task}: {_reason(res)}"
                self.progress.host(host, f"failed: {s.reason}")
            elif kind == "runner_on_unreachable":
                s.state, s.reason = FAILED, f"unreachable: {_reason(res)}"
                self.progress.host(host, f"failed: {s.reason}")
        return True


@contextlib.contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C (and SIGTERM) set an event instead of raising: the fleet then stops its
    hosts' runs before it returns."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def playbook(name: str, inventory: str, hosts_: list[str], extravars: Mapping[str, Any],
             forks: int, tracker: Callable[[Mapping[str, Any]], bool],
             cancel: Callable[[], bool] | None = None) -> tuple[str, str]:
    """Run fleet/`name` with ansible-runner on `hosts_`: its status ("successful",
    "failed", "canceled", ...) and the last line of Ansible's output (why it ended, when
    no host's event says)."""
    import ansible_runner

    bindir = str(Path(ansible_bin("ansible-playbook")).parent)
    with tempfile.TemporaryDirectory(prefix="cvbench-fleet-") as private:
        thread, r = ansible_runner.run_async(
            private_data_dir=private, project_dir=str(PLAYBOOKS), playbook=name,
            inventory=str(Path(inventory).resolve()), limit=",".join(hosts_),
            extravars=dict(extravars), forks=max(1, forks), quiet=True,
            event_handler=tracker, cancel_callback=cancel,
            envvars={
                # ansible-playbook of this venv (ansible-runner runs the one on PATH)
                "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                # ansible-runner turns host key checking off unless told: keep Ansible's
                "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING",
                                                            "True"),
                "ANSIBLE_NOCOLOR": "1"})
        thread.join()
        out = Path(r.config.artifact_dir, "stdout")
        lines = [x.strip() for x in out.read_text(errors="replace").splitlines()
                 if x.strip()] if out.exists() else []
        return str(r.status), lines[-1][:300] if lines else ""


def run(fleet: Fleet, forks: int, progress: FleetReporter) -> bool:
    """Run the playbook on the fleet's unfinished hosts; on Ctrl-C stop them (stop.yml:
    interrupt `bench run`, `bench gc`, fetch). Saves fleet.json; True if interrupted."""
    todo = [h for h, s in fleet.hosts.items() if s.state != OK]
    resume_ids = {h: resume_point(fleet.host_dir(h)) for h in todo}
    tracker = _Tracker(fleet, progress)
    for h in todo:
        fleet.hosts[h] = HostState(stage="waiting")
        progress.host(h, "waiting")
    fleet.save()
    with _interruptible() as stop:
        status, last = playbook("playbook.yml", fleet.inventory, todo,
                          {**fleet.extravars, "cvbench_resume_ids": resume_ids},
                          forks, tracker, cancel=stop.is_set)
        interrupted = stop.is_set() or status == "canceled"
        if interrupted:
            # the hosts still going (a failed host stays failed, with its own reason)
            stopping = [h for h in todo if fleet.hosts[h].state == PENDING]
            progress.info(f"interrupted: stopping the runs on {', '.join(stopping)} "
                          "(bench run interrupted, bench gc, results fetched)")
            for h in stopping:
                fleet.hosts[h].state = INTERRUPTED
                fleet.hosts[h].reason = f"interrupted during {fleet.hosts[h].stage}"
            if stopping:
                playbook("stop.yml", fleet.inventory, stopping,
                         {**fleet.extravars, "cvbench_jobs": tracker.jobs},
                         forks, _keep_state(fleet, progress))
    for h in todo:
        fleet.hosts[h].run_id = host_run_id(fleet.host_dir(h))
        if fleet.hosts[h].state == PENDING:  # the play ended without a word on it
            fleet.hosts[h].state = FAILED
            fleet.hosts[h].reason = f"did not finish (ansible-playbook {status}: {last})"
    fleet.save()
    return interrupted


def _keep_state(fleet: Fleet, progress: FleetReporter) -> Callable[[Mapping[str, Any]], bool]:
    """Stop.yml's events shown as progress; a host's failure there is added to its
    reason, and its state stays interrupted (resume continues it)."""
    def handle(event: Mapping[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host = str(data.get("host") or "")
        if host in fleet.hosts:
            kind = str(event.get("event", ""))
            if kind == "runner_on_start":
                progress.host(host, str(data.get("task") or ""))
            elif kind in ("runner_on_failed", "runner_on_unreachable"):
                s = fleet.hosts[host]
                s.reason += f"; stopping: {data.get('task')}: {_reason(data.get('res') or {})}"
                progress.host(host, f"stopping failed: {s.reason}")
        return True

    return handle


def gc(inventory: str, hosts_: list[str], extravars: Mapping[str, Any],
       progress: FleetReporter) -> dict[str, str]:
    """`bench gc` on every host (fleet/gc.yml): host -> "" or why it failed."""
    f = Fleet("gc", Path(tempfile.gettempdir()), inventory,
              {h: HostState() for h in hosts_})
    playbook("gc.yml", inventory, hosts_, extravars, len(hosts_),
             _Tracker(f, progress, done_task="Clean up - bench gc"))
    return {h: ("" if s.state == OK else s.reason or "did not finish")
            for h, s in f.hosts.items()}


def extravars(fleet_id: str, out: Path, b: Build, shipped: Shipped,
              scen: scenario.Scenario, backends: str | None, serial: int) -> dict[str, Any]:
    """The playbook's variables (fleet/roles/cvbench/defaults/main.yml says each)."""
    return {"cvbench_fleet_id": fleet_id, "cvbench_fetch_dir": str(out.resolve()),
            "cvbench_build": b.key, "cvbench_wheels": str(b.wheels), "cvbench_wheel": b.wheel,
            "cvbench_commit": b.commit, "cvbench_src": str(REPO),
            "cvbench_image_file": str(shipped.file), "cvbench_image_digest": shipped.digest,
            "cvbench_image_rootfs_digest": shipped.rootfs_digest,
            "cvbench_scenario_name": scen.name, "cvbench_scenario_toml": shipped.scenario_toml,
            "cvbench_backends": backends or "", "cvbench_serial": serial,
            "cvbench_started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
