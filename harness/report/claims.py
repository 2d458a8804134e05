"""The seed's claims, tested against the measurements.

Most claims compare two sides — e.g. every container backend against every VM backend,
or, within one backend, a volume against the copy-on-write root filesystem, or the
bridge against the host's network — on one metric, as the ratio of medians A/B with a
two-sample bootstrap 95 % CI (`harness.stats.ratio_ci`). The verdict is read from the
CI, never from the medians alone:

- `holds`: the whole CI lies on the claimed side of 1 (or, for an "about the same" claim,
  inside the equivalence band);
- `does not hold`: the whole CI lies on the other side, or inside the band around 1 where
  the difference is too small to matter (a claim of "faster" is not borne out by 2 %);
- `inconclusive`: anything else — more samples or a quieter machine are needed;
- `inconclusive: failures`: whatever the CI says, when more than FAILURE_LIMIT (10 %) of
  either cell's measured samples failed: its median is over the samples that survived,
  which may be the lucky ones. The note names the cell, its "n ok / n tried" and the most
  common reason. A cell with fewer failures keeps its verdict, and its label the counts.

The limits claim compares one side with a bound, the limit asked (`enforcement`): the
ratio used / asked per sample, the CI of its median. It holds when the whole CI stays at
or under 1 (+ the margin) *and* the instance could have gone over: for CPU the host left
enough cores idle meanwhile (otherwise contention, not the limit, may have held it back),
for memory a larger allocation was tried and killed.

Backends are sorted into sides by the `kind` their metadata declares, never by name.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness import data, stats
from harness.report import presentation, tables
from harness.results import FAILURE_LIMIT as FAILURE_LIMIT  # the limit judged by

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
INCONCLUSIVE_FAILURES = "inconclusive: failures"  # a cell failed more than FAILURE_LIMIT
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, INCONCLUSIVE_FAILURES)
MARGIN = 0.05  # differences within ±5 % of 1 are "no meaningful difference"

APPS = "apps"  # the application claim: its rows have a section of their own in the report

# Time to ready, cold (startup) and at each backend's best (warm: a pool's instances,
# beside the cold starts of backends without one): each judged on its own.
TO_READY = r"(startup|warm)\.to_ready"

# Names a study may give the copy-on-write root filesystem target.
COW_TARGETS = frozenset({"rootfs", "cow", "overlay", "root", "layer"})


@dataclass(frozen=True)
class Side:
    kind: str | None = None  # backend kind, or any
    values: frozenset[str] | None = None  # values of the claim's axis (variant), or any


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    metric: str  # a regular expression matched against the whole metric name
    better: str  # "lower": A < B claimed; "higher": A > B; "equal": A ≈ B
    a: Side
    b: Side
    same_backend: bool = False  # compare two values of `axis` within one backend
    axis: str = "target"  # the variant key the sides differ in ("target": storage)
    margin: float = MARGIN
    emulation_matters: bool = True  # a TCG guest skews times and memory, not bytes on disk
    why: str = field(default="", compare=False)


@functools.cache
def seed() -> tuple[Claim, ...]:
    """The seed claims, in the report's order; the application claim is about the
    throughput figure of every application study (their presentations name it)."""
    return (
        Claim("start", "Containers start faster than VMs", TO_READY, "lower",
              Side("container"), Side("vm"),
              why="time from create to the ready line (warm: from a pool, where one is)"),
        Claim("memory", "Containers use less memory than VMs", r"memory\.per_instance", "lower",
              Side("container"), Side("vm"),
              why="PSS per instance plus its share of the engine daemons"),
        Claim("disk", "Containers use less disk than VMs", r"disk\.image", "lower",
              Side("container"), Side("vm"), emulation_matters=False,
              why="the image as the backend stores it"),
        Claim("disk-instance", "Each container instance uses less disk than a VM instance",
              r"disk\.instance", "lower", Side("container"), Side("vm"), emulation_matters=False,
              why="growth per instance after the workload writes"),
        Claim("volume-io", "Volumes, bind mounts and tmpfs avoid the copy-on-write layer's cost",
              r"io\.[^.]+\.bw", "higher", Side("container", frozenset({"volume", "bind", "tmpfs"})),
              Side("container", COW_TARGETS), same_backend=True,
              why="fio bandwidth, volume (bind, tmpfs) / container root filesystem, per job"),
        Claim("host-io", "A bind mount performs like the host's own filesystem",
              r"io\.[^.]+\.bw", "equal", Side("container", frozenset({"bind"})),
              Side("process"), margin=0.10, why="fio bandwidth within ±10 % of the host's"),
        Claim("start-overhead", "Containers start almost as fast as a bare process",
              TO_READY, "equal", Side("container"), Side("process"), margin=0.25,
              why="time to ready within ±25 % of the host process (warm: pooled containers "
                  "against the host's cold start)"),
        Claim("net-latency", "Host networking is faster than the bridge (latency)",
              r"network\.lat_p(50|99)", "higher", Side(values=frozenset({"bridge"})),
              Side(values=frozenset({"host"})), same_backend=True, axis="network",
              why="sockperf latency, bridge / host, per backend"),
        Claim("net-bw", "Host networking is faster than the bridge (bandwidth)", r"network\.bw",
              "lower", Side(values=frozenset({"bridge"})), Side(values=frozenset({"host"})),
              same_backend=True, axis="network",
              why="iperf3 bandwidth, bridge / host, per backend"),
        Claim(APPS, "Containers run applications at near-native speed",
              "(" + "|".join(re.escape(a.throughput) for a in presentation.apps().values()) + ")",
              "equal", Side("container"), Side("process"), axis="network", margin=0.10,
              why="application throughput within ±10 % of the bare host's, per study, sub-case "
                  "and network mode (the host on its own network)"),
        Claim("scale", "Replicas as containers scale out faster than replicas as VMs",
              r"scale\.to_serving", "lower", Side("container"), Side("vm"),
              why="time from asking for N replicas (from 0) until all N answer through the "
                  "front, at the same N"),
        Claim("limits", "A container's CPU and memory limits are enforced",
              r"limits\.(cpu_used|mem_max_ok)", "bound", Side("container"), Side(),
              why="used / asked, per backend and limit: at most 1 with room to go over"),
    )


NOT_APPLIED = "not applied"


def verdict(lo: float, hi: float, better: str, margin: float = MARGIN) -> str:
    """The verdict from the CI [lo, hi] of the ratio A/B (see the module docstring)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    inside = 1 - margin <= lo and hi <= 1 + margin
    if better == "equal":
        if inside:
            return HOLDS
        return FAILS if hi < 1 - margin or lo > 1 + margin else INCONCLUSIVE
    if better == "lower":
        claimed, opposite = hi < 1, lo > 1
    elif better == "higher":
        claimed, opposite = lo > 1, hi < 1
    else:
        raise ValueError(f"unknown direction {better!r}")
    if claimed and not inside:
        return HOLDS
    if opposite or inside:
        return FAILS
    return INCONCLUSIVE


def _values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Samples of `metric`, with the derived per-instance memory built on demand."""
    if metric == "memory.per_instance":
        inst = data.per_instance_memory(df).dropna(subset=["total"])  # daemons unread
        return inst.assign(metric=metric, unit="B", value=inst["total"])
    return df[df["metric"] == metric]


def _match(side: Side, cell: data.ResultCell, axis: str) -> bool:
    if side.kind is not None and cell.kind != side.kind:
        return False
    return side.values is None or data.axis_of(cell.variant, axis) in side.values


def enforcement(df: pd.DataFrame, margin: float = MARGIN) -> pd.DataFrame:
    """`tables.limits` with a verdict and a note per row: was the limit enforced?

    `not applied` for a backend that applies no such limit (its metadata says so);
    otherwise as the module docstring says, from the CI of used / asked."""
    t = tables.limits(df)
    verdicts, notes = [], []
    for r in t.to_dict("records"):
        note = []
        if not r["applied"]:
            v = NOT_APPLIED
            note.append(f"applies no {r['resource']} limit: an unlimited workload")
        elif not (math.isfinite(r["ratio_lo"]) and math.isfinite(r["ratio_hi"])):
            v = INCONCLUSIVE
        elif r["ratio_lo"] > 1 + margin:
            v = FAILS
        elif r["ratio_hi"] > 1 + margin:
            v = INCONCLUSIVE
        elif r["resource"] == "cpus" and not r["room"] > r["asked"] * (1 + margin):
            v = INCONCLUSIVE
            note.append("the host left no idle CPU to go over the limit: contention, not "
                        "necessarily the limit")
        elif r["resource"] == "memory" and not r["enforced"] >= 0.5:
            v = INCONCLUSIVE
            note.append("no allocation above the limit was tried")
        else:
            v = HOLDS
        if r["emulated"]:
            note.append("emulated (TCG)")
        if r["n"] < 5:
            note.append(f"few samples (n={r['n']})")
        counted = tables.tally_of(r)
        if counted is not None and counted.too_many and v != NOT_APPLIED:
            v = INCONCLUSIVE_FAILURES
            note.insert(0, counted.why(data.ResultCell(r["backend"], r["variant"], "", "", False)
                                       .label(counts=False)))
        verdicts.append(v)
        notes.append("; ".join(note))
    return t.assign(verdict=verdicts, note=notes)


COLUMNS = ["dataset", "claim", "text", "metric", "unit", "a", "b", "n_a", "n_b", "median_a",
           "median_b", "ratio", "ratio_lo", "ratio_hi", "verdict", "better", "emulated",
           "note", "ok_a", "tried_a", "ok_b", "tried_b"]


def _counts(ta: data.Tally | None, tb: data.Tally | None) -> dict[str, Any]:
    """The sides' measured samples (NaN: not counted in the result)."""
    def side(t: data.Tally | None, s: str) -> dict[str, Any]:
        return {f"ok_{s}": t.ok if t else math.nan, f"tried_{s}": t.tried if t else math.nan}
    return side(ta, "a") | side(tb, "b")


def judged(verdict: str, cells: list[data.ResultCell]) -> tuple[str, list[str]]:
    """The verdict, unless a cell it is drawn from failed too often (FAILURE_LIMIT): then
    INCONCLUSIVE_FAILURES, and why (cell, n ok / n tried, the most common reason)."""
    why = [c.tally.why(c.label(counts=False)) for c in cells
           if c.tally is not None and c.tally.too_many]
    return (INCONCLUSIVE_FAILURES, why) if why else (verdict, [])


def _bound_rows(df: pd.DataFrame, claim: Claim) -> list[dict[str, Any]]:
    """The limits claim: one row per backend of the claimed kind that applies the limit."""
    rows: list[dict[str, Any]] = []
    for r in enforcement(df, claim.margin).to_dict("records"):
        if not r["applied"] or (claim.a.kind is not None and r["kind"] != claim.a.kind):
            continue
        cpu = r["resource"] == "cpus"
        unit = "cores" if cpu else "B"
        t = tables.tally_of(r)
        cell = data.ResultCell(r["backend"], r["variant"], r["dataset"], r["kind"], r["emulated"],
                         bool(r["ram"]), t)
        rows.append({
            "dataset": r["dataset"], "claim": claim.id, "text": claim.text,
            "metric": "limits.cpu_used" if cpu else "limits.mem_max_ok", "unit": unit,
            "a": cell.label(), "b": data.limit_name(r["resource"], r["asked"]),
            "n_a": r["n"], "n_b": r["n"], "median_a": r["value"], "median_b": r["asked"],
            "ratio": r["ratio"], "ratio_lo": r["ratio_lo"], "ratio_hi": r["ratio_hi"],
            "verdict": r["verdict"], "better": claim.better, "emulated": r["emulated"],
            "note": r["note"], **_counts(t, None)})
    return rows


def evaluate(df: pd.DataFrame, claims: tuple[Claim, ...] | None = None) -> pd.DataFrame:
    """One row per claim × pair of cells measured on the same dataset (the limits claim:
    per cell and limit, see `enforcement`).

    Pairs share their variant (startup with network=bridge is compared with the same),
    except for the claim's axis (the storage target, the network mode), which is what
    the claim compares. A pair from different datasets is never formed: a claim is
    judged on one host at a time.
    """
    cols = COLUMNS
    if df.empty:
        return pd.DataFrame(columns=cols)
    metrics = sorted(set(df["metric"].unique()) | ({"memory.per_instance"}
                                                     if (df["metric"] == "memory.pss").any()
                                                     else set()))
    order = data.backend_order(df)
    sets = data.datasets(df)
    rows = []
    for claim in seed() if claims is None else claims:
        if claim.better == "bound":
            rows += _bound_rows(df, claim)
            continue
        for metric in (m for m in metrics if re.fullmatch(claim.metric, m)):
            vals = _values(df, metric)
            cs = data.cells(vals, order, sets)
            for a in (c for c in cs if _match(claim.a, c, claim.axis)):
                for b in (c for c in cs if _match(claim.b, c, claim.axis)):
                    if a == b or a.dataset != b.dataset:
                        continue
                    if claim.same_backend and a.backend != b.backend:
                        continue
                    if not claim.same_backend and a.backend == b.backend:
                        continue
                    if data.without_axis(a.variant, claim.axis) != \
                            data.without_axis(b.variant, claim.axis):
                        continue
                    va = a.select(vals)["value"].to_numpy(float)
                    vb = b.select(vals)["value"].to_numpy(float)
                    if va.size == 0 or vb.size == 0 or not np.median(vb) > 0:
                        continue
                    r, lo, hi = stats.ratio_ci(vb, va)
                    notes = []
                    emulated = claim.emulation_matters and (a.emulated or b.emulated)
                    if emulated:
                        notes.append("emulated (TCG): not what hardware (KVM, a real CPU) "
                                     "would give")
                    if a.ram != b.ram:
                        notes.append("writable layer in RAM on one side only: not like "
                                     "for like")
                    if min(va.size, vb.size) < 5:
                        notes.append(f"few samples (n={va.size}/{vb.size})")
                    v, why = judged(verdict(lo, hi, claim.better, claim.margin), [a, b])
                    notes = why + notes
                    rows.append({
                        "dataset": a.dataset, "claim": claim.id, "text": claim.text,
                        "metric": metric, "unit": str(vals["unit"].iloc[0]), "a": a.label(),
                        "b": b.label(), "n_a": int(va.size),
                        "n_b": int(vb.size), "median_a": float(np.median(va)),
                        "median_b": float(np.median(vb)), "ratio": r, "ratio_lo": lo,
                        "ratio_hi": hi, "verdict": v,
                        "better": claim.better, "emulated": emulated,
                        "note": "; ".join(notes), **_counts(a.tally, b.tally)})
    return pd.DataFrame(rows, columns=cols)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and claim: how many pairs hold, do not hold, are inconclusive (and
    inconclusive for their failures)."""
    if table.empty:
        return pd.DataFrame(columns=["dataset", "claim", "text", *VERDICTS])
    counts = (table.groupby(["dataset", "claim", "text", "verdict"], sort=False).size()
              .unstack("verdict", fill_value=0))
    for v in VERDICTS:
        if v not in counts.columns:
            counts[v] = 0
    return counts[list(VERDICTS)].reset_index()
