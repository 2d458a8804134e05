"""One root exception, subclasses by cause (docker-py's errors.py style).

The CLI maps them to exit codes: a user mistake exits 2 with one line naming the
file and field; a backend that is not usable here exits 3 with the reason and the fix.
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class BenchError(Exception):
    """Root of every error cvbench raises on purpose."""

    exit_code = 1


class UsageError(BenchError):
    """The user asked for something invalid (bad file, unknown name, wrong value)."""

    exit_code = EXIT_USAGE


class ScenarioError(UsageError):
    """A scenario file is malformed or invalid; the message names the file and key."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(f"{where}{message}")


class NotApplicable(UsageError):
    """What was asked cannot be measured here by design, not by accident: a backend's
    declared inability (a VM has no host network stack to share, nor a host directory
    to bind) raised by the backend itself, or a study's own scope. The runner closes the
    cell with this reason instead of failing it; any other error fails the sample.
    A UsageError: outside a run (`bench exec`, cvbench-ns) it is the user's request that
    cannot be honoured."""


class ResultError(UsageError):
    """A result file cannot be read: malformed, corrupted, or from a newer schema."""


class ResultWriteError(BenchError):
    """A result could not be written where asked (e.g. a full disk); it went elsewhere."""


class BackendUnavailable(BenchError):
    """A backend cannot run here; carries the reason and the fix."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, backend: str, reason: str, fix: str = "") -> None:
        self.backend = backend
        self.reason = reason
        self.fix = fix
        text = f"backend {backend!r} is not available: {reason}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class InstanceError(BenchError):
    """One instance failed (did not start, never became ready, crashed).

    The runner records it against the cell and goes on; samples already taken stay.
    `logs`: what the failed instances wrote (a stack's services, by name), kept in the
    failure's event.
    """

    def __init__(self, message: str, logs: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.logs = logs or {}


class ReadyTimeout(InstanceError):
    """The ready line did not arrive in time."""


class CleanupError(BenchError):
    """Resources that could not be removed, each with its reason (`failed`); they are
    still there, so the backend's leftovers() lists them again for `bench gc`. `removed`:
    what was removed before the failures were raised (the backend's Leftover records)."""

    def __init__(self, backend: str, failed: list[str], removed: list[object] | None = None
                 ) -> None:
        self.backend, self.failed, self.removed = backend, failed, list(removed or [])
        super().__init__(f"{backend}: could not remove {'; '.join(failed)}")

class Unreadable(InstanceError):
    """A figure could not be read (a file the harness may not read, an instance without a
    host process, a daemon not found): the sample fails with why, never records a zero."""


class ImageError(BenchError):
    """The workload image could not be built (missing binary, unreadable file)."""


class BadImage(UsageError):
    """An image source is unusable as given: a missing, truncated, corrupt or hostile
    archive, an unknown package or engine ref. The message names the source and the
    offending entry or name; nothing was written outside the image cache's temp dir."""
