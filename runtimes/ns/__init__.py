"""`ns`: the project's own namespace/cgroup container runtime.

Laid out like runc's libcontainer: config.py (pure data) · validate.py (checks before
acting) · namespaces.py (system calls) · rootfs.py (overlay, pivot_root, /proc, /dev) ·
cgroups/ (Manager protocol, v1.py, v2.py, new() picks by host) · process.py (clone, sync
over pipes) · network.py · security.py (capabilities, no_new_privs).

Mapping of the InstanceSpec:
  argv/env/workdir/hostname  -> execve of /bench/init in the new root, as given
  limits                     -> the instance's cgroup (see cgroups/v1.py and v2.py)
  network none | host        -> a private netns with loopback up | the host's netns
  mounts bind | volume | tmpfs -> bind mount (ro by remount) | bind of
                                <state>/volumes/<name> | tmpfs with size
  readiness                  -> the ready line read from the stdout pipe

Phases: create = cgroup + instance dirs + clone + whole set-up up to the exec;
start = release the exec; remove = kill what is left, rmdir the cgroup, delete the dirs.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import InstanceError
from harness.image import Image
from harness.probes import memory
from runtimes import _proc
from runtimes.base import (
    PREFIX,
    Availability,
    Exit,
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Stats,
    state_dir,
)
from runtimes.ns import cgroups, namespaces, process, rootfs, validate
from runtimes.ns.config import BASE_FLAGS, ContainerConfig, MountPoint

SETUP_TIMEOUT = 30.0


def _run_of(name: str) -> str | None:
    parts = name.split("-")
    return parts[1] if len(parts) >= 3 and name.startswith(PREFIX) else None


class NsRuntime:
    name = "ns"
    flavours: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._cg: cgroups.Manager | None = None

    @property
    def cg(self) -> cgroups.Manager:
        if self._cg is None:
            self._cg = cgroups.new()
        return self._cg

    def root(self) -> Path:
        return state_dir() / "ns"

    def availability(self) -> Availability:
        reason = validate.host_problem(self.cg)
        versions = {"kernel": platform.release(), "cgroup": self.cg.mode}
        if reason:
            return Availability(ok=False, reason=reason[0], fix=reason[1], versions=versions)
        return Availability(ok=True, versions=versions)

    def metadata(self) -> dict[str, Any]:
        return {"kind": "container", "cgroup": self.cg.mode, "kernel": platform.release(),
                "start": "clone+exec",
                "rootfs": "overlay", "capabilities": "docker default set",
                "no_new_privs": True}

    def prepare(self, image: Image) -> Prepared:
        # The unpacked image is the shared read-only lower layer; nothing to copy per run.
        return Prepared(image=image, backend=self.name, ref=str(image.rootfs),
                        footprint={"image": _du(image.rootfs)})

    def _config(self, spec: InstanceSpec, lower: str, idir: Path) -> ContainerConfig:
        flags = BASE_FLAGS
        if spec.network == "none":
            flags |= namespaces.CLONE_NEWNET
        mounts = list(rootfs.standard_mounts(new_netns=spec.network == "none"))
        for m in spec.mounts:
            target = m.target.lstrip("/")
            if m.type == "tmpfs":
                data = f"size={m.size}" if m.size else None
                flags_m = rootfs.PROC_FLAGS & ~namespaces.MS_NOEXEC
                mounts.append(MountPoint("tmpfs", target, "tmpfs",
                                         flags_m | (namespaces.MS_RDONLY if m.readonly else 0),
                                         data))
            else:
                src = m.source if m.type == "bind" else str(self.volume(m.source or ""))
                mounts.append(MountPoint(src, target, None, namespaces.MS_BIND | namespaces.MS_REC,
                                         readonly_remount=m.readonly))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "HOSTNAME": spec.hostname, "CVBENCH_NONCE": spec.nonce,
               **spec.env}
        return ContainerConfig(
            name=spec.name, lower=lower, upper=str(idir / "upper"), work=str(idir / "work"),
            merged=str(idir / "merged"), argv=("/bench/init", *spec.argv),
            env=tuple(f"{k}={v}" for k, v in env.items()), hostname=spec.hostname,
            workdir=spec.workdir, clone_flags=flags,
            cgroup_join=tuple(self.cg.join_files(spec.name)),
            new_cgroupns=os.path.exists("/proc/self/ns/cgroup"),
            mounts=tuple(mounts), loopback_up=spec.network == "none")

    def volume(self, name: str) -> Path:
        """A named volume: a directory the harness owns, kept across instances."""
        path = state_dir() / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        validate.spec(spec)
        idir = self.root() / spec.name
        for sub in ("upper", "work", "merged"):
            (idir / sub).mkdir(parents=True)
        inst = Instance(spec=spec, prepared=prepared, state={"dir": idir})
        try:
            self.cg.create(spec.name, spec.limits)
            inst.state["cgroup"] = True
            cfg = self._config(spec, prepared.ref, idir)
            out_r, out_w = _proc.open_pipe()
            err_r, err_w = _proc.open_pipe()
            inst.state.update(out=_proc.Stream(out_r, spec.capture),
                              err=_proc.Stream(err_r, spec.capture))
            try:
                child = process.spawn(cfg, out_w, err_w, SETUP_TIMEOUT)
            finally:
                os.close(out_w)
                os.close(err_w)
        except BaseException:
            self.remove(inst)
            raise
        inst.handle = child
        inst.pids = [child.pid]
        return inst

    def start(self, inst: Instance) -> None:
        try:
            process.release(inst.handle, SETUP_TIMEOUT)
        except InstanceError as e:
            err = inst.state["err"]
            raise InstanceError(f"{e} {bytes(err.data[-300:])!r}") from None

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        inst.ready_ns = _proc.wait_line(inst.state["out"], inst.spec.ready_line,
                                        time.monotonic() + timeout)
        return inst.ready_ns

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        child: process.Child = inst.handle
        out, err = inst.state["out"], inst.state["err"]
        code, t = _proc.wait_pid(child.pid, child.pidfd, [out, err], timeout)
        inst.state["exited"] = True
        return Exit(code=code, t_ns=t, oom_killed=self.cg.oom_killed(inst.spec.name),
                    stdout=bytes(out.data), stderr=bytes(err.data))

    def stats(self, inst: Instance) -> Stats:
        pids = self.cg.pids(inst.spec.name)
        m = memory.processes_memory(pids)
        return Stats(pids=tuple(pids), pss=m.pss, uss=m.uss, rss=m.rss,
                     cgroup=self.cg.memory_usage(inst.spec.name))

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        child: process.Child | None = inst.handle
        if child is None or inst.state.get("exited"):
            return
        if child.go_w >= 0:  # created, never started
            process.abort(child)
        else:
            # PID 1 of a pid namespace ignores SIGTERM unless it handles it; SIGKILL follows.
            _proc.reap(child.pid, child.pidfd, grace)
        inst.state["exited"] = True

    def daemons(self) -> dict[str, list[int]]:
        return {}  # no daemon: the runner is the parent of every instance

    def disk_usage(self, inst: Instance) -> int | None:
        idir: Path | None = inst.state.get("dir")
        return _du(idir / "upper") if idir is not None else None

    def remove(self, inst: Instance) -> None:
        self.stop(inst, grace=0)
        child: process.Child | None = inst.handle
        if child is not None and child.pidfd >= 0:
            os.close(child.pidfd)
            child.pidfd = -1
        for key in ("out", "err"):
            if key in inst.state:
                inst.state[key].close()
        if inst.state.pop("cgroup", False):
            self.cg.destroy(inst.spec.name)
        idir: Path | None = inst.state.pop("dir", None)
        if idir is not None:
            _rmtree(idir)

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        found = [Leftover(self.name, "cgroup", n, _run_of(n)) for n in self.cg.names()
                 if n.startswith(PREFIX) and _run_of(n) not in live_runs]
        if self.root().is_dir():
            found += [Leftover(self.name, "dir", str(p), _run_of(p.name))
                      for p in sorted(self.root().iterdir())
                      if p.name.startswith(PREFIX) and _run_of(p.name) not in live_runs]
        return found

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        found = self.leftovers(live_runs)
        for item in found:
            if item.kind == "cgroup":
                self.cg.kill(item.name)
                self.cg.destroy(item.name)
            else:
                _rmtree(Path(item.name))
        return found


def _rmtree(path: Path) -> None:
    # The overlay's work dir holds a root-only "work" subdir; rmtree copes as root.
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise InstanceError(f"ns: cannot remove {path}")


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512
    return total
