"""Planning: a scenario bound to this host (the backends that run, those skipped and
why), its cells, and the header every result of it starts with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from harness import __version__
from harness.bookkeeping import HOOKS
from harness.core import hostinfo, provenance
from harness.core.errors import BackendUnavailable
from harness.core.image import Image
from harness.core.probes import serving
from harness.core.units import format_size
from harness.results import SCHEMA
from harness.sampling import Cell
from harness.scenario import Scenario
from runtimes import registry
from runtimes.base import Prepared, Runtime


@dataclass
class Plan:
    """A scenario bound to this host: the backends that will run, and the ones skipped."""

    scenario: Scenario
    backends: list[str]
    runtimes: dict[str, Runtime]
    skipped: dict[str, str]  # backend -> why


def plan(scenario: Scenario, requested: list[str] | None) -> Plan:
    """Choose backends: requested ones must be available (exit 3 if not); the scenario's
    own list is auto-detected (unavailable ones are skipped, with the reason)."""
    names = requested or list(scenario.backends) or registry.base_names()
    for n in names:
        registry.check(n)
    chosen: list[str] = []
    rts: dict[str, Runtime] = {}
    skipped: dict[str, str] = {}
    for n in names:
        rt = registry.get(n, HOOKS)
        avail = rt.availability()
        if avail.ok:
            chosen.append(n)
            rts[n] = rt
        elif requested:
            raise BackendUnavailable(n, avail.reason, avail.fix)
        else:
            skipped[n] = avail.reason + (f" (fix: {avail.fix})" if avail.fix else "")
    if not chosen:
        raise BackendUnavailable(",".join(names), "none of the scenario's backends is "
                                 "available here", "run `bench doctor`")
    return Plan(scenario=scenario, backends=chosen, runtimes=rts, skipped=skipped)


def unenforced_limits(p: Plan) -> dict[str, list[str]]:
    """backend -> the limits its cells ask for that it does not enforce (its metadata's
    not_applied lists "limits" or "limits.<field>"), as "field=value" across variants."""
    out: dict[str, list[str]] = {}
    for b in p.backends:
        traits = p.runtimes[b].traits()
        asked = {f"{k}={format_size(int(v)) if k == 'memory' else f'{v:g}'}"
                 for variant in p.scenario.variants
                 for k, v in p.scenario.config(variant).limits.as_dict().items()
                 if v is not None and not traits.enforces(k)}
        if not traits.enforces("rlimits"):
            asked |= {f"rlimits.{n}" for variant in p.scenario.variants
                      for n, _, _ in p.scenario.config(variant).limits.rlimits}
        if asked:
            out[b] = sorted(asked)
    return out


def make_cells(p: Plan, prepared: dict[str, Prepared], copies: int = 1,
               images: dict[str, dict[str, Prepared]] | None = None) -> list[Cell]:
    """One cell per (backend, variant); with copies > 1 (A/A calibration), that many
    identical cells each, numbered, which the rounds interleave like any other cells.
    `images`: per backend, further prepared images by name (a stack's)."""
    traits = {b: p.runtimes[b].traits() for b in p.backends}
    return [Cell(backend=b, variant=v, config=p.scenario.config(v), runtime=p.runtimes[b],
                 prepared=prepared[b], traits=traits[b], copy=None if copies == 1 else k,
                 images=dict((images or {}).get(b, {})))
            for b in p.backends for v in p.scenario.variants for k in range(copies)]


def busy_ports(p: Plan) -> list[str]:
    """A tcp/http readiness probe of an instance on the host's own network (network
    "host", or a backend that applies no network) must not be answered by a server that
    is there already: what would be probed against it, one line each."""
    out = []
    for b in p.backends:
        traits = p.runtimes[b].traits()
        for v in p.scenario.variants:
            cfg = p.scenario.config(v)
            probe = cfg.workload.probe
            hosted = cfg.network == "host" or "network" in traits.not_applied
            if probe.needs_address and hosted and serving.answers(probe, "127.0.0.1", 0.5):
                out.append(f"{b}: {probe}: port {probe.port} on this host already answers "
                           "(another server?), and this backend's instances listen on the "
                           "host's network: stop that server or use another port")
    return out


def header(p: Plan, run_id: str, image: Image, prepared: dict[str, Prepared],
           cells: list[Cell]) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    traits = {c.backend: c.traits for c in cells}
    for b in p.backends:
        avail = p.runtimes[b].availability()
        backends[b] = {**traits[b].as_dict(), "versions": dict(avail.versions),
                       "components": [c.to_dict() for c in avail.components],
                       "prepared": {"ref": prepared[b].ref,
                                    "footprint": dict(prepared[b].footprint),
                                    **dict(prepared[b].details)}}
    return {
        "schema": SCHEMA, "tool": {"name": "cvbench", "version": __version__,
                                   **_commit()},
        "run_id": run_id, "created": datetime.now(UTC).isoformat(),
        "scenario": p.scenario.as_dict(), "scenario_toml": dict(p.scenario.raw),
        "host": hostinfo.fingerprint(),
        "backends": backends, "skipped": p.skipped, "image": image.as_dict(),
    }


def _commit() -> dict[str, Any]:
    """The source's commit and dirty flag, and where they were read ("git" or "build")."""
    src = provenance.source()
    return {"commit": src["commit"], "dirty": src["dirty"], "commit_from": src["from"]} \
        if src else {}


def cell_summary(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per cell: how it ended, and its measured samples: `samples` ok of `attempts`,
    `failures` with their `reasons` ({reason: count}, most common first); failed warmups
    apart (`Result.attempts` reads these)."""
    return [{"backend": c.backend, "variant": c.variant.name, "status": c.status,
             "samples": c.samples, "failures": c.failures, "attempts": c.attempts,
             "reasons": dict(sorted(c.reasons.items(), key=lambda kv: -kv[1])),
             "warmup_failures": c.warmup_failures,
             **({"copy": c.copy} if c.copy is not None else {})} for c in cells]


