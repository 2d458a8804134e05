"""Registry of backends: the entry-point group "cvbench.runtimes".

A backend name is `<base>` or `<base>:<flavour>` (docker:crun, oci:runc, libvirt:microvm).
The base names come from entry points; a class lists its flavours in `flavours`.
Nothing else in the project chooses a backend by name.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from harness.core.errors import UsageError
from runtimes.base import Runtime

GROUP = "cvbench.runtimes"


@cache
def _classes() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def base_names() -> list[str]:
    return sorted(_classes())


def _load(base: str) -> Any:
    return _classes()[base].load()


def all_names() -> list[str]:
    """Every backend name, flavours included, in a stable order."""
    out: list[str] = []
    for base in base_names():
        out.append(base)
        out.extend(f"{base}:{f}" for f in getattr(_load(base), "flavours", ()))
    return out


def split(name: str) -> tuple[str, str | None]:
    base, _, flavour = name.partition(":")
    return base, (flavour or None)


def known(name: str) -> bool:
    base, flavour = split(name)
    if base not in _classes():
        return False
    return flavour is None or flavour in getattr(_load(base), "flavours", ())


def get(name: str) -> Runtime:
    """The backend called `name`; an unknown name lists the known ones."""
    if not known(name):
        raise UsageError(f"unknown backend {name!r}; known backends: {', '.join(all_names())}")
    base, flavour = split(name)
    cls = _load(base)
    rt: Runtime = cls(flavour) if flavour else cls()
    return rt
