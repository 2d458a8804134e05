"""A fake Runtime for unit tests of the runner (no processes, no privileges)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.core.errors import InstanceError
from harness.core.image import Image
from runtimes.base import (
    Availability,
    Exit,
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Stats,
    Traits,
)


class FakeRuntime:
    flavours: tuple[str, ...] = ()

    def __init__(self, name: str = "fake", delay: float = 0.0, fail_every: int = 0,
                 traits: Traits | None = None, addr: str | None = None,
                 output: bytes = b"", ended: Exit | None = None) -> None:
        self.name = name
        self.ended = ended  # how every instance's workload ended at once; None: it runs
        self.addr = addr  # what address() says
        self.output = output  # the workload's output, all there at once
        self._traits = traits or Traits(kind="container", settings={"fake": True})
        self.delay = delay
        self.fail_every = fail_every
        self.created = 0
        self.removed: list[str] = []
        self.live: dict[str, Instance] = {}

    def availability(self) -> Availability:
        return Availability(ok=True, versions={"fake": "1"})

    def traits(self) -> Traits:
        return self._traits

    def prepare(self, image: Image) -> Prepared:
        return Prepared(image=image, backend=self.name, ref="fake")

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        self.created += 1
        if self.fail_every and self.created % self.fail_every == 0:
            raise InstanceError("fake failure")
        inst = Instance(spec=spec, prepared=prepared)
        self.live[spec.name] = inst
        return inst

    def start(self, inst: Instance) -> None:
        if self.delay:
            time.sleep(self.delay)

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        return time.monotonic_ns()

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        if self.ended is not None:
            return self.ended
        if timeout <= 0:  # a poll of a workload that runs until waited for
            raise InstanceError("the workload did not exit within 0 s")
        return Exit(code=0, t_ns=time.monotonic_ns())

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        if any(pattern.search(line) for line in self.output.splitlines()):
            return time.monotonic_ns()
        raise InstanceError(f"no line matched {pattern.pattern!r}")

    def stats(self, inst: Instance) -> Stats:
        return Stats(pids=(1,), pss=1, uss=1, rss=1)  # (a pid: the instance has a process)

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        pass

    def daemons(self) -> dict[str, list[int]]:
        return {}

    def disk_usage(self, inst: Instance) -> int | None:
        return None

    def address(self, inst: Instance) -> str | None:
        return self.addr

    def remove(self, inst: Instance) -> None:
        self.removed.append(inst.spec.name)
        self.live.pop(inst.spec.name, None)

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        return []

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        return []


if TYPE_CHECKING:  # the fake is held to the protocol like a real backend
    from runtimes.base import Runtime

    _instance: Runtime = FakeRuntime()
