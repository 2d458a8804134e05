"""Reading a scenario file's tables into the model (harness.scenario.model), strictly.

A scenario file looks like this (every key but `name` and `workload.argv` has a default):

    name = "startup"
    description = "..."
    study = "startup"                 # what each sample measures (see harness.studies)
    backends = ["host", "ns"]         # default: every registered backend available here
    network = "none"                  # none | bridge | host

    [workload]
    image = { recipe = "base", binaries = [] }    # or one of:
    #   { debian = "bookworm", packages = ["nginx-light"] }   (mirror = "http://...")
    #   { archive = "path/to/image.tar" }    docker/podman save, OCI layout (dir or tar);
    #                                        a relative path is relative to this file
    #   { engine = "docker", ref = "name:tag" }               (or "podman")
    #   { build = { context = "dir", dockerfile = "Dockerfile", args = {} } }  (engine =
    #     "docker" | "podman", default the first available): built offline by the
    #     engine for the run; `context` relative to this file's directory, inside it
    argv = ["true"]                   # default: the image's Cmd (a recipe's: true)
    entrypoint = []                   # default: the image's Entrypoint
    readiness = "marker"              # marker | exit | tcp:PORT | http:PORT/PATH | log:REGEX
    probe_interval = 0.01             # seconds between tcp/http attempts
    env = {}                          # added to the image's Env
    workdir = "/"                     # default: the image's WorkingDir, else /
    user = "www-data"                 # default: the image's User, else root

    [limits]                          # each optional
    cpus = 1.0
    memory = "256M"
    pids = 64
    rlimits = { nofile = [1024, 4096], core = 0 }   # soft, hard (or one for both);
                                                    # -1: unlimited
    cpuset = "1"                      # host CPUs it runs on (cgroup cpuset, vCPU pinning,
                                      # taskset)

    [[mounts]]                        # bind | volume | tmpfs
    type = "tmpfs"
    target = "/scratch"
    size = "64M"

    [sampling]
    warmups = 2
    min_samples = 10
    max_samples = 40
    target_ci = 0.05                  # stop when the 95 % CI half-width <= 5 % of the median
    time_budget = 240                 # seconds for the whole run
    timeout = 60                      # seconds an instance may take to become ready / exit
    metric = "startup.total"          # the metric the adaptive stop looks at

    [params]                          # study parameters (checked by the study)

    [variants]                        # optional matrix: every combination is a cell
    network = ["none", "bridge"]

A stack (study "stack") has services instead of one workload (README "Stacks"):

    [stack]
    front = "web"                     # whose readiness ends the stack's start (default:
                                      # the one service no other depends on)
    [[services]]
    name = "db"
    image = { debian = "bookworm", packages = ["redis-server"] }
    argv = [...]; entrypoint = [...]; env = {...}; user = "redis"; workdir = "/"
    readiness = "tcp:6379"            # default: marker (started)
    ports = [8080]                    # container ports published (also "8080:80")
    expose = [6379]
    depends_on = { other = "service_healthy" }   # or service_started,
                                      # service_completed_successfully (exit 0)
    healthcheck = { test = ["CMD", "redis-cli", "ping"], interval = 1, timeout = 5,
                    retries = 30, start_period = 0 }    # or ["CMD-SHELL", "..."]
    limits = { cpus = 0.5, memory = "64M" }
    mounts = [{ type = "volume", source = "data", target = "/var/lib/redis" }]
    networks = ["back"]               # the stack's networks it is on (default "default")
    aliases = ["database"]            # further names it answers to on them

    [variants]
    placement = ["per-service", "single-vm"]

Parsing is strict: an unknown key, a wrong type or a bad value raises ScenarioError
naming the file and the dotted key; TOML syntax errors name the line.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from harness.core import debian
from harness.core.errors import ScenarioError
from harness.core.image import Archive, Debian, EngineBuild, EngineRef, Recipe, Source
from harness.core.probes import serving
from harness.core.units import parse_size
from harness.scenario.model import (
    CONDITIONS,
    PLACEMENTS,
    SCENARIO_NETWORKS,
    VARIANT_KEYS,
    Healthcheck,
    Port,
    Sampling,
    Scenario,
    Service,
    Variant,
    Workload,
    dependency_order,
)
from runtimes.base import (
    MOUNT_TYPES,
    RLIM_INFINITY,
    RLIMIT_NAMES,
    Limits,
    Mount,
    cpu_list,
)

# --- strict field readers -------------------------------------------------------------

class _Reader:
    def __init__(self, source: str, base: Path | None = None) -> None:
        self.source = source
        # where relative build contexts are read from, which they cannot leave: the
        # directory of the file the services come from
        self.base = base if base is not None else \
            Path(source).resolve().parent if Path(source).is_file() else None

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, key, message)

    def table(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_tname(value)}")
        self.only(value, key, allowed)
        return value

    def only(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for k in data:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else k
                raise self.fail(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def str_(self, value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_tname(value)}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def int_(self, value: Any, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {_tname(value)}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, not {value}")
        return value

    def num(self, value: Any, key: str, positive: bool = True) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, not {_tname(value)}")
        if not math.isfinite(value) or (positive and value <= 0) or value < 0:
            raise self.fail(key, f"must be a {'positive' if positive else 'non-negative'} "
                                 f"finite number, not {value}")
        return float(value)

    def size(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.fail(key, f"must be a size (bytes or e.g. \"256M\"), not {_tname(value)}")
        try:
            n = parse_size(value)
        except ValueError as e:
            raise self.fail(key, str(e)) from None
        if n <= 0:
            raise self.fail(key, "must be positive")
        return n

    def strings(self, value: Any, key: str, nonempty: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        if nonempty and not value:
            raise self.fail(key, "must not be empty")
        if any("\0" in v for v in value):
            raise self.fail(key, "must not contain NUL characters")
        return tuple(value)

    def readiness(self, value: Any, key: str) -> str:
        text = self.str_(value, key)
        try:
            serving.parse(text)
        except ValueError as e:
            raise self.fail(key, str(e)) from None
        return text

    def bool_(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_tname(value)}")
        return value


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _limits(r: _Reader, data: Mapping[str, Any], key: str) -> Limits:
    t = r.table(data, key, {"cpus", "memory", "pids", "rlimits", "cpuset"})
    return Limits(
        cpus=r.num(t["cpus"], f"{key}.cpus") if "cpus" in t else None,
        memory=r.size(t["memory"], f"{key}.memory") if "memory" in t else None,
        pids=r.int_(t["pids"], f"{key}.pids", 1) if "pids" in t else None,
        rlimits=_rlimits(r, t, f"{key}.rlimits"),
        cpuset=_cpuset(r, t["cpuset"], f"{key}.cpuset") if "cpuset" in t else None,
    )


def _cpuset(r: _Reader, value: Any, key: str) -> str:
    text = r.str_(value, key)
    try:
        cpu_list(text)
    except ValueError:
        raise r.fail(key, f"must be a CPU list such as \"1\" or \"0-2,4\", not {text!r}") \
            from None
    return text


def _rlimits(r: _Reader, t: Mapping[str, Any], key: str) -> tuple[tuple[str, int, int], ...]:
    table = r.table(t, key, set(RLIMIT_NAMES))
    out = []
    for name, value in table.items():
        pair = value if isinstance(value, list) else [value, value]
        if len(pair) != 2:
            raise r.fail(f"{key}.{name}", "must be a number or [soft, hard]")
        soft, hard = (r.int_(v, f"{key}.{name}", RLIM_INFINITY) for v in pair)
        if hard != RLIM_INFINITY and (soft == RLIM_INFINITY or soft > hard):
            raise r.fail(f"{key}.{name}", f"soft limit {soft} is above the hard {hard}")
        out.append((name, soft, hard))
    return tuple(out)


def _mount(r: _Reader, m: Any, key: str) -> Mount:
    if not isinstance(m, dict):
        raise r.fail(key, "must be a table")
    r.only(m, key, {"type", "target", "source", "readonly", "size"})
    mtype = r.str_(m.get("type"), f"{key}.type", MOUNT_TYPES)
    target = r.str_(m.get("target"), f"{key}.target")
    if not target.startswith("/") or "\0" in target or ".." in Path(target).parts:
        raise r.fail(f"{key}.target", f"must be an absolute path without '..', not {target!r}")
    source = None
    if mtype in ("bind", "volume"):
        source = r.str_(m.get("source"), f"{key}.source")
        if mtype == "bind" and not source.startswith("/"):
            raise r.fail(f"{key}.source", "a bind mount's source must be an absolute host path")
        if mtype == "volume" and (not source or "/" in source or source.startswith(".")):
            raise r.fail(f"{key}.source", "a volume name must be a plain name (no '/')")
    elif "source" in m:
        raise r.fail(f"{key}.source", "a tmpfs has no source")
    size = r.size(m["size"], f"{key}.size") if "size" in m else None
    if size is not None and mtype != "tmpfs":
        raise r.fail(f"{key}.size", "only a tmpfs has a size")
    readonly = r.bool_(m.get("readonly", False), f"{key}.readonly")
    return Mount(type=cast(Any, mtype), target=target, source=source, readonly=readonly,
                 size=size)


IMAGE_KEYS = {"recipe": {"recipe", "binaries"}, "debian": {"debian", "packages", "mirror"},
              "archive": {"archive"}, "engine": {"engine", "ref", "build"}}
BUILD_KEYS = {"context", "dockerfile", "args"}


def contained(base: Path, given: str) -> Path:
    """`given` (relative to the directory `base`, or absolute) with every symlink
    resolved; ValueError (why, one line) unless it stays inside `base`."""
    root = base.resolve()
    path = (root / given).resolve()  # (an absolute `given` replaces root)
    if not path.is_relative_to(root):
        raise ValueError(f"{given!r} resolves to {path}, outside {root} (a build context "
                         "and its Dockerfile stay inside the directory of the file that "
                         "names them)")
    return path


def _build(r: _Reader, b: Any, key: str) -> EngineBuild:
    if isinstance(b, str):
        b = {"context": b}
    if not isinstance(b, dict):
        raise r.fail(key, "must be a context directory or a table")
    r.only(b, key, BUILD_KEYS)
    if r.base is None:
        raise r.fail(key, "a build context is read relative to the scenario's file, "
                          "and this scenario has none")
    try:
        ctx = contained(r.base, r.str_(b.get("context", "."), f"{key}.context"))
    except ValueError as e:
        raise r.fail(f"{key}.context", str(e)) from None
    if not ctx.is_dir():
        raise r.fail(f"{key}.context", f"{ctx} is not a directory")
    dockerfile = r.str_(b.get("dockerfile", "Dockerfile"), f"{key}.dockerfile")
    try:
        found = contained(r.base, str(ctx / dockerfile))
    except ValueError as e:
        raise r.fail(f"{key}.dockerfile", str(e)) from None
    if not found.is_file():
        raise r.fail(f"{key}.dockerfile", f"{found} is not a file")
    args = b.get("args", {})
    if not isinstance(args, dict):
        raise r.fail(f"{key}.args", "must be a table of NAME = value")
    return EngineBuild(
        context=str(ctx),
        dockerfile=str(found.relative_to(ctx)) if found.is_relative_to(ctx) else str(found),
        args=tuple(sorted((str(k), r.str_(v, f"{key}.args.{k}")) for k, v in args.items())))


def _image(r: _Reader, img: Any, key: str = "workload.image") -> Source:
    if isinstance(img, str):
        img = {"recipe": img}
    if not isinstance(img, dict):
        raise r.fail(key, "must be a recipe name or a table")
    kinds = [k for k in IMAGE_KEYS if k in img] or ["engine" if "build" in img else "recipe"]
    if len(kinds) > 1:
        raise r.fail(key, f"names {' and '.join(kinds)}: give one of "
                          f"{', '.join(IMAGE_KEYS)}")
    kind = kinds[0]
    r.only(img, key, IMAGE_KEYS[kind])
    if kind == "debian":
        src = Debian(suite=r.str_(img["debian"], f"{key}.debian"),
                     packages=r.strings(img.get("packages", []), f"{key}.packages",
                                        nonempty=False),
                     mirror=r.str_(img.get("mirror", debian.DEFAULT_MIRROR),
                                   f"{key}.mirror"))
        problem = debian.check_names(src.suite, src.packages)
        if problem:
            raise r.fail(f"{key}.{'debian' if 'suite' in problem else 'packages'}", problem)
        return src
    if kind == "archive":
        path = Path(r.str_(img["archive"], f"{key}.archive"))
        if not path.is_absolute() and Path(r.source).is_file():
            path = Path(r.source).resolve().parent / path
        return Archive(str(path))
    if kind == "engine" and "build" in img:
        if "ref" in img:
            raise r.fail(f"{key}.ref", "an image is either built (build) or taken (ref)")
        engine = r.str_(img.get("engine", ""), f"{key}.engine", ("", "docker", "podman"))
        return EngineRef(engine=engine, build=_build(r, img["build"], f"{key}.build"))
    if kind == "engine":
        ref = r.str_(img.get("ref"), f"{key}.ref")
        if not ref or any(c.isspace() for c in ref):
            raise r.fail(f"{key}.ref", "must be an image reference such as name:tag")
        return EngineRef(engine=r.str_(img["engine"], f"{key}.engine"), ref=ref)
    recipe = Recipe(name=r.str_(img.get("recipe", "base"), f"{key}.recipe"),
                    binaries=r.strings(img.get("binaries", []), f"{key}.binaries",
                                       nonempty=False))
    if not recipe.name.replace("-", "").isalnum() or recipe.name != recipe.name.lower():
        raise r.fail(f"{key}.recipe", "must be lower-case letters, digits or '-'")
    return recipe


def _workload(r: _Reader, w: Mapping[str, Any], key: str) -> Workload:
    env = w.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise r.fail(f"{key}.env", "must be a table of strings")
    for k in env:
        if not k or "=" in k or "\0" in k or "\0" in env[k]:
            raise r.fail(f"{key}.env.{k}", "is not a valid environment variable")
    workdir = r.str_(w["workdir"], f"{key}.workdir") if "workdir" in w else None
    if workdir is not None and (not workdir.startswith("/") or ".." in workdir.split("/")):
        raise r.fail(f"{key}.workdir", "must be an absolute path without '..'")
    user = r.str_(w["user"], f"{key}.user") if "user" in w else None
    if user is not None and (not user or any(c.isspace() for c in user)):
        raise r.fail(f"{key}.user", "must be a user name or uid, optionally :group")
    interval = r.num(w.get("probe_interval", 0.01), f"{key}.probe_interval")
    if interval > 10:
        raise r.fail(f"{key}.probe_interval", "must be at most 10 (seconds)")
    return Workload(
        image=_image(r, w.get("image", {}), f"{key}.image"),
        argv=r.strings(w["argv"], f"{key}.argv") if "argv" in w else None,
        entrypoint=r.strings(w["entrypoint"], f"{key}.entrypoint", nonempty=False)
        if "entrypoint" in w else None,
        readiness=r.readiness(w.get("readiness", "marker"), f"{key}.readiness"),
        probe_interval=interval, env=tuple(sorted(env.items())), workdir=workdir, user=user)


def _port(r: _Reader, value: Any, key: str) -> Port:
    """A published port as compose writes it: "HOST:CONTAINER[/proto]", or the container
    port alone (published on a port the engine picks)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else \
        r.str_(value, key)
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise r.fail(key, f"protocol must be tcp or udp, not {proto!r}")
    host, _, cont = body.rpartition(":")
    if "-" in body or host.count(":"):
        raise r.fail(key, f"{text!r}: port ranges and host addresses are not supported")

    def num(t: str) -> int:
        if not t.isdigit() or not 0 < int(t) < 65536:
            raise r.fail(key, f"{text!r}: a port is a number from 1 to 65535")
        return int(t)

    return Port(container=num(cont), host=num(host) if host else 0, protocol=proto)


def _healthcheck(r: _Reader, h: Any, key: str) -> Healthcheck:
    if not isinstance(h, dict):
        raise r.fail(key, "must be a table")
    r.only(h, key, {"test", "interval", "timeout", "retries", "start_period"})
    test = r.strings(h.get("test"), f"{key}.test")
    if test[0] == "CMD" and len(test) > 1:
        argv = test[1:]
    elif test[0] == "CMD-SHELL" and len(test) == 2:
        argv = ("/bin/sh", "-c", test[1])
    else:
        raise r.fail(f"{key}.test", 'must be ["CMD", argv...] or ["CMD-SHELL", "command"]')
    d = Healthcheck(test=argv)
    return Healthcheck(
        test=argv, interval=r.num(h.get("interval", d.interval), f"{key}.interval"),
        timeout=r.num(h.get("timeout", d.timeout), f"{key}.timeout"),
        retries=r.int_(h.get("retries", d.retries), f"{key}.retries", 1),
        start_period=r.num(h.get("start_period", d.start_period), f"{key}.start_period",
                           positive=False))


def _service(r: _Reader, data: Any, key: str) -> Service:
    if not isinstance(data, dict):
        raise r.fail(key, "must be a table ([[services]])")
    name = r.str_(data.get("name"), f"{key}.name")
    if not name or not name.replace("-", "").replace("_", "").isalnum() or \
            name != name.lower() or len(name) > 32:
        raise r.fail(f"{key}.name", f"must be lower-case letters, digits, '-' or '_' (at "
                                    f"most 32), not {name!r}")
    key = f"services.{name}"
    r.only(data, key, SERVICE_KEYS)
    mounts_raw = data.get("mounts", [])
    if not isinstance(mounts_raw, list):
        raise r.fail(f"{key}.mounts", "must be a list of tables")
    mounts = tuple(_mount(r, m, f"{key}.mounts[{i}]") for i, m in enumerate(mounts_raw))
    ports_raw = data.get("ports", [])
    expose_raw = data.get("expose", [])
    if not isinstance(ports_raw, list) or not isinstance(expose_raw, list):
        raise r.fail(f"{key}.{'ports' if not isinstance(ports_raw, list) else 'expose'}",
                     "must be a list")
    ports = tuple(_port(r, p, f"{key}.ports[{i}]") for i, p in enumerate(ports_raw))
    ports += tuple(Port(container=_port(r, p, f"{key}.expose[{i}]").container)
                   for i, p in enumerate(expose_raw))
    deps = data.get("depends_on", {})
    if not isinstance(deps, dict):
        raise r.fail(f"{key}.depends_on", "must be a table of service = condition")
    depends = tuple((d, r.str_(c, f"{key}.depends_on.{d}", CONDITIONS))
                    for d, c in deps.items())
    networks = r.strings(data.get("networks", ["default"]), f"{key}.networks")
    aliases = r.strings(data.get("aliases", []), f"{key}.aliases", nonempty=False)
    for k, names in (("networks", networks), ("aliases", aliases)):
        for n in names:
            if not HOST_NAME.fullmatch(n):
                raise r.fail(f"{key}.{k}", f"{n!r}: a name is lower-case letters, digits, "
                                           "'-', '_' or '.' (at most 63)")
        if len(set(names)) != len(names):
            raise r.fail(f"{key}.{k}", f"names {_dup(list(names))!r} twice")
    workload = _workload(r, data, key)
    if workload.readiness == "exit":
        raise r.fail(f"{key}.readiness", "a service keeps running: marker, tcp, http or log")
    return Service(
        name=name, workload=workload,
        limits=_limits(r, data, f"{key}.limits"), mounts=mounts, ports=ports,
        depends_on=depends, networks=networks, aliases=aliases,
        healthcheck=_healthcheck(r, data["healthcheck"], f"{key}.healthcheck")
        if "healthcheck" in data else None)


def _stack(r: _Reader, services: tuple[Service, ...], front: str | None,
           key: str = "stack.front") -> tuple[tuple[Service, ...], str]:
    """The services in dependency order and the front, checked: names unique, every
    dependency known, no cycle, service_healthy only on a service with a healthcheck."""
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise r.fail("services", f"two services are named {_dup(names)!r}")
    by = {s.name: s for s in services}
    for s in services:
        for dep, cond in s.depends_on:
            if dep not in by or dep == s.name:
                raise r.fail(f"services.{s.name}.depends_on.{dep}",
                             "is not another service of the stack")
            if cond == "service_healthy" and by[dep].healthcheck is None:
                raise r.fail(f"services.{s.name}.depends_on.{dep}",
                             f"service_healthy needs a healthcheck on {dep}")
    try:
        ordered = dependency_order(services)
    except ValueError as e:
        raise r.fail("services", str(e)) from None
    if front is None:
        needed = {d for s in services for d, _ in s.depends_on}
        roots = [n for n in names if n not in needed]
        if len(roots) != 1:
            raise r.fail(key, "name the front service (the one whose readiness ends the "
                              f"stack's start); candidates: {', '.join(roots)}")
        front = roots[0]
    if front not in by:
        raise r.fail(key, f"{front!r} is not a service of the stack")
    return ordered, front


def _dup(names: list[str]) -> str:
    return next(n for n in names if names.count(n) > 1)


def _variant_value(r: _Reader, key: str, value: Any) -> Any:
    parse: dict[str, Callable[[Any, str], Any]] = {
        "network": lambda v, k: r.str_(v, k, SCENARIO_NETWORKS),
        "limits.cpus": r.num,
        "limits.memory": r.size,
        "limits.pids": lambda v, k: r.int_(v, k, 1),
        "limits.cpuset": lambda v, k: _cpuset(r, v, k),
        "workload.argv": r.strings,
        "workload.readiness": r.readiness,
        "placement": lambda v, k: r.str_(v, k, PLACEMENTS),
    }
    return parse[key](value, f"variants.{key}")


def _variants(r: _Reader, data: Any) -> tuple[Variant, ...]:
    if data is None:
        return (Variant("default"),)
    if not isinstance(data, dict):
        raise r.fail("variants", "must be a table of key = [values]")
    r.only(_flatten(data), "variants", set(VARIANT_KEYS))
    axes: list[list[tuple[str, Any]]] = []
    for key, values in sorted(_flatten(data).items()):
        if not isinstance(values, list) or not values:
            raise r.fail(f"variants.{key}", "must be a non-empty list of values")
        axes.append([(key, _variant_value(r, key, v)) for v in values])
    out = []
    for combo in itertools.product(*axes):
        name = ",".join(f"{k}={_show(v)}" for k, v in combo)
        out.append(Variant(name=name, overrides=tuple(combo)))
    if len({v.name for v in out}) != len(out):
        raise r.fail("variants", "has duplicate values")
    return tuple(out)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _show(v: Any) -> str:
    if isinstance(v, tuple | list):
        return " ".join(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


TOP_KEYS = {"name", "description", "study", "backends", "workload", "limits", "network",
            "mounts", "sampling", "params", "variants", "services", "stack"}
WORKLOAD_KEYS = {"image", "argv", "entrypoint", "readiness", "probe_interval", "env",
                 "workdir", "user"}
HOST_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")  # a network's or a host name's
SERVICE_KEYS = WORKLOAD_KEYS - {"probe_interval"} | {
    "name", "limits", "mounts", "ports", "expose", "depends_on", "healthcheck", "networks",
    "aliases"}


def parse(data: Mapping[str, Any], source: str, *, resumed: bool = False) -> Scenario:
    """Build a Scenario from parsed TOML; every problem names `source` and the key.

    `resumed`: the TOML is a run's own record (`bench run --resume`), the only place
    `[stack] services_from` may come from: it names the compose file whose directory the
    services' build contexts are read from (and cannot leave), so a scenario file that
    set it could point the builds at any host directory."""
    r = _Reader(source)
    r.only(data, "", TOP_KEYS)
    name = r.str_(data.get("name"), "name")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise r.fail("name", f"must be letters, digits, '-' or '_', not {name!r}")
    description = r.str_(data.get("description", ""), "description")
    study = r.str_(data.get("study", name), "study")
    backends = r.strings(data["backends"], "backends") if "backends" in data else ()
    if len(set(backends)) != len(backends):
        raise r.fail("backends", "lists a backend twice")

    workload = _workload(r, r.table(data, "workload", WORKLOAD_KEYS), "workload")
    services: tuple[Service, ...] = ()
    front = ""
    if "services" in data:
        raw_services = data["services"]
        if not isinstance(raw_services, list) or not raw_services:
            raise r.fail("services", "must be a non-empty array of tables ([[services]])")
        if "workload" in data:
            raise r.fail("workload", "a stack's workloads are its [[services]]")
        st = r.table(data, "stack", {"front", "services_from"})
        if "services_from" in st and not resumed:
            raise r.fail("stack.services_from", "is set by bench for a resumed run (the "
                         "compose file the services came from), not in a scenario file")
        # (services a compose file gave: their build contexts are read from its directory)
        rs = _Reader(source, Path(r.str_(st["services_from"], "stack.services_from"))
                     .resolve().parent) if "services_from" in st else r
        services, front = _stack(r, tuple(_service(rs, sv, f"services[{i}]")
                                          for i, sv in enumerate(raw_services)),
                                 r.str_(st["front"], "stack.front") if "front" in st else None)
        # The front's workload stands for the stack where one workload is expected (the
        # result's image, the readiness checks).
        workload = next(sv for sv in services if sv.name == front).workload
    elif "stack" in data:
        raise r.fail("stack", "only a scenario with [[services]] has a [stack] table")
    limits = _limits(r, data, "limits")
    network = r.str_(data.get("network", "bridge" if services else "none"), "network",
                     SCENARIO_NETWORKS)
    if services and network != "bridge":
        raise r.fail("network", "a stack's services are on a private network of their own "
                                "(bridge)")
    mounts_raw = data.get("mounts", [])
    if not isinstance(mounts_raw, list):
        raise r.fail("mounts", "must be an array of tables ([[mounts]])")
    mounts = tuple(_mount(r, m, f"mounts[{i}]") for i, m in enumerate(mounts_raw))
    if len({m.target for m in mounts}) != len(mounts):
        raise r.fail("mounts", "two mounts have the same target")

    s = r.table(data, "sampling", {"warmups", "min_samples", "max_samples", "target_ci",
                                   "time_budget", "timeout", "metric"})
    d = Sampling()
    sampling = Sampling(
        warmups=r.int_(s.get("warmups", d.warmups), "sampling.warmups"),
        min_samples=r.int_(s.get("min_samples", d.min_samples), "sampling.min_samples", 1),
        max_samples=r.int_(s.get("max_samples", d.max_samples), "sampling.max_samples", 1),
        target_ci=r.num(s.get("target_ci", d.target_ci), "sampling.target_ci"),
        time_budget=r.num(s.get("time_budget", d.time_budget), "sampling.time_budget"),
        timeout=r.num(s.get("timeout", d.timeout), "sampling.timeout"),
        metric=r.str_(s.get("metric", d.metric), "sampling.metric"),
    )
    if sampling.max_samples < sampling.min_samples:
        raise r.fail("sampling.max_samples", f"must be >= min_samples ({sampling.min_samples})")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise r.fail("params", "must be a table")
    variants = _variants(r, data.get("variants"))
    if not services and any(k == "placement" for v in variants for k, _ in v.overrides):
        raise r.fail("variants.placement", "only a stack ([[services]]) has placements")
    return Scenario(name=name, source=source, description=description, study=study,
                    backends=backends, workload=workload, limits=limits, network=network,
                    mounts=mounts, sampling=sampling, params=tuple(sorted(params.items())),
                    variants=variants, raw=data, services=services, front=front)


def with_services(scen: Scenario, services: list[dict[str, Any]], front: str | None,
                  source: str) -> Scenario:
    """`scen` with its stack replaced by `services` (tables as [[services]] has them, e.g.
    translated from a compose file, `source`, which problems name). The raw TOML keeps
    them, so a resumed run restores the same stack."""
    if not scen.services:
        raise ScenarioError(scen.source, "services", "the scenario is not a stack: it "
                            "takes no services from elsewhere")
    r = _Reader(source)
    ordered, front = _stack(r, tuple(_service(r, sv, f"services[{i}]")
                                     for i, sv in enumerate(services)), front,
                            "x-cvbench.front")
    raw = {**scen.raw, "services": services,
           "stack": {**scen.raw.get("stack", {}), "front": front, "services_from": source},
           "description": f"{scen.description} (services from {source})"}
    return replace(scen, services=ordered, front=front, raw=raw,
                   description=raw["description"],
                   workload=next(sv for sv in ordered if sv.name == front).workload)

