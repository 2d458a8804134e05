"""Reports: every chart from synthetic results (written through the real result schema),
the table numbers against pandas, the seed-claim verdicts from the CI, several datasets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mpl_colors
from matplotlib.text import Text
from PIL import Image

from harness import data, results, stats
from harness.core.units import format_seconds
from harness.report import blocks as page
from harness.report import charts, claims, claims_chart, draw, presentation, render, tables
from harness.report.studies import disk as disk_chapter
from harness.report.studies import idle_memory as idle_memory_chapter
from harness.report.studies import startup as startup_chapter
from tests.unit import report_synth as synth

Docs = list[results.Loaded]
load = synth.load


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> tuple[Docs, pd.DataFrame]:
    return load(synth.all_results(tmp_path_factory.mktemp("one")))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Docs, pd.DataFrame]:
    d = tmp_path_factory.mktemp("two")
    paths = synth.all_results(d) + synth.all_results(
        d, seed=2, host="synthetic-b", created="2026-02-01T09:00:00+00:00", speed=1.3)
    return load(paths)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, one: tuple[Docs, pd.DataFrame]
          ) -> tuple[Path, list[Path]]:
    """The whole report of one synthetic dataset, slides style, built once."""
    docs, _ = one
    out = tmp_path_factory.mktemp("report")
    return out, render.build(docs, results.frame(docs), out, ["png", "svg"], "slides")


# The charts of the synthetic dataset: all but the ones drawn only for a service's
# readiness (test_serving_chart_and_span).
# The studies of synth.all_results: charts of other installed studies (plug-ins) have no
# data here and are not drawn.
SYNTH_STUDIES = ("startup", "memory", "disk", "io", "limits", "network", "density", "stack")
CHARTS = claims_chart.CHARTS | {n: c for s, p in presentation.found().items()
                                if s in SYNTH_STUDIES for n, c in p.charts.items()}
DRAWN = [n for n in CHARTS if n != "startup_serving"]


def test_serving_chart_and_span(tmp_path: Path) -> None:
    """An app-startup result: time to the first answer per backend, charted; in the
    phases chart `serving` is a span (a line over the bars), never a stacked bar."""
    rng = np.random.default_rng(3)
    _, df = load([synth.write_result(tmp_path, "app-startup", synth.serving_samples(rng),
                                     synth.BACKENDS)])
    look = draw.Look.of(df, "paper")
    fig = startup_chapter.startup_serving(df, look)
    assert fig is not None
    texts = _texts(fig)
    assert any("first answer" in t for t in texts) and any("TCG" in t for t in texts)
    med = df[df.metric == "startup.to_serving"].groupby("backend").value.median()
    assert format_seconds(float(med["docker"])) in texts
    phases = startup_chapter.startup_phases(df, look)
    assert phases is not None
    labels = _texts(phases)
    assert any(t.startswith("serving:") for t in labels) and "exit" not in labels
    colours = {mpl_colors.to_hex(c) for c in startup_chapter.PHASE_COLOURS}
    bars = [p for p in phases.axes[0].patches if mpl_colors.to_hex(p.get_facecolor()) in colours]
    assert len(bars) == 4 * len(synth.BACKENDS)  # create, start, ready, remove: no serving bar
    spans = df[df.metric == "startup.serving"].groupby("backend").value.median()
    assert format_seconds(float(spans["host"])) in labels


def check_png(path: Path, style: str) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
    if style == "slides":
        assert (w, h) == (1920, 1080), path  # 16:9 at 120 dpi
    else:
        assert w == 1400 and 840 <= h <= 6000, (path, w, h)


def check_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")


def test_every_chart_renders_valid_images(tmp_path: Path, one: tuple[Docs, pd.DataFrame],
                                          built: tuple[Path, list[Path]]) -> None:
    _, df = one
    drawn = charts.render_all(df, tmp_path, "paper", ["png", "svg"])
    # every study has its chart (no service was probed: test_serving_chart_and_span)
    assert [c.name for c in drawn] == DRAWN
    out, written = built
    for name in DRAWN:
        check_png(tmp_path / f"{name}.png", "paper")
        check_svg(tmp_path / f"{name}.svg")
        check_png(out / f"{name}.png", "slides")
        check_svg(out / f"{name}.svg")
        assert out / f"{name}.png" in written


def _texts(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


def test_emulated_vm_marked_in_every_chart(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    look = draw.Look.of(df, "paper")
    for name, (_, fn) in CHARTS.items():
        fig = fn(df, look)
        if name not in DRAWN:
            continue
        assert fig is not None, name
        if name == "claims_io":  # no VM in any I/O claim (volumes vs the container layer)
            continue
        assert any("TCG" in t for t in _texts(fig)), f"{name}: the TCG VM is not marked"


def test_one_order_and_one_colour_per_backend(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    look = draw.Look.of(df, "paper")
    # process first, then containers, then VMs; by name within a kind
    assert look.order == ["host", "docker", "ns", "podman", "libvirt"]
    assert len(set(look.colours.values())) == len(look.order)
    for fn in (startup_chapter.startup, idle_memory_chapter.memory, disk_chapter.disk,
               startup_chapter.startup_phases):
        fig = fn(df, look)
        assert fig is not None
        ticks = fig.axes[0].get_yticklabels()
        names = [t.get_text().split(" ")[0] for t in ticks]
        assert names == look.order, fn.__name__
        for t, b in zip(ticks, names, strict=True):
            assert t.get_color() == look.colour(b)


def test_summary_matches_pandas(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    summ = tables.summary(df)
    keys = ["dataset", *tables.KEYS]
    g = df.groupby(keys)["value"]
    expect = pd.DataFrame({"median": g.median(), "n": g.count(), "mean": g.mean(),
                           "min": g.min(), "max": g.max()}).reset_index()
    got = summ.merge(expect, on=keys, suffixes=("", "_pd"))
    assert len(got) == len(summ) == len(expect)
    for col in ("median", "n", "mean", "min", "max"):
        np.testing.assert_allclose(got[col].astype(float), got[f"{col}_pd"].astype(float))
    assert (got["ci_lo"] <= got["median"]).all() and (got["median"] <= got["ci_hi"]).all()


def test_memory_table_matches_pandas(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    m = tables.memory(df).set_index("backend")
    pss = df[df["metric"] == "memory.pss"]
    daemon = df[df["metric"] == "memory.daemon"].groupby(["backend", "round"])["value"].sum()
    count = pss.groupby(["backend", "round"])["value"].count()
    share = (daemon / count).reindex(count.index).fillna(0.0)
    for b in pss["backend"].unique():
        inst = pss[pss["backend"] == b]
        totals = inst["value"] + inst["round"].map(share.loc[b])
        assert m.loc[b, "pss"] == pytest.approx(inst["value"].median())
        assert m.loc[b, "total"] == pytest.approx(totals.median())
        assert m.loc[b, "instances"] == 4
    assert m.loc["ns", "daemon"] == 0
    assert m.loc["docker", "daemon"] == pytest.approx(synth.DAEMON["docker"] / 4, rel=0.05)


def test_a_round_without_its_daemons_reading_has_no_share_not_zero(
        one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    docker = (df["backend"] == "docker") & (df["metric"] == "memory.daemon")
    unread = df[~(docker & (df["round"] == 0))]
    inst = data.per_instance_memory(unread)
    mine = inst[inst["backend"] == "docker"]
    assert mine[mine["round"] == 0]["daemon"].isna().all()  # was 0: a cheaper docker
    assert mine[mine["round"] == 0]["total"].isna().all()
    assert (mine[mine["round"] != 0]["daemon"] > 0).all()
    m = tables.memory(unread).set_index("backend")
    assert m.loc["docker", "daemon"] == pytest.approx(synth.DAEMON["docker"] / 4, rel=0.05)


def test_rendered_tables_show_pandas_numbers(one: tuple[Docs, pd.DataFrame],
                                             built: tuple[Path, list[Path]]) -> None:
    _, df = one
    md = (built[0] / "report.md").read_text()
    row = next(line for line in md.split("## Startup")[1].splitlines()
               if line.startswith("| ns | "))
    med = df[(df["backend"] == "ns") & (df["metric"] == "startup.to_ready")]["value"].median()
    assert f"| {synth_format(med)} ±" in row
    csv = pd.read_csv(built[0] / "startup.csv").set_index(["backend", "metric"])
    assert csv.loc[("ns", "startup.to_ready"), "median"] == pytest.approx(med)


def synth_format(v: float) -> str:
    from harness.core.units import format_value

    return format_value(v, "s")


@pytest.mark.parametrize(("lo", "hi", "better", "verdict"), [
    (0.5, 0.9, "lower", claims.HOLDS),
    (0.8, 1.2, "lower", claims.INCONCLUSIVE),
    (1.1, 1.3, "lower", claims.FAILS),
    (0.97, 1.02, "lower", claims.FAILS),  # no meaningful difference
    (1.2, 1.9, "higher", claims.HOLDS),
    (0.5, 0.8, "higher", claims.FAILS),
    (0.97, 1.03, "equal", claims.HOLDS),
    (0.7, 1.2, "equal", claims.INCONCLUSIVE),
    (1.3, 1.4, "equal", claims.FAILS),
    (float("nan"), 1.0, "lower", claims.INCONCLUSIVE),
])
def test_verdict_reads_the_ci(lo: float, hi: float, better: str, verdict: str) -> None:
    assert claims.verdict(lo, hi, better) == verdict


META = {"fast": {"kind": "container"}, "slow": {"kind": "vm", "accel": "kvm"},
        "docker": {"kind": "vm"}}


def test_claim_verdict_from_ci_not_medians(tmp_path: Path) -> None:
    """Medians 20 % apart but a spread that puts the CI of the ratio across 1."""
    rng = np.random.default_rng(5)
    samples = []
    for r in range(8):
        samples.append(synth._s("fast", "default", "startup.to_ready", "s",
                                0.8 * rng.lognormal(0, 0.8), r))
        samples.append(synth._s("slow", "default", "startup.to_ready", "s",
                                1.0 * rng.lognormal(0, 0.8), r))
    _, df = load([synth.write_result(tmp_path, "startup", samples, META)])
    t = claims.evaluate(df)
    row = t[t["claim"] == "start"].iloc[0]
    a = df[df["backend"] == "fast"]["value"].median()
    b = df[df["backend"] == "slow"]["value"].median()
    assert a < b  # the medians alone would say "holds"
    assert row["ratio"] == pytest.approx(a / b)
    assert row["ratio_lo"] < 1 < row["ratio_hi"]
    assert row["verdict"] == claims.INCONCLUSIVE
    r, lo, hi = stats.ratio_ci(df[df["backend"] == "slow"]["value"],
                               df[df["backend"] == "fast"]["value"])
    assert (row["ratio_lo"], row["ratio_hi"]) == pytest.approx((lo, hi))


def test_claim_sides_come_from_metadata_not_names(tmp_path: Path) -> None:
    """A backend called "docker" that declares itself a VM is a VM."""
    samples = [synth._s(b, "default", "startup.to_ready", "s", v * (1 + 0.01 * r), r)
               for r in range(10) for b, v in (("fast", 0.01), ("docker", 1.0))]
    _, df = load([synth.write_result(tmp_path, "startup", samples, META)])
    t = claims.evaluate(df)
    row = t[t["claim"] == "start"].iloc[0]
    assert (row["a"], row["b"], row["verdict"]) == ("fast", "docker", claims.HOLDS)


def test_unknown_kind_is_left_out_and_said(tmp_path: Path) -> None:
    samples = [synth._s(b, "default", "startup.to_ready", "s", 0.01 + r * 1e-4, r)
               for r in range(10) for b in ("mystery", "fast")]
    path = synth.write_result(tmp_path / "d", "startup", samples,
                              {"mystery": {}, "fast": {"kind": "container"}})
    docs, df = load([path])
    assert set(df[df["backend"] == "mystery"]["kind"]) == {"unknown"}
    assert claims.evaluate(df).empty
    render.build(docs, results.frame(docs), tmp_path / "r", ["png"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "declares no kind (mystery)" in md and "No claim could be tested" in md


def test_volume_claim_pairs_targets_within_a_backend(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    t = claims.evaluate(df)
    vol = t[t["claim"] == "volume-io"]
    # ns, docker, podman × volume, bind, tmpfs × 4 jobs; never across backends, never
    # for the VM or the host
    assert len(vol) == 36
    assert all(a.split(" ")[0] == b.split(" ")[0] for a, b in zip(vol["a"], vol["b"],
                                                                   strict=True))
    assert set(vol["verdict"]) == {claims.HOLDS}
    seq = vol[(vol["metric"] == "io.seqwrite.bw") & (vol["a"] == "ns [volume]")].iloc[0]
    d = df[(df["backend"] == "ns") & (df["metric"] == "io.seqwrite.bw")]
    expect = (d[d["variant"] == "target=volume"]["value"].median()
              / d[d["variant"] == "target=rootfs"]["value"].median())
    assert seq["ratio"] == pytest.approx(expect)


def test_disk_claim_not_flagged_as_emulated(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    t = claims.evaluate(df).set_index("claim")
    assert not t.loc["disk", "emulated"].any()
    assert t.loc["start", "emulated"].all()


def test_report_files_and_self_contained_html(built: tuple[Path, list[Path]]) -> None:
    tmp_path, written = built
    names = {p.name for p in written}
    assert {"report.md", "index.html", "startup.png", "startup.svg", "claims.svg"} <= names
    page = (tmp_path / "index.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(DRAWN)
    assert all(s.startswith("data:image/svg+xml;base64,") for s in srcs)  # nothing external
    md = (tmp_path / "report.md").read_text()
    for text in ("id-synthetic-a", "0" * 16, "Synthetic CPU", "libvirt 1.0", "## Seed claims",
                 "(TCG, emulated)", "Emulated VMs"):
        assert text in md and (text in page or text.replace("## ", "") in page), text
    # the CSVs beside the report, linked from both
    assert "[startup.csv](startup.csv)" in md and '<a href="startup.csv">' in page
    assert (tmp_path / "startup.csv") in written


def test_report_has_every_study_short_and_the_rest_in_csv(
        built: tuple[Path, list[Path]], one: tuple[Docs, pd.DataFrame]) -> None:
    out, written = built
    _, df = one
    md = (out / "report.md").read_text()
    assert len(md.splitlines()) < 400
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    for study in ("startup", "memory", "disk", "io", "limits", "network", "density"):
        info = presentation.of(study)
        assert f"## {info.title}: {info.question}" in headings  # one naming scheme
        assert all("![" in md and f"({n}.png)" in md for n in info.charts if n in DRAWN)
        assert out / f"{study}.csv" in written
    # the density CSV: one row per backend, metric and count; the section: per backend
    per_count = pd.read_csv(out / "density.csv")
    d = df[df["metric"].str.startswith("density.")]
    assert len(per_count) == len(d.groupby(["backend", "metric", "instance"]))
    section = md.split("## Density")[1].split("\n## ")[0]
    assert sum(line.startswith("| ") for line in section.splitlines()) == 1 + 3
    # claims: every pair in the CSV, at most PER_CLAIM per claim in the page
    t = claims.evaluate(df)
    assert len(pd.read_csv(out / "claims.csv")) == len(t)
    assert "more pairs" in md and "[claims.csv](claims.csv)" in md
    io_rows = [line for line in md.split("## I/O")[1].split("\n## ")[0].splitlines()
               if line.startswith("| ")]
    assert len(io_rows) == 1 + 14  # header + one row per cell (backend × target)


class _Page(HTMLParser):
    """Headings, tables (rows of cell texts) and image sources of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._text: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("h1", "h2", "h3", "th", "td"):
            self._text = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3"):
            self.headings.append(self._text or "")
        elif tag in ("th", "td"):
            self.tables[-1][-1].append(self._text or "")

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text += data


def _md_text(cell: str) -> str:
    """What a Markdown cell shows: no emphasis or code marks, no escapes."""
    return re.sub(r"\*\*|`|\*", "", cell.strip()).replace("\\|", "|")


def test_html_shows_what_the_markdown_says(built: tuple[Path, list[Path]]) -> None:
    """index.html is report.md rendered: the same headings, tables and charts."""
    tmp_path, _ = built
    page = _Page((tmp_path / "index.html").read_text())
    md = (tmp_path / "report.md").read_text().splitlines()
    assert page.headings == [line.lstrip("#").strip() for line in md if line.startswith("#")]
    tables: list[list[list[str]]] = []
    for prev, line in zip(["", *md], md, strict=False):
        if line.startswith("|") and not set(line) <= set("|-: "):
            if not prev.startswith("|"):
                tables.append([])
            tables[-1].append([_md_text(c) for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    assert len(tables) > 5 and page.tables == tables
    charts_md = [line for line in md if line.startswith("![")]
    assert len(page.images) == len(charts_md) == len(DRAWN)


def test_html_keeps_text_from_results_as_text() -> None:
    shown = render.to_html([
        ("h1", "report"), ("p", "<script>alert(1)</script> *holds*"),
        ("ul", ["⚠ careful", "fine"]),
        ("table", page.Table(["cell|name", "n"], [["`abc`", "**3**"]], "lr"))])
    assert "<script>" not in shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert "<em>holds</em>" in shown
    assert '<li class="warn">⚠ careful</li>' in shown and "<li>fine</li>" in shown
    assert "<th>cell|name</th>" in shown and "<td><code>abc</code></td>" in shown
    assert '<td style="text-align:right"><strong>3</strong></td>' in shown


def test_two_hosts_side_by_side(tmp_path: Path, two: tuple[Docs, pd.DataFrame]) -> None:
    docs, df = two
    assert data.datasets(df) == ["synthetic-a 2026-01-10", "synthetic-b 2026-02-01"]
    render.build(docs, results.frame(docs), tmp_path, ["png"], "slides")
    md = (tmp_path / "report.md").read_text()
    assert "2 different hosts" in md and "## Side by side" in md
    assert "### synthetic-b 2026-02-01 vs synthetic-a 2026-01-10" in md
    r = tables.ratios(df, *data.datasets(df)).set_index(["backend", "metric"])
    ns = r.loc[("ns", "startup.to_ready")]
    d = df[(df["backend"] == "ns") & (df["metric"] == "startup.to_ready")]
    med = d.groupby("dataset")["value"].median()
    assert ns["ratio"] == pytest.approx(med.iloc[1] / med.iloc[0])
    assert ns["changed"]  # the second host is 1.3× slower by construction
    for name in DRAWN:
        check_png(tmp_path / f"{name}.png", "slides")


def test_same_study_twice_on_one_day_stays_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    kw: dict[str, Any] = {"host": "h"}
    paths = [synth.write_result(tmp_path, "startup", synth.startup_samples(rng, 5),
                                synth.BACKENDS, created=f"2026-03-01T{t}:00+00:00", **kw)
             for t in ("08:00", "15:30")]
    paths.append(synth.write_result(tmp_path, "memory", synth.memory_samples(rng),
                                    synth.BACKENDS, created="2026-03-01T09:00:00+00:00", **kw))
    _, df = load(paths)
    sets = data.datasets(df)
    assert len(sets) == 3 and sum("08:00" in s for s in sets) == 1
    # the memory run of that day is not split off by time
    assert len(set(df[df["scenario"] == "memory"]["dataset"])) == 1


def test_empty_result_still_reports(tmp_path: Path) -> None:
    path = synth.write_result(tmp_path / "d", "startup", [], synth.BACKENDS)
    docs, _ = load([path])
    written = render.build(docs, results.frame(docs), tmp_path / "r", ["png"])
    assert {p.name for p in written} == {"report.md", "index.html"}


def test_cli_report_slides(tmp_path: Path) -> None:
    d = tmp_path / "D"
    synth.all_results(d)
    out = tmp_path / "R"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "report", *map(str, d.glob("*.json")),
                        "--out", str(out), "--style", "slides", "--format", "png,svg,pdf"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    for name in DRAWN:
        check_png(out / f"{name}.png", "slides")
        check_svg(out / f"{name}.svg")
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert (out / "report.md").exists() and (out / "index.html").exists()
    p = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(d), "--out",
                        str(out), "--style", "poster"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 2 and "poster" in p.stderr


def test_real_host_run_reports(tmp_path: Path) -> None:
    """A real (small) startup run on the host backend, then the report on it."""
    d, out = tmp_path / "D", tmp_path / "R"
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", "startup", "--backends",
                          "host", "--max-samples", "10", "--out", str(d)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    result = next(p for p in d.glob("*.json") if not p.name.endswith(".pyperf.json"))
    assert json.loads(result.read_text())["backends"]["host"]["kind"] == "process"
    docs, df = load([result])
    written = render.build(docs, results.frame(docs), out, ["png", "svg"], "slides")
    assert {p.name for p in written} >= {"startup.png", "startup_phases.png", "report.md",
                                         "index.html"}
    for name in ("startup", "startup_phases"):
        check_png(out / f"{name}.png", "slides")
        check_svg(out / f"{name}.svg")
    summ = tables.summary(df).set_index("metric")
    total = df[df["metric"] == "startup.total"]["value"]
    assert summ.loc["startup.total", "median"] == pytest.approx(total.median())
    assert summ.loc["startup.total", "n"] == len(total) >= 10
