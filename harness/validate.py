"""Checks run on a scenario and this host BEFORE anything is created.

A list of check functions, each returning the problems it finds (runc's
configs/validate style); `check()` raises the first as a ScenarioError naming the key.
Backend availability is not checked here: the CLI decides between skipping an
auto-detected backend and refusing an explicitly requested one (exit 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from harness import studies
from harness.core.errors import ImageError, ScenarioError, UsageError
from harness.core.hostinfo import meminfo
from harness.core.image import Archive, EngineRef, EngineStore, Recipe, which
from harness.scenario import Scenario
from runtimes import registry
from runtimes.base import cpu_list

Check = Callable[[Scenario], list[ScenarioError]]


def _err(s: Scenario, key: str, msg: str) -> ScenarioError:
    return ScenarioError(s.source, key, msg)


def check_study(s: Scenario) -> list[ScenarioError]:
    try:
        study = studies.get(s.study)
    except UsageError as e:
        return [_err(s, "study", str(e))]
    out = []
    for key, value in s.params:
        if key not in study.params:
            allowed = ", ".join(sorted(study.params)) or "none"
            out.append(_err(s, f"params.{key}", f"unknown parameter (allowed: {allowed})"))
        elif type(value) is not type(study.params[key]) and not (
                isinstance(study.params[key], float) and isinstance(value, int)):
            out.append(_err(s, f"params.{key}",
                            f"must be {type(study.params[key]).__name__}, not "
                            f"{type(value).__name__}"))
    # A study may check its own [params] further (ranges, nested tables): (key, message).
    if not out:
        out += [_err(s, key, msg) for key, msg in study.check_params(s)]
    out += [_err(s, "study", f"study {s.study!r} runs {tool} on this host, which is not "
                 f"installed (Debian package {pkg}; `make provision` installs it)")
            for tool, pkg in studies.missing_tools(study).items()]
    if studies.unit_of(study, s.sampling.metric) is None:
        out.append(_err(s, "sampling.metric", f"{s.sampling.metric!r} is not a metric of "
                        f"study {s.study!r}"))
    return out


def check_backends(s: Scenario) -> list[ScenarioError]:
    return [_err(s, "backends", problem) for b in s.backends
            if (problem := registry.unknown(b))]


def check_limits(s: Scenario) -> list[ScenarioError]:
    out = []
    cores = os.cpu_count() or 1
    mem = meminfo().get("MemTotal", 0)
    for v in s.variants:
        lim = s.config(v).limits
        where = "limits" if v.name == "default" else f"variants ({v.name}) limits"
        usable = os.sched_getaffinity(0)
        if lim.cpuset is not None and not cpu_list(lim.cpuset) <= usable:
            out.append(_err(s, f"{where}.cpuset", f"{lim.cpuset!r} names CPUs this host does "
                            f"not offer (it has {sorted(usable)})"))
        if lim.cpus is not None and lim.cpus > cores:
            out.append(_err(s, f"{where}.cpus", f"{lim.cpus:g} is more than this host's "
                            f"{cores} cores"))
        if lim.memory is not None and mem and lim.memory > mem:
            out.append(_err(s, f"{where}.memory", f"{lim.memory} bytes is more than this "
                            f"host's {mem}"))
        if lim.memory is not None and lim.memory < 4 << 20:
            out.append(_err(s, f"{where}.memory", "must be at least 4M"))
    return out


def check_mounts(s: Scenario) -> list[ScenarioError]:
    return [_err(s, f"mounts[{i}].source", f"{m.source} does not exist on this host")
            for i, m in enumerate(s.mounts)
            if m.type == "bind" and not Path(m.source or "").exists()]


def check_image(s: Scenario) -> list[ScenarioError]:
    src = s.workload.image
    out = []
    if isinstance(src, Recipe):
        for b in src.binaries:
            try:
                which(b)
            except ImageError as e:
                out.append(_err(s, "workload.image.binaries", str(e)))
    elif isinstance(src, Archive) and not Path(src.path).exists():
        out.append(_err(s, "workload.image.archive", f"{src.path}: no such file or directory"))
    elif isinstance(src, EngineRef) and src.engine:  # ("": a build, by what is here)
        problem = registry.unknown(src.engine)
        if problem is None and not isinstance(registry.get(src.engine), EngineStore):
            problem = f"{src.engine!r} keeps no images of its own (docker or podman do)"
        if problem:
            out.append(_err(s, "workload.image.engine", problem))
    return out


def check_readiness(s: Scenario) -> list[ScenarioError]:
    """A probe from the host needs an address the host can reach: not network none."""
    out = []
    for v in s.variants:
        cfg = s.config(v)
        probe = cfg.workload.probe
        if probe.needs_address and cfg.network == "none":
            where = "workload.readiness" if v.name == "default" else \
                f"variants ({v.name}) workload.readiness"
            out.append(_err(s, where, f"{probe} probes the instance from the host, which "
                                      "network \"none\" cannot reach; use network "
                                      "\"bridge\" or \"host\" (or readiness log:REGEX)"))
    return out


CHECKS: tuple[Check, ...] = (check_study, check_backends, check_limits, check_mounts,
                             check_image, check_readiness)


def problems(s: Scenario) -> list[ScenarioError]:
    return [p for check in CHECKS for p in check(s)]


def check(s: Scenario) -> None:
    found = problems(s)
    if found:
        raise found[0]
