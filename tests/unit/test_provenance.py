"""Which cvbench measured: the commit and dirty flag from git, or from the build's record
in an installed package."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness.core import provenance

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def test_git_state_says_the_commit_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) is None  # not a checkout
    subprocess.run([*GIT, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a").write_text("1")
    subprocess.run([*GIT, "-C", str(tmp_path), "add", "a"], check=True)
    subprocess.run([*GIT, "-C", str(tmp_path), "commit", "-qm", "a"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "results.json").write_text("{}")  # untracked: not dirty
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False, "from": "git"}
    (tmp_path / "a").write_text("2")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True, "from": "git"}


def test_build_state_reads_what_the_build_wrote(tmp_path: Path) -> None:
    assert provenance.build_state(tmp_path) is None
    (tmp_path / provenance.BUILD_FILE).write_text(json.dumps({"commit": "abc", "dirty": True}))
    assert provenance.build_state(tmp_path) == {"commit": "abc", "dirty": True,
                                                "from": "build"}
    (tmp_path / provenance.BUILD_FILE).write_text("[1]")
    assert provenance.build_state(tmp_path) is None


def test_this_checkout_is_described_by_git() -> None:
    src = provenance.source()
    assert src["from"] == "git" and len(src["commit"]) == 40
