"""`ns:pool`: ns with a pool of prepared instances, as SOCK (ATC'18) keeps sandboxes.

A slot is an ns instance made by the very code a cold one is (`NsRuntime._create`),
ahead of the request: its namespaces (mount, pid, uts, ipc, net, cgroup), its cgroup
with the spec's limits, its veth and address on ns's bridge (network "bridge"), its
overlay root entered with pivot_root, its workdir made; its first process has joined
the cgroup, is confined with every protection of a cold instance that does not depend
on the user (process.confine: session keyring, rlimits, bounding set, no_new_privs,
umask, descriptors closed; and the seccomp filter) and waits on its go pipe
(`ContainerConfig.pooled`, process.child_main) as a small static program, the slot
waiter (slot_waiter.c, built with gcc by `waiter()` before any timing, once a source):
the interpreter's address space the slot was cloned with (the fork server's, ~8 MiB)
is torn down when the slot is made, no longer by the workload's exec on the timed path.
Taking a slot (`create`, for a spec that differs from the pool's only in what each
instance brings itself: _pool_part) gives the instance's spec to it; `start` hands the
waiter the instance's argv, environment (its nonce), workdir (the slot's, checked) and
user (config.HANDED_OVER), after which it switches to the user (what
process.become_user does for a cold instance: groups, gid, uid, or root's capability
set) and execs /bench/init. A slot is used once. When none is ready, `create` makes a
cold instance (`Instance.warm` "cold").

A background thread refills the pool to its size. Refill policy: a slot taken is
replaced once the request it served is over: its instance is up (wait_ready returned,
ready or not) or has exited (wait_exit), its start failed, or it was removed; not the
moment it is taken. Making a slot (the runner's thread with the interpreter's lock, the
fork server's clone, the new child's mounts on the other CPU) would otherwise compete
with the very request→ready path the pool is there to shorten, as serverless pools
refill off the request's path. A slot whose instance is never awaited is replaced at
its removal. `fill` from empty (the refill rate) is unaffected; a burst of requests
(the warm study's) still has the refill run beside its later requests.

A slot's resources are named `cvbench-<run id>-slot<hex>` (cgroup, instance dir, veth
alias, lease), like any ns instance's, so `leftovers()`/`gc()` of a dead run find
them; its processes die with the runner (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core import record
from harness.core.errors import BackendUnavailable, InstanceError, UsageError
from harness.core.image import Image
from runtimes import _proc
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
    Slot,
    Traits,
    check_networks,
)
from runtimes.ns import process, validate
from runtimes.ns.config import ContainerConfig
from runtimes.ns.runtime import _SERVER, SETUP_TIMEOUT, NsInstance, NsRuntime, _handed_over

WAITER_SOURCE = Path(__file__).with_name("slot_waiter.c")


def waiter(root: Path) -> str:
    """The slot waiter, built from WAITER_SOURCE (static, so that it runs in any image's
    root) into `root` once per source (its sha256 in the name); its path.
    BackendUnavailable without gcc or when it does not build."""
    src = WAITER_SOURCE.read_bytes()
    out = root / f"slot-waiter-{hashlib.sha256(src).hexdigest()[:16]}"
    if out.is_file():
        return str(out)
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BackendUnavailable("ns:pool", f"gcc is not installed: it builds the slots' "
                                 f"waiter ({WAITER_SOURCE.name})", "make provision")
    root.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    res = subprocess.run([gcc, "-static", "-O2", "-o", str(tmp), "-x", "c", "-"], input=src,
                         capture_output=True, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BackendUnavailable("ns:pool", f"cannot build the slots' waiter: "
                                 f"{res.stderr.decode(errors='replace')[-300:]}",
                                 "gcc -static needs the C library's static archive "
                                 "(libc6-dev)")
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return str(out)


# A failed slot is tried again after this long, doubling up to MAX_BACKOFF: a spec that
# cannot be run must not spin the refill thread (create then fails cold, with the reason).
BACKOFF, MAX_BACKOFF = 0.5, 30.0


def _pool_part(spec: InstanceSpec) -> InstanceSpec:
    """What a slot is made for: the spec without what each instance brings itself (its
    name, nonce, argv, env, user, kept output, readiness and published ports, published
    when the slot is taken). The workdir is the slot's: made and entered by its set-up
    (rootfs.setup, resolved inside the root as a cold instance's), not by its waiter."""
    return dataclasses.replace(spec, name="", nonce="", argv=(), env={}, user="",
                               capture=False, readiness="marker", publish=())


def namespaces_held(pid: int) -> int | None:
    """How many namespaces process `pid` holds that the runner is not in (the kernel's
    /proc/PID/ns links; the *_for_children ones are the same namespaces again)."""
    try:
        entries = [e for e in os.listdir(f"/proc/{pid}/ns") if not e.endswith("_for_children")]
        return sum(os.stat(f"/proc/{pid}/ns/{e}").st_ino != os.stat(f"/proc/self/ns/{e}").st_ino
                   for e in entries)
    except OSError:
        return None


class NsPoolRuntime(NsRuntime):
    """`ns:pool` (see the module's docstring). `error`: why the last slot could not be
    made (None once one was)."""

    def __init__(self, flavour: str | None = "pool", *, hooks: Hooks = NO_HOOKS) -> None:
        super().__init__(flavour, hooks=hooks)
        self._cond = threading.Condition()
        self._want: tuple[InstanceSpec, Prepared] | None = None
        self._want_part: InstanceSpec | None = None  # _pool_part of _want's spec
        self._size = 0
        self._idle: collections.deque[NsInstance] = collections.deque()
        self._taken: set[str] = set()  # keys of slots taken, their request not yet served
        self._gen = 0  # a fill or drain starts a new generation; older threads end
        self._thread: threading.Thread | None = None
        self._waiter = ""  # the slot waiter's path (prepare, fill)
        self.error: str | None = None

    def traits(self) -> Traits:
        t = super().traits()
        return dataclasses.replace(t, settings={
            **t.settings,
            "start": "a slot of a pool made ahead (namespaces, cgroup with the limits, "
                     "veth and address, overlay root; its first process confined with "
                     "ns's protections but the user's switch, waiting in its cgroup as "
                     "a small static program), handed argv, env, workdir and user, then "
                     "the user's switch and exec; refilled once a request is served; a "
                     "cold clone when the pool is empty"})

    def prepare(self, image: Image) -> Prepared:
        prepared = super().prepare(image)
        self._waiter = waiter(self.root())  # before any timing
        return prepared

    def availability(self) -> Availability:
        av = super().availability()
        if av.ok and shutil.which("gcc") is None:
            return dataclasses.replace(av, ok=False, reason=f"gcc is not installed: it "
                                       f"builds the slots' waiter ({WAITER_SOURCE.name})",
                                       fix="make provision")
        return av

    def _config(self, spec: InstanceSpec, lower: str, idir: Path | None,
                hosts: Path | None = None, key: str = "",
                pooled: bool = False) -> ContainerConfig:
        cfg = super()._config(spec, lower, idir, hosts, key, pooled)
        return record.replace(cfg, waiter=self._waiter) if pooled else cfg

    # --- Pool ----------------------------------------------------------------------------

    def fill(self, spec: InstanceSpec, prepared: Prepared, size: int) -> None:
        validate.spec(spec, self.rootless)
        if size < 0:
            raise UsageError(f"{self.name}: pool size {size} must be 0 or more")
        # On the caller's thread: the fork server's and every slot's PR_SET_PDEATHSIG
        # follow the thread that started the server, and the refill thread ends. What
        # is made lazily (the cgroup manager, the seccomp program) is made here too, not
        # by two threads at once.
        _SERVER.start()
        if self.limits_applied:
            self.cg.setup()
        self._program()
        self._waiter = waiter(self.root())
        self.drain()
        if size == 0:
            return
        with self._cond:
            self._want, self._size, self.error = (spec, prepared), size, None
            self._want_part = _pool_part(spec)
            gen = self._gen
        self._thread = threading.Thread(target=self._refill, args=(gen,), daemon=True,
                                        name=f"{self.name} refill")
        self._thread.start()

    def ready(self) -> int:
        with self._cond:
            return len(self._idle)

    def slots(self) -> list[Slot]:
        with self._cond:
            idle = list(self._idle)
        out = []
        for s in idle:
            assert s.child is not None
            pids = self.cg.pids(s.key) if s.cgroup else [s.child.pid]
            out.append(Slot(pids=tuple(pids),
                            cgroup=str(self.cg.path(s.key)) if s.cgroup else None,
                            namespaces=namespaces_held(s.child.pid),
                            details={"name": s.key, "address": s.address}))
        return out

    def drain(self) -> None:
        with self._cond:
            self._gen += 1
            self._want, self._size = None, 0
            idle = list(self._idle)
            self._idle.clear()
            self._taken.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()  # it removes the slot it was making itself
            self._thread = None
        for slot in idle:
            self.remove(slot)

    def _refill(self, gen: int) -> None:
        backoff = BACKOFF
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._gen != gen or
                                    len(self._idle) + len(self._taken) < self._size)
                if self._gen != gen or self._want is None:
                    return
                spec, prepared = self._want
            try:
                slot = self._make_slot(spec, prepared)
            except Exception as e:
                with self._cond:
                    self.error = str(e)
                    self._cond.wait_for(lambda: self._gen != gen, timeout=backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
                continue
            backoff = BACKOFF
            with self._cond:
                if self._gen == gen:
                    self._idle.append(slot)
                    self.error = None
                    self._cond.notify_all()
                    continue
            self.remove(slot)  # drained (or filled anew) while it was made
            return

    def _make_slot(self, spec: InstanceSpec, prepared: Prepared) -> NsInstance:
        """A slot for instances like `spec`, set up and waiting (see the docstring)."""
        name = f"{PREFIX}{spec.run_id}-slot{secrets.token_hex(4)}"
        slot = self._create(dataclasses.replace(spec, name=name, publish=()), prepared,
                            pooled=True)
        assert slot.child is not None
        try:
            process.wait_set_up(slot.child, SETUP_TIMEOUT)
            slot.child.resolve()
        except BaseException as e:
            err = slot.err
            self.remove(slot)
            if isinstance(e, process.SetupError):
                tail = bytes(err.data[-300:]) if err is not None else b""
                raise InstanceError(f"ns: setting up a slot of {self.name} failed: {e} "
                                    f"{tail!r}") from None
            raise
        return slot

    # --- Runtime -------------------------------------------------------------------------

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        """ns's gc; when it removes this pool's run (the end of a run that did not drain
        it), the pool is drained first, so that no refill makes a slot behind it."""
        with self._cond:
            want = self._want
        if want is not None and want[0].run_id not in live_runs:
            self.drain()
        return super().gc(live_runs)

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        validate.spec(spec, self.rootless)
        check_networks(self.name, spec)
        slot = self._take(spec, prepared)
        if slot is None:
            inst = self._create(spec, prepared)
            inst.warm = "cold"
            return inst
        # The instance's own spec (its name, nonce, argv...) over the slot's; its
        # resources keep the slot's name (slot.key). The config gets the values start
        # hands over, so exec into it applies them too.
        assert slot.config is not None and slot.out is not None and slot.err is not None
        slot.spec, slot.prepared, slot.warm = spec, prepared, "slot"
        slot.config = record.replace(slot.config, **_handed_over(spec))
        slot.out.keep_all = slot.err.keep_all = spec.capture
        try:
            self._publish(slot)
        except BaseException:
            self.remove(slot)
            raise
        return slot

    def start(self, inst: Instance) -> None:
        try:
            super().start(inst)
        except BaseException:
            self._served(inst)
            raise

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        try:
            return super().wait_ready(inst, timeout)
        finally:
            self._served(inst)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        try:
            return super().wait_exit(inst, timeout)
        finally:
            self._served(inst)

    def remove(self, inst: Instance) -> None:
        try:
            super().remove(inst)
        finally:
            self._served(inst)

    def _served(self, inst: Instance) -> None:
        """`inst`, if a slot taken from the pool, has served its request (up, ended or
        gone): the refill thread may replace it now (the refill policy, in the module's
        docstring)."""
        key = inst.key if isinstance(inst, NsInstance) else None
        with self._cond:
            if key in self._taken:
                self._taken.discard(key)
                self._cond.notify_all()

    def _take(self, spec: InstanceSpec, prepared: Prepared) -> NsInstance | None:
        """A ready slot made for a spec like `spec` (removed from the pool), or None."""
        dead: list[NsInstance] = []
        taken = None
        with self._cond:
            want = self._want
            if want is not None and want[1].ref == prepared.ref and \
                    self._want_part == _pool_part(spec):
                while self._idle:
                    slot = self._idle.popleft()
                    assert slot.child is not None
                    if _proc.readable(slot.child.pidfd):  # it died while it waited
                        dead.append(slot)
                        continue
                    taken = slot
                    self._taken.add(slot.key)  # replaced once it has served (_served)
                    break
                self._cond.notify_all()  # (the dead ones are replaced at once)
        for slot in dead:
            self.remove(slot)
        return taken


if TYPE_CHECKING:  # mypy holds it to the protocols
    from runtimes.base import Pool, Runtime

    _pool: Pool = NsPoolRuntime()
    _runtime: Runtime = NsPoolRuntime()
