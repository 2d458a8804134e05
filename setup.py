"""Build step: record the commit the package is built from (harness/_build.json), so an
installed wheel, which has no .git, still says which cvbench measured. The metadata is in
pyproject.toml; this file only adds that step (see harness/core/provenance.py)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
_prov = runpy.run_path(str(HERE / "harness" / "core" / "provenance.py"))


def _state() -> dict[str, Any] | None:
    # From git; building from an sdist (no .git), what the sdist carries.
    state = _prov["git_state"](HERE) or _prov["build_state"](HERE / "harness")
    return None if state is None else {"commit": state["commit"], "dirty": state["dirty"]}


def _write(package_dir: Path) -> None:
    state = _state()
    if state is not None:
        (package_dir / _prov["BUILD_FILE"]).write_text(json.dumps(state) + "\n")


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads git when it runs
            _write(Path(self.build_lib) / "harness")


class Sdist(sdist):
    def make_release_tree(self, base_dir: str, files: Any) -> None:
        super().make_release_tree(base_dir, files)
        _write(Path(base_dir) / "harness")


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
