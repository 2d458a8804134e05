"""The podman backend against the real Podman REST service: crun, runc and cvbench-ns
(engine_cases.py)."""

from __future__ import annotations

from typing import Any

import pytest

from runtimes._engine import Engine
from runtimes.podman import PodmanRuntime
from tests.integration.engine_cases import EngineCases

pytestmark = [pytest.mark.root, pytest.mark.podman]


class TestPodman(EngineCases):
    names = ("podman", "podman:runc", "podman:ns")

    def oci_runtime(self, rt: Engine, inspect: dict[str, Any]) -> str:
        # the compat inspect says "oci" whatever ran it; libpod's inspect names it
        assert isinstance(rt, PodmanRuntime)
        return str(rt.libpod("GET", f"/containers/{inspect['Id']}/json").json()["OCIRuntime"])
