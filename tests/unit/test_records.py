"""Result records: files written before the records existed, the schema rule, sub-variants.

tests/unit/data/schema1-*.json are unmodified files written by `bench run density` and
`bench calibrate` (a baseline) at commit 1ffa663, before harness.core.records existed.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import results
from harness.core import records
from harness.core.errors import ResultError
from harness.core.records import Sample

DATA = Path(__file__).parent / "data"
OLD = sorted(DATA.glob("schema1-*.json"))


def write(path: Path, doc: dict[str, Any], seal: bool = True) -> Path:
    if seal:
        doc["checksum"] = records.checksum(doc)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


@pytest.mark.parametrize("path", OLD, ids=[p.name for p in OLD])
def test_files_from_before_the_records_load_and_write_back_unchanged(path: Path) -> None:
    text = path.read_text()
    r = results.load_result(path)
    assert r.samples and r.image_digest and r.scenario_name
    # The same bytes, so the checksum written then still matches what we write now.
    assert json.dumps(r.to_dict(), indent=1, allow_nan=False) + "\n" == text
    assert r.seal().checksum == r.checksum == json.loads(text)["checksum"]
    assert all(s.sub is None and s.cell_variant == s.variant for s in r.samples)


def test_the_old_baseline_reads_as_one() -> None:
    r = results.load_result(DATA / "schema1-baseline.json")
    assert r.baseline is not None and r.baseline.noise
    n = r.baseline.noise[0]
    assert n.df >= 1 and n.sigma > 0 and n.unit == "s"
    assert {s.copy for s in r.samples} == {0, 1}


def test_the_old_density_result_keeps_instances_and_events() -> None:
    r = results.load_result(DATA / "schema1-density.json")
    assert {s.instance for s in r.samples if s.metric == "density.pss_total"} >= {0, 1}
    assert [e for e in r.events if e["kind"] == "ramp_stopped"]


def test_unknown_fields_are_read_and_kept(tmp_path: Path) -> None:
    """The rule: a newer writer of the same schema adds fields; this reader ignores them
    and writes them back (e.g. when the result becomes a baseline)."""
    doc = json.loads((DATA / "schema1-density.json").read_text())
    doc["protections"] = {"seccomp": "default"}
    doc["samples"][0]["serving"] = 0.25
    path = write(tmp_path / "newer.json", doc)
    r = results.load_result(path)
    assert r.extra == {"protections": {"seccomp": "default"}}
    assert r.samples[0].extra == {"serving": 0.25}
    assert r.to_dict() == doc
    assert r.seal().checksum == doc["checksum"]


def test_a_newer_schema_is_refused_with_one_line(tmp_path: Path) -> None:
    doc = json.loads((DATA / "schema1-density.json").read_text())
    doc["schema"] = 2
    path = write(tmp_path / "v2.json", doc)
    with pytest.raises(ResultError) as e:
        results.load_result(path)
    assert str(e.value) == (f"{path}: schema: 2 is newer than this cvbench reads (1); "
                            "upgrade cvbench")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["samples"][3].__setitem__("round", "1"), "samples[3].round: not an integer"),
    (lambda d: d["samples"][3].__setitem__("value", True), "samples[3].value: not a number"),
    (lambda d: d["samples"][0].pop("unit"), "samples[0].unit: missing"),
    (lambda d: d["samples"][1].__setitem__("instance", 1.5),
     "samples[1].instance: not an integer"),
    (lambda d: d["samples"][2].__setitem__("sub", "target=tmpfs"),
     "samples[2].sub: sub-variant 'target=tmpfs' is not part of variant 'default'"),
    (lambda d: d["backends"].__setitem__("host", "x"), "backends.host: not an object"),
    (lambda d: d.__setitem__("events", [3]), "events[0]: not an object"),
    (lambda d: d.__setitem__("interrupted", "no"), "interrupted: not true or false"),
    (lambda d: d.pop("run_id"), "run_id: missing"),
    (lambda d: d["image"].pop("digest"), "image.digest: missing"),
])
def test_problems_name_the_file_and_the_field(tmp_path: Path, edit: Any, message: str
                                              ) -> None:
    doc = json.loads((DATA / "schema1-density.json").read_text())
    edit(doc)
    path = write(tmp_path / "bad.json", doc)
    with pytest.raises(ResultError, match="^" + re.escape(f"{path}: {message}")):
        results.load_result(path)


def test_an_edited_file_fails_its_checksum(tmp_path: Path) -> None:
    doc = json.loads((DATA / "schema1-density.json").read_text())
    doc["samples"][0]["value"] += 1
    path = write(tmp_path / "edited.json", doc, seal=False)
    with pytest.raises(ResultError, match="checksum: does not match"):
        results.load_result(path)


@pytest.mark.parametrize("cell, sub, variant", [
    ("default", None, "default"),
    ("default", "target=tmpfs", "target=tmpfs"),
    ("network=none", "target=tmpfs", "network=none,target=tmpfs"),
    ("network=none,x=1", "target=a,b", "network=none,x=1,target=a,b"),
])
def test_sub_variant_joins_and_splits(cell: str, sub: str | None, variant: str) -> None:
    s = Sample.in_cell("ns", cell, "io.randread.iops", "op/s", 5, 1, sub=sub)
    assert (s.variant, s.sub, s.cell_variant) == (variant, sub, cell)
    again = Sample.from_dict(s.to_dict())
    assert again == s and again.cell_variant == cell
    assert ("sub" in s.to_dict()) == (sub is not None)


def test_journal_writes_sub_and_finalize_checks_the_result(tmp_path: Path) -> None:
    old = results.load_result(DATA / "schema1-density.json")
    j = results.Journal(tmp_path / "r.journal", old.header())
    j.add([Sample.in_cell("ns", "network=none", "io.x", "B/s", 7, 1, sub="target=tmpfs")])
    _, back, _, _ = results.read_journal(tmp_path / "r.journal")
    assert back[0].cell_variant == "network=none" and back[0].sub == "target=tmpfs"
    j.close()
    df = results.load(j.finalize(tmp_path / "r.json", {"cells": []}))
    assert df[["variant", "sub"]].values.tolist() == [["network=none,target=tmpfs",
                                                        "target=tmpfs"]]
    bad = results.Journal(tmp_path / "b.journal", {**old.header(), "host": "nowhere"})
    try:
        with pytest.raises(ResultError, match=r"b\.json: host: not an object"):
            bad.finalize(tmp_path / "b.json", {})
    finally:
        bad.close()
    assert not (tmp_path / "b.json").exists() and (tmp_path / "b.journal").exists()


def test_records_import_only_the_standard_library_and_core_errors() -> None:
    """The bottom layer: records must load without anything of the project above it."""
    tree = ast.parse(Path(records.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    ours = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert ours == {"harness.core.errors"}
