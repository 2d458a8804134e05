"""A wheel built from the tree works without the checkout: installed into a fresh
virtualenv (not editable), `bench list` finds the shipped scenarios and `bench run
startup` runs, from a directory that is not the checkout, and its result names the commit
the wheel was built from (recorded by the build: there is no .git to ask)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]


def test_wheel_runs_from_anywhere(repo: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(wheels), str(repo)], check=True, capture_output=True)
    (wheel,) = wheels.glob("cvbench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bench = str(venv / "bin/bench")
    listed = subprocess.run([bench, "list"], cwd=elsewhere, capture_output=True, text=True,
                            check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                             "COLUMNS": "200"})
    for name in ("startup", "runtime-overhead", "io", "density"):
        assert f"{name} " in listed.stdout, listed.stdout
    assert str(venv) in listed.stdout  # from the package, not from a checkout
    run = subprocess.run([bench, "run", "startup", "--backends", "host", "--min-samples", "3",
                          "--max-samples", "3", "--out", "out"], cwd=elsewhere,
                         capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr
    (result,) = [p for p in (elsewhere / "out").glob("startup-*.json")
                 if not p.name.endswith(".pyperf.json")]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    tool = json.loads(result.read_text())["tool"]
    assert (tool["commit"], tool["commit_from"]) == (head, "build")
