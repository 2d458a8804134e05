"""`host`: the workload as a plain child process, no isolation. The floor.

Mapping of the InstanceSpec: argv and env as given; the image's own shell and tools run
from the unpacked rootfs (its /bin first on PATH), so the same binaries run as in every
other backend. Limits, network and mounts are NOT applied (there is nothing to apply
them with); the result metadata says so. The process is started with posix_spawn, which
glibc implements with clone(CLONE_VM|CLONE_VFORK): no copy of the interpreter is made.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from harness.core.image import Image
from harness.core.probes import memory
from harness.core.probes.disk import du_bytes
from runtimes import _proc
from runtimes._proc import PipedInstance
from runtimes.base import (
    NO_HOOKS,
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
)


class HostRuntime:
    """Runs /bench/init of the unpacked image directly on the host."""

    name = "host"
    flavours: ClassVar[tuple[str, ...]] = ()

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        pass

    def availability(self) -> Availability:
        return Availability(ok=True, versions={"kernel": platform.release()})

    def traits(self) -> Traits:
        return Traits(kind="process", not_applied=frozenset({"limits", "network", "mounts"}),
                      settings={"isolation": "none", "spawn": "posix_spawn",
                                "kernel": platform.release()})

    def prepare(self, image: Image) -> Prepared:
        # The workload runs from the unpacked rootfs: that is the image as stored here.
        return Prepared(image=image, backend=self.name, ref=str(image.rootfs),
                        footprint={"image": du_bytes(image.rootfs)})

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        # Nothing exists before start for a plain process; keep create honest and empty.
        return PipedInstance(spec=spec, prepared=prepared)

    def start(self, inst: Instance) -> None:
        inst = own(inst, PipedInstance)
        spec, root = inst.spec, inst.prepared.image.rootfs
        env = {"PATH": f"{root}/bin:{root}/usr/bin:{root}/sbin:{root}/usr/sbin",
               "HOME": "/root", "CVBENCH_NONCE": spec.nonce,
               # The instance name (cvbench-<run id>-<n>) lets gc find orphans of a killed run.
               "CVBENCH_INSTANCE": spec.name, **spec.env}
        _proc.spawn(inst, [f"{root}/bin/sh", f"{root}/bench/init", *spec.argv], env,
                    # Python ignores SIGPIPE/SIGXFSZ; the workload must get the defaults.
                    setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                    # Its own process group: stop() signals the group, so children the
                    # workload forked die with it instead of living on as orphans.
                    setpgroup=0)

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        return _proc.ready(inst, own(inst, PipedInstance).streams()[0], timeout)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        return _proc.exited(own(inst, PipedInstance), timeout)

    def stats(self, inst: Instance) -> Stats:
        pids = memory.descendants(own(inst, PipedInstance).pid)
        m = memory.processes_memory(pids)
        return Stats(pids=tuple(pids), pss=m.pss, uss=m.uss, rss=m.rss)

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        inst = own(inst, PipedInstance)
        if not inst.pid:
            return
        if not inst.exited:
            _proc.reap(inst.pid, inst.pidfd, grace, group=True)
            inst.exited = True
        # The workload may have exited and left children behind in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(inst.pid, signal.SIGKILL)

    def daemons(self) -> dict[str, list[int]]:
        return {}

    def disk_usage(self, inst: Instance) -> int | None:
        return None  # writes land wherever the workload puts them on the host

    def address(self, inst: Instance) -> str | None:
        return "127.0.0.1"  # a host process listens on the host's own loopback

    def remove(self, inst: Instance) -> None:
        self.stop(inst, grace=0)
        own(inst, PipedInstance).release()

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """Workload processes of dead runs (a SIGKILLed runner orphans its children)."""
        return [Leftover(self.name, "process", f"{pid} ({name})", run_id)
                for pid, name, run_id in _proc.tagged_processes()
                if run_id not in live_runs]

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        found = self.leftovers(live_runs)
        for item in found:
            _proc.kill(int(item.name.split()[0]), None)
        return found


if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from runtimes.base import Runtime, RuntimeClass

    _instance: Runtime = HostRuntime()
    _class: RuntimeClass = HostRuntime
