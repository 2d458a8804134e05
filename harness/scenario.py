"""Scenario model: frozen dataclasses loaded from TOML, variants (a matrix) expanded.

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

Parsing is strict: an unknown key, a wrong type or a bad value raises ScenarioError
naming the file and the dotted key; TOML syntax errors name the line.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from harness.core import debian
from harness.core import image as image_mod
from harness.core.errors import ScenarioError, UsageError
from harness.core.image import Archive, Debian, EngineRef, Image, Recipe, Source
from harness.core.probes import serving
from harness.core.units import parse_size
from runtimes.base import (
    MOUNT_TYPES,
    NETWORK_MODES,
    RLIM_INFINITY,
    RLIMIT_NAMES,
    Limits,
    Mount,
    cpu_list,
)

T = TypeVar("T")

# Keys a variant may override, and how to parse each.
# "publish": the instance on its bridge, reached through ports published on the host
# (the study says which: its server's); instances get network "bridge" and the ports.
SCENARIO_NETWORKS = (*NETWORK_MODES, "publish")
VARIANT_KEYS = ("network", "limits.cpus", "limits.memory", "limits.pids", "limits.cpuset",
                "workload.argv", "workload.readiness")


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

    def config(self, variant: Variant) -> Config:
        workload, limits, network = self.workload, self.limits, self.network
        for key, value in variant.overrides:
            if key == "network":
                network = value
            elif key.startswith("limits."):
                limits = replace(limits, **{key.split(".", 1)[1]: value})
            elif key == "workload.argv":
                workload = replace(workload, argv=value)
            elif key == "workload.readiness":
                workload = replace(workload, readiness=value)
        return Config(workload=workload, limits=limits, network=network, mounts=self.mounts)

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
        }


# --- strict field readers -------------------------------------------------------------

class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

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
              "archive": {"archive"}, "engine": {"engine", "ref"}}


def _image(r: _Reader, img: Any) -> Source:
    key = "workload.image"
    if isinstance(img, str):
        img = {"recipe": img}
    if not isinstance(img, dict):
        raise r.fail(key, "must be a recipe name or a table")
    kinds = [k for k in IMAGE_KEYS if k in img] or ["recipe"]
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


def _variant_value(r: _Reader, key: str, value: Any) -> Any:
    parse: dict[str, Callable[[Any, str], Any]] = {
        "network": lambda v, k: r.str_(v, k, SCENARIO_NETWORKS),
        "limits.cpus": r.num,
        "limits.memory": r.size,
        "limits.pids": lambda v, k: r.int_(v, k, 1),
        "limits.cpuset": lambda v, k: _cpuset(r, v, k),
        "workload.argv": r.strings,
        "workload.readiness": r.readiness,
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
            "mounts", "sampling", "params", "variants"}


def parse(data: Mapping[str, Any], source: str) -> Scenario:
    """Build a Scenario from parsed TOML; every problem names `source` and the key."""
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

    w = r.table(data, "workload", {"image", "argv", "entrypoint", "readiness",
                                   "probe_interval", "env", "workdir", "user"})
    env = w.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise r.fail("workload.env", "must be a table of strings")
    for k in env:
        if not k or "=" in k or "\0" in k or "\0" in env[k]:
            raise r.fail(f"workload.env.{k}", "is not a valid environment variable")
    workdir = r.str_(w["workdir"], "workload.workdir") if "workdir" in w else None
    if workdir is not None and (not workdir.startswith("/") or ".." in workdir.split("/")):
        raise r.fail("workload.workdir", "must be an absolute path without '..'")
    user = r.str_(w["user"], "workload.user") if "user" in w else None
    if user is not None and (not user or any(c.isspace() for c in user)):
        raise r.fail("workload.user", "must be a user name or uid, optionally :group")
    interval = r.num(w.get("probe_interval", 0.01), "workload.probe_interval")
    if interval > 10:
        raise r.fail("workload.probe_interval", "must be at most 10 (seconds)")
    workload = Workload(
        image=_image(r, w.get("image", {})),
        argv=r.strings(w["argv"], "workload.argv") if "argv" in w else None,
        entrypoint=r.strings(w["entrypoint"], "workload.entrypoint", nonempty=False)
        if "entrypoint" in w else None,
        readiness=r.readiness(w.get("readiness", "marker"), "workload.readiness"),
        probe_interval=interval, env=tuple(sorted(env.items())), workdir=workdir, user=user)
    limits = _limits(r, data, "limits")
    network = r.str_(data.get("network", "none"), "network", SCENARIO_NETWORKS)
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
    return Scenario(name=name, source=source, description=description, study=study,
                    backends=backends, workload=workload, limits=limits, network=network,
                    mounts=mounts, sampling=sampling, params=tuple(sorted(params.items())),
                    variants=variants, raw=data)


def scenario_dirs() -> list[Path]:
    """Where named scenarios are looked up, first match first: $CVBENCH_SCENARIOS (a
    colon-separated list), ./scenarios, then the ones shipped with cvbench (package data;
    in a checkout, harness/scenarios links to scenarios/)."""
    dirs = [Path(p) for p in os.environ.get("CVBENCH_SCENARIOS", "").split(":") if p]
    dirs.append(Path.cwd() / "scenarios")
    dirs.append(Path(__file__).resolve().parent / "scenarios")
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in out:
            out.append(d.resolve())
    return out


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in scenario_dirs():
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise ScenarioError(name_or_path, "", "no such scenario file")
        return p
    known = available()
    if name_or_path not in known:
        raise ScenarioError(name_or_path, "", "no scenario of that name; known: "
                            + (", ".join(sorted(known)) or "none"))
    return known[name_or_path]


def load(name_or_path: str) -> Scenario:
    """Load a scenario by name (scenarios/<name>.toml) or path."""
    path = resolve(name_or_path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ScenarioError(source, "", f"cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScenarioError(source, "", f"not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(source, "", f"invalid TOML: {e}") from None
    return parse(data, source)


def from_header(header: Mapping[str, Any]) -> Scenario:
    """The scenario a result or journal was run with (for --resume): its TOML as parsed,
    with the sampling actually used (command-line overrides included)."""
    try:
        scen = parse(header["scenario_toml"], header["scenario"]["source"])
        return replace(scen, sampling=Sampling(**header["scenario"]["sampling"]))
    except (KeyError, TypeError) as e:
        raise ScenarioError(str(header.get("scenario", {}).get("source", "?")), "",
                            f"the run's scenario cannot be restored: {e}") from None
