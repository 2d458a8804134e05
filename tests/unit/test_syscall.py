"""The syscall study and its chapter, without a backend: the probe's output read, the
scenario checked, the chart drawn from synthetic results (the host as reference), the
chapter in the report."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness import studies, validate
from harness.core.image import Debian, Recipe
from harness.report import draw, presentation, render
from harness.report.studies import syscall as chapter
from harness.scenario import Scenario, parse
from harness.studies import syscall
from tests.unit import report_synth as rs

ROOT = Path(__file__).resolve().parents[2]
NS = {"host": 300.0, "ns": 420.0, "docker": 450.0, "podman": 460.0, "libvirt": 30000.0}


def test_the_probes_lines_are_read_and_noise_is_not() -> None:
    out = ("CVBENCH-SYSCALL getpid 1000 250000\nnoise\nCVBENCH-SYSCALL bogus 1 1\n"
           "CVBENCH-SYSCALL write 1000 x\nCVBENCH-SYSCALL stat 10\n")
    assert syscall.parse(out) == {"getpid": (1000, 250000)}


def test_the_study_is_found_with_its_unit() -> None:
    st = studies.get("syscall")
    assert studies.unit_of(st, "syscall.getpid.ns") == "ns"
    assert presentation.of("syscall").charts.keys() == {"syscall"}


def scenario(**params: int) -> Scenario:
    data = tomllib.loads((ROOT / "scenarios" / "syscall.toml").read_text())
    data["params"] = {**data["params"], **params}
    return parse(data, "syscall.toml")


def test_the_shipped_scenario_checks_and_bad_params_are_named() -> None:
    s = scenario()
    assert [p for p in validate.check_study(s)] == []
    bad = validate.check_study(scenario(count=0))
    assert [(e.key, "at least 1" in str(e)) for e in bad] == [("params.count", True)]


def test_a_non_recipe_image_is_refused() -> None:
    s = scenario()
    debian = replace(s, workload=replace(s.workload, image=Debian()))
    assert [e.key for e in validate.check_study(debian)] == ["workload.image"]


def test_the_image_hook_adds_the_static_probe(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    probe = tmp_path / "cvbench-syscall"
    monkeypatch.setattr(syscall, "build_probe", lambda: probe)
    got = studies.get("syscall").image(scenario())
    assert isinstance(got, Recipe) and got.binaries[-1] == str(probe)


def synthetic(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(5)
    samples = [rs._s(b, "default", f"syscall.{op}.ns", "ns",
                     base * (k + 1) * rng.lognormal(0, 0.02), r)
               for b, base in NS.items() for k, op in enumerate(syscall.OPS)
               for r in range(5)]
    return [rs.write_result(tmp_path, "syscall", samples, rs.BACKENDS)]


def test_the_chart_has_a_panel_per_operation_and_the_host_as_reference(
        tmp_path: Path) -> None:
    _, df = rs.load(synthetic(tmp_path))
    fig = chapter.syscall(df, draw.Look.of(df))
    assert fig is not None
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "getpid", "openat + close", "stat", "mmap + munmap", "clock_gettime", "write"]
    for k, ax in enumerate(panels):
        refs = [ln for ln in ax.get_lines() if str(ln.get_gid()).endswith("|reference")]
        assert len(refs) == 1
        # the reference is the host's own median, from the synthetic figures
        host = df[(df["backend"] == "host") & (df["metric"] == f"syscall.{syscall.OPS[k]}.ns")]
        assert np.asarray(refs[0].get_xdata(), float).tolist() == \
            [host["value"].median()] * 2


def test_its_chapter_is_in_the_report(tmp_path: Path) -> None:
    docs, df = rs.load(synthetic(tmp_path))
    written = render.build(docs, df, tmp_path / "r", ["png"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## System calls: what a system call costs inside each backend" in md
    assert "![System calls: ns per call](syscall.png)" in md
    assert tmp_path / "r" / "syscall.csv" in written
    # the summary: a column per operation, a row per backend (the VM's marked emulated)
    assert "| backend | n | getpid.ns | openat_close.ns | stat.ns |" in md
    assert "| libvirt (TCG, emulated) | 5 |" in md
