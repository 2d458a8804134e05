"""Capacity planning from density runs: what one more instance costs, and how many fit.

Input: results of the density study (`bench run density`). Every ramp of a cell (backend
x variant) gives, per live-instance count n, the host's MemAvailable, the instances' PSS
(and cgroup) sums, the daemons' PSS, and the start latency of each new instance.

Memory. y(n), the bytes that n instances take, on one basis:
  pss+kernel  (default) the instances' PSS + the daemons' PSS + the rise of the host's
          unreclaimable kernel memory since n = 0 (slab, kernel stacks, page tables,
          per-CPU: namespaces, cgroups and task structures that PSS never shows). The
          kernel part is host-wide, but it moves far less with what neighbours do than
          MemAvailable does
  pss     the instances' PSS + the daemons' PSS: user memory only, attributable to the
          instances and blind to neighbours; it misses the kernel's share
  cgroup  the instances' cgroup usage + the daemons' PSS (the kernel memory and page
          cache charged to the instances' cgroups; where every instance has one)
  host    the drop of MemAvailable since n = 0 + the daemons' PSS at n = 0: the host's
          own view, everything included, but every other process's activity lands in it
          too, so it needs a quiet host
The marginal cost changes with n (it rose from 0.30 to 0.59 MiB per ns instance between
40 and 335 instances on the first host measured), so y(n) is fitted by least squares,
over every ramp's points with n >= 1, with three models: a line, a parabola (a curvature
term) and two lines joined at a knot (searched over the measured counts). The Bayesian
information criterion picks one: BIC = N ln(SSE/N) + k ln N, k counting the coefficients
and the knot. BIC rather than AIC because its penalty grows with N (ln N ≈ 5 per
parameter at 150 points, AIC's is 2): a ramp has hundreds of points, and a curve is
claimed only where the data demand it; it is consistent (it settles on the true model as
points are added). Its likelihood takes the points as independent; the residuals' lag-1
autocorrelation is printed, and a high one says the CIs are too narrow.
Every model's cost at n = 0 (the fixed cost) and marginal at n = 0 are bounded below by 0
(least squares with those bounds: a negative cost is none); where a bound holds, the ramp
did not resolve that term, and the plan's notes say so.
The marginal at n is the model's derivative there; it is reported at 40 and at the top of
the measured range, next to the average slope (the line's). Beyond the measured range
the cost grows at the marginal of the top (not the slope of a flat beginning).
The 95 % CIs come from a percentile bootstrap (2000 resamples, fixed seed) of the points,
resampled within each ramp, refitting the chosen model (its knot fixed). Each ramp's own
slope is given too: ramps that disagree beyond the CI mean drift.

Kernel limits (harness.core.probes.limits): every counter the ramp read (tasks,
descriptors, network namespaces, bridge ports, memory cgroups, inotify, keys) is fitted
as a line in n; a limit whose counter rises binds at (ceiling - the counter at n = 0) /
per instance. Ceilings are the measured host's (recorded with each ramp) unless given
with --limit NAME=VALUE.

Latency. A hinge model, latency(n) = base + slope * max(0, n - knee), fitted by least
squares for every candidate knee (the observed counts); it is kept only if it beats a
constant by an F-test at ALPHA and the fitted growth over the measured range is at least
MIN_GROWTH of the base; else there is no knee and the latency is flat. The p95 at count n
is the fitted latency plus the 95th percentile of the residuals.

Per host. usable = host memory x (1 - reserve); by memory: the largest n with y(n) +
n x workload memory <= usable. By the start-latency SLO: the count whose p95 reaches the SLO, scaled
by target cpus / measured cores (latency growth with count taken to be CPU-bound), and
flagged when it lies beyond the measured range. The smallest of memory, the SLO and the
kernel limits binds. A plan more than `max_extrapolation` times the measured top is
refused by `bench capacity` (or flagged with --allow-extrapolation), with the count to
measure instead; the p95 of the start latency at the planned count comes from the
measured ramp (flagged beyond it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from harness import data, stats
from harness.core.errors import UsageError
from harness.core.probes import limits as klimits
from harness.core.units import format_seconds
from harness.results import Loaded, frame, load_all

MIB = 2**20
RESAMPLES = 2000
ALPHA = 0.01  # significance of a knee (the search over knees makes p optimistic: be strict)
MIN_GROWTH = 0.2  # a knee must add at least this fraction of the base over the range
KNEES = 200  # candidate knees at most (of the latency and of the memory curve)
MAX_EXTRAPOLATION = 5.0  # a plan beyond this many times the measured top is refused
MARGINAL_AT = 40  # where the marginal is also reported (the old scenario's whole ramp)
MODELS = {"linear": "a line (constant marginal)",
          "quadratic": "a parabola (the marginal changes linearly with n)",
          "hinge": "two lines joined at a knot (the marginal changes at the knot)"}
# A counter that rises by less than this per instance (or by fewer than 3 over the ramp)
# does not grow with the instances: neighbours moved it.
MIN_PER_INSTANCE = 0.05
# What each basis needs of a ramp: a cell without one of them is not planned on it.
BASIS_METRICS = {
    "pss+kernel": ("density.pss_total", "density.daemon_pss", "density.kernel_mem"),
    "pss": ("density.pss_total", "density.daemon_pss"),
    "cgroup": ("density.cgroup_total", "density.daemon_pss"),
    "host": ("density.mem_available", "density.daemon_pss"),
}
BASES = {
    "pss+kernel": "the instances' PSS + the daemons' PSS + the rise of the host's "
                  "unreclaimable kernel memory (SUnreclaim, KernelStack, PageTables, Percpu)",
    "pss": "sum of the instances' PSS + the daemons' PSS",
    "cgroup": "sum of the instances' cgroup usage + the daemons' PSS",
    "host": "drop of the host's MemAvailable since n = 0 + the daemons' PSS at n = 0",
}

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Target:
    """The host to plan for, and the planner's choices."""

    memory: int  # bytes
    cpus: int
    reserve: float = 0.10  # fraction of memory kept for the OS and headroom
    workload_memory: int = 0  # bytes the real workload adds per instance
    slo_start: float | None = None  # s, on the p95 of the start latency
    basis: str = "pss+kernel"
    limits: dict[str, int] = field(default_factory=dict)  # kernel limits given (--limit)
    max_extrapolation: float = MAX_EXTRAPOLATION

    @property
    def usable(self) -> float:
        return self.memory * (1 - self.reserve)


@dataclass(frozen=True)
class Curve:
    """y(n) of one model, fitted on u = n / scale (for conditioning); beyond `top` it
    goes on at the marginal of the top. `coefs` may be a batch (…, k) of draws."""

    model: str
    coefs: Array
    scale: float
    top: float
    knot: float | None = None  # in n (hinge)

    def _design(self, n: Array) -> Array:
        u = np.asarray(n, float) / self.scale
        cols = [np.ones_like(u), u]
        if self.model == "quadratic":
            cols.append(u * u)
        elif self.model == "hinge":
            assert self.knot is not None
            cols.append(np.maximum(0.0, u - self.knot / self.scale))
        return np.stack(cols, axis=-1)

    def marginal(self, n: float) -> Array:
        """Bytes per instance at n (the derivative; at the top beyond it)."""
        u = min(n, self.top) / self.scale
        grad = [0.0, 1.0]
        if self.model == "quadratic":
            grad.append(2 * u)
        elif self.model == "hinge":
            assert self.knot is not None
            grad.append(1.0 if u > self.knot / self.scale else 0.0)
        return np.asarray(self.coefs @ np.array(grad) / self.scale, float)

    def cost(self, n: Array) -> Array:
        """y at every count of `n`, shape (…, len(n))."""
        n = np.asarray(n, float)
        inside = np.minimum(n, self.top)
        y = self.coefs @ self._design(inside).T
        return np.asarray(y + np.multiply.outer(self.marginal(self.top), n - inside), float)

    def count_within(self, budget: float, per: float) -> Array:
        """The largest n whose y(n) + per × n fits in `budget` (per draw): the first
        measured count past it less one; past the top, at the top's marginal; inf where
        the cost never grows."""
        grid = np.arange(1, int(self.top) + 1, dtype=float)
        y = np.atleast_2d(self.cost(grid)) + per * grid
        over = y > budget
        first = np.where(over.any(axis=1), over.argmax(axis=1), -1)
        slope = np.atleast_1d(self.marginal(self.top)) + per
        with np.errstate(divide="ignore", invalid="ignore"):
            beyond = np.where(slope > 0, self.top + np.floor((budget - y[:, -1]) / slope),
                              np.inf)
        out = np.where(first >= 0, first.astype(float), beyond)
        return out if self.coefs.ndim > 1 else out[:1]


@dataclass(frozen=True)
class MemoryFit:
    """y(n) in bytes: the chosen curve, and the line (the average slope) beside it."""

    basis: str
    fixed: float  # the line's intercept
    marginal: float  # the line's slope: the average marginal over the measured range
    fixed_ci: tuple[float, float]
    marginal_ci: tuple[float, float]
    per_ramp: tuple[float, ...]  # each ramp's own slope
    points: int
    draws: Array = field(repr=False, compare=False)  # (RESAMPLES, 2): the line's
    model: str = "linear"
    curve: Curve | None = field(default=None, repr=False, compare=False)
    curve_draws: Curve | None = field(default=None, repr=False, compare=False)
    bic: dict[str, float] = field(default_factory=dict, compare=False)
    top: int = 0
    marginal_top: float = math.nan
    marginal_top_ci: tuple[float, float] = (math.nan, math.nan)
    autocorr: float = math.nan  # lag-1 of the chosen model's residuals within the ramps
    per_ramp_top: tuple[float, ...] = ()  # each ramp's own curve: its marginal at `top`
    # The terms the fit held at their bound 0 (HELD_NAMES): the ramp does not resolve them
    # (unbounded, they came out below 0), the chosen curve's and the line's.
    held: tuple[str, ...] = ()
    line_held: tuple[str, ...] = ()

    def marginal_at(self, n: float) -> float:
        return float(self.curve.marginal(n)) if self.curve is not None else self.marginal

    @property
    def curve_fixed(self) -> float:
        """The chosen curve's y at n = 0 (the line's intercept sits below a convex curve)."""
        return float(self.curve.coefs[0]) if self.curve is not None else self.fixed


@dataclass(frozen=True)
class LimitPlan:
    """One kernel limit on the target host, by the counter's growth on the ramp."""

    name: str
    counter: str
    what: str
    ceiling: int
    given: bool  # from --limit (else the measured host's)
    base: float  # the counter at n = 0
    per_instance: float
    count: float | None  # instances at which it binds; None: the counter did not grow


@dataclass(frozen=True)
class LatencyFit:
    """latency(n) = base + slope * max(0, n - knee); flat (slope 0) without a knee."""

    points: int
    max_n: int
    base: float
    slope: float
    knee: int | None
    p_value: float | None
    q95_residual: float
    p95: float  # of every measured start latency
    p95_last: float  # of the start latencies at the top counts (the last fifth)

    def p95_at(self, n: float) -> float:
        grow = self.slope * max(0.0, n - self.knee) if self.knee is not None else 0.0
        return self.base + grow + self.q95_residual

    def max_under(self, slo: float) -> float | None:
        """The count at which the p95 reaches `slo` (0: not even the first instance
        meets it); None when it never does (no growth)."""
        if self.p95_at(1) > slo:
            return 0.0
        if self.knee is None or self.slope <= 0:
            return None
        return self.knee + (slo - self.base - self.q95_residual) / self.slope


@dataclass
class CellPlan:
    backend: str
    variant: str
    kind: str  # process | container | vm | unknown (harness.data.backend_kind)
    emulated: bool
    accel: str | None
    ramps: int
    max_measured: int
    stopped_by: list[str]
    measured_cores: int
    measured_memory: int
    fits: dict[str, MemoryFit]
    latency: LatencyFit | None
    basis: str = ""
    by_memory: float | None = None  # None: unbounded (marginal not above 0)
    by_memory_ci: tuple[float | None, float | None] = (None, None)
    by_slo: float | None = None
    slo_note: str = ""
    instances: float | None = None
    binding: str = ""
    notes: list[str] = field(default_factory=list)
    limits: list[LimitPlan] = field(default_factory=list)
    pids_limit: int | None = None  # the instances' own pids limit (the scenario's)
    p95_at_plan: float | None = None  # start latency at the planned count (capped at the top)
    extrapolation: float = 0.0  # planned count / measured top

    @property
    def label(self) -> str:
        """As the reports label a cell: "docker [volume]", "(TCG, emulated)" for a VM
        without hardware acceleration."""
        text = self.backend if self.variant == "default" else f"{self.backend} [{self.variant}]"
        return text + (" (TCG, emulated)" if self.emulated else "")

    @property
    def first_limit(self) -> LimitPlan | None:
        """The kernel limit this backend hits first on the target host."""
        bound = [lim for lim in self.limits if lim.count is not None]
        return min(bound, key=lambda lim: lim.count or 0.0) if bound else None

    @property
    def measure_instead(self) -> int:
        """Instances to measure for this plan to stay within the extrapolation factor."""
        return 0 if self.instances is None else math.ceil(self.instances)


@dataclass
class Plan:
    target: Target
    cells: list[CellPlan]
    files: list[str]
    assumptions: list[str]

    def too_far(self) -> list[CellPlan]:
        """Cells whose plan lies beyond the target's max_extrapolation."""
        return [c for c in self.cells if c.extrapolation > self.target.max_extrapolation]


# --- fits ------------------------------------------------------------------------------

def _ols(x: Array, y: Array) -> tuple[float, float]:
    """Intercept and slope of the least-squares line."""
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum()) / sxx if sxx else math.nan
    return float(ym - slope * xm), slope


def _resample(ramps: Sequence[tuple[Array, Array]]) -> Array:
    """Indices of RESAMPLES stratified bootstrap draws: each ramp keeps its points."""
    rng = np.random.default_rng(stats.SEED)
    offset, parts = 0, []
    for n, _ in ramps:
        parts.append(offset + rng.integers(0, n.size, size=(RESAMPLES, n.size)))
        offset += n.size
    return np.concatenate(parts, axis=1)


# The first two coefficients of every model, the cost at n = 0 (fixed) and the marginal
# there (per instance), cannot be below 0: memory that n = 0 instances hold, or that one
# more instance frees, is not a cost. A ramp that does not pin them (a convex cost's
# parabola or line crosses 0 before n = 1: ns's intercept came out at -1.75 MiB) gets them
# held at 0, and says so (MemoryFit.held). The curvature and the knot's change of slope
# stay free: a marginal may fall with n (shared pages make the first instances dearer).
NONNEG = 2
HELD_NAMES = ("fixed cost", "per-instance cost at n = 0")
_HELD_SETS = ((), (0,), (1,), (0, 1))  # the unconstrained fit first: it wins ties


def _lstsq(x: Array, y: Array) -> tuple[Array, float, tuple[int, ...]]:
    """Least squares with coefficients 0 and 1 >= 0: the coefficients, the SSE, and the
    terms held at 0. Exact: the optimum of a least-squares problem with bounds at 0 is
    the unconstrained fit on the other columns for some set of terms held at 0, so it is
    the best feasible fit over every such set (four of them)."""
    tol = 1e-9 * max(float(np.abs(y).max(initial=0.0)), 1.0)  # (rounding of exact data)
    best: tuple[Array, float, tuple[int, ...]] | None = None
    for held in _HELD_SETS:
        free = [i for i in range(x.shape[1]) if i not in held]
        coefs = np.zeros(x.shape[1])
        coefs[free] = np.linalg.lstsq(x[:, free], y, rcond=None)[0]
        if (coefs[:NONNEG] < -tol).any():
            continue
        coefs[:NONNEG] = np.maximum(coefs[:NONNEG], 0.0)
        sse = float(((y - x @ coefs) ** 2).sum())
        if best is None or sse < best[1] - tol * tol * y.size:
            best = (coefs, sse, held)
    assert best is not None  # (every term held at 0 but the free ones is feasible)
    return best


def _choose(n: Array, y: Array, top: float) -> tuple[Curve, dict[str, float]]:
    """The model of least BIC (see the module's docstring), and every model's BIC."""
    size = n.size
    # Exact data fit every model with SSE ~ 0: a floor keeps ln finite and lets the
    # penalty pick the simplest.
    floor = size * (1e-9 * max(float(np.abs(y).max()), 1.0)) ** 2
    fits: dict[str, tuple[float, Curve]] = {}

    def consider(name: str, key: str, knot: float | None, k: int) -> None:
        c = Curve(name, np.zeros(3 if name != "linear" else 2), top, top, knot)
        coefs, sse, _ = _lstsq(c._design(n), y)
        bic = size * math.log(max(sse, floor) / size) + k * math.log(size)
        if key not in fits or bic < fits[key][0]:
            fits[key] = (bic, replace(c, coefs=coefs))

    consider("linear", "linear", None, 2)
    counts = np.unique(n)
    if counts.size >= 6:
        consider("quadratic", "quadratic", None, 3)
        # Knots with at least 3 counts and a tenth of the points on either side.
        knots = counts[2:-3]
        if knots.size > KNEES:
            knots = np.unique(knots[np.linspace(0, knots.size - 1, KNEES).astype(int)])
        for knot in knots:
            if min((n <= knot).sum(), (n > knot).sum()) >= size / 10:
                consider("hinge", "hinge", float(knot), 4)
    bic = {k: v[0] for k, v in fits.items()}
    return fits[min(bic, key=lambda k: bic[k])][1], bic


def _refit(curve: Curve, n: Array, y: Array, idx: Array) -> Curve:
    """The curve refitted on every bootstrap draw (its knot kept), with the bounds of
    _lstsq: per draw, the best feasible fit over the sets of terms held at 0."""
    x = curve._design(n)
    xb, yb = x[idx], y[idx]
    tol = 1e-9 * max(float(np.abs(y).max(initial=0.0)), 1.0)
    k = x.shape[1]
    coefs = np.zeros((idx.shape[0], k))
    best = np.full(idx.shape[0], np.inf)
    for held in _HELD_SETS:
        free = [i for i in range(k) if i not in held]
        xf = xb[:, :, free]
        xtx = np.einsum("rnp,rnq->rpq", xf, xf)
        xty = np.einsum("rnp,rn->rp", xf, yb)
        c = np.zeros_like(coefs)
        c[:, free] = np.einsum("rpq,rq->rp", np.linalg.pinv(xtx), xty)
        ok = (c[:, :NONNEG] >= -tol).all(axis=1)
        c[:, :NONNEG] = np.maximum(c[:, :NONNEG], 0.0)
        sse = ((yb - np.einsum("rnp,rp->rn", xb, c)) ** 2).sum(axis=1)
        better = ok & (sse < best - tol * tol * y.size)
        coefs[better], best[better] = c[better], sse[better]
    return replace(curve, coefs=coefs)


def _autocorr(ramps: Sequence[tuple[Array, Array]], curve: Curve) -> float:
    pairs = []
    for n, y in ramps:
        order = np.argsort(n, kind="stable")
        r = (y - curve.cost(n))[order]
        if r.size > 2:
            pairs.append((r[:-1], r[1:]))
    if not pairs:
        return math.nan
    a, b = (np.concatenate([p[i] for p in pairs]) for i in (0, 1))
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def fit_memory(ramps: Sequence[tuple[Array, Array]], basis: str) -> MemoryFit | None:
    """Fit y(n) over every ramp's (n, bytes) points with n >= 1: the line, and the curve
    BIC chooses. None when there are fewer than two distinct counts (no slope to fit)."""
    ramps = [(n[n >= 1], y[n >= 1]) for n, y in ramps]
    ramps = [(n, y) for n, y in ramps if n.size]
    if not ramps:
        return None
    n_all = np.concatenate([n for n, _ in ramps])
    y_all = np.concatenate([y for _, y in ramps])
    if np.unique(n_all).size < 2:
        return None
    idx = _resample(ramps)
    top = float(n_all.max())
    line0 = Curve("linear", np.zeros(2), top, top)
    (fixed, slope), _, line_held = _lstsq(line0._design(n_all), y_all)
    marginal = slope / top
    line = _refit(line0, n_all, y_all, idx)
    draws = np.column_stack([line.coefs[:, 0], line.coefs[:, 1] / top])
    lo_f, hi_f = np.quantile(draws[:, 0], [0.025, 0.975])
    lo_m, hi_m = np.quantile(draws[:, 1], [0.025, 0.975])
    per_ramp = tuple(_ols(n, y)[1] for n, y in ramps if np.unique(n).size >= 2)
    curve, bic = _choose(n_all, y_all, top)
    held = _lstsq(curve._design(n_all), y_all)[2]
    curve_draws = _refit(curve, n_all, y_all, idx)
    per_ramp_top = tuple(
        float(replace(curve, coefs=_lstsq(curve._design(n), y)[0]).marginal(top))
        for n, y in ramps if len(ramps) > 1 and np.unique(n).size >= 6 and n.max() == top)
    lo_t, hi_t = np.quantile(curve_draws.marginal(top), [0.025, 0.975])
    return MemoryFit(basis=basis, fixed=fixed, marginal=marginal,
                     fixed_ci=(float(lo_f), float(hi_f)), marginal_ci=(float(lo_m), float(hi_m)),
                     per_ramp=per_ramp, points=int(n_all.size), draws=draws,
                     model=curve.model, curve=curve, curve_draws=curve_draws, bic=bic,
                     top=int(top), marginal_top=float(curve.marginal(top)),
                     marginal_top_ci=(float(lo_t), float(hi_t)),
                     autocorr=_autocorr(ramps, curve), per_ramp_top=per_ramp_top,
                     held=tuple(HELD_NAMES[i] for i in held),
                     line_held=tuple(HELD_NAMES[i] for i in line_held))


def fit_latency(n: Array, y: Array) -> LatencyFit | None:
    """The hinge model with the knee chosen by least squares, kept only if significant."""
    from scipy.stats import f as f_dist

    if n.size == 0:
        return None
    order = np.argsort(n, kind="stable")
    n, y = n[order].astype(float), y[order].astype(float)
    max_n = int(n.max())
    top = y[n >= max_n - max(1, max_n // 5) + 1] if max_n > 1 else y
    p95, p95_last = float(np.quantile(y, 0.95)), float(np.quantile(top, 0.95))
    mean = float(y.mean())
    sse0 = float(((y - mean) ** 2).sum())
    flat = LatencyFit(points=int(n.size), max_n=max_n, base=mean, slope=0.0, knee=None,
                      p_value=None, q95_residual=float(np.quantile(y - mean, 0.95)),
                      p95=p95, p95_last=p95_last)
    counts = np.unique(n)
    if counts.size < 5 or n.size < 6:
        return flat
    best: tuple[float, float, float, float] | None = None  # sse, knee, base, slope
    knees = counts[:-3]  # at least 3 counts after the knee carry the slope
    if knees.size > KNEES:  # a ramp of thousands: the knee to within 1/KNEES of the range
        knees = np.unique(knees[np.linspace(0, knees.size - 1, KNEES).astype(int)])
    for k in knees:
        x = np.maximum(0.0, n - k)
        base, slope = _ols(x, y)
        if not slope > 0:
            continue
        sse = float(((y - base - slope * x) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(k), base, slope)
    if best is None:
        return flat
    sse1, k, base, slope = best
    dof = n.size - 3
    p = 0.0 if sse1 == 0 else float(f_dist.sf(((sse0 - sse1) / 2) / (sse1 / dof), 2, dof))
    growth = slope * (max_n - k)
    if p >= ALPHA or growth < MIN_GROWTH * max(base, 1e-9):
        return replace(flat, p_value=p)
    resid = y - base - slope * np.maximum(0.0, n - k)
    return LatencyFit(points=int(n.size), max_n=max_n, base=base, slope=slope, knee=int(k),
                      p_value=p, q95_residual=float(np.quantile(resid, 0.95)), p95=p95,
                      p95_last=p95_last)


def fit_limits(g: pd.DataFrame, ceilings: dict[str, int], given: dict[str, int]
               ) -> list[LimitPlan]:
    """Every kernel limit whose counter the ramps of one cell recorded."""
    out = []
    for lim in klimits.LIMITS:
        pts = g[g["metric"] == f"density.{lim.counter}"]
        ceiling = given.get(lim.name, ceilings.get(lim.name))
        if pts.empty or ceiling is None:
            continue
        n, v = pts["instance"].to_numpy(float), pts["value"].to_numpy(float)
        at0 = v[n == 0]
        base = float(at0.mean()) if at0.size else float(v.min())
        per = _ols(n, v)[1] if np.unique(n).size >= 2 else math.nan
        grows = per >= MIN_PER_INSTANCE and per * n.max() >= 3
        count = float(max(0, math.floor((ceiling - base) / per))) if grows else None
        out.append(LimitPlan(name=lim.name, counter=lim.counter, what=lim.what,
                             ceiling=int(ceiling), given=lim.name in given, base=base,
                             per_instance=per if grows else 0.0, count=count))
    return out


# --- from result documents to plans ------------------------------------------------------

def density_frame(docs: Sequence[Loaded]) -> pd.DataFrame:
    """The density samples of `docs`, with a `ramp` key (file, round), and the reports'
    `kind`, `emulated` and `dataset` columns (harness.data.enrich)."""
    df = data.enrich(frame(docs), docs)
    df = df[df["metric"].str.startswith("density.")].copy()
    if df.empty:
        raise UsageError("no density samples in the given results; run `bench run density` "
                         "first")
    if df["instance"].isna().any():
        raise UsageError("density samples without an instance count; the result is not "
                         "from the density study")
    df["instance"] = df["instance"].astype(int)
    df["ramp"] = df["file"] + "#" + df["round"].astype(str)
    return df


def ramp_series(g: pd.DataFrame, basis: str) -> tuple[Array, Array] | None:
    """(n, bytes) of one ramp on `basis`; None if the ramp lacks what the basis needs."""
    t = g.pivot_table(index="instance", columns="metric", values="value", aggfunc="mean")
    daemon = t.get("density.daemon_pss")  # (0 for a daemonless backend, as recorded)
    if daemon is None:  # not read: no 0 in its place
        return None
    if basis == "host":
        if "density.mem_available" not in t or 0 not in t.index:
            return None
        y = t["density.mem_available"].loc[0] - t["density.mem_available"] + daemon.loc[0]
    else:
        metric = {"pss": "density.pss_total", "pss+kernel": "density.pss_total",
                  "cgroup": "density.cgroup_total"}[basis]
        if metric not in t:
            return None
        y = t[metric] + daemon
        if basis == "pss+kernel":
            if "density.kernel_mem" not in t or 0 not in t.index:
                return None
            y = y + t["density.kernel_mem"] - t["density.kernel_mem"].loc[0]
    # (Counts that only carry a start latency, inside a batch or between measured
    # counts, have no memory figures.)
    y = y.dropna()
    return y.index.to_numpy(float), y.to_numpy(float)


def _stops(docs: Sequence[Loaded]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, doc in docs:
        for e in doc.events:
            if e.get("kind") == "ramp_stopped":
                out.setdefault((e["backend"], e["variant"]), []).append(dict(e))
    return out


def _pids_limit(docs: Sequence[Loaded]) -> int | None:
    for _, doc in docs:
        pids = (doc.scenario.get("limits") or {}).get("pids")
        if pids:
            return int(pids)
    return None


def analyse(docs: Sequence[Loaded], target: Target) -> Plan:
    if target.basis not in BASES:
        raise UsageError(f"--basis: unknown basis {target.basis!r}; known: {', '.join(BASES)}")
    if unknown := sorted(set(target.limits) - set(klimits.BY_NAME)):
        raise UsageError(f"--limit: unknown limit {unknown[0]!r}; known: "
                         f"{', '.join(klimits.BY_NAME)}")
    df = density_frame(docs)
    hosts = {p: d.host for p, d in docs}
    stops = _stops(docs)
    cells: list[CellPlan] = []
    gaps: list[str] = []
    for backend in data.backend_order(df):
        sub = df[df["backend"] == backend]
        for variant in sub["variant"].unique():
            g = sub[sub["variant"] == variant]
            files = list(g["file"].unique())
            ids = {hosts[f].get("id") for f in files}
            if len(ids) > 1:
                raise UsageError(f"{backend} [{variant}]: results from different hosts "
                                 f"({', '.join(sorted(map(str, ids)))}); a plan needs one "
                                 "host's measurements")
            host = hosts[files[0]]
            ramps = [r for _, r in g.groupby("ramp", sort=True)]
            fits: dict[str, MemoryFit] = {}
            for basis in BASES:
                series = [s for s in (ramp_series(r, basis) for r in ramps) if s is not None]
                fit = fit_memory(series, basis) if series else None
                if fit is not None:
                    fits[basis] = fit
            lat = g[g["metric"] == "density.start_latency"]
            events = stops.get((backend, str(variant)), [])
            ceilings: dict[str, int] = {}
            for e in events:  # the lowest a ramp met
                for k, v in (e.get("limits") or {}).items():
                    ceilings[k] = min(int(v), ceilings.get(k, int(v)))
            cells.append(CellPlan(
                backend=backend, variant=str(variant), kind=str(g["kind"].iloc[0]),
                emulated=bool(g["emulated"].any()),
                accel=next((str(a) for a in g["accel"].dropna().unique()), None),
                ramps=len(ramps), max_measured=int(g["instance"].max()),
                stopped_by=[str(e.get("reason"))[:160] for e in events],
                measured_cores=int(host.get("cores") or 0),
                measured_memory=int(host.get("mem_total") or 0), fits=fits,
                latency=fit_latency(lat["instance"].to_numpy(float),
                                    lat["value"].to_numpy(float)),
                limits=fit_limits(g, ceilings, target.limits), pids_limit=_pids_limit(docs)))
            if target.basis not in fits:
                absent = [m for m in BASIS_METRICS[target.basis]
                          if not g[g["metric"] == m]["value"].notna().any()]
                gaps.append(f"{cells[-1].label}: " + (", ".join(absent) if absent else
                            "fewer than two instance counts with every figure"))
    if gaps:
        raise UsageError(f"--basis {target.basis}: no plan without what the ramps did not "
                         f"read: {'; '.join(gaps)}")
    for c in cells:
        project(c, target)
    return Plan(target=target, cells=cells, files=[p for p, _ in docs],
                assumptions=assumptions(target, cells))


def project(c: CellPlan, t: Target) -> None:
    """Instances per target host by memory, the SLO and the kernel limits; which binds."""
    fit = c.fits.get(t.basis)
    c.basis = t.basis
    if fit is None or fit.curve is None or fit.curve_draws is None:
        c.notes.append(f"no {t.basis} data (fewer than two instance counts, or the backend "
                       "does not report it)")
    else:
        n = float(fit.curve.count_within(t.usable, t.workload_memory)[0])
        c.by_memory = n if math.isfinite(n) else None
        draws = fit.curve_draws.count_within(t.usable, t.workload_memory)
        # inverted_cdf picks drawn values: no interpolation between infinities
        lo, hi = np.quantile(draws, [0.025, 0.975], method="inverted_cdf")
        c.by_memory_ci = (float(lo) if np.isfinite(lo) else None,
                          float(hi) if np.isfinite(hi) else None)
        if fit.held:
            c.notes.append(
                f"the {' and the '.join(fit.held)} of the {fit.model} fit on {t.basis} held "
                "at 0: not resolved by this ramp (without the bound the fit puts it below "
                "0, which is no cost: the curve over the measured counts does not pin "
                "y(n) near n = 0)")
        if fit.marginal_top_ci[0] <= 0 < fit.marginal_top_ci[1] and not t.workload_memory:
            c.notes.append("the marginal memory is not distinguishable from 0 on this basis")
        lo_t, hi_t = fit.marginal_top_ci
        if any(not lo_t <= m <= hi_t for m in fit.per_ramp_top):
            c.notes.append(
                f"the ramps disagree at the top ({fit.top}): "
                + ", ".join(f"{m / MIB:.3g}" for m in fit.per_ramp_top)
                + f" MiB per instance, outside the CI [{lo_t / MIB:.3g}, {hi_t / MIB:.3g}], "
                "which resamples points, not ramps: the host drifted between ramps")
        host = c.fits.get("host")
        if t.basis != "host" and host is not None and not (
                host.marginal_top_ci[0] <= fit.marginal_top <= host.marginal_top_ci[1]):
            c.notes.append(
                f"at the top ({fit.top}) the host's MemAvailable fell by "
                f"{host.marginal_top / MIB:.3g} MiB per instance "
                f"[{host.marginal_top_ci[0] / MIB:.3g}, {host.marginal_top_ci[1] / MIB:.3g}], "
                f"not the {fit.marginal_top / MIB:.3g} of {t.basis}: MemAvailable moves with "
                "every other process on the host and counts page cache and reclaimable slab "
                "as available; PSS splits shared file pages among the instances (compare the "
                "ramps with --json)")
    scale = t.cpus / c.measured_cores if c.measured_cores else 1.0
    if t.slo_start is not None and c.latency is not None:
        at = c.latency.max_under(t.slo_start)
        if at is None:
            reach = math.floor(c.latency.max_n * scale)
            c.slo_note = (f"p95 {format_seconds(c.latency.p95_at(c.latency.max_n))} stays "
                          f"under the SLO up to the {c.latency.max_n} measured (≈ {reach} "
                          f"at {t.cpus} cpus); not extrapolated")
        elif at == 0:
            c.by_slo = 0.0
            c.slo_note = (f"even the first instance misses the SLO (p95 "
                          f"{format_seconds(c.latency.p95_at(1))})")
        else:
            c.by_slo = float(math.floor(at * scale))
            c.slo_note = ("extrapolated beyond the measured range" if at > c.latency.max_n
                          else "within the measured range")
    bounds = {k: v for k, v in (("memory", c.by_memory), ("start-latency SLO", c.by_slo))
              if v is not None}
    if (first := c.first_limit) is not None and first.count is not None:
        bounds[f"{first.name} ({first.what})"] = first.count
    if bounds:
        c.binding = min(bounds, key=lambda k: bounds[k])
        c.instances = bounds[c.binding]
    tasks = [lim for lim in c.limits if lim.counter == "tasks" and lim.count is not None]
    if tasks and c.pids_limit:  # the pids the instances may take, not the idle ones
        lim = min(tasks, key=lambda x: x.ceiling - x.base)
        worst = math.floor((lim.ceiling - lim.base) / c.pids_limit)
        c.notes.append(f"{lim.name}: {lim.per_instance:.3g} tasks per idle instance; if each "
                       f"ran up to its pids limit ({c.pids_limit}), {lim.name} {lim.ceiling:,} "
                       f"would bind at {worst:,}")
    if c.instances is not None and c.max_measured:
        c.extrapolation = c.instances / c.max_measured
        if c.latency is not None:
            c.p95_at_plan = c.latency.p95_at(min(c.instances / scale, c.latency.max_n))
        if c.extrapolation > 1:
            c.notes.append(f"the plan ({c.instances:,.0f}) is {c.extrapolation:.3g}× the "
                           f"{c.max_measured} measured instances: memory beyond them goes on "
                           "at the marginal of the top, the start-latency p95 is the top's")


def assumptions(t: Target, cells: Sequence[CellPlan]) -> list[str]:
    cores = sorted({c.measured_cores for c in cells})
    mems = sorted({round(c.measured_memory / 2**30) for c in cells})
    out = [
        f"Measured on a host with {', '.join(map(str, cores))} cores and "
        f"{', '.join(map(str, mems))} GiB; planned for {t.cpus} cpus and "
        f"{t.memory / 2**30:.3g} GiB, {t.reserve:.0%} of it reserved.",
        f"Memory basis '{t.basis}': {BASES[t.basis]}. y(n) is fitted over every ramp's "
        "points with n ≥ 1 as a line, a parabola and two lines joined at a knot; BIC "
        "chooses (see harness/capacity.py). 95 % CIs by a percentile bootstrap "
        f"({RESAMPLES} resamples of the points within each ramp).",
    ]
    # What the data show of the marginal, per cell: said, not assumed.
    for c in cells:
        f = c.fits.get(t.basis)
        if f is None or f.curve is None:
            continue
        at = min(MARGINAL_AT, f.top)
        m_at, m_top = f.marginal_at(at), f.marginal_top
        shape = (f"{c.label}: {MODELS[f.model]} fits best (BIC "
                 + ", ".join(f"{k} {v:.0f}" for k, v in sorted(f.bic.items(),
                                                             key=lambda kv: kv[1]))
                 + f"); marginal {m_at / MIB:.3g} MiB at {at}, {m_top / MIB:.3g} MiB at the "
                 f"top ({f.top}), average slope {f.marginal / MIB:.3g} MiB. ")
        if m_top > 1.1 * m_at:
            shape += ("The marginal rises with the count: a plan from a shorter ramp "
                      "underestimates the cost; past the top the plan goes on at the top's "
                      "marginal, which still underestimates if the rise continues.")
        elif m_top < 0.9 * m_at:
            shape += ("The marginal falls with the count (shared pages make the first "
                      "instances dearer): going on at the top's marginal errs on the safe "
                      "side.")
        else:
            shape += "The marginal stays within 10 % over the range."
        if f.autocorr > 0.5:
            shape += (f" Residuals are autocorrelated (lag-1 r = {f.autocorr:.2f}): the "
                      "points are not independent, the CIs are too narrow.")
        out.append(shape)
    out += [
        "Instances are idle (the density workload); "
        + (f"each also gets {t.workload_memory / MIB:.4g} MiB of workload memory."
           if t.workload_memory else "--workload-memory adds what the real workload uses."),
        "Instances per host by memory: the largest n with y(n) + n × workload memory ≤ "
        "host memory × (1 − reserve); the CI carries the fit's uncertainty only.",
        "Kernel limits: each counter grows linearly per instance from this host's value at "
        "n = 0 (the target's idle usage is taken to be this host's); ceilings are the "
        "measured host's unless given with --limit"
        + (f" ({', '.join(f'{k}={v:,}' for k, v in sorted(t.limits.items()))})"
           if t.limits else "") + ".",
    ]
    if t.slo_start is not None:
        out.append(
            f"Start-latency SLO: p95 ≤ {format_seconds(t.slo_start)}. p95 at n = hinge fit "
            "of the latency + the 95th percentile of its residuals. Latency growth with the "
            "count is taken as CPU-bound, so the count at the SLO scales with target cpus / "
            "measured cores; past the measured counts it is a linear extrapolation "
            "(flagged); with no growth measured the SLO is not extrapolated.")
    else:
        out.append("No start-latency SLO given (--slo-start): the p95 at the planned count "
                   "is shown, not planned with.")
    out.append("Not modelled: CPU use of busy instances, addresses, disk, "
               "KSM/ballooning/overcommit, and other engine or kernel versions.")
    if any(c.emulated for c in cells):
        out.append("(TCG, emulated) cells are VMs without hardware virtualisation: they start "
                   "slower and use more CPU than under KVM, so their latency is not "
                   "representative.")
    return out


def refuse_extrapolation(plan: Plan) -> None:
    """UsageError naming every cell planned beyond the target's max_extrapolation, with
    the instances to measure instead."""
    far = plan.too_far()
    if far:
        t = plan.target
        parts = [f"{c.label} {c.instances:,.0f} from {c.max_measured:,} measured (measure "
                 f"≥ {math.ceil((c.instances or 0) / t.max_extrapolation):,}: "
                 f"params.per_backend.{c.backend}.max_instances)" for c in far]
        raise UsageError(f"the plan is more than {t.max_extrapolation:g}× beyond the measured "
                         f"range: {'; '.join(parts)}; ramp further, or pass "
                         "--allow-extrapolation")


# --- output ---------------------------------------------------------------------------

def _mib(x: float) -> float:
    return round(x / MIB, 4)


def _count(x: float | None) -> int | None:
    return None if x is None else int(x)


def as_json(plan: Plan) -> dict[str, Any]:
    t = plan.target
    cells = []
    for c in plan.cells:
        mem: dict[str, Any] = {}
        for basis, f in c.fits.items():
            at = min(MARGINAL_AT, f.top)
            mem[basis] = {"marginal_mib": _mib(f.marginal),
                          "marginal_ci_mib": [_mib(v) for v in f.marginal_ci],
                          "fixed_mib": _mib(f.fixed), "fixed_ci_mib": [_mib(v) for v in f.fixed_ci],
                          "per_ramp_marginal_mib": [_mib(v) for v in f.per_ramp],
                          "per_ramp_marginal_top_mib": [_mib(v) for v in f.per_ramp_top],
                          "curve_fixed_mib": _mib(f.curve_fixed),
                          "held_at_0": list(f.held), "line_held_at_0": list(f.line_held),
                          "model": f.model, "bic": {k: round(v, 2) for k, v in f.bic.items()},
                          "top": f.top, "marginal_top_mib": _mib(f.marginal_top),
                          "marginal_top_ci_mib": [_mib(v) for v in f.marginal_top_ci],
                          f"marginal_at_{at}_mib": _mib(f.marginal_at(at)),
                          "residual_autocorr": None if math.isnan(f.autocorr)
                          else round(f.autocorr, 3),
                          "points": f.points}
        lat = c.latency
        first = c.first_limit
        cells.append({
            "backend": c.backend, "variant": c.variant, "emulated": c.emulated,
            "accel": c.accel, "ramps": c.ramps, "max_measured": c.max_measured,
            "stopped_by": c.stopped_by,
            "basis": c.basis,
            "marginal_mib": mem.get(c.basis, {}).get("marginal_mib"),
            "marginal_ci_mib": mem.get(c.basis, {}).get("marginal_ci_mib"),
            "marginal_top_mib": mem.get(c.basis, {}).get("marginal_top_mib"),
            "fixed_mib": mem.get(c.basis, {}).get("fixed_mib"),
            "memory": mem,
            "latency": None if lat is None else {
                "points": lat.points, "base_s": lat.base, "slope_s_per_instance": lat.slope,
                "knee": lat.knee,
                "knee_at_target": None if lat.knee is None else
                int(lat.knee * t.cpus / c.measured_cores) if c.measured_cores else lat.knee,
                "knee_p_value": lat.p_value, "p95_s": lat.p95, "p95_top_s": lat.p95_last,
                "p95_at_plan_s": c.p95_at_plan},
            "limits": [{"name": lim.name, "counter": lim.counter, "ceiling": lim.ceiling,
                        "given": lim.given, "at_0": lim.base,
                        "per_instance": round(lim.per_instance, 4),
                        "binds_at": _count(lim.count)} for lim in c.limits],
            "instances_per_host": {
                "by_memory": _count(c.by_memory),
                "by_memory_ci": [_count(v) for v in c.by_memory_ci],
                "by_slo": _count(c.by_slo), "slo_note": c.slo_note,
                "first_limit": None if first is None else first.name,
                "by_first_limit": None if first is None else _count(first.count),
                "max": _count(c.instances), "binding": c.binding or None,
                "extrapolation": round(c.extrapolation, 3)},
            "notes": c.notes,
        })
    return {"target": {"host_memory": t.memory, "host_cpus": t.cpus, "reserve": t.reserve,
                       "workload_memory": t.workload_memory, "slo_start": t.slo_start,
                       "basis": t.basis, "limits": t.limits,
                       "max_extrapolation": t.max_extrapolation},
            "files": plan.files, "assumptions": plan.assumptions, "backends": cells}


def load(paths: Iterable[str | Path]) -> list[Loaded]:
    return load_all(list(paths))
