"""A scenario as the harness uses it: frozen dataclasses (the workload, a stack's services,
limits, sampling, the variants' matrix), read from TOML by harness.scenario.parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from harness.core import image as image_mod
from harness.core import record
from harness.core.errors import UsageError
from harness.core.image import Image, Recipe, Source
from harness.core.probes import serving
from runtimes.base import (
    NETWORK_MODES,
    Limits,
    Mount,
)

T = TypeVar("T")

# Keys a variant may override, and how to parse each.
# "publish": the instance on its bridge, reached through ports published on the host
# (the study says which: its server's); instances get network "bridge" and the ports.
SCENARIO_NETWORKS = (*NETWORK_MODES, "publish")
VARIANT_KEYS = ("network", "limits.cpus", "limits.memory", "limits.pids", "limits.cpuset",
                "workload.argv", "workload.readiness", "placement")
# Where a stack's services run (the variant key "placement"): one instance per service,
# or (VMs) one VM holding every service as a process of its own user.
PLACEMENTS = ("per-service", "single-vm")
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


@dataclass(frozen=True)
class Workload:
    """What runs. None (argv, entrypoint, workdir, user): the image's default, filled in
    by `resolved()` once the image is built; env is added to the image's Env."""

    image: Source = Recipe()
    argv: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    readiness: str = "marker"
    probe_interval: float = 0.01
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    user: str | None = None

    @property
    def command(self) -> tuple[str, ...]:
        """What /bench/init execs: the entrypoint, then argv (Docker's rule)."""
        return (self.entrypoint or ()) + (self.argv or ())

    @property
    def probe(self) -> serving.Readiness:
        return serving.parse(self.readiness)

    def resolved(self, img: Image) -> Workload:
        """The workload with the image's defaults filled in (as Docker takes them: a
        scenario's entrypoint drops the image's Cmd; a name in `user` is looked up in
        the image's /etc/passwd and becomes "uid:gid")."""
        c = img.config
        entrypoint = self.entrypoint if self.entrypoint is not None else c.entrypoint
        argv = self.argv if self.argv is not None else \
            (c.cmd if self.entrypoint is None else ())
        if not entrypoint + argv:
            raise UsageError(f"workload.argv: the image ({img.source.describe()}) has no "
                             "Entrypoint or Cmd; give the command to run as argv")
        user = self.user if self.user is not None else c.user
        return replace(self, entrypoint=entrypoint, argv=argv,
                       env=tuple(sorted({**dict(c.env), **dict(self.env)}.items())),
                       workdir=self.workdir or c.workdir or "/",
                       user=image_mod.resolve_user(img.rootfs, user) if user else "")

    def as_dict(self) -> dict[str, Any]:
        return {"image": {"kind": self.image.kind, **self.image.as_dict()},
                "argv": None if self.argv is None else list(self.argv),
                "entrypoint": None if self.entrypoint is None else list(self.entrypoint),
                "readiness": self.readiness, "probe_interval": self.probe_interval,
                "env": dict(self.env), "workdir": self.workdir, "user": self.user}


@dataclass(frozen=True)
class Healthcheck:
    """A compose healthcheck: `test` run inside the instance (as `docker exec` does) every
    `interval` s, each run given `timeout` s; healthy at the first success, unhealthy
    after `retries` failures that come after `start_period`."""

    test: tuple[str, ...]  # argv; CMD-SHELL's string becomes ("/bin/sh", "-c", string)
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"test": list(self.test), "interval": self.interval, "timeout": self.timeout,
                "retries": self.retries, "start_period": self.start_period}


@dataclass(frozen=True)
class Port:
    """A port of a service: `container` inside; `host` the host port it is published on
    (None: not published, `expose`; 0: published on a port the engine picks)."""

    container: int
    host: int | None = None
    protocol: str = "tcp"

    def as_dict(self) -> dict[str, Any]:
        return {"container": self.container, "host": self.host, "protocol": self.protocol}


@dataclass(frozen=True)
class Service:
    """One service of a stack: its workload (image and defaults as a scenario's), limits,
    mounts, ports, the services it waits for and how it tells it is healthy."""

    name: str
    workload: Workload
    limits: Limits = Limits()
    mounts: tuple[Mount, ...] = ()
    ports: tuple[Port, ...] = ()
    depends_on: tuple[tuple[str, str], ...] = ()  # (service, condition)
    healthcheck: Healthcheck | None = None
    networks: tuple[str, ...] = ("default",)  # the stack's networks it is on
    aliases: tuple[str, ...] = ()  # names it answers to besides its own, on each of them

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "workload": self.workload.as_dict(),
                "limits": self.limits.recorded(), "mounts": [m.as_dict() for m in self.mounts],
                "ports": [p.as_dict() for p in self.ports],
                "depends_on": dict(self.depends_on), "networks": list(self.networks),
                "aliases": list(self.aliases),
                "healthcheck": self.healthcheck.as_dict() if self.healthcheck else None}


def dependency_order(services: tuple[Service, ...]) -> tuple[Service, ...]:
    """The services, each after those it depends on (ties: as listed); ValueError names
    a cycle."""
    by = {s.name: s for s in services}
    done: list[Service] = []
    seen: set[str] = set()

    def visit(s: Service, path: tuple[str, ...]) -> None:
        if s.name in path:
            raise ValueError("depends_on has a cycle: " + " -> ".join((*path, s.name)))
        if s.name in seen:
            return
        for dep, _ in s.depends_on:
            visit(by[dep], (*path, s.name))
        seen.add(s.name)
        done.append(s)

    for s in services:
        visit(s, ())
    return tuple(done)


@dataclass(frozen=True)
class Sampling:
    warmups: int = 2
    min_samples: int = 10
    max_samples: int = 40
    target_ci: float = 0.05
    time_budget: float = 240.0
    timeout: float = 60.0
    metric: str = "startup.total"

    def as_dict(self) -> dict[str, Any]:
        return {"warmups": self.warmups, "min_samples": self.min_samples,
                "max_samples": self.max_samples, "target_ci": self.target_ci,
                "time_budget": self.time_budget, "timeout": self.timeout,
                "metric": self.metric}


@dataclass(frozen=True)
class Config:
    """What one cell runs: the scenario's settings with a variant's overrides applied."""

    workload: Workload
    limits: Limits
    network: str
    mounts: tuple[Mount, ...]
    placement: str = "per-service"
    services: tuple[Service, ...] = ()
    front: str = ""


@dataclass(frozen=True)
class Variant:
    name: str  # "default", or "network=bridge,limits.cpus=1"
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    description: str = ""
    study: str = "startup"
    backends: tuple[str, ...] = ()  # () = every registered backend
    workload: Workload = Workload()
    limits: Limits = Limits()
    network: str = "none"
    mounts: tuple[Mount, ...] = ()
    sampling: Sampling = Sampling()
    params: tuple[tuple[str, Any], ...] = ()
    variants: tuple[Variant, ...] = (Variant("default"),)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    services: tuple[Service, ...] = ()  # a stack's, in dependency order
    front: str = ""  # the stack's front service

    def config(self, variant: Variant) -> Config:
        workload, limits, network = self.workload, self.limits, self.network
        placement = "per-service"
        for key, value in variant.overrides:
            if key == "placement":
                placement = value
            elif key == "network":
                network = value
            elif key.startswith("limits."):
                limits = record.replace(limits, **{key.split(".", 1)[1]: value})
            elif key == "workload.argv":
                workload = replace(workload, argv=value)
            elif key == "workload.readiness":
                workload = replace(workload, readiness=value)
        return Config(workload=workload, limits=limits, network=network, mounts=self.mounts,
                      placement=placement, services=self.services, front=self.front)

    def param(self, key: str, default: T) -> T:
        return cast(T, dict(self.params).get(key, default))

    def as_dict(self) -> dict[str, Any]:
        """The resolved scenario, as stored in results."""
        return {
            "name": self.name, "source": self.source, "description": self.description,
            "study": self.study, "backends": list(self.backends),
            "workload": self.workload.as_dict(), "limits": self.limits.recorded(),
            "network": self.network, "mounts": [m.as_dict() for m in self.mounts],
            "sampling": self.sampling.as_dict(), "params": dict(self.params),
            "variants": [{"name": v.name, "overrides": dict(v.overrides)}
                         for v in self.variants],
            **({"services": [sv.as_dict() for sv in self.services], "front": self.front}
               if self.services else {}),
        }

