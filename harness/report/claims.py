"""The seed's claims, tested against the measurements.

Each claim compares two sides — e.g. every container backend against every VM backend,
or, within one backend, a volume against the copy-on-write root filesystem — on one
metric, as the ratio of medians A/B with a two-sample bootstrap 95 % CI
(`harness.stats.ratio_ci`). The verdict is read from the CI, never from the medians alone:

- `holds`: the whole CI lies on the claimed side of 1 (or, for an "about the same" claim,
  inside the equivalence band);
- `does not hold`: the whole CI lies on the other side, or inside the band around 1 where
  the difference is too small to matter (a claim of "faster" is not borne out by 2 %);
- `inconclusive`: anything else — more samples or a quieter machine are needed.

Backends are sorted into sides by the `kind` their metadata declares, never by name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import stats
from harness.report import data

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
MARGIN = 0.05  # differences within ±5 % of 1 are "no meaningful difference"

# Names a study may give the copy-on-write root filesystem target.
COW_TARGETS = frozenset({"rootfs", "cow", "overlay", "root", "layer"})


@dataclass(frozen=True)
class Side:
    kind: str | None = None  # backend kind, or any
    targets: frozenset[str] | None = None  # storage targets (from the variant), or any


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    metric: str  # a regular expression matched against the whole metric name
    better: str  # "lower": A < B claimed; "higher": A > B; "equal": A ≈ B
    a: Side
    b: Side
    same_backend: bool = False  # compare two targets within one backend
    margin: float = MARGIN
    emulation_matters: bool = True  # a TCG guest skews times and memory, not bytes on disk
    why: str = field(default="", compare=False)


CLAIMS: tuple[Claim, ...] = (
    Claim("start", "Containers start faster than VMs", r"startup\.to_ready", "lower",
          Side("container"), Side("vm"), why="time from create to the ready line"),
    Claim("memory", "Containers use less memory than VMs", r"memory\.per_instance", "lower",
          Side("container"), Side("vm"),
          why="PSS per instance plus its share of the engine daemons"),
    Claim("disk", "Containers use less disk than VMs", r"disk\.image", "lower",
          Side("container"), Side("vm"), emulation_matters=False,
          why="the image as the backend stores it"),
    Claim("disk-instance", "Each container instance uses less disk than a VM instance",
          r"disk\.instance", "lower", Side("container"), Side("vm"), emulation_matters=False,
          why="growth per instance after the workload writes"),
    Claim("volume-io", "Volumes beat the copy-on-write layer for I/O", r"io\.[^.]+\.bw",
          "higher", Side("container", frozenset({"volume"})),
          Side("container", COW_TARGETS), same_backend=True,
          why="fio bandwidth, volume / container root filesystem, per job"),
    Claim("host-io", "A bind mount performs like the host's own filesystem",
          r"io\.[^.]+\.bw", "equal", Side("container", frozenset({"bind"})),
          Side("process"), margin=0.10, why="fio bandwidth within ±10 % of the host's"),
    Claim("start-overhead", "Containers start almost as fast as a bare process",
          r"startup\.to_ready", "equal", Side("container"), Side("process"), margin=0.25,
          why="time to ready within ±25 % of the host process"),
)


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
        inst = data.per_instance_memory(df)
        return inst.assign(metric=metric, value=inst["total"])
    return df[df["metric"] == metric]


def _match(side: Side, cell: data.Cell) -> bool:
    if side.kind is not None and cell.kind != side.kind:
        return False
    return side.targets is None or data.target_of(cell.variant) in side.targets


def evaluate(df: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """One row per claim × pair of cells measured on the same dataset.

    Pairs share their variant (startup with network=bridge is compared with the same),
    except for the storage target, which is what a target claim compares. A pair from
    different datasets is never formed: a claim is judged on one host at a time.
    """
    cols = ["dataset", "claim", "text", "metric", "a", "b", "n_a", "n_b", "median_a",
            "median_b", "ratio", "ratio_lo", "ratio_hi", "verdict", "better", "emulated",
            "note"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    metrics = sorted(set(df["metric"].unique()) | ({"memory.per_instance"}
                                                     if (df["metric"] == "memory.pss").any()
                                                     else set()))
    order = data.backend_order(df)
    sets = data.datasets(df)
    rows = []
    for claim in claims:
        for metric in (m for m in metrics if re.fullmatch(claim.metric, m)):
            vals = _values(df, metric)
            cs = data.cells(vals, order, sets)
            for a in (c for c in cs if _match(claim.a, c)):
                for b in (c for c in cs if _match(claim.b, c)):
                    if a == b or a.dataset != b.dataset:
                        continue
                    if claim.same_backend and a.backend != b.backend:
                        continue
                    if not claim.same_backend and a.backend == b.backend:
                        continue
                    if data.without_target(a.variant) != data.without_target(b.variant):
                        continue
                    va = a.select(vals)["value"].to_numpy(float)
                    vb = b.select(vals)["value"].to_numpy(float)
                    if va.size == 0 or vb.size == 0 or not np.median(vb) > 0:
                        continue
                    r, lo, hi = stats.ratio_ci(vb, va)
                    notes = []
                    emulated = claim.emulation_matters and (a.emulated or b.emulated)
                    if emulated:
                        notes.append("VM emulated (TCG): not what KVM would give")
                    if min(va.size, vb.size) < 5:
                        notes.append(f"few samples (n={va.size}/{vb.size})")
                    rows.append({
                        "dataset": a.dataset, "claim": claim.id, "text": claim.text,
                        "metric": metric, "a": a.label(),
                        "b": b.label(), "n_a": int(va.size),
                        "n_b": int(vb.size), "median_a": float(np.median(va)),
                        "median_b": float(np.median(vb)), "ratio": r, "ratio_lo": lo,
                        "ratio_hi": hi, "verdict": verdict(lo, hi, claim.better, claim.margin),
                        "better": claim.better, "emulated": emulated,
                        "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=cols)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and claim: how many pairs hold, do not hold, are inconclusive."""
    if table.empty:
        return pd.DataFrame(columns=["dataset", "claim", "text", HOLDS, FAILS, INCONCLUSIVE])
    counts = (table.groupby(["dataset", "claim", "text", "verdict"], sort=False).size()
              .unstack("verdict", fill_value=0))
    for v in (HOLDS, FAILS, INCONCLUSIVE):
        if v not in counts.columns:
            counts[v] = 0
    return counts[[HOLDS, FAILS, INCONCLUSIVE]].reset_index()
