"""Failures are data: a cell's attempts, failures and their reasons are in the result, and
every table, chart label, claim and comparison drawn from a cell with failures says
"n ok / n tried"; a claim from a cell that failed too often is "inconclusive: failures".

Synthetic results (tests/unit/report_synth.py) and the runner on fake backends; the real
run is tests/integration/test_failures_run.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness import compare, data, plan, results
from harness.core.errors import ResultError
from harness.core.records import Attempts, Result, failure_reason
from harness.report import apps, claims, draw, history_page, render, tables
from harness.report import blocks as page
from harness.report.studies import startup as startup_chapter
from tests.unit import report_synth as synth
from tests.unit.fakes import FakeRuntime
from tests.unit.test_runner import _close_journals, img, make  # noqa: F401 - fixtures

DATA = Path(__file__).parent / "data"
REASON = "startup: the workload exited with 1: ''"


def cells_of(per: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """cells entries as `bench run` writes them: backend -> (ok, failed)."""
    return [{"backend": b, "variant": "default", "status": "max_samples", "samples": ok,
             "failures": failed, "attempts": ok + failed,
             "reasons": {REASON: failed} if failed else {}, "warmup_failures": 0}
            for b, (ok, failed) in per.items()]


# --- the result file --------------------------------------------------------------------

def test_attempts_are_read_from_the_cells_counts() -> None:
    d = json.loads((DATA / "schema1-density.json").read_text())
    d["cells"] = cells_of({"host": (2, 1), "ns": (2, 0)})
    d["checksum"] = results.checksum(d)
    got = {a.backend: a for a in Result.from_dict(d).attempts()}
    assert got["host"] == Attempts("host", "default", 3, 1, ((REASON, 1),))
    assert (got["host"].ok, str(got["host"]), got["host"].reason) == (2, "2 ok / 3 tried",
                                                                     REASON)
    assert got["ns"].failed == 0 and got["ns"].tried == 2


def test_an_older_file_gives_its_attempts_from_its_failures_and_events() -> None:
    """The fixture was written before the counts were: its cells (samples, failures) and
    the sample_failed events still give every figure, and it round-trips unchanged."""
    d = json.loads((DATA / "schema1-density.json").read_text())
    r = Result.from_dict(d)
    assert [(a.backend, a.tried, a.failed) for a in r.attempts()] == [("host", 2, 0),
                                                                      ("ns", 2, 0)]
    assert r.to_dict() == d
    d["cells"][0]["failures"] = 2
    d["events"] += [{"kind": "sample_failed", "backend": "host", "variant": "default",
                     "error": f"boom {i}\nlogs"} for i in (1, 1)]
    d["checksum"] = results.checksum(d)
    host = Result.from_dict(d).attempts()[0]
    assert (host.tried, host.failed, host.reasons) == (4, 2, (("boom 1", 2),))


def test_a_cells_count_of_the_wrong_type_is_refused_by_name() -> None:
    d = json.loads((DATA / "schema1-density.json").read_text())
    d["cells"][1]["reasons"] = {"x": "two"}
    d["checksum"] = results.checksum(d)
    with pytest.raises(ResultError, match=r"cells\[1\]\.reasons\.x: not an integer"):
        Result.from_dict(d, "r.json")


def test_a_reason_is_the_first_line_of_the_error_cut_short() -> None:
    assert failure_reason("\n  wrk: no request\nlots of output") == "wrk: no request"
    assert len(failure_reason("x" * 1000)) == 160


# --- the runner -------------------------------------------------------------------------

def test_the_runner_counts_attempts_failures_and_reasons(tmp_path: Path,
                                                         img: Any) -> None:  # noqa: F811
    """One create in three fails: the cell goes on to its samples, and its summary (what
    the result's cells hold) counts the failures with their reason; warmups apart."""
    flaky = FakeRuntime("flaky", fail_every=3)
    r, cells, journal = make(tmp_path, img, [flaky, FakeRuntime("good")], warmups=3,
                             min_samples=4, max_samples=4)
    r.run()
    summary = {c["backend"]: c for c in plan.cell_summary(cells)}
    # warmups: creates 1, 2, 3 (the third fails); then 4 ok of creates 4..8 (6 fails)
    assert summary["flaky"] | {"status": None} == {
        "backend": "flaky", "variant": "default", "status": None, "samples": 4,
        "failures": 1, "attempts": 5, "reasons": {"fake failure": 1}, "warmup_failures": 1}
    assert summary["good"]["attempts"] == 4 and summary["good"]["failures"] == 0
    warm = [e.get("warmup", False) for e in journal.events if e["kind"] == "sample_failed"]
    assert warm == [True, False]

    # A resumed run gets the same counts back from the journal's events.
    r2, cells2, _ = make(tmp_path / "again", img, [FakeRuntime("flaky"),
                                                   FakeRuntime("good")],
                         min_samples=9, max_samples=9)
    r2.restore(journal.samples, journal.events)
    again = {c["backend"]: c for c in plan.cell_summary(cells2)}
    assert {k: again["flaky"][k] for k in ("samples", "failures", "attempts", "reasons",
                                           "warmup_failures")} == {
        "samples": 4, "failures": 1, "attempts": 5, "reasons": {"fake failure": 1},
        "warmup_failures": 1}


# --- the report -------------------------------------------------------------------------

def failing_startup(tmp_path: Path, host: tuple[int, int] = (6, 3)) -> tuple[
        list[results.Loaded], pd.DataFrame]:
    """A startup run in which the bare host's cell failed `host[1]` of its samples (its
    `host[0]` figures are the ones that survived); the containers' none."""
    rng = np.random.default_rng(3)
    samples = [s for s in synth.startup_samples(rng, n=6) if s["backend"] != "libvirt"]
    backends = {b: m for b, m in synth.BACKENDS.items() if b != "libvirt"}
    counts = {b: (6, 0) for b in backends} | {"host": host}
    path = synth.write_result(tmp_path, "startup", samples, backends,
                              cells=cells_of(counts))
    return synth.load([path])


def test_tables_carry_the_counts_of_a_cell_with_failures(tmp_path: Path) -> None:
    _, df = failing_startup(tmp_path)
    summ = tables.summary(df)
    host = summ[(summ["backend"] == "host") & (summ["metric"] == "startup.to_ready")].iloc[0]
    assert (host["ok"], host["tried"], host["reason"]) == (6, 9, REASON)
    ns = summ[summ["backend"] == "ns"].iloc[0]
    assert (ns["ok"], ns["tried"]) == (6, 6)
    md = render.markdown([("table", page.medians_table(summ, False))], ())
    assert "| 6 ok / 9 tried |" in md
    assert md.count("ok / ") == (summ["backend"] == "host").sum()  # only where one failed
    cell = next(c for c in data.cells(df) if c.backend == "host")
    assert cell.label() == "host (6 ok / 9 tried)"


def test_a_claim_from_a_cell_with_too_many_failures_is_inconclusive(tmp_path: Path) -> None:
    _, df = failing_startup(tmp_path)
    t = claims.evaluate(df)
    overhead = t[(t["claim"] == "start-overhead") & (t["metric"] == "startup.to_ready")]
    assert not overhead.empty
    for r in overhead.to_dict("records"):
        assert r["verdict"] == claims.INCONCLUSIVE_FAILURES
        assert r["b"] == "host (6 ok / 9 tried)"
        assert f"host: 6 ok / 9 tried (33% failed; most common: {REASON})" in r["note"]
        assert (r["ok_b"], r["tried_b"], r["ok_a"], r["tried_a"]) == (6, 9, 6, 6)
    # the containers' own claim (against the VM) is drawn from clean cells: untouched
    assert claims.INCONCLUSIVE_FAILURES not in set(t[t["claim"] != "start-overhead"]
                                                   ["verdict"])
    assert claims.summary(t).set_index("claim").loc["start-overhead",
                                                    claims.INCONCLUSIVE_FAILURES] > 0


def test_a_few_failures_are_shown_but_keep_the_verdict(tmp_path: Path) -> None:
    """1 of 20 (5 %) is under FAILURE_LIMIT: the verdict stands; the label still counts."""
    _, df = failing_startup(tmp_path, host=(19, 1))
    t = claims.evaluate(df)
    rows = t[t["claim"] == "start-overhead"]
    assert claims.INCONCLUSIVE_FAILURES not in set(rows["verdict"])
    assert set(rows["b"]) == {"host (19 ok / 20 tried)"}


def test_the_report_says_n_ok_of_n_tried_and_why(tmp_path: Path) -> None:
    docs, _ = failing_startup(tmp_path)
    out = tmp_path / "report"
    render.build(docs, results.frame(docs), out, ("png",))
    md = (out / "report.md").read_text()
    assert "cell host: 6 ok / 9 tried" in md and f"Failed: 3× {REASON}" in md
    assert "host (6 ok / 9 tried)" in md  # the headline table's cell
    assert claims.INCONCLUSIVE_FAILURES in md
    csv = pd.read_csv(out / "claims.csv")
    row = csv[csv["claim"] == "start-overhead"].iloc[0]
    assert row["verdict"] == claims.INCONCLUSIVE_FAILURES and "6 ok / 9 tried" in row["note"]


def test_every_study_reports_with_counts_and_failures(tmp_path: Path) -> None:
    """Every chart and table of every study is drawn from results that count their
    samples (ns failed 1 in each cell, host none): ns is labelled with its counts where
    its cells are shown, the host never."""
    paths = synth.all_results(tmp_path / "runs", failed={"ns": 1})
    docs = [(str(p), results.load_result(p)) for p in paths]
    out = tmp_path / "R"
    written = render.build(docs, results.frame(docs), out, ("png",))
    assert {"limits.png", "memory.png", "io_bw.png", "claims.png"} <= {p.name for p in written}
    md = (out / "report.md").read_text()
    assert "ns (" in md and " ok / " in md
    assert "host (" not in md.replace("host (TCG", "")
    assert "Read this first" in md and "cell ns" in md


def test_a_chart_labels_a_cell_with_failures(tmp_path: Path) -> None:
    _, df = failing_startup(tmp_path)
    fig = startup_chapter.startup(df, draw.Look.of(df))
    assert fig is not None
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "host (6 ok / 9 tried)" in labels
    assert not any("tried" in x for x in labels if not x.startswith("host"))


def test_the_near_native_verdict_is_inconclusive_when_the_host_failed(tmp_path: Path
                                                                      ) -> None:
    rng = np.random.default_rng(5)
    backends = {b: m for b, m in synth.BACKENDS.items() if b != "libvirt"}
    samples = [s for s in synth.app_samples(rng, "kv") if s["backend"] in backends]
    cells = [{"backend": b, "variant": v, "status": "max_samples", "samples": 8,
              "failures": 4 if b == "host" else 0, "attempts": 12 if b == "host" else 8,
              "reasons": {"kv: redis-benchmark gave no GET": 4} if b == "host" else {}}
             for b in backends for v in {s["variant"].split(",")[0] for s in samples
                                         if s["backend"] == b}]
    _, df = synth.load([synth.write_result(tmp_path, "kv", samples, backends,
                                              cells=cells)])
    table, _ = apps.near_native(apps.overhead(df), False) or (None, "")
    assert table is not None
    verdicts = [row[-1] for row in table.rows]
    assert verdicts and all(v.startswith(f"**{claims.INCONCLUSIVE_FAILURES}**")
                            for v in verdicts)
    assert "host [host]: 8 ok / 12 tried (33% failed" in verdicts[0]
    over = render.markdown([("table", apps.overhead_table(apps.overhead(df), False))], ())
    assert "(8 ok / 12 tried)" in over  # the host's median


# --- bench compare ----------------------------------------------------------------------

def test_compare_flags_a_cell_whose_failures_rose(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)

    def one(run_id: str, ok: int, failed: int) -> results.Loaded:
        samples = [{"backend": "host", "variant": "default", "metric": "startup.total",
                    "unit": "s", "value": float(v), "round": i + 1}
                   for i, v in enumerate(0.01 * rng.lognormal(0, 0.02, ok))]
        path = synth.write_result(tmp_path / run_id, "startup", samples, synth.BACKENDS,
                                  run_id=run_id, cells=cells_of({"host": (ok, failed)}))
        return str(path), results.load_result(path)

    c = compare.compare([one("base0001", 20, 0)], [one("new00001", 20, 5)],
                        baselines_dir=None)
    (cell,) = c.cells
    assert cell.decision.verdict == "regression" and c.exit_code == 1
    assert cell.decision.why.startswith("failures rose: 20 ok / 20 tried → 20 ok / 25 tried")
    assert cell.attempts("new") == "20 ok / 25 tried" and cell.attempts("base") == ""
    assert "20 ok / 25 tried" in c.markdown()
    same = compare.compare([one("base0002", 20, 0)], [one("new00002", 20, 0)],
                           baselines_dir=None)
    assert same.exit_code == 0


# --- bench history ----------------------------------------------------------------------

def test_history_lists_the_runs_with_failed_samples(tmp_path: Path) -> None:
    from harness import history
    from harness.report.render import markdown

    rng = np.random.default_rng(11)
    for day, failed in (("2026-01-10", 0), ("2026-01-11", 3)):
        samples = [s for s in synth.startup_samples(rng, n=6) if s["backend"] == "host"]
        synth.write_result(tmp_path, "startup", samples, synth.BACKENDS,
                           created=f"{day}T10:00:00+00:00",
                           cells=cells_of({"host": (6, failed)}))
    h = history.history(history.load([tmp_path]))
    (point, attempts), = h.failures
    assert point.doc.created.startswith("2026-01-11") and str(attempts) == "6 ok / 9 tried"
    md = markdown(history_page.blocks(h, {}), ())
    assert "## Runs with failed samples" in md and f"| 6 ok / 9 tried | 3× {REASON} |" in md
    (j,) = h.as_json()["failures"]
    assert (j["backend"], j["ok"], j["tried"], j["reasons"]) == ("host", 6, 9, {REASON: 3})
