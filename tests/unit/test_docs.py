"""The documentation site's generated reference (docs/gen.py) covers exactly the plug-ins
pyproject.toml declares, and the short README stays short and links to pages that exist.

The build itself (mkdocs --strict: broken links, pages missing from the nav) is `make
docs`, part of `make test`.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness import studies

ROOT = Path(__file__).resolve().parents[2]


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _gen()
PAGES: dict[str, str] = GEN.pages()
# Read from pyproject.toml itself, not from what the code found through importlib.
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EPS = PYPROJECT["project"]["entry-points"]


def _under(prefix: str) -> set[str]:
    return {Path(p).stem for p in PAGES if p.startswith(prefix + "/")}


def test_a_study_page_per_entry_point_and_no_other() -> None:
    assert _under(GEN.STUDIES_DIR) == set(EPS["cvbench.studies"])


def test_a_backend_page_per_entry_point_and_no_other() -> None:
    assert _under(GEN.BACKENDS_DIR) == set(EPS["cvbench.runtimes"])


def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for x in nav for p in _nav_pages(x)]
    return [p for x in nav.values() for p in _nav_pages(x)]


def test_the_nav_lists_every_generated_page_once() -> None:
    listed = _nav_pages(GEN.nav())
    assert sorted(listed) == sorted(PAGES)


@pytest.mark.parametrize("name", sorted(EPS["cvbench.studies"]))
def test_a_study_page_shows_its_params_metrics_and_tools(name: str) -> None:
    page = PAGES[f"{GEN.STUDIES_DIR}/{name}.md"]
    st = studies.get(name)
    for key in st.params:
        assert f"| `{key}` |" in page
    for metric in st.metrics:
        assert f"`{metric}" in page
    for tool, package in st.tools.items():
        assert f"| `{tool}` | `{package}` |" in page
    assert "## Failure rules" in page and "## On a 2-core host" in page


def test_the_scenario_page_names_every_key_a_shipped_scenario_uses() -> None:
    page = PAGES[GEN.SCENARIO_PAGE]
    used: set[str] = set()
    for path in (ROOT / "scenarios").glob("*.toml"):
        data = tomllib.loads(path.read_text())
        used |= set(data)
        used |= set(data.get("workload", {}))
        used |= set(data.get("sampling", {}))
        used |= set(data.get("limits", {}))
        used |= set(data.get("variants", {}))
    assert used  # the shipped scenarios were found
    missing = sorted(k for k in used if f"`{k}`" not in page)
    assert not missing


def test_the_scenario_page_has_the_annotated_example_and_it_is_toml() -> None:
    """The example is taken from the scenario parser's docstring: a page without it (the
    docstring moved) or with a block TOML cannot read is caught."""
    page = PAGES[GEN.SCENARIO_PAGE]
    assert "## An annotated example" in page
    block = page.split("## An annotated example", 1)[1].split("```toml\n", 1)[1]
    example = tomllib.loads(block.split("```", 1)[0])
    assert example["name"] and example["workload"]


def test_the_readme_is_short_and_its_links_exist() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    links = re.findall(r"\]\(([^)#]+)", text)
    assert links
    assert [x for x in links if not (ROOT / x).exists()] == []


def test_every_hand_written_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in config, page.name


def test_the_command_reference_has_every_command_of_bench_help() -> None:
    from click.testing import CliRunner

    from harness.cli import cli

    listing = CliRunner().invoke(cli, ["--help"]).output.split("Commands:", 1)[1]
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    assert "run" in names and "report" in names
    page = PAGES[GEN.CLI_PAGE]
    assert [n for n in names if f"## `bench {n}`" not in page] == []
    # The page is what --help prints (click's own output, not a rewording).
    run_help = CliRunner().invoke(cli, ["run", "--help"], prog_name="bench").output
    assert " ".join(run_help.split("Options:")[0].split()) in " ".join(page.split())
