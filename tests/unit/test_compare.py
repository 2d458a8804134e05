"""bench compare / calibrate / baseline on synthetic result files (no processes measured).

The synthetic runs have what makes the real host hard: a per-run effect (the host's load
during that run) on top of per-sample noise, so a test on the samples alone would call
most A/A pairs "significant".
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import baseline, compare, results, stats
from harness.core.errors import UsageError
from harness.core.records import Result

METRICS = {"startup.total": "s", "startup.create": "s", "io.read_bw": "B/s"}


def doc(run_id: str, medians: dict[str, float], rng: np.random.Generator, n: int = 30,
        host: str = "h1", argv: tuple[str, ...] = ("true",), copies: int = 0,
        spread: float = 0.05) -> dict[str, Any]:
    """A valid result: `n` samples per metric of backend `host`, lognormal around the
    given medians (with `copies`, that many interleaved copies per cell, for calibration)."""
    samples = []
    for metric, med in medians.items():
        for c in range(max(copies, 1)):
            for i, v in enumerate(med * rng.lognormal(0, spread, n)):
                samples.append({"backend": "host", "variant": "default", "metric": metric,
                                "unit": METRICS[metric], "value": float(v), "round": i + 1,
                                **({"copy": c} if copies else {})})
    d: dict[str, Any] = {
        "schema": 1, "tool": {"name": "cvbench", "version": "0"}, "run_id": run_id,
        "created": "2026-01-01T00:00:00+00:00",
        "scenario": {"name": "startup", "workload": {"argv": list(argv)}},
        "host": {"id": host, "hostname": host}, "backends": {"host": {"versions": {}}},
        "image": {"digest": "ab" * 32}, "samples": samples, "events": []}
    d["checksum"] = results.checksum(d)
    return d


def write(path: Path, d: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def runs(tmp: Path, side: str, k: int, scale: dict[str, float], rng: np.random.Generator,
         run_sd: float = 0.15, **kw: Any) -> Path:
    """k runs of one side; each run's medians move together by exp(N(0, run_sd))."""
    for i in range(k):
        eff = float(np.exp(rng.normal(0, run_sd)))
        meds = {"startup.total": 0.010 * eff * scale.get("startup.total", 1),
                "startup.create": 0.002 * eff * scale.get("startup.create", 1),
                "io.read_bw": 1e9 / eff * scale.get("io.read_bw", 1)}
        write(tmp / side / f"r{i}.json", doc(f"{side}{i:08d}", meds, rng, **kw))
    return tmp / side


def run_compare(base: Path, new: Path, **kw: Any) -> compare.Comparison:
    kw.setdefault("baselines_dir", None)
    return compare.compare(compare.load_set(base), compare.load_set(new), **kw)


def cell(c: compare.Comparison, metric: str) -> compare.CellChange:
    return next(x for x in c.cells if x.metric == metric)


# --- statistics ---------------------------------------------------------------------------

def test_direction_comes_from_the_unit() -> None:
    assert not stats.higher_is_better("s") and not stats.higher_is_better("B")
    assert stats.higher_is_better("B/s") and stats.higher_is_better("iops")
    assert stats.higher_is_better("ops/s")


def test_decide_needs_significance_ci_threshold_and_band() -> None:
    rng = np.random.default_rng(1)
    base = rng.lognormal(0, 0.05, 40)
    slow = 1.5 * rng.lognormal(0, 0.05, 40)
    d = stats.decide(base, slow, "s", 0.05, 0.01, float("nan"))
    assert d.verdict == "regression" and 1.4 < d.ratio < 1.6 and d.lo > 1 and d.p < 1e-6
    assert stats.decide(base, slow, "s", 0.05, 0.01, 0.6).verdict == "no change"
    assert "noise band" in stats.decide(base, slow, "s", 0.05, 0.01, 0.6).why
    assert stats.decide(base, slow, "s", 0.6, 0.01, 0.1).verdict == "no change"
    assert stats.decide(slow, base, "s", 0.05, 0.01, 0.1).verdict == "improvement"
    # the same numbers as a throughput: higher is better, so lower is the regression
    assert stats.decide(slow, base, "B/s", 0.05, 0.01, 0.1).verdict == "regression"
    same = stats.decide(base, rng.permutation(base), "s", 0.0, 0.01, 0.0)
    assert same.verdict == "no change" and same.p > 0.5
    assert stats.decide([1.0], [2.0], "s", 0.05, 0.01, 0.0).verdict == "n/a"
    assert stats.decide([0.0, 0.0], [1.0, 2.0], "s", 0.05, 0.01, 0.0).verdict == "n/a"


def test_noise_band_shrinks_with_runs_and_grows_with_cells() -> None:
    one = stats.noise_band(0.2, 9, 1, 1, 0.01, 14)
    five = stats.noise_band(0.2, 9, 5, 5, 0.01, 14)
    assert 0 < five < one
    assert stats.noise_band(0.2, 9, 1, 1, 0.01, 1) < one
    assert stats.noise_band(0.2, 30, 1, 1, 0.01, 14) < one  # a better-known sigma
    assert math.isnan(stats.noise_band(float("nan"), 9, 1, 1, 0.01, 14))
    assert math.isnan(stats.noise_band(0.2, 0, 1, 1, 0.01, 14))


def test_aa_spread_separates_within_and_between_run_noise() -> None:
    rng = np.random.default_rng(2)
    pairs = []
    for _ in range(400):
        run = rng.normal(0, 0.3)
        pairs.append((float(np.exp(run + rng.normal(0, 0.05))),
                      float(np.exp(run + rng.normal(0, 0.05)))))
    s = stats.aa_spread(pairs)
    assert s.runs == 400 and s.df == 399
    assert 0.04 < s.within < 0.06 and 0.26 < s.between < 0.34
    assert s.total == pytest.approx(math.hypot(s.within, s.between))
    assert s.max_cross > s.max_within
    assert stats.aa_spread([]).runs == 0


def test_run_sigma_pools_the_sides() -> None:
    s, df = stats.run_sigma([[1.0, math.e], [1.0, math.e, 1.0]])
    assert df == 3 and s > 0
    assert stats.run_sigma([[1.0], [2.0]])[1] == 0


# --- compare --------------------------------------------------------------------------------

def test_aa_with_run_effects_has_no_regression_and_a_measured_band(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    flagged = 0
    for i in range(10):
        d = tmp_path / str(i)
        c = run_compare(runs(d, "a", 5, {}, rng), runs(d, "b", 5, {}, rng))
        assert all(x.band_source == "observed" and x.runs_base == 5 for x in c.cells)
        flagged += len(c.regressions)
    assert flagged == 0


def test_a_slowdown_beyond_the_band_is_a_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    c = run_compare(runs(tmp_path, "a", 5, {}, rng),
                    runs(tmp_path, "b", 5, {"startup.total": 3.0, "io.read_bw": 0.3}, rng))
    assert c.exit_code == 1
    assert {x.metric for x in c.regressions} == {"startup.total", "io.read_bw"}
    t = cell(c, "startup.total")
    assert 2.5 < t.decision.ratio < 3.5 and t.decision.lo > 1
    assert cell(c, "startup.create").decision.verdict == "no change"
    md = c.markdown()
    assert "REGRESSION: 2 of 3 cells" in md
    assert f"{t.decision.ratio:.3f} ({t.decision.lo:.3f} – {t.decision.hi:.3f})" in md
    j = c.as_json()
    assert j["verdict"] == "regression" and j["exit_code"] == 1
    json.dumps(j, allow_nan=False)
    bw = next(x for x in j["cells"] if x["metric"] == "io.read_bw")
    assert bw["direction"] == "higher is better" and bw["verdict"] == "regression"


def test_single_runs_without_calibration_say_the_band_is_unknown(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    c = run_compare(runs(tmp_path, "a", 1, {}, rng), runs(tmp_path, "b", 1, {}, rng))
    assert all(x.band_source == "none" and math.isnan(x.band) for x in c.cells)
    assert any("noise band unknown" in n for n in c.notes)


def test_cross_host_is_refused_unless_allowed(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a = runs(tmp_path, "a", 2, {}, rng, host="h1")
    b = runs(tmp_path, "b", 2, {}, rng, host="h2")
    with pytest.raises(compare.CrossHostError, match="--allow-cross-host") as e:
        run_compare(a, b)
    assert e.value.exit_code == 2
    c = run_compare(a, b, allow_cross_host=True)
    assert c.cross_host and "cross-host" in c.markdown() and "indicative" in c.headline()


def test_cells_match_by_name_and_differences_are_noted(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    a = runs(tmp_path, "a", 2, {}, rng, argv=("sh", "-c", "true"))
    b = runs(tmp_path, "b", 2, {}, rng, argv=("sh", "-c", "sleep 0.02; true"))
    c = run_compare(a, b, metrics=["startup.t*"])
    assert [x.metric for x in c.cells] == ["startup.total"]
    assert any("workload.argv differs" in n and "sleep 0.02" in n for n in c.notes)
    extra = doc("x" * 10, {"startup.create": 0.002}, rng)
    extra["samples"] = [dict(s, backend="ns") for s in extra["samples"]]
    extra["checksum"] = results.checksum(extra)
    write(tmp_path / "b" / "ns.json", extra)
    c = run_compare(a, b)
    assert c.only_new == ["startup · ns · default · startup.create"]
    with pytest.raises(UsageError, match="no cells in common"):
        run_compare(a, b, metrics=["nothing.*"])


def test_load_set_accepts_files_dirs_and_globs(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    d = runs(tmp_path, "a", 3, {}, rng)
    assert len(compare.load_set(d)) == 3
    assert len(compare.load_set(str(d / "r[01].json"))) == 2
    assert len(compare.load_set(d / "r2.json")) == 1
    with pytest.raises(UsageError, match="no result files match"):
        compare.load_set(str(d / "x*.json"))
    with pytest.raises(UsageError, match="no such"):
        compare.load_set(tmp_path / "missing")


# --- calibration and baselines ----------------------------------------------------------------

def test_calibrated_band_is_used_from_the_hosts_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    cal = []
    for i in range(8):  # run effect 0.15, sampling noise small: copies agree within a run
        eff = float(np.exp(rng.normal(0, 0.15)))
        cal.append(Result.from_dict(doc(f"cal{i:07d}", {"startup.total": 0.01 * eff}, rng,
                                        copies=2)))
    noise = baseline.calibrate_noise(cal)
    (rec,) = noise
    assert rec.runs == 8 and rec.df == 7 and rec.sigma_between > rec.sigma_within
    bl_dir = tmp_path / "baselines"
    target = baseline.path_for(bl_dir, "h1", "startup")
    baseline.write(target, baseline.make(cal[0], "cal0.json", noise), force=False)
    written = results.load_result(target).baseline
    assert written is not None and written.noise == (rec,)
    a = write(tmp_path / "a.json", doc("a" * 10, {"startup.total": 0.01}, rng))
    b = write(tmp_path / "b.json", doc("b" * 10, {"startup.total": 0.0125}, rng))
    c = compare.compare(compare.load_set(a), compare.load_set(b), baselines_dir=bl_dir)
    t = cell(c, "startup.total")
    assert t.band_source == "calibrated" and t.band > 0.25
    assert t.decision.verdict == "no change" and "noise band" in t.decision.why
    assert any("calibrated" in n for n in c.notes)
    # the baseline itself as BASE carries its noise band
    c = compare.compare(compare.load_set(target), compare.load_set(b), baselines_dir=None)
    assert cell(c, "startup.total").band_source == "calibrated"


def test_baseline_write_refuses_to_overwrite(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    d = Result.from_dict(doc("a" * 10, {"startup.total": 0.01}, rng))
    target = tmp_path / "h1" / "startup.json"
    baseline.write(target, baseline.make(d, "a.json"), force=False)
    with pytest.raises(UsageError, match="--force"):
        baseline.write(target, baseline.make(d, "a.json"), force=False)
    baseline.write(target, baseline.make(d, "b.json"), force=True)
    written = results.load_result(target)
    assert written.baseline is not None and written.baseline.source["path"] == "b.json"
    assert written.samples == d.samples and written.baseline.source["checksum"] == d.checksum


# --- the CLI --------------------------------------------------------------------------------

def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, check=False)


def test_cli_exit_codes_outputs_and_one_line_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    a = runs(tmp_path, "a", 3, {}, rng)
    same = runs(tmp_path, "same", 3, {}, rng)
    slow = runs(tmp_path, "slow", 3, {"startup.total": 4.0}, rng)
    bl = ["--baselines", str(tmp_path / "bl")]
    p = bench("compare", str(a), str(same), *bl)
    assert p.returncode == 0, p.stderr
    md, js = tmp_path / "s.md", tmp_path / "s.json"
    p = bench("compare", str(a), str(slow), "--markdown", str(md), "--json", str(js), *bl)
    assert p.returncode == 1, p.stderr
    assert "regression" in md.read_text() and json.loads(js.read_text())["exit_code"] == 1
    p = bench("compare", str(a), str(slow), "--threshold", "500", *bl)
    assert p.returncode == 0, p.stderr
    other = runs(tmp_path, "other", 2, {}, rng, host="h2")
    for args in (["compare", str(a), str(other), *bl],
                 ["compare", str(a), str(tmp_path / "missing"), *bl],
                 ["compare", str(a), str(slow), "--alpha", "2"],
                 ["compare", str(a)],
                 ["baseline", "update", str(tmp_path / "missing.json")]):
        p = bench(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert "Traceback" not in p.stderr
    assert "--allow-cross-host" in bench("compare", str(a), str(other), *bl).stderr
    p = bench("compare", str(a), str(other), "--allow-cross-host", *bl)
    assert p.returncode == 0, p.stderr


def test_cli_baseline_update_refuses_overwrite_and_keeps_the_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    r = write(tmp_path / "r.json", doc("r" * 10, {"startup.total": 0.01}, rng))
    bl = tmp_path / "bl"
    p = bench("baseline", "update", str(r), "--baselines", str(bl))
    assert p.returncode == 0, p.stderr
    target = bl / "h1" / "startup.json"
    assert target.is_file() and f"baseline: {target}" in p.stdout
    p = bench("baseline", "update", str(r), "--baselines", str(bl))
    assert p.returncode == 2 and "--force" in p.stderr
    d = json.loads(target.read_text())
    d["baseline"]["noise"] = [{"backend": "host", "variant": "default",
                               "metric": "startup.total", "sigma": 0.1, "df": 5, "runs": 6}]
    d["checksum"] = results.checksum(d)
    target.write_text(json.dumps(d))
    p = bench("baseline", "update", str(r), "--baselines", str(bl), "--force")
    assert p.returncode == 0 and "kept the calibrated noise band" in p.stderr
    assert baseline.noise_of(results.load_result(target))


def test_runner_copies_interleave_and_tag_samples(tmp_path: Path) -> None:
    """`bench calibrate`'s A/A: every cell twice in one run, each sample tagged."""
    from harness import plan, sampling, scenario, studies
    from harness.core import image
    from tests.unit.fakes import FakeRuntime

    img = image.build(image.Recipe(), tmp_path / "cache")
    scen = scenario.parse({"name": "t", "study": "startup", "backends": ["fake"],
                           "sampling": {"warmups": 0, "min_samples": 4, "max_samples": 4}},
                          "t.toml")
    rt = FakeRuntime("fake")
    p = plan.Plan(scenario=scen, backends=["fake"], runtimes={"fake": rt}, skipped={})
    cells = plan.make_cells(p, {"fake": rt.prepare(img)}, copies=2)
    assert [c.copy for c in cells] == [0, 1] and cells[0].key != cells[1].key
    assert cells[1].label == "fake #1"
    journal = results.Journal(tmp_path / "t.journal", {"run_id": "abcdef0123", "schema": 1})
    study = studies.get("startup")
    try:
        sampling.Runner(scen, cells, journal, study.sample,
                      lambda m: studies.unit_of(study, m), seed=1).run()
    finally:
        journal.close()
    per_round = {(s.round, s.copy) for s in journal.samples}
    assert per_round == {(r, c) for r in range(1, 5) for c in (0, 1)}
    assert [c["copy"] for c in plan.cell_summary(cells)] == [0, 1]
    plain = plan.make_cells(p, {"fake": cells[0].prepared})
    assert plain[0].copy is None and "copy" not in plan.cell_summary(plain)[0]


def test_the_machine_gates_and_software_differences_are_noted(tmp_path: Path) -> None:
    """Same hardware with another kernel: compared, with a warning; another CPU: refused."""
    rng = np.random.default_rng(5)
    machine = {"cpu_model": "X", "cores": 4, "mem_total_gib": 16, "arch": "x86_64"}

    def side(name: str, **host: Any) -> Path:
        for i in range(2):
            d = doc(f"{name}{i:08d}", {"startup.total": 0.01}, rng)
            d["host"] = {**machine, **host, "id": f"{name}-id"}
            d["checksum"] = results.checksum(d)
            write(tmp_path / name / f"r{i}.json", d)
        return tmp_path / name

    old = side("old", kernel="6.1")
    new = side("new", kernel="6.5")
    c = run_compare(old, new)
    assert not c.cross_host
    assert any("host software differs: kernel 6.1 (base) vs 6.5 (new)" in n for n in c.notes)
    other = side("other", kernel="6.1", cpu_model="Y")
    with pytest.raises(compare.CrossHostError, match="hardware id"):
        run_compare(old, other)
