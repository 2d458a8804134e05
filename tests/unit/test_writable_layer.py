"""Where a backend's writes landed (disk or a tmpfs), as results record it and as compare
and the report show it: an `ns` in RAM is never set against one on disk unmarked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness import compare, data, results
from harness.core.records import writable_layer
from harness.report import blocks as page
from harness.report import render, tables
from tests.unit import report_synth as synth
from tests.unit.test_compare import write

DATA = Path(__file__).parent / "data"
# An `ns` of a result written before `writable_layer` was recorded: only the description.
OLD_NS = {"kind": "container", "rootfs": "overlay, upper on tmpfs"}
NEW_NS = {"kind": "container", "writable_layer": "disk",
          "rootfs": "overlay, upper on ext4 under /var/lib/cvbench/ns (fsync honoured)"}
TMPFS_NS = {"kind": "container", "writable_layer": "tmpfs",
            "rootfs": "overlay, upper in a tmpfs private to the instance (volatile)"}


def test_recorded_legacy_and_unknown() -> None:
    assert writable_layer(NEW_NS) == "disk" and writable_layer(TMPFS_NS) == "tmpfs"
    assert writable_layer(OLD_NS) == "tmpfs"  # what plain ns was before
    assert writable_layer({"rootfs": "overlay, upper on disk"}) == "disk"  # old ns:disk
    assert writable_layer({"kind": "container"}) is None  # not recorded: never assumed
    old = results.load_result(DATA / "schema1-density.json")  # a real older file
    assert old.writable_layer("ns") == "tmpfs" and old.writable_layer("host") is None


def _doc(run_id: str, backends: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    samples = [{"backend": b, "variant": "default", "metric": "db.tps", "unit": "tps",
                "value": float(v), "round": i}
               for b in backends for i, v in enumerate(1000 * rng.lognormal(0, 0.05, 10))]
    d: dict[str, Any] = {
        "schema": 1, "tool": {"name": "cvbench", "version": "0"}, "run_id": run_id,
        "created": "2026-01-01T00:00:00+00:00", "scenario": {"name": "db"},
        "host": {"id": "h1", "hostname": "h1"}, "backends": backends,
        "image": {"digest": "ab" * 32}, "samples": samples, "events": []}
    d["checksum"] = results.checksum(d)
    return d


def _compare(tmp_path: Path, base: list[dict[str, Any]], new: list[dict[str, Any]]
             ) -> compare.Comparison:
    for side, docs in (("base", base), ("new", new)):
        for i, d in enumerate(docs):
            write(tmp_path / side / f"r{i}.json", d)
    return compare.compare(compare.load_set(tmp_path / "base"),
                           compare.load_set(tmp_path / "new"), baselines_dir=None)


def test_compare_warns_when_the_writable_layer_differs(tmp_path: Path) -> None:
    """An old `ns` (tmpfs) against a new `ns` (disk): compared, with a warning."""
    c = _compare(tmp_path, [_doc("old00001", {"ns": OLD_NS}, 1)],
                 [_doc("new00001", {"ns": NEW_NS}, 2)])
    warned = [n for n in c.notes if "writable layer" in n]
    assert len(warned) == 1 and warned[0].startswith("⚠ ns: writable layer differs: tmpfs "
                                                     "(base) vs disk (new)")


def test_compare_warns_when_a_side_mixes_layers(tmp_path: Path) -> None:
    c = _compare(tmp_path, [_doc("old00001", {"ns": OLD_NS}, 1),
                            _doc("new00001", {"ns": NEW_NS}, 2)],
                 [_doc("new00002", {"ns": NEW_NS}, 3)])
    assert any(n.startswith("⚠ ns: writable layer differs: disk, tmpfs (base) vs disk (new)")
               for n in c.notes)


def test_compare_is_quiet_when_the_layer_is_the_same(tmp_path: Path) -> None:
    c = _compare(tmp_path, [_doc("a0000001", {"ns": NEW_NS, "docker": {"kind": "container"}},
                                 1)],
                 [_doc("b0000001", {"ns": NEW_NS, "docker": {"kind": "container"}}, 2)])
    assert not [n for n in c.notes if "writable layer" in n]


def test_differences_name_the_layer_change() -> None:
    """What `bench history` annotates a move with."""
    a = results.Result.from_dict(_doc("old00001", {"ns": OLD_NS}, 1))
    b = results.Result.from_dict(_doc("new00001", {"ns": NEW_NS}, 2))
    assert [str(c) for c in compare.differences(a, b) if "writable" in c.what] == \
        ["ns: writable layer: tmpfs → disk"]


def _labels(blocks: list[page.Block]) -> list[str]:
    """The first column of every table row (the backend's label) and the warnings."""
    out = []
    for kind, payload in blocks:
        if kind == "table":
            out += [row[0] for row in payload.rows]
        elif kind == "ul":
            out += list(payload)
    return out


def test_ns_tmpfs_is_labelled_in_ram_in_the_report_tables(tmp_path: Path) -> None:
    """A synthetic result of host, ns (disk) and ns:tmpfs: only ns:tmpfs is marked."""
    meta = {"host": {"kind": "process"}, "ns": NEW_NS, "ns:tmpfs": TMPFS_NS}
    rng = np.random.default_rng(4)
    io = [synth._s(b, "target=rootfs", "io.seqwrite.bw", "B/s", 1e9 * rng.lognormal(0, .05), r)
          for b in meta for r in range(6)]
    path = synth.write_result(tmp_path, "io", io, meta)
    docs, df = synth.load([path])
    cells = {c.backend: c for c in data.cells(df)}
    assert cells["ns:tmpfs"].ram and not cells["ns"].ram and not cells["host"].ram
    assert cells["ns:tmpfs"].label() == f"ns:tmpfs [rootfs] {data.RAM_MARK}"
    labels = _labels(render.content(docs, df, {}))
    assert f"ns:tmpfs [rootfs] {data.RAM_MARK}" in labels  # the io study's table
    assert "ns [rootfs]" in labels and f"ns [rootfs] {data.RAM_MARK}" not in labels
    assert any(w.startswith("⚠ Writable layer in RAM (a tmpfs): ns:tmpfs.") for w in labels)
    # a study without a table of its own lists every figure: marked there too
    table = page.medians_table(tables.summary(df), False, page.in_ram(df))
    assert {r[0] for r in table.rows} == {"host", "ns", f"ns:tmpfs {data.RAM_MARK}"}


def test_an_old_ns_in_ram_is_not_set_against_a_new_one_unmarked(tmp_path: Path) -> None:
    """The same name in two datasets, tmpfs then disk: marked, warned, and the ratio
    between the datasets says it is not like for like."""
    rng = np.random.default_rng(5)

    def run(created: str, ns: dict[str, Any]) -> Path:
        meta = {"host": {"kind": "process"}, "ns": ns}
        s = [synth._s(b, "default", "startup.total", "s", 0.01 * rng.lognormal(0, .05), r)
             for b in meta for r in range(8)]
        return synth.write_result(tmp_path, "startup", s, meta, created=created)

    docs, df = synth.load([run("2026-01-10T10:00:00+00:00", OLD_NS),
                           run("2026-02-10T10:00:00+00:00", NEW_NS)])
    old, new = data.datasets(df)
    assert {(c.dataset, c.ram) for c in data.cells(df) if c.backend == "ns"} == \
        {(old, True), (new, False)}
    r = tables.ratios(df, old, new).set_index("backend")
    assert r.loc["ns", "unlike"] == "writable layer tmpfs → disk"
    assert r.loc["host", "unlike"] == ""
    text = render.markdown(render.content(docs, df, {}), ["svg"])
    assert f"ns kept its writable layer in different places: tmpfs in {old}, disk in {new}" \
        in text
    assert "⚠ not like for like: writable layer tmpfs → disk" in text
