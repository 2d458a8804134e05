"""The fits a capacity plan rests on: memory per instance count, start latency per count,
and the kernel counters' growth.

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

Kernel limits (harness.core.probes.kernel_limits): every counter the ramp read (tasks,
descriptors, network namespaces, bridge ports, memory cgroups, inotify, keys) is fitted
as a line in n; a limit whose counter rises binds at (ceiling - the counter at n = 0) /
per instance. Ceilings are the measured host's (recorded with each ramp) unless given
with --limit NAME=VALUE.

Latency. A hinge model, latency(n) = base + slope * max(0, n - knee), fitted by least
squares for every candidate knee (the observed counts); it is kept only if it beats a
constant by an F-test at ALPHA and the fitted growth over the measured range is at least
MIN_GROWTH of the base; else there is no knee and the latency is flat. The p95 at count n
is the fitted latency plus the 95th percentile of the residuals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from harness import stats
from harness.core.probes import kernel_limits

RESAMPLES = 2000
ALPHA = 0.01  # significance of a knee (the search over knees makes p optimistic: be strict)
MIN_GROWTH = 0.2  # a knee must add at least this fraction of the base over the range
KNEES = 200  # candidate knees at most (of the latency and of the memory curve)
MODELS = {"linear": "a line (constant marginal)",
          "quadratic": "a parabola (the marginal changes linearly with n)",
          "hinge": "two lines joined at a knot (the marginal changes at the knot)"}
# A counter that rises by less than this per instance (or by fewer than 3 over the ramp)
# does not grow with the instances: neighbours moved it.
MIN_PER_INSTANCE = 0.05

Array = NDArray[np.float64]


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
    for lim in kernel_limits.LIMITS:
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
