"""Markers and skips that check the real host, with the reason (runc's `requires root`).

A test needing a capability calls `require("docker", reason)` (or uses the fixture of the
same name). Where the environment variable CVBENCH_REQUIRE lists the capability (CI sets
it), a missing capability fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRED = {c.strip() for c in os.environ.get("CVBENCH_REQUIRE", "").split(",") if c.strip()}


def require(capability: str, missing_reason: str | None) -> None:
    """Skip (or, when CVBENCH_REQUIRE lists `capability`, fail) if `missing_reason` is set."""
    if missing_reason is None:
        return
    msg = f"{capability}: {missing_reason}"
    if capability in REQUIRED:
        pytest.fail(f"required by CVBENCH_REQUIRE but unavailable: {msg}", pytrace=False)
    pytest.skip(msg)


def backend_or_skip(name: str) -> object:
    """The runtime `name` if it is available here, else skip/fail with its reason."""
    from runtimes import registry

    rt = registry.get(name)
    a = rt.availability()
    require(name.split(":")[0], None if a.ok else f"{a.reason} (fix: {a.fix})")
    return rt


@pytest.fixture
def root() -> None:
    require("root", None if os.geteuid() == 0 else "needs root")


@pytest.fixture(scope="session")
def repo() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def run_id() -> Iterator[str]:
    """A run id whose lock is held for the test, so a concurrent `bench gc` leaves its
    resources alone (gc removes only what runs without a held lock left)."""
    from harness.bookkeeping import RunLock
    from runtimes.base import new_run_id

    rid = new_run_id()
    lock = RunLock(rid, "test")
    yield rid
    lock.release()


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """After the whole session: no test may have left a resource of its runs behind.
    Then what runs share (parent cgroups, the ns bridge, dev layer, state dirs) is
    released, as the end of a `bench run` does — unless another run is going."""
    yield
    if os.geteuid() != 0:
        return
    from harness.bookkeeping import live_runs
    from runtimes import registry

    if live_runs():
        return
    leaked: list[str] = []
    for base in registry.base_names():
        rt = registry.get(base)
        try:
            if not rt.availability().ok:
                continue
            found = rt.gc([])
        except Exception as e:
            leaked.append(f"{base}: gc failed: {e}")
            continue
        leaked += [f"{x.backend} {x.kind} {x.name}" for x in found if x.run_id]
    if leaked:
        pytest.fail("tests left these behind (removed now):\n  " + "\n  ".join(leaked),
                    pytrace=False)


def http_get_until(url: str, deadline: float) -> bytes:
    """GET `url` until it answers (the body) or time.monotonic() passes `deadline` (the
    last error raised): a service that has just started may not listen yet."""
    import time
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
