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
# Spans, not phases: they overlap the phases (serving: start returned -> a service probe's
# first answer, across `ready`), so charts draw them apart, never stacked.
SPANS = ("to_ready", "total", "serving", "to_serving")
STARTUP_METRICS = (*tuple(f"startup.{p}" for p in PHASES),
                   *tuple(f"startup.{s}" for s in SPANS))


@dataclass(frozen=True)
class Timeline:
    """t0: create begins; t1: create returned; t2: start returned; t3: ready line seen;
    t4: exit seen; t5: remove returned. With a service probe, `serve` is its first
    answer and t4 is unused: the serving instance is removed (stopped) from then on."""

    t0: int
    t1: int
    t2: int
    t3: int
    t4: int
    t5: int
    serve: int | None = None

    def metrics(self) -> dict[str, float]:
        """Phase durations and spans in seconds.

        A ready line can arrive while the start call is still returning (the stream is
        read concurrently); `startup.ready` is then 0 and the whole span is in
        `startup.start`. The spans `to_ready` and `total` never depend on that split.
        """
        t3 = max(self.t3, self.t2)
        ns = 1e-9
        out = {"startup.create": (self.t1 - self.t0) * ns,
               "startup.start": (self.t2 - self.t1) * ns,
               "startup.ready": (t3 - self.t2) * ns}
        if self.serve is not None:
            out.update({"startup.remove": (self.t5 - self.serve) * ns,
                        "startup.serving": (self.serve - self.t2) * ns,
                        "startup.to_serving": (self.serve - self.t0) * ns})
        else:
            t4 = max(self.t4, t3)
            out.update({"startup.exit": (t4 - t3) * ns, "startup.remove": (self.t5 - t4) * ns})
        out.update({"startup.to_ready": (self.t3 - self.t0) * ns,
                    "startup.total": (self.t5 - self.t0) * ns})
        return out
