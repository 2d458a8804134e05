"""Registry of backends: the entry-point group "cvbench.runtimes".

A backend name is `<base>` or `<base>:<flavour>` (docker:crun, oci:runc, libvirt:microvm).
The base names come from entry points; a class lists its flavours in `flavours`.
Nothing else in the project chooses a backend by name.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from harness.core.errors import UsageError
from runtimes.base import NO_HOOKS, Hooks, Runtime, RuntimeClass

GROUP = "cvbench.runtimes"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def _load(base: str) -> RuntimeClass:
    cls = _entry_points()[base].load()
    if not isinstance(getattr(cls, "flavours", None), tuple) or not callable(cls):
        raise UsageError(f"entry point {base!r} of {GROUP} is not a backend class")
    # Each backend module holds its class to RuntimeClass statically (mypy); the entry
    # point only names it.
    return cast(RuntimeClass, cls)


def base_names() -> list[str]:
    return sorted(_entry_points())


def all_names() -> list[str]:
    """Every backend name, flavours included, in a stable order."""
    out: list[str] = []
    for base in base_names():
        out.append(base)
        out.extend(f"{base}:{f}" for f in _load(base).flavours)
    return out


def split(name: str) -> tuple[str, str | None]:
    base, _, flavour = name.partition(":")
    return base, (flavour or None)


def known(name: str) -> bool:
    base, flavour = split(name)
    if base not in _entry_points():
        return False
    return flavour is None or flavour in _load(base).flavours


def unknown(name: str) -> str | None:
    """Why `name` is no backend (listing the known ones), or None if it is one."""
    if known(name):
        return None
    return f"unknown backend {name!r}; known backends: {', '.join(all_names())}"


def check(name: str) -> str:
    """`name` if it is a backend; else a UsageError saying `unknown(name)`."""
    problem = unknown(name)
    if problem:
        raise UsageError(problem)
    return name


def get(name: str, hooks: Hooks | None = None) -> Runtime:
    """The backend called `name` (see check), lent the orchestration's `hooks`."""
    base, flavour = split(check(name))
    return _load(base)(flavour, hooks=hooks or NO_HOOKS)
