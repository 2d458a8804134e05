"""`bench compare`: match the cells of two result sets and decide, per cell, whether NEW
regressed against BASE.

A cell is (scenario, backend, variant, metric), matched by name: a change to what a cell
runs (its argv, the image, the runtime's code) is exactly what a comparison is for, so it
does not unmatch cells; the differences are listed as notes instead. Per cell: the ratio of
medians NEW/BASE with its bootstrap 95 % CI (`stats.ratio_ci`), the Mann-Whitney U p-value
and `stats.decide`'s verdict against max(threshold, noise band).

The noise band comes from the run-to-run spread of the cell's median (see harness.stats):
calibrated by `bench calibrate` (the host's baseline, when there is one) and/or observed
in the inputs when a side holds several runs, pooled. Without either the band is unknown
and the report says that the threshold alone gates.

A cell whose samples failed shows "n ok / n tried" per side; one whose failures on NEW
exceed FAILURE_LIMIT (10 %) of its samples, and BASE's share, is a regression whatever its
median says: its figures are over the samples that survived.

Results from different machines (hardware ids: CPU model, cores, memory, architecture) are
refused unless --allow-cross-host; differences in the host's software (kernel, distro...)
are noted, and so is a backend whose writable layer differs between (or within) the
sides (an `ns` measured before its default moved from a tmpfs to disk against one after:
`harness.core.records.writable_layer`), since its figures of writes are then not like
for like.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness import baseline, data, results, stats
from harness.core import hostinfo
from harness.core.errors import UsageError
from harness.core.records import Noise, Result, writable_layer
from harness.core.units import format_value
from harness.results import Loaded

KEY = ("scenario", "backend", "variant", "metric")
LAYER = "writable layer"
VERDICT_ORDER = {"regression": 0, "improvement": 1, "no change": 2, "n/a": 3}


class CrossHostError(UsageError):
    """BASE and NEW were measured on hosts with different fingerprints."""


def load_set(spec: str | Path) -> list[Loaded]:
    """Result files named by a file, a directory of them, or a glob (quoted, so the shell
    left it alone)."""
    text = str(spec)
    if any(c in text for c in "*?[") and not Path(text).exists():
        paths: list[str | Path] = sorted(glob.glob(text))
        if not paths:
            raise UsageError(f"{text}: no result files match")
    else:
        paths = [text]
        if not Path(text).exists():
            raise UsageError(f"{text}: no such result file or directory")
    try:
        files = results.expand(paths)
    except UsageError:
        raise UsageError(f"{text}: no result files in it") from None
    return [(str(p), results.load_result(p)) for p in files]


@dataclass(frozen=True)
class CellChange:
    """One cell's figure compared, base against new, and the verdict."""

    scenario: str
    backend: str
    variant: str
    metric: str
    unit: str
    n_base: int
    n_new: int
    runs_base: int
    runs_new: int
    median_base: float
    median_new: float
    decision: stats.Decision
    band: float  # relative; NaN when unknown
    band_source: str  # "calibrated", "observed", "calibrated+observed" or "none"
    sigma: float  # run-to-run sd of log medians the band was built from
    df: int
    # The cell's measured samples on each side (None: the results hold no count).
    ok_base: int | None = None
    tried_base: int | None = None
    ok_new: int | None = None
    tried_new: int | None = None

    def attempts(self, side: str) -> str:
        """"4 ok / 6 tried" on a side ("base", "new") where samples failed, else ""."""
        ok, tried = getattr(self, f"ok_{side}"), getattr(self, f"tried_{side}")
        return f"{ok} ok / {tried} tried" if tried is not None and ok != tried else ""

    @property
    def label(self) -> str:
        v = "" if self.variant == "default" else f" [{self.variant}]"
        return f"{self.scenario} · {self.backend}{v} · {self.metric}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("decision"))
        d["direction"] = "higher is better" if stats.higher_is_better(self.unit) \
            else "lower is better"
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}


@dataclass
class Comparison:
    base: str
    new: str
    threshold: float
    alpha: float
    metrics: list[str]
    cells: list[CellChange]
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hosts: dict[str, list[str]] = field(default_factory=dict)
    cross_host: bool = False

    @property
    def regressions(self) -> list[CellChange]:
        return [c for c in self.cells if c.decision.verdict == "regression"]

    @property
    def improvements(self) -> list[CellChange]:
        return [c for c in self.cells if c.decision.verdict == "improvement"]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def headline(self) -> str:
        r, i = len(self.regressions), len(self.improvements)
        head = (f"REGRESSION: {r} of {len(self.cells)} cells" if r
                else f"no regression in {len(self.cells)} cells")
        if i:
            head += f", {i} improved"
        return head + (" (cross-host: indicative only)" if self.cross_host else "")

    def as_json(self) -> dict[str, Any]:
        return {"verdict": "regression" if self.regressions else "ok",
                "exit_code": self.exit_code, "headline": self.headline(),
                "base": self.base, "new": self.new, "threshold": self.threshold,
                "alpha": self.alpha, "metrics": self.metrics, "hosts": self.hosts,
                "cross_host": self.cross_host, "cells": [c.as_dict() for c in self.cells],
                "only_base": self.only_base, "only_new": self.only_new, "notes": self.notes}

    def markdown(self) -> str:
        icon = {"regression": "🔴 regression", "improvement": "🟢 improvement",
                "no change": "no change", "n/a": "n/a"}
        lines = [f"## cvbench compare: {self.headline()}", "",
                 f"- base: `{self.base}` — new: `{self.new}`",
                 f"- a cell regresses when Mann-Whitney p < {self.alpha:g}, the 95 % CI of "
                 f"the ratio of medians excludes 1, and the change exceeds both the "
                 f"threshold ({self.threshold:.0%}) and the cell's noise band",
                 "", "| verdict | cell | base median | new median | ratio (95 % CI) | p "
                 "| noise band | why |", "|---|---|---:|---:|---|---:|---:|---|"]
        for c in self.cells:
            d = c.decision
            ratio = "—" if not math.isfinite(d.ratio) else \
                f"{d.ratio:.3f} ({d.lo:.3f} – {d.hi:.3f})"
            band = "unknown" if not math.isfinite(c.band) else f"{c.band:.0%}"
            if math.isfinite(c.band):
                band += f" ({c.band_source}, {c.runs_base}+{c.runs_new} runs)"
            lines.append(
                f"| {icon[d.verdict]} | {_md(c.label)} | "
                f"{_fmt(c.median_base, c.unit)} (n={c.n_base}{_also(c.attempts('base'))})"
                f" | {_fmt(c.median_new, c.unit)} (n={c.n_new}{_also(c.attempts('new'))}) | "
                f"{ratio} | "
                f"{'—' if not math.isfinite(d.p) else f'{d.p:.2g}'} | {band} | {d.why} |")
        extra = [*self.notes]
        if self.only_base:
            extra.append("only in base (not compared): " + ", ".join(self.only_base))
        if self.only_new:
            extra.append("only in new (not compared): " + ", ".join(self.only_new))
        if extra:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in extra]
        return "\n".join(lines) + "\n"


def _also(text: str) -> str:
    return f"; {text}" if text else ""


def _md(text: str) -> str:
    """A table cell: a '|' in a variant's name would end the cell."""
    return text.replace("|", "\\|")


def _fmt(value: float, unit: str) -> str:
    return "—" if not math.isfinite(value) else format_value(value, unit)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class Change:
    """One thing that differs between two runs besides the measurements: `what`
    ("kernel", "docker: containerd", "commit", "scenario workload.argv"...), and its value
    in the earlier and the later run (None: absent there)."""

    what: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        return f"{self.what}: {self.old or '(none)'} → {self.new or '(none)'}"


def _changes(what: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    return [Change(f"{what}{k}", None if old.get(k) is None else str(old.get(k)),
                   None if new.get(k) is None else str(new.get(k)))
            for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]


def differences(a: Result, b: Result, backends: Sequence[str] | None = None
                ) -> list[Change]:
    """What changed from run `a` to run `b` (of one scenario) besides the measurements:
    the cvbench commit and version, the host's software, the components and the writable
    layer of `backends` (default: those both ran), the image and the scenario's
    definition."""
    out: list[Change] = []
    commit = [(d.commit or "?")[:12] + ("+dirty" if d.dirty else "") for d in (a, b)]
    if commit[0] != commit[1] and (a.commit or b.commit):
        out.append(Change("commit", *commit))
    out += _changes("cvbench ", {"version": a.tool.get("version")},
                    {"version": b.tool.get("version")})
    out += _changes("", hostinfo.software(a.host), hostinfo.software(b.host))
    for bk in sorted(set(a.backends) & set(b.backends)) if backends is None else backends:
        out += _changes(f"{bk}: ", {c.name: c.version for c in a.components(bk)},
                        {c.name: c.version for c in b.components(bk)})
        out += _changes(f"{bk}: ", {LAYER: a.writable_layer(bk)},
                        {LAYER: b.writable_layer(bk)})
    if a.image_digest != b.image_digest:
        out.append(Change("image", f"sha256:{a.image_digest[:12]}",
                          f"sha256:{b.image_digest[:12]}"))
    out += _changes("scenario ", _flat({k: v for k, v in a.scenario.items() if k != "source"}),
                    _flat({k: v for k, v in b.scenario.items() if k != "source"}))
    return out


def _describe_differences(base: Sequence[Loaded], new: Sequence[Loaded]) -> list[str]:
    """What differs between the sides besides the measurements: these are the changes the
    comparison measures (or confounders to know about)."""
    notes: list[str] = []
    named = ({d.scenario_name for _, d in base} & {d.scenario_name for _, d in new}) - {None}
    for scen in sorted(str(s) for s in named):
        b = next(d for _, d in base if d.scenario_name == scen)
        n = next(d for _, d in new if d.scenario_name == scen)
        for c in differences(b, n):
            if c.what.endswith(f": {LAYER}"):
                continue  # a warning of its own (_layer_notes), over every file
            if c.what.startswith("scenario "):  # the wording tests and users know
                notes.append(f"{scen}: scenario {c.what[9:]} differs: {c.old!r} → {c.new!r}")
            else:
                notes.append(f"{scen}: {c}")
    return notes


def _noise(base: Sequence[Loaded], baselines_dir: Path | None,
           ) -> tuple[dict[tuple[str, str, str, str], Noise], list[str]]:
    """Calibrated A/A spread per cell: from BASE itself when it is a calibrated baseline,
    else from the host's baseline under `baselines_dir`."""
    found: dict[tuple[str, str, str, str], Noise] = {}
    notes: list[str] = []
    looked: set[tuple[str, str]] = set()
    for path, doc in base:
        scen = doc.scenario_name or ""
        src, noise = path, baseline.noise_of(doc)
        hid = doc.host_id
        if not noise and baselines_dir is not None and hid is not None \
                and (hid, scen) not in looked:
            looked.add((hid, scen))
            bl = baseline.lookup(baselines_dir, hid, scen)
            if bl is not None:
                src, noise = str(baseline.path_for(baselines_dir, hid, scen)), \
                    baseline.noise_of(bl)
        for (b, v, m), rec in noise.items():
            if (scen, b, v, m) not in found:
                found[(scen, b, v, m)] = rec
                note = f"noise band of {scen} calibrated from {rec.runs} A/A runs: {src}"
                if note not in notes:
                    notes.append(note)
    return found, notes


def compare(base: Sequence[Loaded], new: Sequence[Loaded], *, threshold: float = 0.05,
            alpha: float = 0.01, metrics: Sequence[str] = ("*",),
            allow_cross_host: bool = False, baselines_dir: Path | None = baseline.DEFAULT_DIR,
            base_label: str = "base", new_label: str = "new") -> Comparison:
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha: must be between 0 and 1, not {alpha}")
    if threshold < 0:
        raise UsageError(f"--threshold: must not be negative, not {threshold * 100:g}")
    # The machine decides whether a gate is fair; a kernel or distro upgrade on the same
    # machine is what a comparison may well be measuring, so it is noted, not refused.
    hosts = {"base": sorted({str(hostinfo.hardware_id(d.host)) for _, d in base}),
             "new": sorted({str(hostinfo.hardware_id(d.host)) for _, d in new})}
    cross = len(set(hosts["base"]) | set(hosts["new"])) > 1
    if cross and not allow_cross_host:
        raise CrossHostError(
            f"refusing to gate across machines: base hardware id {', '.join(hosts['base'])}, "
            f"new hardware id {', '.join(hosts['new'])} (CPU model, cores, memory or "
            "architecture differ); pass --allow-cross-host to compare anyway")
    bf = results.with_attempts(results.frame(base), base)
    nf = results.with_attempts(results.frame(new), new)
    def selected(df: Any) -> Any:
        mask = np.zeros(len(df), dtype=bool)
        for g in metrics:
            mask |= np.array([fnmatch.fnmatchcase(str(m), g) for m in df["metric"]],
                             dtype=bool)
        return df[mask]

    bf, nf = selected(bf), selected(nf)
    bg = {k: g for k, g in bf.groupby(list(KEY), sort=True)}
    ng = {k: g for k, g in nf.groupby(list(KEY), sort=True)}
    common = sorted(set(bg) & set(ng))
    if not common:
        raise UsageError(f"no cells in common between {base_label} and {new_label}"
                         + ("" if metrics == ("*",) else f" for --metric {','.join(metrics)}"))
    noise, notes = _noise(base, baselines_dir)
    notes += _describe_differences(base, new)
    notes = _software_notes(base, new) + _layer_notes(base, new) + notes
    if cross:
        notes.insert(0, f"cross-host comparison (base {hosts['base']}, new {hosts['new']}): "
                        "allowed by --allow-cross-host; the verdicts are indicative only")
    cells: list[CellChange] = []
    gated = len(common)
    for key in common:
        b, n = bg[key], ng[key]
        ub, un = sorted(set(b["unit"])), sorted(set(n["unit"]))
        unit = ub[0]
        bv, nv = b["value"].astype(float).to_numpy(), n["value"].astype(float).to_numpy()
        rb = [float(np.median(g["value"])) for _, g in b.groupby("run_id")]
        rn = [float(np.median(g["value"])) for _, g in n.groupby("run_id")]
        band, source, sigma, df = _band(noise.get(key), rb, rn, alpha, gated)
        if ub != un or len(ub) > 1:
            nan = float("nan")
            dec = stats.Decision("n/a", nan, nan, nan, nan, nan,
                                 f"units differ: {','.join(ub)} vs {','.join(un)}")
        else:
            dec = stats.decide(bv, nv, unit, threshold, alpha, band)
        tb, tn = data.tally(b), data.tally(n)
        if tn is not None and tn.too_many and tn.rate > (tb.rate if tb is not None else 0.0):
            dec = replace(dec, verdict="regression",
                          why=f"failures rose: {tb or 'not counted'} → {tn} (most common: "
                              f"{tn.reason}); {dec.why}")
        scen, backend, variant, metric = (str(k) for k in key)
        cells.append(CellChange(
            scen, backend, variant, metric, unit=unit, n_base=len(bv), n_new=len(nv),
            runs_base=len(rb), runs_new=len(rn),
            median_base=float(np.median(bv)), median_new=float(np.median(nv)),
            decision=dec, band=band, band_source=source, sigma=sigma, df=df,
            ok_base=tb.ok if tb else None, tried_base=tb.tried if tb else None,
            ok_new=tn.ok if tn else None, tried_new=tn.tried if tn else None))
    if any(c.band_source == "none" for c in cells):
        notes.append("noise band unknown for some cells (no calibration for this host and "
                     "scenario, and fewer than 2 runs per side): the threshold alone gates "
                     "them, and run-to-run noise may be flagged; run `bench calibrate "
                     "SCENARIO`, or give several runs per side")
    cells.sort(key=lambda c: (VERDICT_ORDER[c.decision.verdict], c.scenario, c.backend,
                              c.variant, c.metric))
    return Comparison(
        base=base_label, new=new_label, threshold=threshold, alpha=alpha,
        metrics=list(metrics), cells=cells, notes=notes, hosts=hosts, cross_host=cross,
        only_base=[" · ".join(k) for k in sorted(set(bg) - set(ng))],
        only_new=[" · ".join(k) for k in sorted(set(ng) - set(bg))])


def _software_notes(base: Sequence[Loaded], new: Sequence[Loaded]) -> list[str]:
    """A warning per host software fact that differs between (or within) the sides."""
    out = []
    soft = {id(d): hostinfo.software(d.host) for _, d in [*base, *new]}
    for key in sorted({k for s in soft.values() for k in s}):
        vb = sorted({soft[id(d)].get(key, "?") for _, d in base})
        vn = sorted({soft[id(d)].get(key, "?") for _, d in new})
        if len(set(vb) | set(vn)) > 1:
            out.append(f"⚠ host software differs: {key} {', '.join(vb)} (base) vs "
                       f"{', '.join(vn)} (new): the comparison measures that change too")
    return out


def _layer_notes(base: Sequence[Loaded], new: Sequence[Loaded]) -> list[str]:
    """A warning per backend (run by both sides) whose writable layer differs between or
    within the sides: writes to its root filesystem went to RAM in some runs, to a disk
    in others."""
    out = []
    both = {b for _, d in base for b in d.backends} & {b for _, d in new for b in d.backends}
    for bk in sorted(both):
        side = [sorted({writable_layer(d.backends[bk]) or "not recorded"
                        for _, d in docs if bk in d.backends}) for docs in (base, new)]
        if len(set(side[0]) | set(side[1])) > 1:
            out.append(f"⚠ {bk}: writable layer differs: {', '.join(side[0])} (base) vs "
                       f"{', '.join(side[1])} (new): its figures of writes to the root "
                       "filesystem (db, io on the rootfs, stacks) are not like for like "
                       "(a tmpfs is RAM, not a disk)")
    return out


def _band(cal: Noise | None, runs_base: list[float], runs_new: list[float],
          alpha: float, cells: int) -> tuple[float, str, float, int]:
    """Pool the calibrated and the observed run-to-run variance (weighted by their degrees
    of freedom) and turn it into the band for this many runs per side."""
    ss, df, sources = 0.0, 0, []
    if cal is not None and cal.df >= 1:
        ss += float(cal.sigma) ** 2 * cal.df
        df += cal.df
        sources.append("calibrated")
    s_obs, df_obs = stats.run_sigma([runs_base, runs_new])
    if df_obs >= 2:
        ss += s_obs**2 * df_obs
        df += df_obs
        sources.append("observed")
    if not df:
        return float("nan"), "none", float("nan"), 0
    sigma = math.sqrt(ss / df)
    band = stats.noise_band(sigma, df, len(runs_base), len(runs_new), alpha, cells)
    return band, "+".join(sources), sigma, df


def write_outputs(c: Comparison, markdown: Path | None, json_path: Path | None) -> None:
    if markdown is not None:
        markdown.write_text(c.markdown(), encoding="utf-8")
    if json_path is not None:
        json_path.write_text(json.dumps(c.as_json(), indent=1, allow_nan=False) + "\n",
                             encoding="utf-8")
