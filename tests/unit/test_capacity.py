"""harness.capacity on synthetic density data whose answers are known exactly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import capacity as cap
from harness import results
from harness.cli import main
from harness.core.errors import UsageError
from harness.core.records import Result
from harness.core.units import parse_seconds

MIB = 2**20
GIB = 2**30
Latency = Callable[[int], float]


def flat(level: float) -> Latency:
    return lambda n: level


def hinge(base: float, knee: int, slope: float) -> Latency:
    return lambda n: base + slope * max(0, n - knee)


def ramp(backend: str, rnd: int, top: int, pss_fixed: float, pss_marginal: float,
         kernel_marginal: float = 0.0, daemon: float = 0.0, latency: Latency | None = None,
         noise: float = 0.0, lat_noise: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """Samples of one ramp as the density study writes them (bytes, seconds)."""
    rng = np.random.default_rng(seed + rnd)
    latency = latency or flat(0.05)
    out: list[dict[str, Any]] = []

    def add(metric: str, unit: str, n: int, value: float) -> None:
        out.append({"backend": backend, "variant": "default", "metric": metric, "unit": unit,
                    "value": float(value), "round": rnd, "instance": n})

    avail0, kernel0 = 20 * GIB, 300 * MIB
    for n in range(top + 1):
        pss = pss_fixed + pss_marginal * n + rng.normal(0, noise) if n else 0.0
        kernel = kernel0 + kernel_marginal * n + (rng.normal(0, noise) if n else 0.0)
        add("density.pss_total", "B", n, pss)
        add("density.uss_total", "B", n, pss / 2)
        add("density.daemon_pss", "B", n, daemon)
        add("density.kernel_mem", "B", n, kernel)
        add("density.mem_available", "B", n, avail0 - (pss + kernel - kernel0))
        if n:
            add("density.cgroup_total", "B", n, pss * 1.5)
            add("density.start_latency", "s", n, latency(n) + rng.normal(0, lat_noise))
    return out


def doc(samples: list[dict[str, Any]], cores: int = 2, host_id: str = "h1",
        emulated: tuple[str, ...] = (), pids: int | None = None) -> Result:
    backends = {s["backend"] for s in samples}
    events = [{"kind": "ramp_stopped", "backend": b, "variant": "default", "reason":
               "max_instances", "round": r} for b in sorted(backends)
              for r in sorted({s["round"] for s in samples if s["backend"] == b})]
    return Result.from_dict({
        "schema": 1, "tool": {"name": "cvbench", "version": "0"}, "run_id": "0123456789",
        "created": "2026-01-01T00:00:00+00:00",
        "scenario": {"name": "density", "study": "density",
                     **({"limits": {"pids": pids}} if pids else {})},
        "host": {"id": host_id, "hostname": "x", "cores": cores, "mem_total": 24 * GIB},
        "backends": {b: {"emulated": b in emulated, "accel": "tcg" if b in emulated
                         else None} for b in backends},
        "image": {"digest": "ab" * 32}, "samples": samples, "events": events}, sealed=False)


def target(**kw: Any) -> cap.TargetHost:
    base: dict[str, Any] = {"memory": 64 * GIB, "cpus": 16, "reserve": 0.10}
    return cap.TargetHost(**{**base, **kw})


def cell(plan: cap.CapacityPlan, backend: str) -> cap.CellPlan:
    return next(c for c in plan.cells if c.backend == backend)


def test_exact_marginal_and_fixed_on_every_basis() -> None:
    samples = [s for r in (1, 2) for s in
               ramp("ns", r, 20, pss_fixed=0.5 * MIB, pss_marginal=0.1 * MIB,
                    kernel_marginal=0.25 * MIB, daemon=3 * MIB)]
    plan = cap.analyse([("a.json", doc(samples))], target())
    c = cell(plan, "ns")
    pk, pss = c.fits["pss+kernel"], c.fits["pss"]
    assert pk.marginal == pytest.approx(0.35 * MIB)
    assert pk.marginal_ci == pytest.approx((0.35 * MIB, 0.35 * MIB))
    assert pk.fixed == pytest.approx(3.5 * MIB)  # PSS's shared part + the idle daemon
    assert pss.marginal == pytest.approx(0.1 * MIB)
    assert c.fits["cgroup"].marginal == pytest.approx(0.15 * MIB)
    # MemAvailable drops by PSS + kernel; the daemon was there before the ramp.
    assert c.fits["host"].marginal == pytest.approx(0.35 * MIB)
    assert c.fits["host"].fixed == pytest.approx(3.5 * MIB)
    assert c.ramps == 2 and c.max_measured == 20
    assert c.stopped_by == ["max_instances", "max_instances"]
    usable = 64 * GIB * 0.9
    assert c.by_memory == math.floor((usable - 3.5 * MIB) / (0.35 * MIB))
    assert c.binding == "memory" and c.instances == c.by_memory


def test_noisy_marginal_ci_covers_the_truth() -> None:
    samples = [s for r in (1, 2, 3) for s in
               ramp("docker", r, 30, pss_fixed=40 * MIB, pss_marginal=6 * MIB,
                    noise=1.5 * MIB, seed=7)]
    c = cell(cap.analyse([("a.json", doc(samples))], target(basis="pss")), "docker")
    f = c.fits["pss"]
    assert f.marginal_ci[0] < 6 * MIB < f.marginal_ci[1]
    assert f.marginal_ci[1] - f.marginal_ci[0] < 1 * MIB
    assert len(f.per_ramp) == 3
    lo, hi = c.by_memory_ci
    assert lo is not None and hi is not None and lo <= (c.by_memory or 0) <= hi


def test_marginal_indistinguishable_from_zero_is_unbounded_above() -> None:
    samples = [s for r in (1, 2) for s in
               ramp("ns", r, 10, pss_fixed=MIB, pss_marginal=1000, noise=0.3 * MIB, seed=2)]
    c = cell(cap.analyse([("a.json", doc(samples))], target(basis="pss")), "ns")
    f = c.fits["pss"]
    assert f.marginal_ci[0] == 0 < f.marginal_ci[1]  # bounded: a negative cost is none
    assert c.by_memory_ci[1] is None  # some draws have no positive marginal: no bound
    assert any("not distinguishable from 0" in n for n in c.notes)


def test_a_fitted_cost_below_zero_is_held_at_zero_and_said() -> None:
    """A convex cost, 0.02 n^1.5 MiB (no fixed cost): the unbounded parabola and line
    through its points cross 0 before n = 1 (computed here with numpy alone). The fit
    holds the fixed cost at 0, the plan says it is not resolved, and the marginal at the
    top stays near the cost's (0.03 sqrt(200) = 0.424 MiB)."""
    def cost(n: int) -> float:
        return 0.02 * n**1.5 * MIB

    samples = [s for r in (1, 2) for s in ramp("ns", r, 200, 0.0, 0.0)]
    for s in samples:  # the cost itself, not ramp()'s line
        if s["metric"] == "density.pss_total" and s["instance"]:
            s["value"] = cost(s["instance"])
    n = np.arange(1, 201, dtype=float)
    u = n / 200
    y = np.array([cost(int(k)) for k in n])
    parabola = np.linalg.lstsq(np.stack([np.ones_like(u), u, u * u], 1), y, rcond=None)[0]
    line = np.linalg.lstsq(np.stack([np.ones_like(u), u], 1), y, rcond=None)[0]
    assert parabola[0] < -MIB and line[0] < -5 * MIB  # the ramp this test is about
    plan = cap.analyse([("a.json", doc(samples))], target(basis="pss"))
    c = cell(plan, "ns")
    f = c.fits["pss"]
    assert f.model == "quadratic" and f.curve is not None
    assert f.curve_fixed == 0 and f.fixed == 0 and f.fixed_ci[0] == 0
    assert "fixed cost" in f.held and "fixed cost" in f.line_held
    assert (f.curve_draws is not None and
            (np.asarray(f.curve_draws.coefs)[:, :2] >= 0).all())  # every bootstrap draw too
    # (a parabola only approximates n^1.5: the unbounded one is 7 % high at the top)
    assert f.marginal_top == pytest.approx(0.03 * math.sqrt(200) * MIB, rel=0.15)
    assert any("held at 0: not resolved by this ramp" in note for note in c.notes)
    shown = cap.as_json(plan)["backends"][0]["memory"]["pss"]
    assert shown["curve_fixed_mib"] == 0 and shown["held_at_0"] == ["fixed cost"]


def test_a_plan_without_the_daemons_memory_is_refused_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ramp that did not read its daemons: they were taken as 0 (more instances)."""
    samples = [s for s in ramp("docker", 1, 10, MIB, MIB, daemon=90 * MIB)
               if s["metric"] != "density.daemon_pss"]
    with pytest.raises(UsageError, match=r"docker: density\.daemon_pss"):
        cap.analyse([("a.json", doc(samples))], target(basis="pss"))
    path = write(tmp_path, doc(samples))
    with pytest.raises(SystemExit) as e:
        main(["capacity", str(path), "--host-memory", "64G", "--host-cpus", "16"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "density.daemon_pss" in err
    assert len(err.strip().splitlines()) == 1


def test_workload_memory_and_reserve_enter_the_count() -> None:
    samples = ramp("vm", 1, 6, pss_fixed=0.0, pss_marginal=200 * MIB)
    plan = cap.analyse([("a.json", doc(samples))],
                       target(memory=10 * GIB, reserve=0.2, workload_memory=56 * MIB,
                              basis="pss"))
    assert cell(plan, "vm").by_memory == math.floor(8 * GIB / (256 * MIB))  # = 32


def test_knee_is_found_where_latency_starts_to_grow() -> None:
    exact = cap.fit_latency(np.arange(1, 41, dtype=float),
                            np.array([hinge(0.05, 20, 0.01)(n) for n in range(1, 41)]))
    assert exact is not None and exact.knee == 20
    assert exact.base == pytest.approx(0.05) and exact.slope == pytest.approx(0.01)
    rng = np.random.default_rng(3)
    n = np.tile(np.arange(1, 41), 2).astype(float)
    y = np.array([hinge(0.05, 20, 0.01)(int(k)) for k in n]) + rng.normal(0, 0.003, n.size)
    noisy = cap.fit_latency(n, y)
    assert noisy is not None and noisy.knee is not None and 18 <= noisy.knee <= 22


def test_no_knee_in_flat_noisy_latency() -> None:
    rng = np.random.default_rng(5)
    n = np.tile(np.arange(1, 41), 2).astype(float)
    fit = cap.fit_latency(n, 0.03 + rng.normal(0, 0.004, n.size))
    assert fit is not None and fit.knee is None and fit.slope == 0
    assert fit.max_under(1.0) is None  # never reached: not extrapolated


def test_small_growth_is_not_a_knee() -> None:
    """Growing by 5 % over the range is significant here, yet too small to call a knee."""
    n = np.arange(1, 41, dtype=float)
    fit = cap.fit_latency(n, 0.1 + 0.005 / 40 * n)
    assert fit is not None and fit.knee is None


def test_binding_constraint_and_slo_count() -> None:
    # "fast": tiny memory but its start latency grows past a knee: the SLO binds.
    # "big": 512 MiB per instance and flat latency: memory binds.
    samples = [s for r in (1, 2) for s in
               ramp("fast", r, 40, pss_fixed=1 * MIB, pss_marginal=0.5 * MIB,
                    latency=hinge(0.05, 20, 0.01))]
    samples += [s for r in (1, 2) for s in
                ramp("big", r, 8, pss_fixed=0.0, pss_marginal=512 * MIB, latency=flat(3.0))]
    plan = cap.analyse([("a.json", doc(samples, cores=2))],
                       target(cpus=16, slo_start=0.25, basis="pss"))
    fast, big = cell(plan, "fast"), cell(plan, "big")
    # p95 reaches 0.25 s at n = 20 + (0.25 - 0.05) / 0.01 = 40 on 2 cores; x 16/2 cpus.
    assert fast.by_slo == 320
    assert fast.binding == "start-latency SLO" and fast.instances == 320
    assert "within the measured range" in fast.slo_note
    assert big.by_slo == 0 and big.binding == "start-latency SLO"  # 3 s > 0.25 s SLO
    plan = cap.analyse([("a.json", doc(samples, cores=2))],
                       target(cpus=16, slo_start=5.0, basis="pss"))
    big = cell(plan, "big")
    assert big.by_slo is None and big.binding == "memory"
    assert big.instances == math.floor(64 * GIB * 0.9 / (512 * MIB))  # = 115
    assert "not extrapolated" in big.slo_note


def test_slo_beyond_the_measured_range_is_flagged() -> None:
    samples = ramp("fast", 1, 30, pss_fixed=0, pss_marginal=MIB, latency=hinge(0.05, 10, 0.01))
    plan = cap.analyse([("a.json", doc(samples, cores=2))],
                       target(cpus=2, slo_start=1.05, basis="pss"))
    c = cell(plan, "fast")
    assert c.by_slo == 110 and "extrapolated" in c.slo_note


def test_results_of_two_hosts_are_refused() -> None:
    a = doc(ramp("ns", 1, 5, 0, MIB), host_id="h1")
    b = doc(ramp("ns", 1, 5, 0, MIB), host_id="h2")
    with pytest.raises(UsageError, match="different hosts"):
        cap.analyse([("a.json", a), ("b.json", b)], target())


def test_results_of_two_machines_give_a_plan_for_each() -> None:
    """A fleet's density results (two machines: hardware ids differ): each machine's
    cells fitted on its own samples, labelled with it."""
    a = doc(ramp("ns", 1, 5, 0, MIB), host_id="h1", cores=2)
    b = doc(ramp("ns", 1, 5, 0, 4 * MIB), host_id="h2", cores=8)
    plan = cap.analyse([("a.json", a), ("b.json", b)], target(basis="pss"))
    assert len(plan.cells) == 2
    by_cores = {c.measured_cores: c for c in plan.cells}
    assert by_cores[2].fits["pss"].marginal == pytest.approx(MIB)
    assert by_cores[8].fits["pss"].marginal == pytest.approx(4 * MIB)
    # both are called "x": the hardware id tells them apart
    assert by_cores[2].label.startswith("ns on x (") and by_cores[2].label != by_cores[8].label
    one = cap.analyse([("a.json", a)], target(basis="pss"))
    assert one.cells[0].label == "ns"  # a single machine is not named


def test_no_density_samples_is_a_usage_error() -> None:
    d = doc([{**s, "metric": "startup.total"} for s in ramp("ns", 1, 3, 0, MIB)])
    with pytest.raises(UsageError, match="no density samples"):
        cap.analyse([("a.json", d)], target())


def test_parse_seconds() -> None:
    assert parse_seconds("2") == 2.0
    assert parse_seconds("500ms") == pytest.approx(0.5)
    assert parse_seconds("1.5m") == 90.0
    with pytest.raises(ValueError):
        parse_seconds("fast")


def test_the_model_draws_nothing() -> None:
    """Planning (harness.capacity) runs without matplotlib; harness.report draws."""
    code = "import sys, harness.capacity; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def write(tmp_path: Path, d: Result) -> Path:
    j = results.Journal(tmp_path / "d.journal", d.header())
    j.add(d.samples)
    for e in d.events:
        j.event(**e)
    return j.finalize(tmp_path / "density-x.json", {"cells": []})


def test_cli_json_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = [s for r in (1, 2) for s in
               ramp("ns", r, 12, pss_fixed=0.4 * MIB, pss_marginal=0.1 * MIB,
                    kernel_marginal=0.3 * MIB)]
    samples += [s for r in (1, 2) for s in
                ramp("vm", r, 4, pss_fixed=20 * MIB, pss_marginal=220 * MIB, latency=flat(9))]
    path = write(tmp_path, doc(samples, emulated=("vm",)))
    chart = tmp_path / "cap.png"
    with pytest.raises(SystemExit) as e:
        main(["capacity", str(path), str(path.with_name(path.stem + ".pyperf.json")),
              "--host-memory", "64G", "--host-cpus", "16", "--json", "--chart", str(chart),
              "--allow-extrapolation"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    by = {b["backend"]: b for b in out["backends"]}
    assert by["ns"]["marginal_mib"] == pytest.approx(0.4)
    assert by["vm"]["marginal_mib"] == pytest.approx(220)
    assert by["vm"]["emulated"] is True
    assert by["ns"]["instances_per_host"]["max"] > by["vm"]["instances_per_host"]["max"]
    assert by["ns"]["instances_per_host"]["binding"] == "memory"
    assert any("(TCG, emulated)" in a for a in out["assumptions"])
    assert chart.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--host-memory", "lots"], "not a size"),
    (["--slo-start", "soon"], "not a duration"),
    (["--chart", "x.txt"], ".png"),
])
def test_cli_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         args: list[str], message: str) -> None:
    path = write(tmp_path, doc(ramp("ns", 1, 4, 0, MIB)))
    base = {"--host-memory": "64G", "--host-cpus": "16"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    with pytest.raises(SystemExit) as e:
        main(["capacity", str(path), *[x for kv in base.items() for x in kv]])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
