"""A compose file as a stack: `bench run stack --compose compose.yaml`.

The services of a compose file are translated into the scenario's [[services]] tables
and checked by the scenario's own parser, so a compose stack and a TOML stack are the
same thing once read. The supported subset (docs/stacks.md):

  top level   services, volumes (names only), networks (at most one, driver bridge),
              version and name (ignored), x-cvbench (front = "service")
  a service   image, command, entrypoint, environment, user, working_dir, ports,
              expose, volumes (named, bind, long syntax of both and of tmpfs), tmpfs,
              depends_on (list, or condition service_started | service_healthy),
              healthcheck (test CMD | CMD-SHELL | a string, interval, timeout, retries,
              start_period), cpus, mem_limit, networks (the one network),
              x-cvbench (readiness = "http:80/" ...)

Anything else is refused with one line naming the file, the service and the key. An
`image:` is looked up in the local docker store, then in Podman's (no registry is
asked), and becomes an engine image source: every backend runs its digest.
Interpolation (`${VAR}`) is refused too; `$$` is a literal `$`, as compose reads it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import ScenarioError
from harness.scenario import Scenario, with_services

TOP = {"version", "name", "services", "volumes", "networks"}
SERVICE = {"image", "command", "entrypoint", "environment", "user", "working_dir", "ports",
           "expose", "volumes", "tmpfs", "depends_on", "healthcheck", "cpus", "mem_limit",
           "networks", "x-cvbench"}
HEALTH = {"test", "interval", "timeout", "retries", "start_period"}
ENGINES = ("docker", "podman")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_VAR = re.compile(r"\$(?!\$)")

# engine, ref -> None (found) or why not; the orchestration passes the store look-up in
Lookup = Callable[[str, str], str | None]


class _Compose:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = str(path)

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, key, message)

    def text(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, f"must be a string, not {type(value).__name__}")
        text = str(value)
        if _VAR.search(text.replace("$$", "")):
            raise self.fail(key, "variable interpolation ($VAR, ${VAR}) is not supported; "
                                 "write the value, or $$ for a literal $")
        return text.replace("$$", "$")

    def words(self, value: Any, key: str) -> list[str]:
        """A command: a list as it is, a string split as a shell would (compose's rule)."""
        if isinstance(value, list):
            return [self.text(v, f"{key}[{i}]") for i, v in enumerate(value)]
        try:
            return shlex.split(self.text(value, key))
        except ValueError as e:
            raise self.fail(key, f"cannot be split into words: {e}") from None

    def seconds(self, value: Any, key: str) -> float:
        """A compose duration ("1m30s", "500ms", "10s") in seconds."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        text = self.text(value, key).strip()
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise self.fail(key, f"{text!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)

    def only(self, data: Any, key: str, allowed: set[str], what: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a mapping, not {type(data).__name__}")
        for k in data:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else str(k),
                                f"unsupported {what} key (cvbench reads: "
                                f"{', '.join(sorted(allowed))})")
        return data


def read(path: Path, scen: Scenario, lookup: Lookup) -> Scenario:
    """`scen` (a stack scenario: sampling, backends, placements) with the services of the
    compose file at `path`."""
    c = _Compose(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise c.fail("", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise c.fail("", f"not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise c.fail("", f"invalid YAML: {str(e).splitlines()[0]}"
                     + (f" (line {mark.line + 1})" if mark else "")) from None
    top = c.only(doc, "", TOP | {k for k in (doc or {}) if str(k).startswith("x-")}
                 if isinstance(doc, dict) else TOP, "top-level")
    services = top.get("services")
    if not isinstance(services, dict) or not services:
        raise c.fail("services", "must be a non-empty mapping of services")
    volumes = _names(c, top.get("volumes"), "volumes")
    network = _network(c, top.get("networks"))
    ext = c.only(top.get("x-cvbench") or {}, "x-cvbench", {"front"}, "x-cvbench")
    front = c.text(ext["front"], "x-cvbench.front") if "front" in ext else None
    tables = [_service(c, str(name), body, volumes, network, lookup)
              for name, body in services.items()]
    return with_services(scen, tables, front, c.source)


def _names(c: _Compose, data: Any, key: str) -> set[str]:
    """Declared named volumes: a name with no options (drivers are not supported)."""
    if data is None:
        return set()
    for name, opts in c.only(data, key, set(data) if isinstance(data, dict) else set(),
                             key).items():
        if opts:
            raise c.fail(f"{key}.{name}", "volume options (driver, external, ...) are not "
                                          "supported: a volume is the backend's own")
    return {str(n) for n in data}


def _network(c: _Compose, data: Any) -> str | None:
    """The stack's one network: declared with no options, or `driver: bridge`."""
    if data is None:
        return None
    nets = c.only(data, "networks", set(data) if isinstance(data, dict) else set(), "")
    if len(nets) > 1:
        raise c.fail("networks", "one network per stack (every service on it)")
    for name, opts in nets.items():
        c.only(opts or {}, f"networks.{name}", {"driver"}, "network")
        if (opts or {}).get("driver", "bridge") != "bridge":
            raise c.fail(f"networks.{name}.driver", "only bridge is supported")
        return str(name)
    return None


def _service(c: _Compose, name: str, body: Any, volumes: set[str], network: str | None,
             lookup: Lookup) -> dict[str, Any]:
    key = f"services.{name}"
    s = c.only(body, key, SERVICE, "service")
    out: dict[str, Any] = {"name": name}
    if "image" not in s:
        raise c.fail(f"{key}.image", "is required (build: is not supported)")
    out["image"] = _image(c, c.text(s["image"], f"{key}.image"), f"{key}.image", lookup)
    if "command" in s:
        out["argv"] = c.words(s["command"], f"{key}.command")
    if "entrypoint" in s:
        out["entrypoint"] = c.words(s["entrypoint"], f"{key}.entrypoint")
    if "environment" in s:
        out["env"] = _environment(c, s["environment"], f"{key}.environment")
    if "user" in s:
        out["user"] = c.text(s["user"], f"{key}.user")
    if "working_dir" in s:
        out["workdir"] = c.text(s["working_dir"], f"{key}.working_dir")
    for k in ("ports", "expose"):
        if k in s:
            if not isinstance(s[k], list):
                raise c.fail(f"{key}.{k}", "must be a list")
            out[k] = [v if isinstance(v, int) else c.text(v, f"{key}.{k}[{i}]")
                      for i, v in enumerate(s[k])]
    mounts = [_volume(c, v, f"{key}.volumes[{i}]", volumes)
              for i, v in enumerate(_list(c, s.get("volumes", []), f"{key}.volumes"))]
    mounts += [_tmpfs(c, v, f"{key}.tmpfs[{i}]")
               for i, v in enumerate(_list(c, s.get("tmpfs", []), f"{key}.tmpfs"))]
    if mounts:
        out["mounts"] = mounts
    if "depends_on" in s:
        out["depends_on"] = _depends(c, s["depends_on"], f"{key}.depends_on")
    if "healthcheck" in s:
        out["healthcheck"] = _health(c, s["healthcheck"], f"{key}.healthcheck")
    limits: dict[str, Any] = {}
    if "cpus" in s:
        try:
            limits["cpus"] = float(c.text(s["cpus"], f"{key}.cpus"))
        except ValueError:
            raise c.fail(f"{key}.cpus", "must be a number of CPUs") from None
    if "mem_limit" in s:
        limits["memory"] = c.text(s["mem_limit"], f"{key}.mem_limit").upper() \
            if isinstance(s["mem_limit"], str) else s["mem_limit"]
    if limits:
        out["limits"] = limits
    if "networks" in s:
        nets = s["networks"]
        names = list(nets) if isinstance(nets, list | dict) else [nets]
        if isinstance(nets, dict) and any(nets.values()):
            raise c.fail(f"{key}.networks", "network options (aliases, ipv4_address...) "
                                            "are not supported")
        if any(n not in (network or "default", "default") for n in names):
            raise c.fail(f"{key}.networks", f"must be the stack's one network "
                                            f"({network or 'default'})")
    ext = c.only(s.get("x-cvbench") or {}, f"{key}.x-cvbench", {"readiness"}, "x-cvbench")
    if "readiness" in ext:
        out["readiness"] = c.text(ext["readiness"], f"{key}.x-cvbench.readiness")
    return out


def _image(c: _Compose, ref: str, key: str, lookup: Lookup) -> dict[str, str]:
    """The engine whose store holds `ref`: docker's first, then Podman's."""
    why: list[str] = []
    for engine in ENGINES:
        problem = lookup(engine, ref)
        if problem is None:
            return {"engine": engine, "ref": ref}
        why.append(f"{engine}: {problem}")
    raise c.fail(key, f"{ref} is in no local store (no registry is asked): "
                      + "; ".join(why))


def _list(c: _Compose, value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise c.fail(key, "must be a list")
    return value


def _environment(c: _Compose, env: Any, key: str) -> dict[str, str]:
    pairs: list[tuple[str, Any]]
    if isinstance(env, dict):
        pairs = list(env.items())
    elif isinstance(env, list):
        pairs = []
        for i, item in enumerate(env):
            k, sep, v = c.text(item, f"{key}[{i}]").partition("=")
            pairs.append((k, v if sep else None))
    else:
        raise c.fail(key, "must be a mapping or a list of NAME=value")
    out = {}
    for k, v in pairs:
        if v is None:
            raise c.fail(f"{key}.{k}", "a variable without a value (taken from the shell) "
                                       "is not supported; give its value")
        out[str(k)] = "true" if v is True else "false" if v is False else \
            c.text(v, f"{key}.{k}")
    return out


def _volume(c: _Compose, v: Any, key: str, named: set[str]) -> dict[str, Any]:
    if isinstance(v, dict):
        long = c.only(v, key, {"type", "source", "target", "read_only", "tmpfs"}, "volume")
        kind = c.text(long.get("type", "volume"), f"{key}.type")
        if kind == "tmpfs":
            return _tmpfs(c, long, key)
        if kind not in ("volume", "bind"):
            raise c.fail(f"{key}.type", f"{kind!r} is not supported (volume, bind, tmpfs)")
        source = c.text(long.get("source", ""), f"{key}.source")
        target = c.text(long.get("target", ""), f"{key}.target")
        readonly = bool(long.get("read_only", False))
    else:
        parts = c.text(v, key).split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise c.fail(key, "must be SOURCE:TARGET[:ro|rw] (an anonymous volume is not "
                              "supported)")
        source, target = parts[0], parts[1]
        readonly = len(parts) == 3 and parts[2] == "ro"
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    if kind == "bind":
        path = Path(source).expanduser()
        source = str(path if path.is_absolute() else (c.path.parent / path).resolve())
    elif source not in named:
        raise c.fail(key, f"volume {source!r} is not declared under the top-level volumes")
    return {"type": kind, "source": source, "target": target, "readonly": readonly}


def _tmpfs(c: _Compose, v: Any, key: str) -> dict[str, Any]:
    if isinstance(v, dict):
        size = (v.get("tmpfs") or {}).get("size")
        out: dict[str, Any] = {"type": "tmpfs", "target": c.text(v.get("target", ""),
                                                                 f"{key}.target")}
        if size is not None:
            out["size"] = size if isinstance(size, int) else c.text(size, key).upper()
        return out
    target, _, opts = c.text(v, key).partition(":")
    out = {"type": "tmpfs", "target": target}
    for opt in filter(None, opts.split(",")):
        k, _, val = opt.partition("=")
        if k != "size":
            raise c.fail(key, f"tmpfs option {k!r} is not supported (size)")
        out["size"] = val.upper()
    return out


def _depends(c: _Compose, deps: Any, key: str) -> dict[str, str]:
    if isinstance(deps, list):
        return {c.text(d, key): "service_started" for d in deps}
    out = {}
    for dep, opts in c.only(deps, key, set(deps) if isinstance(deps, dict) else set(),
                            "").items():
        o = c.only(opts or {}, f"{key}.{dep}", {"condition"}, "depends_on")
        out[str(dep)] = c.text(o.get("condition", "service_started"),
                               f"{key}.{dep}.condition")
    return out


def _health(c: _Compose, h: Any, key: str) -> dict[str, Any]:
    h = c.only(h, key, HEALTH, "healthcheck")
    test = h.get("test")
    out: dict[str, Any] = {
        "test": ["CMD-SHELL", c.text(test, f"{key}.test")] if isinstance(test, str)
        else [c.text(t, f"{key}.test[{i}]") for i, t in enumerate(_list(c, test,
                                                                        f"{key}.test"))]}
    for k in ("interval", "timeout", "start_period"):
        if k in h:
            out[k] = c.seconds(h[k], f"{key}.{k}")
    if "retries" in h:
        out["retries"] = h["retries"]
    return out
