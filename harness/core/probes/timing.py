"""Phase timing from the host's monotonic clock.

A sample's timestamps are taken with `time.monotonic_ns()` around each Runtime call; the
ready timestamp is taken by the backend when the ready line arrives. Only arithmetic on
integers happens here, after the instance is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

now_ns = time.monotonic_ns

PHASES = ("create", "start", "ready", "exit", "remove")
STARTUP_METRICS = (*tuple(f"startup.{p}" for p in PHASES), "startup.to_ready", "startup.total")


@dataclass(frozen=True)
class Timeline:
    """t0: create begins; t1: create returned; t2: start returned; t3: ready line seen;
    t4: exit seen; t5: remove returned."""

    t0: int
    t1: int
    t2: int
    t3: int
    t4: int
    t5: int

    def metrics(self) -> dict[str, float]:
        """Phase durations and spans in seconds.

        A ready line can arrive while the start call is still returning (the stream is
        read concurrently); `startup.ready` is then 0 and the whole span is in
        `startup.start`. The spans `to_ready` and `total` never depend on that split.
        """
        t3 = max(self.t3, self.t2)
        t4 = max(self.t4, t3)
        ns = 1e-9
        return {
            "startup.create": (self.t1 - self.t0) * ns,
            "startup.start": (self.t2 - self.t1) * ns,
            "startup.ready": (t3 - self.t2) * ns,
            "startup.exit": (t4 - t3) * ns,
            "startup.remove": (self.t5 - t4) * ns,
            "startup.to_ready": (self.t3 - self.t0) * ns,
            "startup.total": (self.t5 - self.t0) * ns,
        }
