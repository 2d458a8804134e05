"""`host`: the workload as a plain child process, no isolation. The floor.

Mapping of the InstanceSpec: argv and env as given. With a recipe image (busybox and host
binaries), the image's own shell and tools run from the unpacked rootfs (its /bin first
on PATH), so the same binaries run as in every other backend. A real image (Debian,
archive, engine) brings its own libraries, which only resolve from its own root: the
workload runs chrooted (coreutils' chroot; `user` as --userspec) into a per-instance
overlay of the image, whose writable layer is <state>/host/<name>/upper, with /proc,
/sys and the host's /dev mounted in; no namespaces and no limits: the floor for the
same binaries. Those mounts are made in create (root only) and removed in remove;
`prepared.details.mode` says which way a run went.
Limits, network and mounts are NOT applied (there is nothing to apply them with); the
result metadata says so. The one exception is limits.cpuset: the process starts under
util-linux's `taskset -c` (its affinity, inherited by its children). Published ports do
not apply either (no network of its own: clients reach it on the host's). The process
is started with posix_spawn, which glibc implements with clone(CLONE_VM|CLONE_VFORK): no
copy of the interpreter is made.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.core import rootpath
from harness.core.errors import BackendUnavailable, InstanceError
from harness.core.image import PATH_ENV, Image
from harness.core.probes import memory
from harness.core.probes.disk import du_bytes
from runtimes import _proc
from runtimes._proc import PipedInstance
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    Availability,
    Exit,
    Hooks,
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Stats,
    Traits,
    own,
    remove_each,
    rmtree,
    run_of,
    state_dir,
)
from runtimes.ns import namespaces as ns

CHROOT_MODE = ("chroot into a per-instance overlay of the image, with /proc, /sys and the "
               "host's /dev mounted in (no namespaces, no limits)")


@dataclass(eq=False, slots=True)
class HostInstance(PipedInstance):
    """A host process; with a real image, `dir` holds its overlay (root, upper, work)."""

    dir: Path | None = None


def _root() -> Path:
    return state_dir() / "host"


def _mount_root(image_rootfs: Path, d: Path) -> None:
    """The instance's root: an overlay of the image (writes land in d/upper), /proc, /sys
    and the host's /dev (a recursive bind, made a slave first so that unmounting it
    later cannot propagate back to the host's /dev). These mounts are made in the host's
    own mount namespace: each target is resolved inside the root and mounted through its
    descriptor (rootpath), so an image whose `proc` is a symlink to /etc gets procfs on
    its own /etc, never on the host's."""
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True)
    root = str(d / "root")
    ns.mount("overlay", root, "overlay", 0,
             f"lowerdir={image_rootfs},upperdir={d}/upper,workdir={d}/work")
    root_fd = rootpath.open_root(root)
    try:
        for target, fstype, source, flags in (
                ("proc", "proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC),
                ("sys", "sysfs", "sysfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC),
                ("dev", None, "/dev", ns.MS_BIND | ns.MS_REC)):
            fd = rootpath.mkdirs(root_fd, target)
            try:
                ns.mount(source, rootpath.fd_path(fd), fstype, flags)
            finally:
                os.close(fd)
        fd = rootpath.lookup(root_fd, "dev")  # the bind itself, not the dentry below it
        try:
            ns.mount(None, rootpath.fd_path(fd), None, ns.MS_SLAVE | ns.MS_REC)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def _mkdirs_inside(root: Path, path: str) -> None:
    """mkdir -p `path` inside `root` as root (as Docker makes a missing WORKDIR), its
    symlinks resolved inside the root (rootpath)."""
    root_fd = rootpath.open_root(root)
    try:
        os.close(rootpath.mkdirs(root_fd, path))
    finally:
        os.close(root_fd)


def _unmount_all(d: Path) -> None:
    """Detach every mount at or below d/root (deepest first), then remove d (OSError if
    any of it is left: a mount that would not go keeps d busy)."""
    prefix = str(d / "root")
    targets = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].encode().decode("unicode_escape")
            if target == prefix or target.startswith(prefix + "/"):
                targets.append(target)
    for target in sorted(targets, key=len, reverse=True):
        with contextlib.suppress(OSError):  # (gone with its parent's lazy unmount)
            ns.umount2(target, ns.MNT_DETACH)
    rmtree(d)


class HostRuntime:
    """Runs /bench/init of the unpacked image directly on the host."""

    name = "host"
    flavours: ClassVar[tuple[str, ...]] = ()

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        pass

    def availability(self) -> Availability:
        return Availability(ok=True, versions={"kernel": platform.release()})

    def traits(self) -> Traits:
        return Traits(kind="process",
                      not_applied=frozenset({"limits.cpus", "limits.memory", "limits.pids",
                                             "limits.rlimits", "network", "mounts"}),
                      settings={"isolation": "none", "spawn": "posix_spawn",
                                "kernel": platform.release()})

    def prepare(self, image: Image) -> Prepared:
        # The workload runs from the unpacked rootfs: that is the image as stored here.
        chroot = image.recipe is None
        if chroot and (os.geteuid() != 0 or not shutil.which("chroot")):
            raise BackendUnavailable(self.name, f"{image.source.describe()} runs chrooted "
                                     "into its own root, which needs root and coreutils' "
                                     "chroot", "run as root")
        return Prepared(image=image, backend=self.name, ref=str(image.rootfs),
                        footprint={"image": du_bytes(image.rootfs)},
                        details={"mode": CHROOT_MODE if chroot else
                                 "the image's own shell and tools from its unpacked rootfs "
                                 "(the host's root, working directory and /etc)"})

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        # A plain process: nothing exists before start. A chroot: its root's mounts.
        inst = HostInstance(spec=spec, prepared=prepared)
        if prepared.image.recipe is None:
            inst.dir = _root() / spec.name
            try:
                _mount_root(prepared.image.rootfs, inst.dir)
                # Made here, inside the root, as Docker makes a WORKDIR: the init cannot
                # once the user is switched, nor through a symlink to a missing dir.
                _mkdirs_inside(inst.dir / "root", spec.workdir)
            except OSError as e:
                _unmount_all(inst.dir)
                raise InstanceError(f"host: cannot mount the root of {spec.name}: {e}") from e
        elif spec.user:
            raise InstanceError("host: a recipe image runs as the invoking user; "
                                f"user {spec.user} needs a real image (it is chrooted)")
        return inst

    def start(self, inst: Instance) -> None:
        inst = own(inst, HostInstance)
        spec, root = inst.spec, inst.prepared.image.rootfs
        # The instance name (cvbench-<run id>-<n>) lets gc find orphans of a killed run.
        env = {"CVBENCH_NONCE": spec.nonce, "CVBENCH_INSTANCE": spec.name}
        if inst.dir is not None:
            user = [f"--userspec={spec.user}"] if spec.user else []
            argv = [str(shutil.which("chroot")), *user, str(inst.dir / "root"), "/bench/init",
                    *spec.argv]
            env.update(PATH=PATH_ENV, HOME="/root", CVBENCH_WORKDIR=spec.workdir)
        else:
            argv = [f"{root}/bin/sh", f"{root}/bench/init", *spec.argv]
            env.update(PATH=f"{root}/bin:{root}/usr/bin:{root}/sbin:{root}/usr/sbin",
                       HOME="/root")
        if spec.limits.cpuset is not None:
            argv = [str(shutil.which("taskset")), "-c", spec.limits.cpuset, *argv]
        _proc.spawn(inst, argv, {**env, **spec.env},
                    # Python ignores SIGPIPE/SIGXFSZ; the workload must get the defaults.
                    setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                    # Its own process group: stop() signals the group, so children the
                    # workload forked die with it instead of living on as orphans.
                    setpgroup=0)

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        return _proc.ready(inst, own(inst, HostInstance).streams()[0], timeout)

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        return _proc.output(own(inst, HostInstance), pattern, timeout)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        return _proc.exited(own(inst, HostInstance), timeout)

    def stats(self, inst: Instance) -> Stats:
        pids = memory.descendants(own(inst, HostInstance).pid)
        m = memory.processes_memory(pids)
        return Stats(pids=tuple(pids), pss=m.pss, uss=m.uss, rss=m.rss)

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        inst = own(inst, HostInstance)
        if not inst.pid:
            return
        if not inst.exited:
            inst.stopped = _proc.reap(inst.pid, inst.pidfd, grace, group=True)
            inst.exited = True
        # The workload may have exited and left children behind in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(inst.pid, signal.SIGKILL)

    def daemons(self) -> dict[str, list[int]]:
        return {}

    def disk_usage(self, inst: Instance) -> int | None:
        # A plain process writes wherever it likes on the host; a chroot, in its upper dir.
        d = own(inst, HostInstance).dir
        return None if d is None else du_bytes(d / "upper")

    def address(self, inst: Instance) -> str | None:
        return "127.0.0.1"  # a host process listens on the host's own loopback

    def remove(self, inst: Instance) -> None:
        self.stop(inst, grace=0)
        inst = own(inst, HostInstance)
        inst.release()
        if inst.dir is not None:
            _unmount_all(inst.dir)
            inst.dir = None

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """Workload processes of dead runs (a SIGKILLed runner orphans its children),
        and the chroot roots they ran in."""
        found = [Leftover(self.name, "process", f"{pid} ({name})", run_id)
                 for pid, name, run_id in _proc.tagged_processes()
                 if run_id not in live_runs]
        if _root().is_dir():
            found += [Leftover(self.name, "dir", str(d), run_of(d.name))
                      for d in sorted(_root().iterdir())
                      if d.name.startswith(PREFIX) and run_of(d.name) not in live_runs]
        return found

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        def remove(item: Leftover) -> None:
            if item.kind == "process":
                _proc.kill(int(item.name.split()[0]), None)
            else:
                _unmount_all(Path(item.name))

        # processes first (leftovers() lists them first): they may still run in a root
        return remove_each(self.name, self.leftovers(live_runs), remove)


if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from runtimes.base import Runtime, RuntimeClass

    _instance: Runtime = HostRuntime()
    _class: RuntimeClass = HostRuntime
