"""A compose file as a stack: `bench run stack --compose compose.yaml`.

The services of a compose file are translated into the scenario's [[services]] tables
and checked by the scenario's own parser, so a compose stack and a TOML stack are the
same thing once read. The supported subset (docs/stacks.md):

  top level   services, volumes (names only), networks (driver bridge; any number),
              both as a mapping or as a list of names, version and name (ignored),
              x-cvbench (front = "service")
  a service   image, build (a context, or context, dockerfile, args), container_name,
              links, command, entrypoint, environment, user, working_dir, ports,
              expose, volumes (named, bind, long syntax of both and of tmpfs), tmpfs,
              depends_on (list, or condition service_started | service_healthy |
              service_completed_successfully),
              healthcheck (test CMD | CMD-SHELL | a string, interval, timeout, retries,
              start_period), cpus, mem_limit, networks (declared ones, no options),
              x-cvbench (readiness = "http:80/" ...)

Anything else is refused with one line naming the file, the service and the key. An
`image:` is looked up in the local docker store, then in Podman's (no registry is
asked), and becomes an engine image source: every backend runs its digest. A `build:`
becomes an engine source that the run builds (harness.session.build_image); its context
and Dockerfile must resolve inside the compose file's directory.

Every string value is interpolated first, by the compose specification's rules: $VAR,
${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt},
${VAR+alt} (defaults and errors interpolated in turn), $$ a literal $; the values come
from the process environment over a `.env` file beside the compose file (read by
python-dotenv). An unset variable without a default is the empty string, as compose
has it; a required one that is missing is one line naming the field and the variable.
A name alone under `environment` takes its value from there too (unset: left out).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

from harness.core.errors import ScenarioError
from harness.scenario import Scenario, with_services
from harness.scenario.parser import HOST_NAME, contained

TOP = {"version", "name", "services", "volumes", "networks"}
SERVICE = {"image", "build", "container_name", "links", "command", "entrypoint",
           "environment", "user", "working_dir", "ports", "expose", "volumes", "tmpfs",
           "depends_on", "healthcheck", "cpus", "mem_limit", "networks", "x-cvbench"}
HEALTH = {"test", "interval", "timeout", "retries", "start_period"}
BUILD = {"context", "dockerfile", "args"}
ENGINES = ("docker", "podman")
STACK_IMAGES = "cvbench/stack-"  # the example's images, which scripts/stack-images loads
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


# --- interpolation (the compose specification's rules) -----------------------------------

class Missing(Exception):
    """A required variable (${VAR?err}, ${VAR:?err}) is unset (or empty, with ':')."""

    def __init__(self, var: str, message: str) -> None:
        super().__init__(message)
        self.var = var


class Invalid(Exception):
    """Not a valid template ("$" followed by neither $, { nor a name; "${" unclosed)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with its variables replaced from `env`."""
    out: list[str] = []
    i = 0
    while (j := text.find("$", i)) >= 0:
        out.append(text[i:j])
        nxt = text[j + 1:j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing(text, j + 2)
            out.append(_braced(text[j + 2:end], env))
            i = end + 1
        elif m := _NAME.match(text, j + 1):
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            raise Invalid(f"'$' at character {j + 1} is followed by neither a name, '{{' "
                          "nor '$' (write $$ for a literal $)")
    return "".join(out) + text[i:]


def _closing(text: str, start: int) -> int:
    """The index of the '}' that closes a '${' whose body starts at `start`."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise Invalid("'${' is not closed by '}'")


def _braced(body: str, env: Mapping[str, str]) -> str:
    m = _NAME.match(body)
    if not m:
        raise Invalid(f"'${{{body}}}': a variable name is letters, digits and '_'")
    name, rest = m.group(), body[m.end():]
    if not rest:
        return env.get(name, "")
    op = next((o for o in (":-", ":?", ":+", "-", "?", "+") if rest.startswith(o)), None)
    if op is None:
        raise Invalid(f"'${{{body}}}': after the name comes '}}', or one of :- - :? ? :+ +")
    arg = rest[len(op):]
    value = env.get(name)
    given = bool(value) if op.startswith(":") else value is not None
    if op.endswith("-"):
        return value if given and value is not None else interpolate(arg, env)
    if op.endswith("+"):
        return interpolate(arg, env) if given else ""
    if given and value is not None:
        return value
    why = interpolate(arg, env) or ("is not set" if op == "?" else "is not set or empty")
    raise Missing(name, why)


def environment(compose_file: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a compose file is interpolated with: `env` (default: the process
    environment) over the `.env` file beside it, as compose reads them."""
    dotenv = compose_file.parent / ".env"
    found = {k: v for k, v in dotenv_values(dotenv).items() if v is not None} \
        if dotenv.is_file() else {}
    return {**found, **(os.environ if env is None else env)}

# engine, ref -> None (found) or why not; the orchestration passes the store look-up in
Lookup = Callable[[str, str], str | None]


class _Compose:
    def __init__(self, path: Path, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.source = str(path)
        self.env: Mapping[str, str] = env or {}  # what it is interpolated with

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, key, message)

    def text(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, f"must be a string, not {type(value).__name__}")
        return str(value)

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


def read(path: Path, scen: Scenario, lookup: Lookup,
         env: Mapping[str, str] | None = None) -> Scenario:
    """`scen` (a stack scenario: sampling, backends, placements) with the services of the
    compose file at `path`, interpolated with `env` (default: the process environment)
    over its `.env`."""
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
    c.env = environment(path, env)
    doc = _interpolated(c, doc, "", c.env)
    top = c.only(doc, "", TOP | {k for k in (doc or {}) if str(k).startswith("x-")}
                 if isinstance(doc, dict) else TOP, "top-level")
    services = top.get("services")
    if not isinstance(services, dict) or not services:
        raise c.fail("services", "must be a non-empty mapping of services")
    volumes = _names(c, top.get("volumes"), "volumes", "volume options (driver, external, "
                     "...) are not supported: a volume is the backend's own")
    networks = _networks(c, top.get("networks"))
    ext = c.only(top.get("x-cvbench") or {}, "x-cvbench", {"front"}, "x-cvbench")
    front = c.text(ext["front"], "x-cvbench.front") if "front" in ext else None
    tables = {str(name): _service(c, str(name), body, volumes, networks, lookup)
              for name, body in services.items()}
    _links(c, tables)
    return with_services(scen, list(tables.values()), front, c.source)


def _interpolated(c: _Compose, data: Any, key: str, env: Mapping[str, str]) -> Any:
    """Every string value of `data` interpolated (keys are not, as compose has it)."""
    if isinstance(data, str):
        try:
            return interpolate(data, env)
        except Missing as e:
            raise c.fail(key, f"variable {e.var} is required: {e}") from None
        except Invalid as e:
            raise c.fail(key, f"invalid interpolation: {e}") from None
    if isinstance(data, dict):
        return {k: _interpolated(c, v, f"{key}.{k}" if key else str(k), env)
                for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolated(c, v, f"{key}[{i}]", env) for i, v in enumerate(data)]
    return data


def _names(c: _Compose, data: Any, key: str, no_options: str) -> dict[str, Any]:
    """Declared names (volumes, networks) and their options: a mapping, or a list of
    names (as the seed writes them)."""
    if data is None:
        return {}
    if isinstance(data, list):
        data = {c.text(n, f"{key}[{i}]"): None for i, n in enumerate(data)}
    if not isinstance(data, dict):
        raise c.fail(key, "must be a mapping of names (or a list of names)")
    for name, opts in data.items():
        if opts and no_options:
            raise c.fail(f"{key}.{name}", no_options)
    return {str(n): o for n, o in data.items()}


def _networks(c: _Compose, data: Any) -> set[str]:
    """The stack's networks: each declared with no options, or `driver: bridge`."""
    nets = _names(c, data, "networks", "")
    for name, opts in nets.items():
        c.only(opts or {}, f"networks.{name}", {"driver"}, "network")
        if (opts or {}).get("driver", "bridge") != "bridge":
            raise c.fail(f"networks.{name}.driver", "only bridge is supported")
    return set(nets) | {"default"}


def _links(c: _Compose, tables: dict[str, dict[str, Any]]) -> None:
    """`links: [SERVICE, SERVICE:ALIAS]`: the service waits for SERVICE to start (as
    compose orders links) and SERVICE answers to ALIAS, on the networks it shares with
    the linking one (cvbench gives an alias to all, not to the linking service alone)."""
    for name, t in tables.items():
        for i, link in enumerate(t.pop("links", [])):
            key = f"services.{name}.links[{i}]"
            target, _, alias = c.text(link, key).partition(":")
            if target not in tables or target == name:
                raise c.fail(key, f"{target!r} is not another service of the stack")
            if not set(tables[target]["networks"]) & set(t["networks"]):
                raise c.fail(key, f"{target} shares no network with {name}: a link "
                                  "cannot reach it")
            t.setdefault("depends_on", {}).setdefault(target, "service_started")
            if alias and alias != target and alias not in tables[target]["aliases"]:
                tables[target]["aliases"].append(alias)


def _service(c: _Compose, name: str, body: Any, volumes: dict[str, Any],
             networks: set[str], lookup: Lookup) -> dict[str, Any]:
    key = f"services.{name}"
    s = c.only(body, key, SERVICE, "service")
    out: dict[str, Any] = {"name": name}
    if "build" in s:  # (with an image: compose tags the build so; cvbench builds alone)
        out["image"] = {"build": _build(c, s["build"], f"{key}.build")}
    elif "image" in s:
        out["image"] = _image(c, c.text(s["image"], f"{key}.image"), f"{key}.image", lookup)
    else:
        raise c.fail(f"{key}.image", "a service needs an image or a build")
    out["aliases"] = []
    if "container_name" in s:  # (engines' DNS answers it on the container's networks)
        out["aliases"].append(c.text(s["container_name"], f"{key}.container_name"))
        if not HOST_NAME.fullmatch(out["aliases"][0]):
            raise c.fail(f"{key}.container_name", "a name is lower-case letters, digits, "
                                                  "'-', '_' or '.' (at most 63)")
    if "links" in s:
        out["links"] = _list(c, s["links"], f"{key}.links")
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
    on = _names(c, s.get("networks", ["default"]), f"{key}.networks",
                "network options (aliases, ipv4_address...) are not supported")
    for n in on:
        if n not in networks:
            raise c.fail(f"{key}.networks", f"{n!r} is not declared under the top-level "
                                            "networks")
    out["networks"] = list(on) or ["default"]
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
    hint = " (the example's images: .venv/bin/python scripts/stack-images loads them)" \
        if ref.startswith(STACK_IMAGES) else ""
    raise c.fail(key, f"{ref} is in no local store (no registry is asked){hint}: "
                      + "; ".join(why))


def _build(c: _Compose, b: Any, key: str) -> dict[str, Any]:
    """`build: DIR` or `{context, dockerfile, args}`: the context (and the Dockerfile)
    resolved inside the compose file's directory, symlinks followed there."""
    if not isinstance(b, dict):
        b = {"context": c.text(b, key)}
    b = c.only(b, key, BUILD, "build")
    try:
        ctx = contained(c.path.parent, c.text(b.get("context", "."), f"{key}.context"))
    except ValueError as e:
        raise c.fail(f"{key}.context", str(e)) from None
    out: dict[str, Any] = {"context": str(ctx)}
    if "dockerfile" in b:
        out["dockerfile"] = c.text(b["dockerfile"], f"{key}.dockerfile")
        try:
            contained(c.path.parent, str(ctx / out["dockerfile"]))
        except ValueError as e:
            raise c.fail(f"{key}.dockerfile", str(e)) from None
    args = b.get("args", {})
    if isinstance(args, list):  # (NAME alone: from the shell in compose; left unset here)
        args = {k: v if sep else None for k, sep, v in
                (c.text(a, f"{key}.args[{i}]").partition("=") for i, a in enumerate(args))}
    if not isinstance(args, dict):
        raise c.fail(f"{key}.args", "must be a mapping or a list of NAME=value")
    out["args"] = {str(k): c.text(v, f"{key}.args.{k}") for k, v in args.items()
                   if v is not None}
    return out


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
        if v is None:  # a name alone: its value here, as compose takes it (unset: left out)
            if str(k) in c.env:
                out[str(k)] = c.env[str(k)]
            continue
        out[str(k)] = "true" if v is True else "false" if v is False else \
            c.text(v, f"{key}.{k}")
    return out


def _volume(c: _Compose, v: Any, key: str, named: Mapping[str, Any]) -> dict[str, Any]:
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
