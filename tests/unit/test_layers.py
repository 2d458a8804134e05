"""Imports go down only (DESIGN.md, "Layers"): every import in harness/ and runtimes/,
including those inside functions, lands on the importer's layer or one below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (module prefix, layer): the longest matching prefix decides. A module of the project
# that matches none fails the test, so a new module has to be placed on purpose.
LAYERS = {
    "harness": 0,  # the package itself: its version
    "harness.core": 1,  # errors, units, image, probes, hostinfo, result records
    "runtimes": 2,  # the backends
    "harness.scenario": 3, "harness.validate": 3, "harness.sampling": 3, "harness.plan": 3,
    "harness.bookkeeping": 3, "harness.session": 3, "harness.studies": 3, "harness.results": 3,
    "harness.stats": 3, "harness.compose": 3, "harness.data": 3,
    "harness.fleet": 3,  # many hosts through Ansible: prepares, runs the playbook, fetches
    "harness.report": 4, "harness.capacity": 4, "harness.compare": 4,
    "harness.baseline": 4, "harness.history": 4,
    "harness.cli": 5, "harness.fleet.cli": 5,
}


def layer(module: str) -> int | None:
    best = None
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and \
                (best is None or len(prefix) > len(best[0])):
            best = (prefix, n)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every project import in `path`; `from pkg import name` counts as
    pkg.name where that is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                as_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (ROOT / Path(*sub.split("."))).is_dir()
                out.append((node.lineno, sub if as_module else node.module))
    return [(n, m) for n, m in out if m.split(".")[0] in ("harness", "runtimes")]


def sources() -> list[Path]:
    return sorted(p for d in ("harness", "runtimes") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_only(path: Path) -> None:
    me = module_name(path)
    mine = layer(me)
    assert mine is not None, f"{me}: place it on a layer in {__file__}"
    for line, target in imports(path):
        theirs = layer(target)
        assert theirs is not None, f"{me}:{line}: imports {target}, which is on no layer"
        assert theirs <= mine, (f"{path.relative_to(ROOT)}:{line}: {me} (layer {mine}) "
                                f"imports {target} (layer {theirs}), an upper layer")


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The test above can fail: a backend importing the runner is caught."""
    bad = ROOT / "runtimes" / "_layer_probe_tmp.py"
    bad.write_text("from harness.sampling import Runner\n")
    try:
        with pytest.raises(AssertionError, match="an upper layer"):
            test_imports_go_down_only(bad)
    finally:
        bad.unlink()


def test_capacity_plans_without_the_report() -> None:
    """Planning (harness.capacity) draws from results, not from the report's modules: a
    plan is data, showing it is harness.report's."""
    for path in sorted((ROOT / "harness" / "capacity").rglob("*.py")):
        assert not [m for _, m in imports(path) if m.startswith("harness.report")], path
