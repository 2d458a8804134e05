"""Studies: what one sample of a cell measures.

A scenario names its study (`study = "startup"`); the runner handles rounds, order,
adaptive stopping, journaling and clean-up, and asks the study for one sample at a time.
A study lists the metrics it produces (metric -> unit) and the `[params]` it accepts.
"""

from __future__ import annotations

import shutil
from importlib import import_module
from typing import Any, Protocol

from harness.core.errors import UsageError

# name -> module under harness.studies
KNOWN = {"startup": "startup", "density": "density", "memory": "memory", "disk": "disk",
         "io": "io", "limits": "limits", "network": "network", "http": "http", "kv": "kv",
         "cpu": "cpu", "mem": "mem", "db": "db"}


class Study(Protocol):
    name: str
    metrics: dict[str, str]  # metric name (or prefix ending in ".") -> unit
    params: dict[str, Any]  # accepted [params] with their defaults

    def sample(self, ctx: Any, cell: Any) -> list[Any]:
        """Take one sample of `cell`; return Measurement records."""
        ...


def get(name: str) -> Study:
    if name not in KNOWN:
        raise UsageError(f"unknown study {name!r}; known: {', '.join(sorted(KNOWN))}")
    module = import_module(f"harness.studies.{KNOWN[name]}")
    study: Study = module.STUDY
    return study


def unit_of(study: Study, metric: str) -> str | None:
    if metric in study.metrics:
        return study.metrics[metric]
    for prefix, unit in study.metrics.items():
        if prefix.endswith(".") and metric.startswith(prefix):
            return unit
    return None


def missing_tools(study: Study) -> dict[str, str]:
    """Programs the study runs on the host that are not installed here: name -> the
    Debian package that provides it (a study lists its own in `tools`)."""
    tools: dict[str, str] = getattr(study, "tools", {})
    return {t: pkg for t, pkg in tools.items() if shutil.which(t) is None}


def all_tools() -> dict[str, tuple[str, list[str]]]:
    """Every host program a known study runs: name -> (package, the studies)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for name in sorted(KNOWN):
        for t, pkg in getattr(get(name), "tools", {}).items():
            out.setdefault(t, (pkg, []))[1].append(name)
    return out
