"""The report's application section (harness.report.apps): the overhead table against the
bare host, the per-study charts and tables, the small-host note, all from synthetic
results with known ratios (report_synth.APP_SPEED), checked against the samples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from harness import results, stats
from harness.report import apps, claims, claims_chart, draw, render
from tests.unit import report_synth as synth

Docs = list[results.Loaded]
PLACEMENT = {"limits": {"cpuset": "1"}}  # the scenario's


def app_results(out: Path, cores: int = 2) -> list[Path]:
    """http with its placement in the scenario only; kv with each sample's too."""
    rng = np.random.default_rng(7)
    paths = [synth.write_result(out, "http", synth.app_samples(rng, "http"), synth.BACKENDS,
                                config=PLACEMENT),
             synth.write_result(out, "kv", synth.app_samples(
                 rng, "kv", placement={"cpuset": "2-3", "client_cpuset": "0"}),
                 synth.BACKENDS, config=PLACEMENT)]
    paths.append(synth.write_result(out, "cpu", synth.cpu_samples(rng), synth.BACKENDS,
                                    config=PLACEMENT))
    if cores != 2:
        for p in paths:  # the host's core count, rewritten through the real checksum
            doc = json.loads(p.read_text())
            doc["host"]["cores"] = cores
            doc["checksum"] = results.checksum(doc)
            p.write_text(json.dumps(doc))
    return paths


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> tuple[Docs, pd.DataFrame]:
    return synth.load(app_results(tmp_path_factory.mktemp("apps")))


def values(df: pd.DataFrame, backend: str, variant: str, metric: str) -> np.ndarray:
    v = df[(df["backend"] == backend) & (df["variant"] == variant) & (df["metric"] == metric)]
    assert not v.empty, (backend, variant, metric)
    return v["value"].to_numpy(float)


def test_split_moves_the_sub_case_out_of_the_cell_variant(one: tuple[Docs, pd.DataFrame]
                                                          ) -> None:
    _, df = one
    d = apps.split(df)
    rps = d[d["metric"] == "http.rps"]
    assert set(rps["variant"]) == {"network=host", "network=bridge", "network=publish"}
    assert set(rps["sub"]) == {"small", "1MiB"}
    assert set(d[d["metric"] == "cpu.events"]["variant"]) == {"default"}
    # a sub-case that is the whole variant (a cell without variants) leaves "default"
    one_row = df[df["metric"] == "cpu.events"].head(1).assign(variant="read", sub="read")
    assert apps.split(one_row)["variant"].tolist() == ["default"]


def test_overhead_ratios_are_the_medians_against_the_host_s(one: tuple[Docs, pd.DataFrame]
                                                            ) -> None:
    _, df = one
    t = apps.overhead(df)
    host = values(df, "host", "network=host,small", "http.rps")
    for backend, variant in (("docker", "network=publish"), ("ns", "network=bridge"),
                             ("libvirt", "network=bridge")):
        v = values(df, backend, f"{variant},small", "http.rps")
        row = t[(t["backend"] == backend) & (t["variant"] == variant)
                & (t["metric"] == "http.rps") & (t["sub"] == "small")]
        assert len(row) == 1
        r = row.iloc[0]
        want, lo, hi = stats.ratio_ci(host, v)
        assert r["ratio"] == pytest.approx(float(np.median(v) / np.median(host)))
        assert (r["ratio"], r["ratio_lo"], r["ratio_hi"]) == pytest.approx((want, lo, hi))
        assert r["host_backend"] == "host" and r["host_median"] == pytest.approx(
            float(np.median(host)))
    pub = t[(t["backend"] == "docker") & (t["network"] == "publish")
            & (t["metric"] == "http.rps")]
    assert pub["slower"].all()  # 0.75x the host's: the CI is wholly below 1
    p99 = t[(t["backend"] == "docker") & (t["network"] == "publish")
            & (t["metric"] == "http.lat_p99")]
    assert (p99["ratio"] > 1).all() and p99["slower"].all()  # times: slower is above 1
    same = t[(t["backend"] == "host") & (t["metric"] == "http.rps")]
    assert same["ratio"].tolist() == pytest.approx([1.0, 1.0])
    assert t[t["backend"] == "libvirt"]["emulated"].all()
    assert not t["metric"].str.endswith("daemon_pss_loaded").any()  # the host has none


def test_the_host_reference_is_its_own_network(one: tuple[Docs, pd.DataFrame]) -> None:
    """A host with a second (odd) network cell still serves as reference on network=host."""
    _, df = one
    extra = df[(df["backend"] == "host") & (df["metric"] == "kv.ops")].assign(
        variant=lambda d: d["variant"].str.replace("network=host", "network=bridge"),
        value=lambda d: d["value"] * 0.5)
    t = apps.overhead(pd.concat([df, extra], ignore_index=True))
    row = t[(t["backend"] == "ns") & (t["network"] == "host") & (t["metric"] == "kv.ops")
            & (t["sub"] == "GET")].iloc[0]
    assert row["host_variant"] == "network=host"
    assert row["host_median"] == pytest.approx(
        float(np.median(values(df, "host", "network=host,GET", "kv.ops"))))


def test_overhead_table_rows_and_columns(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    tab = apps.overhead_table(apps.overhead(df), several=False)
    assert tab.columns[:4] == ["figure", "sub", "network", "host (median)"]
    assert tab.columns[4:] == ["docker", "ns", "podman", "libvirt (TCG, emulated)"]
    rows = {(r[0], r[1], r[2]): r for r in tab.rows}
    # throughput and p99 per sub-case and network mode, cpu once; PSS and p50 in the CSV
    assert len(rows) == len(tab.rows) == 2 * 2 * 3 * 2 + 1
    pub = rows[("http.rps ↑", "small", "publish")]
    assert pub[4].startswith("0.") and pub[4].endswith("▼")
    assert rows[("http.rps ↑", "small", "host")][7] == ""  # the VM has no host network
    assert rows[("http.lat_p99 ↓", "1MiB", "bridge")][7].split("×")[0] > "1"
    assert rows[("cpu.events ↑", "", "")][7].endswith("▼")


def test_chart_draws_each_cell_s_median_and_the_host_line(one: tuple[Docs, pd.DataFrame]
                                                          ) -> None:
    _, df = one
    look = draw.Look.of(df)
    fig = apps.chart(df, look, "http")
    assert fig is not None
    drawn = {a.get_gid(): a for a in fig.findobj(Line2D) if a.get_gid()}
    label = "docker [publish]"
    dot = drawn[f"http.rps|small|{label}"]
    want = float(np.median(values(df, "docker", "network=publish,small", "http.rps")))
    assert np.asarray(dot.get_xdata())[0] == pytest.approx(want)
    ref = drawn["http.lat_p99|1MiB|reference"]
    assert np.asarray(ref.get_xdata())[0] == pytest.approx(
        float(np.median(values(df, "host", "network=host,1MiB", "http.lat_p99"))))
    assert len(fig.axes) == 4  # rps and p99, each for both sub-cases
    assert apps.chart(df, look, "db") is None  # no samples of it: no chart


def test_report_has_the_section_the_csv_and_no_duplicate_headings(
        one: tuple[Docs, pd.DataFrame], tmp_path: Path) -> None:
    docs, _ = one
    files = render.build(docs, results.frame(docs), tmp_path, formats=("svg",))
    md = (tmp_path / "report.md").read_text()
    assert "## Applications: servers under load, against the bare host" in md
    assert md.count("### HTTP server: nginx under wrk") == 1
    assert "## http:" not in md and "## kv:" not in md  # not again as plain studies
    assert "What a 2-core host can and cannot show" in md
    assert "http: host of 2 cores; instance cpuset 1, load generator cpuset not recorded" in md
    assert "kv: host of 2 cores; instance cpuset 2-3, load generator cpuset 0" in md
    assert "cpu: host of 2 cores; instance cpuset 1, the tool runs in the instance" in md
    assert (tmp_path / "apps_http.svg") in files and (tmp_path / "apps_kv.svg") in files
    with (tmp_path / "overhead.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["study"] for r in rows} == {"http", "kv", "cpu"}
    assert any(r["metric"] == "http.pss_loaded" for r in rows)
    html = (tmp_path / "index.html").read_text()
    assert "Overhead against the bare host" in html and "data:image/svg+xml" in html


def test_no_small_host_note_on_a_larger_host(tmp_path: Path) -> None:
    docs, _ = synth.load(app_results(tmp_path, cores=16))
    assert apps.host_note(docs) == []
    assert apps.placement(docs)[0].startswith("http: host of 16 cores")


def test_near_native_claim_per_backend_and_network(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    found = apps.near_native(apps.overhead(df), several=False)
    assert found is not None
    table, band = found
    assert band == "0.90–1.10"
    rows = {r[0]: r for r in table.rows}
    assert rows["docker [publish]"][-1] == "**does not hold**"  # 0.75x the host's
    assert rows["docker [host]"][-1] == "**holds**"
    assert "libvirt" not in " ".join(rows)  # VMs are not what the claim is about
    # the same verdicts as the seed-claims table, which pairs the cells itself
    t = claims.evaluate(df)
    t = t[t["claim"] == claims.APPS]
    marks = [c for r in table.rows for c in r[1:-1] if c]
    for verdict, mark in apps.MARKS.items():
        assert sum(m.endswith(mark) for m in marks) == int((t["verdict"] == verdict).sum())
    assert len(marks) == len(t) == 3 * 3 * 4 + 3
    # the generic claims chart leaves these rows to the application section
    fig = claims_chart.claims(df, draw.Look.of(df))
    assert fig is None or not any("near-native" in str(x.get_text())
                                  for x in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_without_the_bare_host_no_ratio_is_invented(one: tuple[Docs, pd.DataFrame]) -> None:
    docs, df = one
    rest = df[df["kind"] != "process"]
    t = apps.overhead(rest)
    assert not t.empty and t["ratio"].isna().all() and (t["host_n"] == 0).all()
    assert apps.near_native(t, several=False) is None
    blocks = apps.blocks(docs, rest, pd.DataFrame(columns=["metric"]), {}, several=False)
    text = " ".join(str(x) for _, x in blocks)
    assert "No bare-host results" in text and "Overhead against the bare host" not in text


def test_a_container_faster_than_the_host_is_flagged(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    fast = (df["backend"] == "ns") & (df["variant"] == "network=host,GET") \
        & (df["metric"] == "kv.ops")
    df = df.assign(value=df["value"].where(~fast, df["value"] * 1.5))
    found = apps.near_native(apps.overhead(df), several=False)
    assert found is not None
    table, _ = found
    col = table.columns.index("kv.ops (GET)")
    row = next(r for r in table.rows if r[0] == "ns [host]")
    assert row[col].endswith("✗ (faster)") and row[-1] == "**does not hold**"
    other = next(r for r in table.rows if r[0] == "ns [bridge]")
    assert "(faster)" not in other[col]
