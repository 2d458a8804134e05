"""`oci:crun`, `oci:runc`, `oci:runsc`, `oci:ns`: the same image as an OCI bundle, run by
that CLI (`oci:ns`: cvbench-ns, ns's own OCI command line, driven exactly as crun is).

The yardstick for `ns`: the same rootfs layout (an overlay of the shared image with a
per-instance upper layer on disk under the state dir, like ns's default and Docker's
overlay2), the same namespaces, limits and protections (ns's capability set, the same
seccomp profile resolved for it, no_new_privs, the device allow-list, masked and
read-only paths, rlimits, mount flags), written into a config.json generated from the
InstanceSpec, then `<cli> run`: the CLI stays the instance's parent (as containerd's
shim would) and exits with the workload's status. The CLI compiles the seccomp profile
itself, per container (runsc applies it only with --oci-seccomp, which it gets).

Mapping of the InstanceSpec:
  argv/env/workdir/hostname -> process.args = /bench/init + argv, env, cwd; hostname
  limits                    -> linux.resources (memory limit = memory+swap limit,
                               cpu quota/period 100 ms, pids limit); cgroupsPath
                               /cvbench.oci/cvbench-<run id>-<n>; rlimits ->
                               process.rlimits over ns's defaults
  network none | host       -> a network namespace (loopback only) | none;
                               bridge, macvlan, ipvlan are not offered (they need a
                               CNI-like set-up)
  mounts                    -> OCI mounts (rbind + rw, or rbind + rro: recursively
                               read-only; tmpfs nosuid,nodev,noexec with size)
  runsc                     -> --network=none (sandbox netstack off) --platform=ptrace
                               (this machine is a VM without working KVM), --oci-seccomp

Phases: create = bundle dir, overlay, config.json; start = spawn `<cli> run` (runc, ns:
`run --keep`, so the cgroup outlives the exit and an OOM kill can be read);
ready/exit as seen by the host; remove = `<cli> delete --force`, unmount, rm bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.core.errors import (
    BackendUnavailable,
    InstanceError,
    NotApplicable,
    UsageError,
)
from harness.core.image import PATH_ENV, Image
from harness.core.probes import memory
from harness.core.probes.disk import du_bytes
from runtimes import _oci_host, _proc
from runtimes._proc import PipedInstance
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    Availability,
    Exit,
    Hooks,
    Instance,
    InstanceSpec,
    Json,
    Leftover,
    Prepared,
    Stats,
    Traits,
    own,
    remove_each,
    rmtree,
    run_of,
    state_dir,
    uid_gid,
)
from runtimes.ns import cgroups, namespaces, seccomp
from runtimes.ns.config import DEVICE_RULES, MASKED_PATHS, READONLY_PATHS
from runtimes.ns.shared import (
    cgroup_parents,
    empty_dirs,
    protected_caps,
    protection_lines,
    refuse_upper_env,
    runner_rlimits,
    with_rlimits,
    writable_layer,
)

CGROUP_PARENT = "cvbench.oci"
FLAVOURS = ("crun", "runc", "runsc", "ns")


def cli_binary(flavour: str) -> str:
    """The CLI of `flavour`: crun, runc, runsc on PATH; for ns, cvbench-ns, this
    installation's own (beside the running interpreter: the code being measured), else
    the one on PATH (scripts/provision.d/27-cvbench-ns.sh installs it)."""
    if flavour == "ns":
        own = Path(sys.executable).parent / "cvbench-ns"
        return str(own) if own.is_file() else shutil.which("cvbench-ns") or ""
    return shutil.which(flavour) or ""


@dataclass(eq=False, slots=True)
class OciInstance(PipedInstance):
    """The `<cli> run` process is the instance's first process; `bundle` its directory."""

    bundle: Path | None = None


class OciRuntime:
    name = "oci"
    flavours: ClassVar[tuple[str, ...]] = FLAVOURS

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        refuse_upper_env()
        flavour = flavour or "crun"
        if flavour not in FLAVOURS:
            raise UsageError(f"unknown oci flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
        self.flavour = flavour
        self.name = f"oci:{flavour}"
        self.binary = cli_binary(flavour)
        self._cg: cgroups.Manager | None = None
        self.caps = protected_caps()
        self.rlimits = runner_rlimits()
        self._seccomp: seccomp.Profile | None = None

    def seccomp_profile(self) -> seccomp.Profile:
        """ns's profile, resolved for the same capabilities (read once)."""
        if self._seccomp is None:
            path = seccomp.find()
            if path is None:
                raise BackendUnavailable(self.name, "no seccomp profile",
                                         "make provision (scripts/provision.d/26-seccomp.sh)")
            self._seccomp = seccomp.load(path, self.caps)
        return self._seccomp

    @property
    def cg(self) -> cgroups.Manager:
        if self._cg is None:
            self._cg = cgroups.new(parent=CGROUP_PARENT, every_controller=True)
        return self._cg

    def root(self) -> Path:
        return state_dir() / "oci"

    @property
    def _cli_name(self) -> str:
        return Path(self.binary).name or self.flavour

    def _cli(self, network: str = "none") -> list[str]:
        """The CLI with its global options: its own state dir, under ours; for runsc the
        ptrace platform (no working KVM here) and the network mode (none: the sandbox's
        own network stack is off)."""
        cmd = [self.binary, "--root", str(self.root() / f"state-{self.flavour}")]
        if self.flavour == "runsc":
            cmd += [f"--network={'host' if network == 'host' else 'none'}",
                    _oci_host.RUNSC_PLATFORM, "--oci-seccomp"]
        return cmd

    # --- availability ------------------------------------------------------------------

    def availability(self) -> Availability:
        if not self.binary:
            if self.flavour == "ns":
                return Availability(ok=False, reason="cvbench-ns is not installed",
                                    fix="make venv (its console script), or make provision")
            return Availability(ok=False, reason=f"{self.flavour} is not installed",
                                fix=f"apt-get install {self.flavour} (scripts/provision)")
        versions = {Path(self.binary).name: _oci_host.version_line(self.binary)}
        if os.geteuid() != 0:
            return Availability(ok=False, reason=f"oci:{self.flavour} is run as root here",
                                fix="run bench as root", versions=versions)
        refusal = _oci_host.crun_refusal() if self.flavour == "crun" else None
        if refusal:
            return Availability(ok=False, versions=versions, reason=refusal[0], fix=refusal[1])
        try:
            profile = self.seccomp_profile()
        except BackendUnavailable as e:
            return Availability(ok=False, versions=versions, reason=e.reason, fix=e.fix)
        except UsageError as e:
            return Availability(ok=False, versions=versions, reason=str(e),
                                fix="fix or replace the file")
        return Availability(ok=True, versions=versions,
                            details={"seccomp": profile.describe()})

    def traits(self) -> Traits:
        settings: dict[str, Json] = {
            "cli": self._cli_name, "command": "run",
            "oom_detection": self.flavour in ("runc", "ns"),
            "cgroup_favordynmods": cgroups.favordynmods(),
            **writable_layer("disk", self.root())}
        if self.flavour == "runsc":
            settings.update(platform="ptrace", network="none (sandbox netstack off)")
        return Traits(kind="container", settings=settings, protections=(
            *protection_lines(self.rlimits, recursive_ro=True),
            "user namespace: no (root inside is root, as in Docker)",
            f"capabilities: {', '.join(self.caps)} (ns's set)",
            f"seccomp: {self.seccomp_profile().describe()}, compiled by {self._cli_name} per "
            "container" + (" (--oci-seccomp)" if self.flavour == "runsc" else ""),
            f"devices: linux.resources.devices: deny a; allow {', '.join(DEVICE_RULES)}",
            f"keyring: {self._cli_name}'s own (a new session keyring per container)"
            if self.flavour != "runsc" else "keyring: gVisor's (keyctl is emulated)",
        ))

    def prepare(self, image: Image) -> Prepared:
        self.root().mkdir(parents=True, exist_ok=True)
        return Prepared(image=image, backend=self.name, ref=str(image.rootfs),
                        footprint={"image": image.size})

    # --- the bundle --------------------------------------------------------------------

    def _config(self, spec: InstanceSpec) -> dict[str, Json]:
        caps = list(self.caps)
        env = {"PATH": PATH_ENV, "HOME": "/root", "HOSTNAME": spec.hostname,
               "CVBENCH_NONCE": spec.nonce, **spec.env}
        namespaces_ = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
        if spec.network == "none":
            namespaces_.append({"type": "network"})
        resources: dict[str, Json] = {}
        lim = spec.limits
        if lim.memory is not None:
            resources["memory"] = {"limit": lim.memory, "swap": lim.memory}
        if lim.cpus is not None:
            resources["cpu"] = {"quota": max(1000, int(lim.cpus * 100_000)),
                                "period": 100_000}
        if lim.pids is not None:
            resources["pids"] = {"limit": lim.pids}
        resources["devices"] = [{"allow": False, "access": "rwm"},
                                *(_device_rule(r) for r in DEVICE_RULES)]
        mounts: list[Json] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
        ]
        if spec.network == "none":
            mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                           "options": ["nosuid", "noexec", "nodev", "ro"]})
        for m in spec.mounts:
            if m.type == "tmpfs":
                opts = ["nosuid", "nodev", "noexec"] + ([f"size={m.size}"] if m.size else [])
                mounts.append({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                               "options": opts + (["ro"] if m.readonly else [])})
            else:
                src = m.source if m.type == "bind" else str(self.volume(spec.run_id,
                                                                        m.source or ""))
                # rro: read-only down every submount (runc 1.1, crun); runsc refuses the
                # option, and its own read-only bind covers the whole tree it serves.
                ro = "ro" if self.flavour == "runsc" else "rro"
                mounts.append({"destination": m.target, "type": "bind", "source": src,
                               "options": ["rbind", ro if m.readonly else "rw"]})
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": dict(zip(("uid", "gid"), uid_gid(spec.user), strict=True)),
                "args": ["/bench/init", *spec.argv],
                "env": [f"{k}={v}" for k, v in env.items()], "cwd": spec.workdir,
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "noNewPrivileges": True,
                "rlimits": [{"type": f"RLIMIT_{n.upper()}", "soft": _u64(s), "hard": _u64(h)}
                            for n, s, h in with_rlimits(self.rlimits, spec.limits.rlimits)],
            },
            "root": {"path": "rootfs", "readonly": False},
            "hostname": spec.hostname,
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces_,
                "resources": resources,
                "cgroupsPath": f"/{CGROUP_PARENT}/{spec.name}",
                "maskedPaths": list(MASKED_PATHS),
                "readonlyPaths": list(READONLY_PATHS),
                "seccomp": seccomp.oci(self.seccomp_profile()),
            },
        }

    def volume(self, run_id: str, name: str) -> Path:
        """A named volume: a directory kept for the run (gc removes it afterwards)."""
        path = self.root() / "volumes" / f"{PREFIX}{run_id}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _make_bundle(self, bundle: Path, image: Path) -> None:
        """bundle/{upper,work,rootfs}: an overlay of the image, as ns builds it (on disk,
        never `volatile`: fsync must stay real for I/O figures to mean anything)."""
        bundle.mkdir()
        for sub in ("upper", "work", "rootfs"):
            (bundle / sub).mkdir()
        namespaces.mount("overlay", str(bundle / "rootfs"), "overlay", 0,
                         f"lowerdir={image},upperdir={bundle}/upper,workdir={bundle}/work")

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        if spec.network not in ("none", "host"):
            raise NotApplicable(f"{self.name}: network {spec.network!r} is not offered; use "
                                "none or host")
        bundle = self.root() / spec.name
        inst = OciInstance(spec=spec, prepared=prepared, bundle=bundle)
        try:
            self._make_bundle(bundle, Path(prepared.ref))
            (bundle / "config.json").write_text(json.dumps(self._config(spec)))
        except BaseException:
            self.remove(inst)
            raise
        return inst

    def start(self, inst: Instance) -> None:
        inst = own(inst, OciInstance)
        spec = inst.spec
        # runc and cvbench-ns can keep the stopped container (and its cgroup, where an OOM
        # kill is counted) until remove; crun 1.8 and runsc cannot, so their OOM kills show
        # only as a SIGKILL (exit 137), and `oom_killed` stays False.
        keep = ["--keep"] if self.flavour in ("runc", "ns") else []
        cmd = [*self._cli(spec.network), "run", *keep, "--bundle", str(inst.bundle),
               spec.name]
        _proc.spawn(inst, cmd, {"PATH": PATH_ENV}, label=f"{self.name}: ")

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        return _proc.ready(inst, own(inst, OciInstance).streams()[0], timeout)

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        return _proc.output(own(inst, OciInstance), pattern, timeout)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        return _proc.exited(own(inst, OciInstance), timeout,
                            lambda: self.cg.oom_killed(inst.spec.name))

    def stats(self, inst: Instance) -> Stats:
        # The CLI process (crun/runc/runsc run) is the instance's shim: counted too.
        pid = own(inst, OciInstance).pid
        pids = sorted({*memory.descendants(pid), pid, *self.cg.pids(inst.spec.name)})
        m = memory.processes_memory(pids)
        return Stats(pids=tuple(pids), pss=m.pss, uss=m.uss, rss=m.rss,
                     cgroup=self.cg.memory_usage(inst.spec.name))

    def _cli_quiet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._cli(), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        inst = own(inst, OciInstance)
        if not inst.pid or inst.exited:
            return
        self._cli_quiet("kill", inst.spec.name, "TERM")
        if not _proc.readable(inst.pidfd, grace):
            self._cli_quiet("kill", inst.spec.name, "KILL")
            _proc.kill(inst.pid, inst.pidfd)  # the CLI itself, if it hangs
        with contextlib.suppress(ChildProcessError):
            os.waitpid(inst.pid, 0)
        inst.exited = True

    def daemons(self) -> dict[str, list[int]]:
        return {}  # daemonless: the CLI process is each instance's parent

    def address(self, inst: Instance) -> str | None:
        # none: a netns of its own with loopback only; host: the host's loopback
        return "127.0.0.1" if inst.spec.network == "host" else None

    def disk_usage(self, inst: Instance) -> int | None:
        bundle = own(inst, OciInstance).bundle
        if bundle is None or not (bundle / "upper").is_dir():
            return None
        return du_bytes(bundle / "upper")

    def remove(self, inst: Instance) -> None:
        self.stop(inst, grace=0)
        inst = own(inst, OciInstance)
        inst.release()
        # `run` deletes the container when it exits; this catches anything left.
        if inst.pid and (self.root() / f"state-{self.flavour}" / inst.spec.name).exists():
            self._cli_quiet("delete", "--force", inst.spec.name)
        if inst.bundle is not None:
            _remove_bundle(inst.bundle)
            inst.bundle = None

    # --- leftovers ---------------------------------------------------------------------

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        def dead(name: str) -> bool:
            return name.startswith(PREFIX) and run_of(name) not in live_runs

        found: list[Leftover] = []
        for flavour in FLAVOURS:
            sdir = self.root() / f"state-{flavour}"
            if sdir.is_dir():
                found += [Leftover(self.name, f"container ({flavour})", p.name,
                                   run_of(p.name)) for p in sorted(sdir.iterdir())
                          if dead(p.name)]
        found += [Leftover(self.name, "cgroup", n, run_of(n)) for n in self.cg.names()
                  if dead(n)]
        if self.root().is_dir():
            found += [Leftover(self.name, "bundle", str(p), run_of(p.name))
                      for p in sorted(self.root().iterdir()) if dead(p.name)]
        volumes = self.root() / "volumes"
        if volumes.is_dir():
            found += [Leftover(self.name, "dir", str(p), run_of(p.name))
                      for p in sorted(volumes.iterdir()) if dead(p.name)]
        if not live_runs:  # the CLIs' state dirs, shared by every run: when none is going
            found += [Leftover(self.name, "dir", str(d), None) for d in empty_dirs(
                *(self.root() / f"state-{f}" for f in FLAVOURS), volumes, self.root())]
            found += cgroup_parents(self.name, self.cg)
        return found

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        def remove(item: Leftover) -> bool | None:
            if item.kind.startswith("container"):
                flavour = item.kind.split("(")[1].rstrip(")")
                if cli_binary(flavour):
                    OciRuntime(flavour)._cli_quiet("delete", "--force", item.name)
                rmtree(self.root() / f"state-{flavour}" / item.name)
            elif item.kind == "cgroup":
                self.cg.kill(item.name)
                self.cg.destroy(item.name)
            elif item.kind in ("dir", "cgroup-parent") and item.run_id is None:
                try:  # shared by every run
                    os.rmdir(item.name)
                except OSError:  # in use again by another run, or not empty: left alone
                    return False
            elif item.kind == "dir":
                rmtree(item.name)
            else:
                _remove_bundle(Path(item.name))
            return None

        return remove_each(self.name, self.leftovers(live_runs), remove)


def _device_rule(rule: str) -> dict[str, Json]:
    """"c 1:3 rwm" as an OCI LinuxDeviceCgroup entry ("*" = any: the field left out)."""
    kind, numbers, access = rule.split()
    out: dict[str, Json] = {"allow": True, "type": kind, "access": access}
    for key, n in zip(("major", "minor"), numbers.split(":"), strict=True):
        if n != "*":
            out[key] = int(n)
    return out


def _u64(v: int) -> int:
    return 2**64 - 1 if v == resource.RLIM_INFINITY else v  # RLIM_INFINITY as OCI spells it


def _remove_bundle(bundle: Path) -> None:
    """Unmount the overlay (and a tmpfs under it, as bundles of older cvbench had),
    then delete the bundle."""
    for mnt in (bundle / "rootfs", bundle):
        if os.path.ismount(mnt):
            try:
                namespaces.umount2(str(mnt))
            except OSError:
                namespaces.umount2(str(mnt), namespaces.MNT_DETACH)
    shutil.rmtree(bundle, ignore_errors=True)
    if bundle.exists():
        raise InstanceError(f"oci: cannot remove {bundle}")


if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from runtimes.base import Runtime, RuntimeClass

    _instance: Runtime = OciRuntime()
    _class: RuntimeClass = OciRuntime
