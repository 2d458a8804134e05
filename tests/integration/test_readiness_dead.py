"""A dead server fails its readiness probe at once, with its exit status and output, on
real processes (host and ns): a server that exits 3 with a message right after its
ready line must not be waited for until the probe's timeout."""

from __future__ import annotations

import pytest

from harness import scenario
from harness.core import image
from harness.core.errors import InstanceError, ReadyTimeout
from harness.sampling import Cell, Context
from harness.studies import _lifecycle as life
from harness.studies._server import free_ports
from runtimes.base import Runtime
from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.root]

TIMEOUT = 600.0  # far beyond any loaded machine: the probe must not be what ends the wait


@pytest.mark.parametrize("backend", ["host", "ns", "docker", "podman"])
@pytest.mark.parametrize("kind", ["tcp", "log"])
def test_a_server_that_exits_fails_its_probe_with_its_exit(
        run_id: str, backend: str, kind: str) -> None:
    rt: Runtime = backend_or_skip(backend)  # type: ignore[assignment]
    readiness = f"tcp:{free_ports(1)[0]}" if kind == "tcp" else "log:listening on"
    scen = scenario.parse({"name": "dead", "network": "host", "workload": {
        "readiness": readiness,
        "argv": ["sh", "-c", "echo 'cannot open /etc/srv.conf' >&2; exit 3"]}}, "dead.toml")
    v = scen.variants[0]
    cell = Cell(backend=backend, variant=v, config=scen.config(v), runtime=rt,
                prepared=rt.prepare(image.build(image.Recipe())), traits=rt.traits())
    ctx = Context(run_id, TIMEOUT)
    try:
        with pytest.raises(InstanceError) as exc:
            life.start(ctx, cell, ctx.spec(cell))
    finally:
        assert ctx.cleanup() == []
    message = str(exc.value)
    assert not isinstance(exc.value, ReadyTimeout), message
    assert "exited with status 3" in message and "cannot open /etc/srv.conf" in message
    assert "timeout" not in message
