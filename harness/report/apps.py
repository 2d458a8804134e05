"""The report's application section: servers under load, against the bare host.

The studies `http`, `kv`, `db`, `cpu` and `mem` each measure one application (nginx
under wrk, redis under redis-benchmark, PostgreSQL under pgbench, sysbench cpu and
memory) on every backend and network mode. This section shows, per study, a chart of
throughput and p99 latency by backend and network mode with 95 % CIs, and the classic
overhead table (Felter et al., "An Updated Performance Comparison of Virtual Machines and
Linux Containers", IBM Research, 2014): each backend's median as a ratio to the bare
host's, with a two-sample bootstrap 95 % CI (`harness.stats.ratio_ci`), one row per
study, figure and sub-case.

The bare host is the backend whose kind is `process` (never a name). Its cells are the
reference for every cell with the same sub-case: a backend's bridge, publish and host
networks are all compared with the host's own network, which is what an application on
bare metal gets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from harness import data, stats
from harness.core.units import format_seconds, format_size, format_value
from harness.report import blocks as page
from harness.report import claims, draw, tables
from harness.report.presentation import apps
from harness.results import Loaded

# The overhead table's rows in this order within a study (others after, by name);
# daemons have no counterpart on the bare host, so their PSS has no ratio.
FIGURES = ("rps", "ops", "tps", "events", "bw", "lat_p50", "lat_mean", "lat_p99",
           "pss_loaded")
NO_RATIO = ("daemon_pss_loaded",)
OVERHEAD_CAP = 60  # rows: five studies' headline figures fit (the report's own cap is 30)
OVERHEAD_COLUMNS = ["dataset", "study", "metric", "sub", "unit", "backend", "variant",
                    "network", "kind", "emulated", "ram", "n", "median", "ci_lo", "ci_hi",
                    "host_backend", "host_variant", "host_n", "host_median", "ratio",
                    "ratio_lo", "ratio_hi", "slower", "ok", "tried", "reason", "host_ok",
                    "host_tried", "host_reason"]


def present(df: pd.DataFrame) -> list[str]:
    """The application studies with samples in `df`, in apps() order."""
    studies = set(df["metric"].map(data.study_of)) if not df.empty else set()
    return [s for s in apps() if s in studies]


def split(df: pd.DataFrame) -> pd.DataFrame:
    """Application samples with `variant` the cell's own and `sub` the sub-case
    (harness.data.split_sub)."""
    return data.split_sub(df, apps())


def _figure_rank(metric: str) -> tuple[int, str]:
    name = metric.split(".", 1)[-1]
    return (FIGURES.index(name) if name in FIGURES else len(FIGURES), name)


def _reference(host: pd.DataFrame) -> tuple[str, str] | None:
    """(backend, variant) of the bare host's cell to compare with: its own network
    ("host"; then none) where it has several, else its only one."""
    cells = list(dict.fromkeys(zip(host["backend"], host["variant"], strict=True)))
    if not cells:
        return None
    for mode in ("host", "none", None):
        for b, v in cells:
            if data.axis_of(v, "network") == mode:
                return str(b), str(v)
    return str(cells[0][0]), str(cells[0][1])


def overhead(df: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset, application figure, sub-case and cell (the bare host's own
    included, ratio 1): the cell's median and CI, the host's, and median / host median
    with its 95 % CI. `slower`: the CI lies wholly on the slower side of 1 (below for
    rates, above for times and sizes)."""
    d = split(df)
    d = d[~d["metric"].str.split(".", n=1).str[-1].isin(NO_RATIO)]
    rows: list[dict[str, Any]] = []
    for (ds, metric, sub), g in d.groupby(["dataset", "metric", "sub"], sort=False):
        rest = g.assign(_rest=[data.without_axis(v, "network") for v in g["variant"]])
        for _, r in rest.groupby("_rest", sort=False):
            ref = _reference(r[r["kind"] == "process"])
            host = (r.iloc[:0] if ref is None else
                    r[(r["backend"] == ref[0]) & (r["variant"] == ref[1])])
            base = host["value"].to_numpy(float)
            host_counts = {f"host_{k}": v for k, v in
                           tables.attempts(data.tally(host)).items()}
            for c in data.cells(r):
                v = c.select(r)["value"].to_numpy(float)
                s = stats.summarize(v)
                ratio = lo = hi = math.nan
                if base.size and np.median(base) > 0 and v.size:
                    ratio, lo, hi = stats.ratio_ci(base, v)
                unit = str(g["unit"].iloc[0])
                up = stats.higher_is_better(unit)
                rows.append({
                    "dataset": ds, "study": data.study_of(str(metric)), "metric": metric,
                    "sub": sub, "unit": unit, "backend": c.backend, "variant": c.variant,
                    "network": data.axis_of(c.variant, "network") or "", "kind": c.kind,
                    "emulated": c.emulated, "ram": c.ram, "n": s.n, "median": s.median,
                    "ci_lo": s.lo, "ci_hi": s.hi, "host_backend": ref[0] if ref else "",
                    "host_variant": ref[1] if ref else "", "host_n": int(base.size),
                    "host_median": float(np.median(base)) if base.size else math.nan,
                    "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi,
                    "slower": bool(hi < 1 if up else lo > 1),
                    **tables.attempts(c.tally), **host_counts})
    t = pd.DataFrame(rows, columns=OVERHEAD_COLUMNS)
    if t.empty:
        return t
    order = list(apps())
    t = t.assign(_s=t["study"].map(order.index), _f=t["metric"].map(_figure_rank))
    t = data.in_order(t, df, ["_s", "_f", "sub"])
    # Studies and figures lead; within one figure the cells keep the report's order.
    return (t.sort_values(["_s", "_f", "sub", "dataset"], kind="stable")
            .drop(columns=["_s", "_f"]).reset_index(drop=True))


def _host_tally(r: Any) -> data.Tally | None:
    """The attempts of the bare host's cell an overhead row (a record or a Series) compares
    with."""
    return tables.tally_of({k.removeprefix("host_"): r[k] for k in
                            ("host_ok", "host_tried", "host_reason")})


def _counted(text: str, t: data.Tally | None) -> str:
    """A figure, with its cell's "n ok / n tried" when samples failed."""
    note = data.failed_note(t)
    return f"{text} ({note})" if note else text


def _ratio_text(r: Mapping[Any, Any]) -> str:
    if not math.isfinite(r["ratio"]):
        return "—"
    return _counted(f"{r['ratio']:.3g}× [{r['ratio_lo']:.3g}, {r['ratio_hi']:.3g}]"
                    + (" ▼" if r["slower"] else ""), tables.tally_of(r))


def overhead_table(t: pd.DataFrame, several: bool) -> page.Table:
    """The classic layout: one row per study, headline figure (throughput, p99), sub-case
    and network mode; the bare host's median, then one column per other backend (TCG
    marked): its median ÷ the host's [95 % CI]. The other figures are in the CSV."""
    heads = {f for a in apps().values() for f in (a.throughput, a.p99) if f}
    t = t[t["metric"].isin(heads)]
    others = t[t["kind"] != "process"]
    backends = list(dict.fromkeys(zip(others["backend"], others["emulated"], others["ram"],
                                      strict=True)))
    labels = [data.ResultCell(b, data.DEFAULT_VARIANT, "", "", bool(e), bool(ram)).label()
              for b, e, ram in backends]
    rows = []
    for key, g in t.groupby(["dataset", "metric", "sub", "network"], sort=False):
        ds, metric, sub, network = key
        first = g.iloc[0]
        arrow = "↑" if stats.higher_is_better(str(first["unit"])) else "↓"
        by = {r["backend"]: r for r in g.to_dict("records")}
        host = first["host_median"]
        rows.append([*([str(ds)] if several else []), f"{metric} {arrow}", str(sub),
                     str(network), _counted(format_value(host, str(first["unit"])),
                                            _host_tally(first))
                     if math.isfinite(host) else "—",
                     *(_ratio_text(by[b]) if b in by else "" for b, _, _ in backends)])
    cols = [*(["dataset"] if several else []), "figure", "sub", "network", "host (median)",
            *labels]
    return page.Table(cols, rows, "l" * (len(cols) - len(labels) - 1)
                        + "r" * (len(labels) + 1))


def study_table(df: pd.DataFrame, study: str, several: bool) -> page.Table | None:
    """One row per cell (backend [network]); one column per headline figure and sub-case
    (throughput, p99), then the instance's and the daemons' PSS under load: "median ±x%"
    (± = half the 95 % CI, relative), ⚠ where unstable. The rest is in the study's CSV."""
    app = apps()[study]
    d = split(df)
    d = d[d["metric"].isin([app.throughput, app.p99, f"{study}.pss_loaded",
                            f"{study}.daemon_pss_loaded"])]
    if d.empty:
        return None
    figures = sorted(dict.fromkeys(zip(d["metric"], d["sub"], strict=True)),
                     key=lambda f: (_figure_rank(f[0]), f[0] == f"{study}.daemon_pss_loaded"))
    rows = []
    for c in data.cells(d):
        cell = c.select(d)
        values = []
        for metric, sub in figures:
            v = cell[(cell["metric"] == metric) & (cell["sub"] == sub)]["value"]
            if v.empty:
                values.append("—")
                continue
            s = stats.summarize(v.to_numpy(float))
            warn = "" if s.min == s.max else stats.unstable(v.to_numpy(float))
            values.append(" ".join(filter(None, [
                format_value(s.median, str(d[d["metric"] == metric]["unit"].iloc[0])),
                page.pm(s.median, s.lo, s.hi), "⚠" if warn else ""])))
        n = int(cell.groupby(["metric", "sub"]).size().max())
        rows.append([*([c.dataset] if several else []), c.label(), str(n), *values])
    names = [m.split(".", 1)[1] + (f" ({sub})" if sub else "") for m, sub in figures]
    return page.Table([*(["dataset"] if several else []), "backend [network]", "n", *names],
                        rows, "l" * (2 if several else 1) + "r" * (len(names) + 1))


MARKS = {claims.HOLDS: "✓", claims.FAILS: "✗", claims.INCONCLUSIVE: "?"}


def near_native(t: pd.DataFrame, several: bool) -> tuple[page.Table, str] | None:
    """The claim "containers run applications at near-native speed" per container backend
    and network mode: its verdict on each throughput figure (the overhead table's ratio
    and CI, read as `claims.verdict` reads every claim) and overall (holds when every
    figure holds, does not hold when one does not). Also the claim's band, as text."""
    claim = next(c for c in claims.seed() if c.id == claims.APPS)
    t = t[(t["kind"] == "container") & t["metric"].str.fullmatch(claim.metric)
          & np.isfinite(t["ratio"].astype(float))]
    if t.empty:
        return None
    figures = list(dict.fromkeys(zip(t["metric"], t["sub"], strict=True)))
    rows = []
    for (ds, backend, variant), g in t.groupby(["dataset", "backend", "variant"], sort=False):
        by = {(r["metric"], r["sub"]): r for r in g.to_dict("records")}
        verdicts = {f: claims.verdict(r["ratio_lo"], r["ratio_hi"], claim.better, claim.margin)
                    for f, r in by.items()}
        overall = (claims.FAILS if claims.FAILS in verdicts.values() else claims.HOLDS
                   if set(verdicts.values()) == {claims.HOLDS} else claims.INCONCLUSIVE)
        first = g.iloc[0]
        own = tables.tally_of(first.to_dict())
        cell = data.ResultCell(str(backend), str(variant), "", "", False, bool(g["ram"].any()), own)
        host = data.ResultCell(str(first["host_backend"]), str(first["host_variant"]), "", "",
                         False, False, _host_tally(first))
        overall, why = claims.judged(overall, [cell, host])
        rows.append([*([str(ds)] if several else []), cell.label(),
                     *(f"{by[f]['ratio']:.3g}× {MARKS[verdicts[f]]}"
                       + (" (faster)" if by[f]["ratio_lo"] > 1 + claim.margin else "")
                       if f in by else "" for f in figures),
                     f"**{overall}**" + (f" ({'; '.join(why)})" if why else "")])
    cols = [*(["dataset"] if several else []), "backend [network]",
            *(f"{m}" + (f" ({s})" if s else "") for m, s in figures), "verdict"]
    band = f"{1 - claim.margin:.2f}–{1 + claim.margin:.2f}"
    return (page.Table(cols, rows, "l" * (2 if several else 1) + "r" * len(figures) + "l"),
            band)


def placement(docs: Sequence[Loaded]) -> list[str]:
    """What each application run recorded of its CPU placement and its host's cores."""
    out = []
    for _, doc in docs:
        study = str(doc.scenario.get("study", doc.scenario_name))
        if study not in apps():
            continue
        limits = doc.scenario.get("limits") or {}
        server, client = data.cpusets(doc)
        gen = (f"load generator cpuset {' | '.join(client) or 'not recorded'}"
               if apps()[study].from_host else "the tool runs in the instance")
        cpus = f" (cpus = {limits['cpus']:g})" if isinstance(limits.get("cpus"), int | float) \
            else ""
        out.append(f"{doc.scenario_name}: host of {doc.host.get('cores', '?')} cores; "
                   f"instance cpuset {' | '.join(server) or 'not set'}{cpus}, {gen}"
                   + cache_note(doc))
    return out


def cache_note(doc: Any) -> str:
    """The buffer a memory-bandwidth sample swept next to the host's last-level cache it
    recorded (`block_size`, `llc`), or that the cache was unknown and why; "" where the
    samples record neither."""
    notes = []
    for smp in doc.samples:
        llc, block = smp.extra.get("llc"), smp.extra.get("block_size")
        if not isinstance(llc, dict) or not isinstance(block, int):
            continue
        size = llc.get("bytes")
        notes.append(f"buffer {format_size(block)}, last-level cache "
                     + (f"L{llc.get('level')} {format_size(size)}" if isinstance(size, int)
                        else f"unknown ({llc.get('unknown')}): the buffer was not checked "
                             "against it"))
    return "; " + " | ".join(dict.fromkeys(notes)) if notes else ""


def host_note(docs: Sequence[Loaded]) -> list[str]:
    """What a small host can and cannot show; empty when every host has 4 cores or more."""
    runs = [(study, cores) for _, doc in docs
            if (study := str(doc.scenario.get("study", doc.scenario_name))) in apps()
            and isinstance(cores := doc.host.get("cores"), int)]
    if not runs or min(c for _, c in runs) >= 4:
        return []
    n = min(c for _, c in runs)
    served = any(apps()[s].from_host for s, _ in runs)
    out = [f"**What a {n}-core host can and cannot show.** "
           + ("A server gets one core and its load generator another (the placement "
              "above), so the two do not compete for a core and every backend gets the "
              "same core budget. " if served else "")
           + "It can show the relative cost of each backend on one core: the "
             "namespaces and cgroups themselves, "
           + ("the packet path of the bridge, of a published port (NAT, a proxy) and of "
              "the host network, " if served else "")
           + "and what an emulated VM does to a workload — with CIs that say which "
             "differences are real.",
           "It cannot show how a workload scales over cores (one worker on one core here), "
           "NUMA or interrupt placement, or the cost of a VM's own threads (QEMU's I/O "
           "threads, vhost, the bridge's softirqs): they run wherever the host puts them, "
           "on the same cores, and land on one side or the other. "
           + ("At saturation the generator's single core can limit the fastest backends, "
              "which compresses their differences. " if served else "")
           + "Absolute figures are this machine's; the ratios are what carries over."]
    return out


# --- charts -----------------------------------------------------------------------------

def _axis(ax: Any, unit: str, values: pd.Series) -> bool:
    """Ticks short enough for a narrow panel (the unit is in the panel's title); a log
    axis when the values drawn span more than LOG_ABOVE, else linear from 0. Whether
    log."""
    v = values[values > 0]
    log = not v.empty and float(v.max() / v.min()) > LOG_ABOVE
    data_bytes = unit.startswith("B")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=4 if data_bytes else 10,
                                              subs=(1.0,) if data_bytes else (1.0, 3.0),
                                              numticks=6))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:  # from 0: a ratio to the host reads as a length
        top = ax.get_xlim()[1] * 1.05
        scale = draw.byte_scale(top)[0] if data_bytes else 1.0
        ax.set_xticks(np.asarray(MaxNLocator(4).tick_values(0, top / scale)) * scale)
        ax.set_xlim(0, top)
    ax.xaxis.set_major_formatter(FuncFormatter(
        (lambda x, _: format_seconds(x) if x else "0") if unit == "s"
        else draw.compact_bytes if data_bytes else draw.count_fmt))
    return log


LOG_ABOVE = 8.0  # a panel whose largest value is this many times its smallest: log axis


def chart(df: pd.DataFrame, look: draw.Look, study: str) -> Figure | None:
    """One row per backend and network mode; one panel per sub-case for the throughput
    and one for p99 where the tool reports it: median with its 95 % CI, the bare host's
    median as a dashed reference line. A panel whose values span more than LOG_ABOVE
    (an emulated VM is 10-100x slower) is on a log axis, others start at 0."""
    app = apps()[study]
    d = split(df)
    metrics = [m for m in (app.throughput, app.p99) if m]
    d = d[d["metric"].isin(metrics)]
    if d.empty:
        return None
    cs = data.cells(d, look.order, look.sets)
    subs = list(dict.fromkeys(d["sub"]))
    panels = [(m, s) for m in metrics for s in subs if ((d["metric"] == m) & (d["sub"] == s))
              .any()]
    fig = look.figure(len(cs))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    lw = 5 if look.slides else 2.5
    logs = False
    for ax, (metric, sub) in zip(axes, panels, strict=True):
        p = d[(d["metric"] == metric) & (d["sub"] == sub)]
        unit = str(p["unit"].iloc[0])
        drawn: list[float] = []  # the CIs' ends: what the axis must hold
        for i, c in enumerate(cs):
            v = c.select(p)["value"].to_numpy(float)
            v = v[v > 0]
            if v.size == 0:
                continue
            s = stats.summarize(v)
            drawn += [s.lo, s.hi]
            col = look.colour(c.backend)
            ax.plot([s.lo, s.hi], [i, i], color=col, lw=lw, alpha=0.6, solid_capstyle="butt")
            ax.plot([s.median], [i], ls="", marker="D" if metric == app.throughput else "o",
                    color=col, mew=2, zorder=5,
                    mfc=col if metric == app.throughput else "white",
                    gid=f"{metric}|{sub}|{look.label(c)}")
        ref = p[p["kind"] == "process"]["value"]
        if not ref.empty:
            ax.axvline(float(ref.median()), color="#4d4d4d", ls="--", lw=1.0,
                       gid=f"{metric}|{sub}|reference")
        logs = _axis(ax, unit, pd.Series(drawn, dtype=float)) or logs
        ax.grid(axis="x", which="major")
        what = "throughput" if metric == app.throughput else "p99"
        better = "↑" if stats.higher_is_better(unit) else "↓"
        shown = "bytes/s (G = GiB, M = MiB)" if unit.startswith("B") else unit
        ax.set_title(f"{sub}\n{what}, {shown} {better}" if sub else f"{what}\n{shown} {better}")
        draw.rows(ax, cs, look, labels=ax is axes[0])
    draw.title(fig, app.title, look)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="D", color="#555555", mew=2, label="throughput"),
        *([Line2D([], [], ls="", marker="o", mfc="white", color="#555555", mew=2,
                  label="p99")] if app.p99 else []),
        Line2D([], [], color="#555555", lw=lw, alpha=0.6, label="95 % CI of the median"),
        Line2D([], [], color="#4d4d4d", ls="--", lw=1.0, label="bare host (reference)")]
    draw.finish(fig, look, handles, cs, "rows: backend [network mode]; ↑ higher is "
                   "better, ↓ lower is better"
                   + ("; log scale where the CIs span more than "
                      f"{LOG_ABOVE:g}×" if logs else ""))
    return fig


def chart_fns() -> dict[str, tuple[str, draw.ChartFn]]:
    """name -> (title, function) of every application chart, for `charts.render_all`."""
    def one(study: str) -> draw.ChartFn:
        return draw.styled(lambda df, look: chart(df, look, study))

    return {f"apps_{s}": (a.title, one(s)) for s, a in apps().items()}


# --- the report's section ---------------------------------------------------------------

def blocks(docs: Sequence[Loaded], df: pd.DataFrame, summ: pd.DataFrame,
           drawn: Mapping[str, Any], several: bool) -> list[page.Block]:
    """The section: what it shows, the small-host note, the overhead table (and its
    CSV), then per study its chart and its figures."""
    studies = present(df)
    if not studies:
        return []
    out: list[page.Block] = [
        ("h2", "Applications: servers under load, against the bare host"),
        ("p", "Each sample is a fresh server instance: created, probed ready, warmed, "
              "loaded by the tool on the host (in the instance for cpu and mem) for a "
              "bounded time, removed; never two servers at once. Every figure is the "
              "tool's own, its raw output kept with the result.")]
    place = placement(docs)
    if place:
        out.append(("ul", place))
    out += [("p", p) for p in host_note(docs)]
    t = overhead(df)
    if not t.empty and not (t["host_n"] > 0).any():
        out.append(("p", "⚠ No bare-host results (a backend of kind `process`, e.g. `host`) "
                         "for these studies: no ratios, no overhead table. Run them with "
                         "`--backends host,…`."))
    elif not t.empty:
        out += [("h3", "Overhead against the bare host"),
                ("p", "Each backend's median ÷ the bare host's median, [95 % CI] (two-sample "
                      "bootstrap); ↑ higher is better, ↓ lower is better; ▼ the whole CI is "
                      "on the slower side of 1. Every network mode of a backend is compared "
                      "with the host's own network. A (TCG, emulated) column is a VM without "
                      "hardware acceleration: its ratio says what emulation costs, not what "
                      f"KVM would. A column marked {data.RAM_MARK} wrote to a tmpfs, the "
                      "host to its disk: its write-heavy ratios (db) are not like for "
                      "like."),
                *page.capped(overhead_table(t, several), "overhead.csv", OVERHEAD_CAP),
                *page.csv_blocks("overhead.csv", t, "Every figure with both CIs")]
        claim = near_native(t, several)
        if claim is not None:
            verdicts, band = claim
            out += [("h3", "Seed claim: containers run applications at near-native speed"),
                    ("p", f"Holds for a figure when the whole 95 % CI of container ÷ host "
                          f"throughput lies within {band} (±10 %: what one server on one "
                          "core of a shared machine can resolve; the classic study saw "
                          "Docker within a few percent on the host network and far below "
                          "through its NAT); ✓ holds, ✗ does not hold, ? inconclusive. "
                          "Per backend and network mode: holds when every figure holds, "
                          "does not hold when any does not. ✗ (faster): the container beat "
                          "the bare host beyond the band; the band is two-sided, and such a "
                          "result usually says the host's own figure is off (its placement, "
                          "contention while it ran), not that isolation speeds a server up."),
                    ("table", verdicts)]
    for study in studies:
        app = apps()[study]
        part = summ[summ["metric"].map(data.study_of) == study]
        out.append(("h3", app.title))
        if f"apps_{study}" in drawn:
            out.append(("chart", drawn[f"apps_{study}"]))
        figures = study_table(df, study, several)
        if figures is not None:
            out += [("p", "Medians; ± is half the 95 % CI, relative to the median; "
                          "⚠ an unstable figure."), *page.capped(figures, f"{study}.csv")]
        out += page.csv_blocks(f"{study}.csv", part, "Every figure of the study with its 95 % CI")
    return out
