"""Studies and backends are plug-ins: found through their entry-point groups only, and each
one held statically (mypy) to its protocol by an annotated assignment in its module."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from harness import studies
from harness.report import claims, presentation
from runtimes import registry

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GROUPS = PYPROJECT["project"]["entry-points"]


def declared(group: str) -> dict[str, str]:
    return dict(GROUPS[group])


def test_the_installed_entry_points_are_pyprojects() -> None:
    """The editable install is current (a stale one hides a new study)."""
    for group in ("cvbench.studies", "cvbench.reports", "cvbench.runtimes"):
        assert {ep.name: ep.value for ep in entry_points(group=group)} == declared(group)


def test_the_studies_found_are_exactly_the_entry_points() -> None:
    assert studies.names() == sorted(declared("cvbench.studies"))
    for name in studies.names():
        assert studies.get(name).name == name


def test_no_module_under_studies_is_a_study_without_an_entry_point() -> None:
    """A study module (one defining STUDY) that no entry point names would be dead code."""
    named = {v.partition(":")[0] for v in declared("cvbench.studies").values()}
    for path in sorted((ROOT / "harness" / "studies").glob("*.py")):
        tree = ast.parse(path.read_text())
        defines = any(isinstance(n, ast.AnnAssign | ast.Assign) and "STUDY" in ast.dump(n)
                      for n in tree.body)
        module = f"harness.studies.{path.stem}"
        assert not defines or module in named, f"{module} defines STUDY; no entry point"


def _held_to(path: Path, attr: str, protocol: str) -> bool:
    """Whether `path` has `<name>: <protocol> = ...` whose value is or names `attr`
    (what makes mypy check the plug-in against its protocol)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.AnnAssign) and node.value is not None and \
                ast.unparse(node.annotation) == protocol:
            target = ast.unparse(node.target)
            if target == attr or ast.unparse(node.value) == attr:
                return True
    return False


def _module_file(module: str) -> Path:
    mod = import_module(module)
    assert mod.__file__ is not None
    return Path(mod.__file__)


@pytest.mark.parametrize("name", sorted(declared("cvbench.studies")))
def test_every_study_is_checked_by_mypy_against_the_protocol(name: str) -> None:
    module, _, attr = declared("cvbench.studies")[name].partition(":")
    assert _held_to(_module_file(module), attr, "Study"), \
        f"{module}: write `{attr}: Study = ...` so mypy checks it against the protocol"


@pytest.mark.parametrize("base", sorted(declared("cvbench.runtimes")))
def test_every_backend_is_checked_by_mypy_against_runtimeclass(base: str) -> None:
    module, _, attr = declared("cvbench.runtimes")[base].partition(":")
    assert _held_to(_module_file(module), attr, "RuntimeClass")
    assert base in registry.base_names()


def test_the_check_can_fail(tmp_path: Path) -> None:
    """A module that only defines its object, unannotated, is caught."""
    bare = tmp_path / "m.py"
    bare.write_text("class S:\n    pass\n\n\nSTUDY = S()\n")
    assert not _held_to(bare, "STUDY", "Study")
    bare.write_text("class S:\n    pass\n\n\nSTUDY: Study = S()\n")
    assert _held_to(bare, "STUDY", "Study")


def test_an_unknown_study_names_the_known_ones() -> None:
    with pytest.raises(Exception, match="unknown study 'nope'; known: cpu, db"):
        studies.get("nope")


def test_no_central_list_of_studies_in_the_code() -> None:
    """The study names appear in no list or dict literal of the orchestration or the
    report's assembly: they come from the entry points."""
    names = set(declared("cvbench.studies"))
    for rel in ("harness/session.py", "harness/validate.py", "harness/studies/__init__.py",
                "harness/report/render.py", "harness/report/apps.py",
                "harness/report/claims.py", "harness/report/charts.py",
                "harness/report/presentation.py"):
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict | ast.List | ast.Tuple | ast.Set):
                keys = node.keys if isinstance(node, ast.Dict) else node.elts
                found = {k.value for k in keys
                         if isinstance(k, ast.Constant) and k.value in names}
                assert len(found) < 3, f"{rel}:{node.lineno}: a list of studies {found}"


def test_the_presentations_found_are_exactly_the_entry_points() -> None:
    """Every presentation is of an installed study; the report orders them by rank."""
    found = presentation.found()
    assert set(found) == set(declared("cvbench.reports")) <= set(studies.names())
    ranks = [p.rank for p in found.values()]
    assert ranks == sorted(ranks)
    assert presentation.of("no-such-study").headline == (r".*",)


@pytest.mark.parametrize("name", sorted(declared("cvbench.reports")))
def test_every_presentation_is_typed(name: str) -> None:
    module, _, attr = declared("cvbench.reports")[name].partition(":")
    assert _held_to(_module_file(module), attr, "Presentation")


def test_the_application_claim_is_about_every_application_studys_throughput() -> None:
    """The claim's metric is derived from the presentations, not kept by hand."""
    claim = next(c for c in claims.seed() if c.id == claims.APPS)
    apps = presentation.apps()
    assert {"http", "kv", "db", "cpu", "mem"} <= set(apps)
    for app in apps.values():
        assert re.fullmatch(claim.metric, app.throughput)
    assert not re.fullmatch(claim.metric, "http.lat_p99")
