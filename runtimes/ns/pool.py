"""`ns:pool`: ns with a pool of prepared instances, as SOCK (ATC'18) keeps sandboxes.

A slot is an ns instance made by the very code a cold one is (`NsRuntime._create`),
ahead of the request: its namespaces (mount, pid, uts, ipc, net, cgroup), its cgroup
with the spec's limits, its veth and address on ns's bridge (network "bridge"), its
overlay root entered with pivot_root; its first process has joined the cgroup and
waits on its go pipe (`ContainerConfig.pooled`, process.child_main). Taking a slot
(`create`) gives the instance's spec to it; `start` hands the waiting process the
instance's argv, environment (its nonce), workdir and user (config.HANDED_OVER), after
which it runs the same `confine_and_exec` a cold instance runs (keyring, rlimits,
capabilities, no_new_privs, descriptors, seccomp) and execs /bench/init. A slot is
used once. When none is ready, `create` makes a cold instance (`Instance.warm`
"cold"). A background thread refills the pool to its size.

A slot's resources are named `cvbench-<run id>-slot<hex>` (cgroup, instance dir, veth
alias, lease), like any ns instance's, so `leftovers()`/`gc()` of a dead run find
them; its processes die with the runner (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import secrets
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.core import record
from harness.core.errors import InstanceError, UsageError
from runtimes import _proc
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    Hooks,
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Slot,
    Traits,
)
from runtimes.ns import process, validate
from runtimes.ns.runtime import _SERVER, SETUP_TIMEOUT, NsInstance, NsRuntime, _handed_over

# A failed slot is tried again after this long, doubling up to MAX_BACKOFF: a spec that
# cannot be run must not spin the refill thread (create then fails cold, with the reason).
BACKOFF, MAX_BACKOFF = 0.5, 30.0


def _pool_part(spec: InstanceSpec) -> InstanceSpec:
    """What a slot is made for: the spec without what each instance brings itself (its
    name, nonce, argv, env, user, workdir, kept output, readiness and published ports,
    published when the slot is taken)."""
    return dataclasses.replace(spec, name="", nonce="", argv=(), env={}, user="",
                               workdir="/", capture=False, readiness="marker", publish=())


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
        self._size = 0
        self._idle: collections.deque[NsInstance] = collections.deque()
        self._gen = 0  # a fill or drain starts a new generation; older threads end
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def traits(self) -> Traits:
        t = super().traits()
        return dataclasses.replace(t, settings={
            **t.settings,
            "start": "a slot of a pool made ahead (namespaces, cgroup with the limits, "
                     "veth and address, overlay root; its first process waiting in its "
                     "cgroup), handed argv, env, workdir and user, then ns's protections "
                     "and exec; a cold clone when the pool is empty"})

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
        self.drain()
        if size == 0:
            return
        with self._cond:
            self._want, self._size, self.error = (spec, prepared), size, None
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
                self._cond.wait_for(lambda: self._gen != gen or len(self._idle) < self._size)
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

    def _take(self, spec: InstanceSpec, prepared: Prepared) -> NsInstance | None:
        """A ready slot made for a spec like `spec` (removed from the pool), or None."""
        dead: list[NsInstance] = []
        taken = None
        with self._cond:
            want = self._want
            if want is not None and want[1].ref == prepared.ref and \
                    _pool_part(want[0]) == _pool_part(spec):
                while self._idle:
                    slot = self._idle.popleft()
                    assert slot.child is not None
                    if _proc.readable(slot.child.pidfd):  # it died while it waited
                        dead.append(slot)
                        continue
                    taken = slot
                    break
                self._cond.notify_all()  # the refill thread makes another
        for slot in dead:
            self.remove(slot)
        return taken


if TYPE_CHECKING:  # mypy holds it to the protocols
    from runtimes.base import Pool, Runtime

    _pool: Pool = NsPoolRuntime()
    _runtime: Runtime = NsPoolRuntime()
