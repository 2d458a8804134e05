"""The report over real limits and network runs on this machine (host and ns, one sample
each), through `bench run` and `bench report DIR`: the charts are drawn from what was
measured, the host is shown as applying no limit, and ns's limits are not broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import data, results
from harness.report import claims, draw
from harness.report.studies import limits as limits_chapter
from harness.report.studies import network as network_chapter
from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.root, pytest.mark.slow]


def bench(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True,
                          text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend_or_skip("ns")
    d = tmp_path_factory.mktemp("runs")
    for scenario in ("limits", "network"):
        p = bench("run", scenario, "--backends", "host,ns", "--min-samples", "1",
                  "--max-samples", "1", "--out", str(d))
        assert p.returncode == 0, p.stderr[-2000:]
    return d


def test_report_dir_over_real_limits_and_network(root: None, measured: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "R"
    p = bench("report", str(measured), "--out", str(out), "--format", "png")
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("limits", "network", "claims"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "## Limits: are CPU and memory limits enforced" in md
    assert "## Network: latency and bandwidth per network mode" in md
    assert len(md.splitlines()) < 400

    docs = results.load_all(measured)
    df = data.enrich(results.frame(docs), docs)
    t = claims.enforcement(df).set_index(["backend", "resource"])
    # the host applies no limit and says so; ns applies both, and never lets a
    # workload take more than it was given
    assert set(t.loc["host"]["verdict"]) == {claims.NOT_APPLIED}
    ns = t.loc["ns"]
    assert ns["applied"].all() and claims.FAILS not in set(ns["verdict"])
    mem = ns.loc["memory"]
    assert float(mem["killed"]) > float(mem["asked"]) >= float(mem["value"])

    fig = limits_chapter.limits(df, draw.Look.of(df, "paper"))
    assert fig is not None
    used = df[(df["backend"] == "ns") & (df["metric"] == "limits.cpu_used")]
    pts = next(a for a in fig.findobj(lambda a: a.get_gid() == "limits.cpu|ns"))
    asked = used["variant"].map(lambda v: (data.limit_of(v) or ("", 0.0))[1])
    expect = used.assign(asked=asked).groupby("asked")["value"].median()
    assert list(pts.get_ydata()) == pytest.approx(list(expect))

    # network: ns in every mode, the host in its own, drawn where they were measured
    fig = network_chapter.network(df, draw.Look.of(df, "paper"))
    assert fig is not None
    for b, mode in (("host", "host"), ("ns", "none"), ("ns", "bridge"), ("ns", "host")):
        line = next(a for a in fig.findobj(
            lambda a, b=b, mode=mode: a.get_gid() == f"network.lat_p50|{b} [{mode}]"))
        v = df[(df["backend"] == b) & (df["variant"] == f"network={mode}")
               & (df["metric"] == "network.lat_p50")]["value"]
        assert line.get_xdata()[0] == pytest.approx(float(pd.Series(v).median()))
    net = claims.evaluate(df)
    assert set(net[net["claim"] == "net-bw"]["a"]) == {"ns [bridge]"}
