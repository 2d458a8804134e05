"""The memory curve, the extrapolation guard and the kernel limits of harness.capacity,
on synthetic ramps whose cost per instance rises with n (as measured: an ns instance's
MemAvailable drop went from 0.30 MiB over 1-40 to 0.59 MiB over 40-150)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import capacity as cap
from harness.cli import main
from harness.core.errors import UsageError
from tests.unit.test_capacity import GIB, MIB, cell, doc, target, write

Cost = Callable[[np.ndarray], np.ndarray]


def counts(top: int, dense: int = 50, every: int = 20) -> list[int]:
    """The counts a ramp measures: all up to `dense`, then every `every`-th, and the top."""
    return sorted({*range(min(dense, top) + 1), *range(0, top + 1, every), top})


def ramp(backend: str, rnd: int, top: int, cost: Cost, noise: float = 0.0,
         counters: dict[str, float] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One ramp measured at counts(top): PSS = cost(n), kernel flat, counters linear."""
    rng = np.random.default_rng(seed + rnd)
    out: list[dict[str, Any]] = []

    def add(metric: str, unit: str, n: int, value: float) -> None:
        out.append({"backend": backend, "variant": "default", "metric": metric, "unit": unit,
                    "value": float(value), "round": rnd, "instance": n})

    for n in counts(top, every=max(1, top // 100)):
        pss = float(cost(np.array([n]))[0]) + (rng.normal(0, noise) if n else 0.0)
        add("density.pss_total", "B", n, pss if n else 0.0)
        add("density.kernel_mem", "B", n, 300 * MIB)
        add("density.daemon_pss", "B", n, 0.0)  # daemonless, as the study records it
        add("density.mem_available", "B", n, 20 * GIB - (pss if n else 0.0))
        for name, per in (counters or {}).items():
            add(f"density.{name}", "count", n, 200 + per * n)
    for n in range(1, top + 1):
        add("density.start_latency", "s", n, 0.02)
    return out


def rising(n: np.ndarray) -> np.ndarray:
    """2 MiB fixed; the marginal rises from 0.3 MiB by 0.0001 MiB per instance."""
    return (2 + 0.3 * n + 0.00005 * n**2) * MIB


def true_marginal(n: float) -> float:
    return (0.3 + 0.0001 * n) * MIB


def with_limits(d: Any, limits: dict[str, int]) -> Any:
    for e in d.events:
        e["limits"] = limits
    return d


def test_curve_recovers_the_rising_marginal() -> None:
    samples = [s for r in (1, 2) for s in ramp("ns", r, 1000, rising, noise=0.5 * MIB)]
    c = cell(cap.analyse([("a.json", doc(samples))], target(basis="pss")), "ns")
    f = c.fits["pss"]
    assert f.model in ("quadratic", "hinge") and f.bic[f.model] < f.bic["linear"]
    assert f.marginal_top_ci[0] < true_marginal(1000) < f.marginal_top_ci[1]
    assert f.marginal_top == pytest.approx(true_marginal(1000), rel=0.05)
    assert f.marginal_at(40) == pytest.approx(true_marginal(40), rel=0.15)
    # The line's slope is the average over the range, well under the top's marginal.
    assert f.marginal < 0.9 * f.marginal_top
    text = " ".join(cap.assumptions(target(basis="pss"), [c]))
    assert "rises with the count" in text and "flattens" not in text


def test_short_ramp_plan_is_refused_or_flagged() -> None:
    """From 40 instances of a rising cost, the 64 GiB plan is far beyond what was measured
    and far too optimistic: refused (with the count to measure), or flagged."""
    short = cap.analyse([("a.json", doc([s for r in (1, 2) for s in
                                          ramp("ns", r, 40, rising)]))], target(basis="pss"))
    c = cell(short, "ns")
    assert c.extrapolation > 1000 and short.too_far() == [c]
    with pytest.raises(UsageError, match=r"ns .* from 40 measured \(measure ≥ [\d,]+"):
        cap.refuse_extrapolation(short)
    assert any("the plan" in n and "40 measured" in n for n in c.notes)
    # What a long ramp says: the short one overestimated the count.
    long = cell(cap.analyse([("a.json", doc([s for r in (1, 2) for s in
                                              ramp("ns", r, 1000, rising)]))],
                            target(basis="pss")), "ns")
    assert c.by_memory is not None and long.by_memory is not None
    assert c.by_memory > 1.2 * long.by_memory
    # Within the factor nothing is refused.
    small = cap.analyse([("a.json", doc(ramp("ns", 1, 1000, rising)))],
                        target(memory=1 * GIB, basis="pss"))
    cap.refuse_extrapolation(small)
    assert cell(small, "ns").instances is not None


def test_piecewise_cost_is_fitted_with_its_knot() -> None:
    def hinge(n: np.ndarray) -> np.ndarray:
        return np.asarray((1 + 0.3 * n + 0.4 * np.maximum(0, n - 600)) * MIB, float)

    f = cell(cap.analyse([("a.json", doc(ramp("ns", 1, 1500, hinge, noise=0.2 * MIB)))],
                         target(memory=4 * GIB, basis="pss")), "ns").fits["pss"]
    assert f.model == "hinge" and f.curve is not None
    assert f.curve.knot is not None and abs(f.curve.knot - 600) <= 60
    assert f.marginal_top == pytest.approx(0.7 * MIB, rel=0.03)
    assert f.marginal_at(40) == pytest.approx(0.3 * MIB, rel=0.05)


def test_a_linear_cost_stays_a_line() -> None:
    """BIC does not buy a curve with noise: a constant marginal is reported as one."""
    samples = [s for r in (1, 2) for s in
               ramp("docker", r, 300, lambda n: (30 + 5 * n) * MIB, noise=2 * MIB, seed=4)]
    c = cell(cap.analyse([("a.json", doc(samples))], target(basis="pss")), "docker")
    f = c.fits["pss"]
    assert f.model == "linear" and f.marginal_top == pytest.approx(f.marginal)
    assert any("stays within 10 %" in a for a in cap.assumptions(target(basis="pss"), [c]))


def test_kernel_limits_bind_before_memory_and_can_be_given() -> None:
    ceilings = {"pid_max": 32768, "max_net_namespaces": 96365, "nofile": 20000,
                "maxkeys": 1000000}
    samples = [s for r in (1, 2) for s in
               ramp("docker", r, 300, lambda n: (30 + 5 * n) * MIB,
                    counters={"tasks": 12.0, "netns": 1.0, "runner_fds": 1.5, "keys": 1.0,
                              "inotify_instances": 0.0})]
    d = with_limits(doc(samples, pids=64), ceilings)
    c = cell(cap.analyse([("a.json", d)], target(memory=64 * GIB, basis="pss")), "docker")
    lims = {lim.name: lim for lim in c.limits}
    assert lims["pid_max"].per_instance == pytest.approx(12.0)
    assert lims["pid_max"].count == (32768 - 200) // 12  # 2,714: before 64 GiB / 5 MiB
    assert c.first_limit is lims["pid_max"]
    assert c.binding.startswith("pid_max") and c.instances == lims["pid_max"].count
    assert "inotify_instances" not in lims  # no ceiling recorded for it
    # Idle, a container takes 12 tasks; up to its pids limit, pid_max binds at 508.
    assert "if each ran up to its pids limit (64), pid_max 32,768 would bind at 508" in \
        " ".join(c.notes)
    # The target host's own pid_max: 4,194,304 lets the descriptors bind first.
    c = cell(cap.analyse([("a.json", d)], target(memory=64 * GIB, basis="pss",
                                                 limits={"pid_max": 4194304})), "docker")
    first = c.first_limit
    assert first is not None and first.name == "nofile" and first.count == (20000 - 200) // 1.5
    assert {lim.name: lim.given for lim in c.limits}["pid_max"] is True


def test_unknown_limit_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--limit: unknown limit 'pids'"):
        cap.analyse([("a.json", doc(ramp("ns", 1, 60, rising)))],
                    target(limits={"pids": 5}))


def test_cli_refuses_then_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_limits(doc([s for r in (1, 2) for s in ramp(
        "ns", r, 40, rising, counters={"tasks": 1.0})]), {"pid_max": 32768}))
    args = ["capacity", str(path), "--host-memory", "64G", "--host-cpus", "16"]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--allow-extrapolation" in err and "measure ≥" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main([*args, "--allow-extrapolation", "--limit", "pid_max=1000", "--json"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    assert "EXTRAPOLATED" in captured.err
    ns = json.loads(captured.out)["backends"][0]
    assert ns["instances_per_host"]["first_limit"] == "pid_max"
    assert ns["instances_per_host"]["by_first_limit"] == 800  # (1000 - 200) / 1
    assert ns["memory"]["pss"]["model"] in ("linear", "quadratic", "hinge")
    with pytest.raises(SystemExit) as e:
        main([*args, "--limit", "pid_max=many"])
    assert e.value.code == 2 and "NAME=COUNT" in capsys.readouterr().err
