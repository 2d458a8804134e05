"""Which cvbench measured: the git commit of its source, and whether the tree was dirty.

Run from a checkout (an editable install, `make venv`), git says it at the time of the run.
An installed wheel has no .git: the build wrote the commit into the package
(harness/_build.json, by setup.py's build step, which runs `git_state` of this file),
and that is read instead. Neither: unknown, recorded as such (no commit in the result).

Why not setuptools-scm: it derives a version string (0.1.0.dev3+g1234abc.d20260101) and
would take over the project's version; what a result needs is the full commit and a dirty
flag, and an editable install must read git at run time anyway (a file written when it was
installed goes stale with the next commit). This module uses the standard library only, so
that setup.py can load it by path before anything is installed.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

BUILD_FILE = "_build.json"  # in the harness package
_PACKAGE = Path(__file__).resolve().parents[1]  # harness/


def git_state(tree: Path) -> dict[str, Any] | None:
    """{"commit", "dirty", "from": "git"} of the checkout at `tree`, or None when it is
    not one (or git is missing). Untracked files do not make it dirty (as `git describe
    --dirty`): result files and venvs live in the tree."""
    if not (tree / ".git").exists():  # a directory, or a file in a worktree
        return None
    # A checkout owned by another user (root running a user's tree) is one git refuses
    # to read unless told it is safe; reading its HEAD is all this does.
    git = ["git", "-c", f"safe.directory={tree}", "-C", str(tree)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(status.strip()), "from": "git"}


def build_state(package: Path = _PACKAGE) -> dict[str, Any] | None:
    """What the build recorded in the package, or None."""
    try:
        data = json.loads((package / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("commit"), str):
        return None
    return {"commit": data["commit"], "dirty": data.get("dirty") is True, "from": "build"}


@functools.cache
def source() -> dict[str, Any]:
    """{"commit", "dirty", "from": "git" | "build"} of the running cvbench, or {} when
    unknown. Git first: a checkout with a stale build file (an old `pip install .` into
    the tree's venv) is described by its HEAD."""
    tree = _PACKAGE.parent
    state = git_state(tree) if (tree / "pyproject.toml").exists() else None
    return state or build_state() or {}
