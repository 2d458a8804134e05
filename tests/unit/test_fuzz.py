"""Hostile input: fuzzed scenario and result files never crash the loaders or the CLI.

Every malformed input must give exactly one line naming the file and exit 2 — the same
code path `bench run` takes, called in-process so that thousands of cases stay fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli, results, scenario, validate
from harness.core.errors import ResultError, ScenarioError

KEYS = ["name", "description", "study", "backends", "workload", "limits", "network",
        "mounts", "sampling", "params", "variants", "argv", "memory", "cpus", "pids", "type",
        "target", "source", "size", "readonly", "image", "recipe", "binaries", "readiness",
        "env", "warmups", "min_samples", "max_samples", "target_ci", "time_budget",
        "timeout", "metric", "bogus"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["startup", "host", "ns", "none", "bridge", "tmpfs", "bind",
                                     "64M", "-1", "/x", "true", "marker", "exit"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=12)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for fuzzed documents (None values are dropped: TOML has none)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "nan"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v if x is not None) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items() if x is not None) + "}"
        return '""'
    return "".join(f"{k} = {val(v)}\n" for k, v in doc.items() if v is not None)


def run_cli(path: Path, out: Path) -> tuple[int, str]:
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(["run", str(path), "--out", str(out), "--backends", "host",
                      "--max-samples", "1", "--min-samples", "1", "--warmups", "0"])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, stderr.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_fuzzed_documents_parse_or_fail_cleanly(doc: dict[str, Any]) -> None:
    try:
        s = scenario.parse(doc, "fuzz.toml")
        validate.check(s)
    except ScenarioError as e:
        assert e.source == "fuzz.toml" and "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_fuzzed_bytes(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("f") / "s.toml"
    path.write_bytes(data)
    try:
        scenario.load(str(path))
    except ScenarioError as e:
        assert str(path) in str(e)


def test_ten_thousand_fuzzed_files_through_the_cli(tmp_path: Path) -> None:
    """10,000 generated scenario files: no traceback; invalid ones exit 2 with one line."""
    n = int(os.environ.get("CVBENCH_FUZZ_FILES", "10000"))
    out = tmp_path / "out"
    gen = documents.map(to_toml)
    seen_valid = 0

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(gen)
    def one(text: str) -> None:
        nonlocal seen_valid
        path = tmp_path / "fuzz.toml"
        path.write_text(text)
        try:
            s = scenario.parse(tomllib.loads(text), str(path))
            validate.check(s)
            seen_valid += 1
            return  # a valid scenario would really run; not what this test is about
        except (ScenarioError, tomllib.TOMLDecodeError):
            pass
        code, err = run_cli(path, out)
        assert code == 2, (text, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (text, err)
        assert str(path) in lines[0]
        assert not out.exists()

    one()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fuzzed_results_are_refused_cleanly(data: st.DataObject,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    base = {"schema": 1, "tool": {}, "run_id": "x", "scenario": {}, "host": {},
            "backends": {}, "image": {"digest": "a"},
            "samples": [{"backend": "h", "variant": "default", "metric": "m", "unit": "s",
                         "value": 1.0, "round": 1}]}
    doc = dict(base)
    for _ in range(data.draw(st.integers(0, 4))):
        key = data.draw(st.sampled_from([*base, "checksum"]))
        doc[key] = data.draw(values)
    if data.draw(st.booleans()):
        try:
            doc["checksum"] = results.checksum(doc)
        except ValueError:  # NaN/inf cannot be in a canonical document
            doc["checksum"] = "x"
    path = tmp_path_factory.mktemp("r") / "r.json"
    try:
        text = json.dumps(doc)
    except ValueError:
        return
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut]
    path.write_text(text)
    try:
        results.load_result(path)
    except ResultError as e:
        assert str(path) in str(e) and "\n" not in str(e)
