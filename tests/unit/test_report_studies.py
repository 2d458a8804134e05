"""The report's limits, network and density parts, its claims about them, its caps and
`bench report DIR`: every chart drawn from synthetic results with known values (a
backend that applies no limit, one that applies cpus but not memory, a TCG VM), and what
was drawn (the artists' data) checked against them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from harness import cli, data, results
from harness.report import blocks as page
from harness.report import claims, claims_chart, draw, presentation, tables
from harness.report.studies import limits as limits_chapter
from harness.report.studies import network as network_chapter
from tests.unit import report_synth as synth

Docs = list[results.Loaded]
load = synth.load


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> tuple[Docs, pd.DataFrame]:
    return load(synth.all_results(tmp_path_factory.mktemp("one")))


def by_gid(fig: Figure, gid: str) -> list[Any]:
    return list(fig.findobj(lambda a: a.get_gid() == gid))


def one_gid(fig: Figure, gid: str) -> Any:
    found = by_gid(fig, gid)
    assert len(found) == 1, (gid, found)
    return found[0]


def median(df: pd.DataFrame, backend: str, variant: str, metric: str) -> float:
    v = df[(df["backend"] == backend) & (df["variant"] == variant) & (df["metric"] == metric)]
    assert not v.empty, (backend, variant, metric)
    return float(v["value"].median())


# --- limits ---------------------------------------------------------------------------

def test_limits_chart_cpu_points_idle_room_and_ideal_line(one: tuple[Docs, pd.DataFrame]
                                                         ) -> None:
    _, df = one
    look = draw.Look.of(df, "paper")
    fig = limits_chapter.limits(df, look)
    assert fig is not None
    ideal = one_gid(fig, "limits.ideal").get_xydata()
    assert np.allclose(ideal[:, 0], ideal[:, 1])  # used = asked
    for b in ("ns", "docker", "podman", "libvirt"):
        label = "libvirt (TCG, emulated)" if b == "libvirt" else b
        pts = one_gid(fig, f"limits.cpu|{label}").get_xydata()
        idle = one_gid(fig, f"limits.idle|{label}").get_segments()
        for (x, y), seg, cpus in zip(pts, idle, (0.5, 1.0), strict=True):
            v = f"limits.cpus={cpus:g}"
            used = median(df, b, v, "limits.cpu_used")
            assert abs(x - cpus) < 0.25 * 0.5  # dodged around the asked value, not moved off
            assert y == pytest.approx(used)
            assert y == pytest.approx(cpus * synth.CPU_USED[b], rel=0.03)  # the known value
            # the segment goes from what was used to used + what the host left idle
            d = df[(df["backend"] == b) & (df["variant"] == v)]
            room = (d[d["metric"] == "limits.cpu_used"].set_index("round")["value"]
                    + d[d["metric"] == "limits.host_idle"].set_index("round")["value"])
            assert seg[0][1] == pytest.approx(used) and seg[1][1] == pytest.approx(room.median())
        if b == "libvirt":  # the TCG VM: hollow markers
            assert one_gid(fig, f"limits.cpu|{label}").get_markerfacecolor() == "white"
    # docker at cpus=1 ran with no idle core: no room drawn above its point
    seg = one_gid(fig, "limits.idle|docker").get_segments()[1]
    assert seg[1][1] == pytest.approx(seg[0][1])


def test_limits_chart_shows_an_unlimited_backend_as_such(one: tuple[Docs, pd.DataFrame]
                                                        ) -> None:
    _, df = one
    fig = limits_chapter.limits(df, draw.Look.of(df, "paper"))
    assert fig is not None
    # the host applies no limit: no point at any asked value, a level at what it used
    assert not by_gid(fig, "limits.cpu|host")
    level = one_gid(fig, "limits.unlimited|host").get_ydata()
    used = df[(df["backend"] == "host") & (df["metric"] == "limits.cpu_used")]["value"]
    assert level[0] == pytest.approx(used.median()) and level[0] == pytest.approx(1.9, rel=0.03)
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert any(t.startswith("host: no limit applied") for t in texts)
    # memory: the host's and podman's (which applies cpus only) bars are hollow, said in
    # words, never a zero and never a kill
    for b in ("host", "podman"):
        bar = one_gid(fig, f"limits.mem|{b}")
        assert bar.get_width() == pytest.approx(synth.LIVED[b], rel=1e-6)
        assert bar.get_facecolor()[3] == 0 and bar.get_hatch() == ".."
        assert not by_gid(fig, f"limits.killed|{b}")
    assert any(t.startswith("no limit applied: 128") for t in texts)
    assert by_gid(fig, "limits.cpu|podman")  # its cpus limit is applied and drawn


def test_limits_chart_memory_lived_and_killed_against_the_limit(
        one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    fig = limits_chapter.limits(df, draw.Look.of(df, "paper"))
    assert fig is not None
    assert one_gid(fig, "limits.limit").get_xdata()[0] == 1  # the limit
    for b, label in (("ns", "ns"), ("docker", "docker"),
                     ("libvirt", "libvirt (TCG, emulated)")):
        bar: Rectangle = one_gid(fig, f"limits.mem|{label}")
        assert bar.get_width() == pytest.approx(synth.LIVED[b], rel=1e-6)
        killed = one_gid(fig, f"limits.killed|{label}").get_xdata()[0]
        assert killed == pytest.approx(synth.HOG[synth.HOG.index(synth.LIVED[b]) + 1], rel=1e-6)
    assert one_gid(fig, "limits.mem|libvirt (TCG, emulated)").get_hatch() == "//"


def test_limits_table_and_enforcement_verdicts(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    t = claims.enforcement(df).set_index(["backend", "resource", "asked"])
    assert t.loc[("ns", "cpus", 0.5), "verdict"] == claims.HOLDS
    assert t.loc[("ns", "memory", synth.LIMIT), "verdict"] == claims.HOLDS
    # docker at cpus=1 used its limit, but the host had no idle core: not proven
    assert t.loc[("docker", "cpus", 1.0), "verdict"] == claims.INCONCLUSIVE
    assert "contention" in t.loc[("docker", "cpus", 1.0), "note"]
    # the VM's process used 1.3× what was asked: measured, not enforced
    assert t.loc[("libvirt", "cpus", 0.5), "verdict"] == claims.FAILS
    assert t.loc[("libvirt", "cpus", 0.5), "ratio"] == pytest.approx(1.3, rel=0.03)
    for key in (("host", "cpus", 0.5), ("host", "memory", synth.LIMIT),
                ("podman", "memory", synth.LIMIT)):
        assert t.loc[key, "verdict"] == claims.NOT_APPLIED and not t.loc[key, "applied"]
    assert t.loc[("podman", "cpus", 0.5), "applied"]
    r = t.loc[("ns", "cpus", 1.0)]
    used = df[(df["backend"] == "ns") & (df["variant"] == "limits.cpus=1")
              & (df["metric"] == "limits.cpu_used")]["value"]
    assert r["value"] == pytest.approx(used.median()) and r["n"] == len(used)
    assert r["ratio"] == pytest.approx(used.median() / 1.0)


def test_limits_claim_per_container_backend(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    t = claims.evaluate(df)
    lim = t[t["claim"] == "limits"]
    # containers only, and only the limits they apply: ns 3, docker 3, podman cpus 2
    assert sorted(lim["a"]) == ["docker"] * 3 + ["ns"] * 3 + ["podman"] * 2
    assert set(lim["b"]) == {"cpus 0.5", "cpus 1", "memory 64.0 MiB"}
    assert (lim["verdict"] == claims.INCONCLUSIVE).sum() == 1
    row = lim[(lim["a"] == "ns") & (lim["b"] == "memory 64.0 MiB")].iloc[0]
    assert row["median_a"] == pytest.approx(0.9 * synth.LIMIT, rel=1e-6)
    assert row["ratio"] == pytest.approx(0.9, rel=1e-6)


# --- network --------------------------------------------------------------------------

def test_network_chart_medians_and_host_reference(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    look = draw.Look.of(df, "paper")
    fig = network_chapter.network(df, look)
    assert fig is not None
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    cells = [(b, m) for b in look.order
             for m in ("bridge", "host", "ipvlan", "macvlan", "none") if m in synth.NET[b]]
    expect = [f"{b} [{m}]" + (" (TCG, emulated)" if b == "libvirt" else "") for b, m in cells]
    assert ticks == expect  # the VM has no host mode; the host nothing but
    for i, (b, m) in enumerate(cells):
        label = expect[i]
        for k, metric in enumerate(network_chapter.NETWORK_METRICS):
            x, y = one_gid(fig, f"{metric}|{label}").get_xydata()[0]
            assert x == pytest.approx(median(df, b, f"network={m}", metric))
            assert x == pytest.approx(synth.NET[b][m][k], rel=0.1)  # the known value
            assert abs(y - i) < 0.5  # on its row
    ds = data.datasets(df)[0]
    for k, metric in enumerate(network_chapter.NETWORK_METRICS):
        ref = one_gid(fig, f"{metric}|reference|{ds}").get_xdata()[0]
        assert ref == pytest.approx(median(df, "host", "network=host", metric))
        assert ref == pytest.approx(synth.NET["host"]["host"][k], rel=0.1)
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert any("TCG" in t for t in texts)
    assert any("[macvlan], [ipvlan]: the host's client through a shim" in t for t in texts)
    ticks = fig.axes[0].get_yticklabels()
    assert [t.get_fontweight() for t in ticks][-1] == "bold"  # the TCG rows stand out


def test_network_claims_bridge_against_host_per_backend(one: tuple[Docs, pd.DataFrame]
                                                       ) -> None:
    _, df = one
    t = claims.evaluate(df)
    lat = t[t["claim"] == "net-latency"]
    bw = t[t["claim"] == "net-bw"]
    # ns, docker, podman × p50, p99; never the VM (no host mode) nor the bare host
    assert len(lat) == 6 and len(bw) == 3
    assert set(lat["a"].str.split(" ").str[0]) == {"ns", "docker", "podman"}
    for r in pd.concat([lat, bw]).to_dict("records"):
        b = r["a"].split(" ")[0]
        assert (r["a"], r["b"]) == (f"{b} [bridge]", f"{b} [host]")
        expect = (median(df, b, "network=bridge", r["metric"])
                  / median(df, b, "network=host", r["metric"]))
        assert r["ratio"] == pytest.approx(expect)
        assert r["verdict"] == claims.HOLDS


def test_volume_bind_and_tmpfs_claim(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    t = claims.evaluate(df)
    vol = t[t["claim"] == "volume-io"]
    targets = {a.split("[")[1].rstrip("]") for a in vol["a"]}
    assert targets == {"volume", "bind", "tmpfs"} and set(vol["b"].str.split(" ").str[1]) \
        == {"[rootfs]"}
    assert len(vol) == 3 * 3 * 4  # container backends × targets × jobs


# --- density --------------------------------------------------------------------------

def test_density_summary_one_row_per_backend(one: tuple[Docs, pd.DataFrame]) -> None:
    _, df = one
    t = tables.density(df).set_index("backend")
    assert list(t.index) == ["ns", "docker", "libvirt"]
    for b in t.index:
        r = t.loc[b]
        assert r["basis"] == "pss"  # the synthetic ramps have no kernel figures
        assert r["max_count"] == 8 and r["ramps"] == 2
        assert r["marginal"] == pytest.approx(synth.PSS[b], rel=0.05)
        assert r["marginal_lo"] <= r["marginal"] <= r["marginal_hi"]
        assert (r["low_counts"], r["top_counts"]) == ("1–2", "7–8")
        assert r["low"] == pytest.approx(synth.PSS[b], rel=0.15)
        lat = df[(df["backend"] == b) & (df["metric"] == "density.start_latency")]["value"]
        assert r["start_p95"] == pytest.approx(np.quantile(lat, 0.95))


# --- the report as a whole -------------------------------------------------------------

def test_long_tables_are_capped() -> None:
    rows = [[str(i)] for i in range(page.CAP + 7)]
    blocks = page.capped(page.Table(["n"], rows), "x.csv")
    assert blocks[0][1].rows == rows[:page.CAP]
    assert blocks[1] == ("p", "… 7 more rows in [x.csv](x.csv).")
    assert page.capped(page.Table(["n"], rows[:3]), "x.csv") == [
        ("table", page.Table(["n"], rows[:3]))]


# --- bench report DIR ------------------------------------------------------------------

def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return int(e.value.code or 0), capsys.readouterr().err


def test_report_dir_takes_the_newest_of_each_scenario_per_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    d = tmp_path / "results"
    old, new = ("2026-03-01T08:00:00+00:00", "2026-03-02T08:00:00+00:00")
    for host in ("alpha", "beta"):
        for when in (old, new):
            synth.write_result(d, "startup", synth.startup_samples(rng, 5), synth.BACKENDS,
                               host=host, created=when)
        synth.write_result(d, "memory", synth.memory_samples(rng), synth.BACKENDS,
                           host=host, created=old)
    code, err = _run(["report", str(d), "--out", str(tmp_path / "R"), "--format", "png"],
                     capsys)
    assert code == 0 and "2 older result(s) left out" in err
    md = (tmp_path / "R" / "report.md").read_text()
    runs = re.findall(r"^\| (startup|memory) \| \w+ \| (\S+) \|", md, re.MULTILINE)
    assert sorted(runs) == sorted([("memory", old), ("startup", new)] * 2)
    # two hosts side by side, each one dataset (its studies of two days together)
    assert "### alpha 2026-03-01…2026-03-02" in md and "### beta 2026-03-01…2026-03-02" in md
    assert "## Side by side" in md
    code, err = _run(["report", str(d), "--all", "--out", str(tmp_path / "A"), "--format",
                      "png"], capsys)
    assert code == 0 and err == ""
    md = (tmp_path / "A" / "report.md").read_text()
    assert len(re.findall(r"^\| startup \| ", md, re.MULTILINE)) == 4
    # with every run, a study run twice splits its host by day
    assert "### alpha 2026-03-01" in md and "### alpha 2026-03-02" in md


def test_latest_keeps_files_named_and_orders_by_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    paths = [synth.write_result(tmp_path, "startup", synth.startup_samples(rng, 3),
                                synth.BACKENDS, created=c)
             for c in ("2026-03-02T08:00:00+00:00", "2026-03-01T09:00:00+00:00")]
    docs = [(str(p), results.load_result(p)) for p in paths]
    assert data.latest(docs) == docs[:1]


def test_datasets_group_a_host_not_a_day(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    paths = [synth.write_result(tmp_path, "startup", synth.startup_samples(rng, 3),
                                synth.BACKENDS, created="2026-03-01T08:00:00+00:00"),
             synth.write_result(tmp_path, "memory", synth.memory_samples(rng),
                                synth.BACKENDS, created="2026-03-03T08:00:00+00:00")]
    _, df = load(paths)
    assert data.datasets(df) == ["synthetic-a 2026-03-01…2026-03-03"]


def test_chart_lines_are_plotted(one: tuple[Docs, pd.DataFrame]) -> None:
    """Every study chart draws something: no empty panel."""
    _, df = one
    look = draw.Look.of(df, "paper")
    for name in ("limits", "network"):
        fig = (claims_chart.CHARTS | presentation.charts())[name][1](df, look)
        assert fig is not None
        for ax in fig.axes:
            if ax.get_visible() and ax.get_xlabel():  # not the twin axes of labels
                assert ax.lines or ax.patches or ax.collections, (name, ax.get_title())
                assert any(isinstance(a, Line2D | Rectangle | LineCollection)
                           for a in ax.get_children())
