"""report.md and a self-contained index.html from the same content.

The report is a list of blocks (headings, paragraphs, lists, tables, charts) written once
as Markdown: report.md, next to the chart files, and index.html, that Markdown rendered by
markdown-it-py with every chart inlined (base64 `data:` URIs, so each SVG keeps its own
ids and the page can be mailed).
"""

from __future__ import annotations

import base64
import html
import itertools
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore

from harness import data
from harness.core.units import format_value
from harness.report import claims as claims_mod
from harness.report import tables
from harness.results import FAILURE_LIMIT, Loaded

CAP = 30  # rows of a table in report.md; the rest go to the CSV beside it
PER_CLAIM = 5  # rows per claim in the claims table (exceptions first)


@dataclass(frozen=True)
class Study:
    """How the report shows one study: its title (the same in its heading, its charts'
    titles and its CSV's name), the question it answers, its charts, and the metrics of
    its summary table (regular expressions, in column order; every figure of the study,
    with its CI, is in `<study>.csv`)."""

    title: str
    question: str
    charts: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()


STUDIES = {
    "startup": Study("Startup", "how long until the workload runs", ("startup", "startup_serving",
                                                                  "startup_phases"),
                     (r"startup\.to_ready", r"startup\.to_serving", r"startup\.total")),
    "memory": Study("Memory", "what an idle instance costs", ("memory",)),
    "disk": Study("Disk", "what the image and each instance store", ("disk",),
                  (r"disk\.image", r"disk\.image\.shared", r"disk\.instance_idle",
                   r"disk\.instance")),
    "io": Study("I/O", "each storage target under fio", ("io_bw", "io_iops"),
                (r"io\.seq[^.]*\.bw", r"io\.rand[^.]*\.iops")),
    "limits": Study("Limits", "are CPU and memory limits enforced", ("limits",)),
    "network": Study("Network", "latency and bandwidth per network mode", ("network",),
                     (r"network\.lat_p50", r"network\.lat_p99", r"network\.bw")),
    "density": Study("Density", "what each added instance costs", ("density",)),
    "stack": Study("Stacks", "how soon a stack of services answers, and what it costs",
                   ("stack_timeline",),
                   (r"stack\.start", r"stack\.memory\.pss", r"stack\.memory\.daemon",
                    r"stack\.e2e\.rps", r"stack\.e2e\.lat_p99")),
}


def study_info(study: str) -> Study:
    """The study's entry; a study the report does not know gets its name as title and
    its every metric in the summary."""
    return STUDIES.get(study, Study(study, "every figure", (), (r".*",)))


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l"/"r" per column; default left


Block = tuple[str, Any]  # (kind, payload): h1 h2 h3 p ul table chart warn


def build(docs: Sequence[Loaded], df: pd.DataFrame, out: Path,
          formats: Sequence[str] = ("png", "svg"), style: str = "paper") -> list[Path]:
    """Write the charts, report.md and index.html into `out`; return the files written."""
    from harness.report import apps, charts

    out.mkdir(parents=True, exist_ok=True)
    df = data.enrich(df, docs)
    verdicts = claims_mod.evaluate(df)
    drawn = charts.render_all(df, out, style, formats, inline=True, claims_table=verdicts,
                              extra=apps.chart_fns())
    blocks = content(docs, df, {c.name: c for c in drawn}, verdicts)
    csvs = []
    for _, (name, frame) in (b for b in blocks if b[0] == "csv"):
        csvs.append(out / name)
        frame.to_csv(csvs[-1], index=False)
    md = out / "report.md"
    md.write_text(markdown(blocks, formats))
    page = out / "index.html"
    page.write_text(to_html(blocks))
    return [p for c in drawn for p in c.paths] + csvs + [md, page]


# --- content --------------------------------------------------------------------------

def fmt_ci(median: float, lo: float, hi: float, unit: str) -> tuple[str, str]:
    """("12.3 ms", "11.9 ms – 12.8 ms")"""
    return format_value(median, unit), f"{format_value(lo, unit)} – {format_value(hi, unit)}"


def _pm(median: float, lo: float, hi: float) -> str:
    if not median:
        return ""
    return f"±{(hi - lo) / 2 / abs(median):.1%}"


def medians_table(summ: pd.DataFrame, several: bool,
                  ram: Collection[tuple[str, str]] = ()) -> Table:
    """Every figure of `summ`; a backend in `ram` ((dataset, backend): see `_in_ram`) is
    marked data.RAM_MARK."""
    counts = "count" in summ.columns
    notes = [data.failed_note(tables.tally_of(r)) for r in summ.to_dict("records")]
    failed = any(notes)  # the column is there when a cell had failures
    cols = [*(["dataset"] if several else []), "backend", "variant", "metric",
            *(["instances"] if counts else []), "n", *(["samples"] if failed else []),
            "median", "95 % CI", "±", "stability"]
    rows = []
    for r, note in zip(summ.to_dict("records"), notes, strict=True):
        med, ci = fmt_ci(r["median"], r["ci_lo"], r["ci_hi"], str(r["unit"]))
        backend = str(r["backend"])
        if (str(r.get("dataset")), backend) in ram:
            backend += f" {data.RAM_MARK}"
        rows.append([*([str(r["dataset"])] if several else []), backend,
                     str(r["variant"]), str(r["metric"]),
                     *([f"{r['count']:g}"] if counts else []), str(r["n"]),
                     *([note] if failed else []), med, ci,
                     _pm(r["median"], r["ci_lo"], r["ci_hi"]),
                     f"⚠ {r['warning']}" if r["warning"] else ""])
    align = ("l" * (len(cols) - 6 - failed) + ("r" if counts else "l") + "r" * (1 + failed)
             + "rlrl")
    return Table(cols, rows, align)


def _in_ram(df: pd.DataFrame) -> set[tuple[str, str]]:
    """(dataset, backend) of the backends whose writable layer was in RAM."""
    return {(str(ds), str(b)) for (ds, b), g in df.groupby(["dataset", "backend"])
            if data.in_ram(g)}


def _ordered(summ: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the report's order: backend (by kind), variant, dataset, metric."""
    return data.in_order(summ, df, ["metric"])


def claims_table(t: pd.DataFrame, several: bool) -> Table:
    cols = [*(["dataset"] if several else []), "claim", "A", "B", "metric", "median A",
            "median B", "A / B", "95 % CI", "verdict", "note"]
    rows = []
    last = None
    for r in t.to_dict("records"):
        u = str(r["unit"])
        # The claim's text heads its rows once: a column of repeats is hard to read.
        first = (r["dataset"], r["claim"]) != last
        last = (r["dataset"], r["claim"])
        rows.append([*([str(r["dataset"])] if several else []),
                     str(r["text"]) if first else "", str(r["a"]),
                     str(r["b"]), str(r["metric"]), format_value(r["median_a"], u),
                     format_value(r["median_b"], u), f"{r['ratio']:.3g}×",
                     f"{r['ratio_lo']:.3g}× – {r['ratio_hi']:.3g}×",
                     f"**{r['verdict']}**", str(r["note"])])
    return Table(cols, rows, "l" * (len(cols) - 6) + "rrrrll")


def _exceptions_first(t: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most `n` rows per dataset and claim: those that do not hold first, then the
    inconclusive ones, then those that hold (the rest are in the CSV)."""
    rank = {claims_mod.FAILS: 0, claims_mod.INCONCLUSIVE_FAILURES: 1,
            claims_mod.INCONCLUSIVE: 1}
    t = t.assign(_r=t["verdict"].map(lambda v: rank.get(v, 2)), _i=range(len(t)))
    keep = (t.sort_values(["_r", "_i"], kind="stable")
            .groupby(["dataset", "claim"], sort=False).head(n))
    return t.loc[sorted(keep.index, key=list(t.index).index)].drop(columns=["_r", "_i"])


def memory_table(df: pd.DataFrame, several: bool) -> Table | None:
    m = tables.memory(df)
    if m.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "instances",
            "PSS / instance", "daemons ÷ instances", "total / instance", "95 % CI of total"]
    rows = []
    for r in m.to_dict("records"):
        cell = data.Cell(r["backend"], r["variant"], r["dataset"], "", r["emulated"],
                         bool(r["ram"]), tables.tally_of(r))
        rows.append([*([str(r["dataset"])] if several else []), cell.label(),
                     str(r["instances"]), format_value(r["pss"], "B"),
                     format_value(r["daemon"], "B"), format_value(r["total"], "B"),
                     fmt_ci(r["total"], r["total_lo"], r["total_hi"], "B")[1]])
    return Table(cols, rows, "l" * (len(cols) - 5) + "rrrrl")


def _warnings(docs: Sequence[Loaded], df: pd.DataFrame, summ: pd.DataFrame) -> list[str]:
    out = []
    hosts = sorted({str(doc.host.get("id")) for _, doc in docs})
    if len(hosts) > 1:
        out.append(f"Results from {len(hosts)} different hosts (fingerprints "
                   f"{', '.join(hosts)}): shown side by side, but a difference between "
                   "them may be the machine, not the backend.")
    for ds, g in df.groupby("dataset"):
        digests = sorted(set(g["image_digest"]))
        if len(digests) > 1:
            out.append(f"{ds}: runs used {len(digests)} different images "
                       f"({', '.join(d[:12] for d in digests)}): not the identical workload.")
    emu = sorted(set(df[df["emulated"].astype(bool)]["backend"]))
    if emu:
        out.append(f"Emulated VMs (TCG, no hardware acceleration): {', '.join(emu)}. Their "
                   "times and I/O say little about a VM under KVM; they are marked "
                   "\"(TCG, emulated)\" in every chart and table.")
    out += _layer_warnings(df)
    unknown = sorted(set(df[df["kind"] == "unknown"]["backend"]))
    if unknown:
        out.append(f"Backends whose metadata declares no kind ({', '.join(unknown)}): the "
                   "seed claims cannot tell whether they are containers or VMs, and leave "
                   "them out.")
    for path, doc in docs:
        if doc.interrupted:
            out.append(f"`{path}`: the run was interrupted; its samples are incomplete.")
        failed = {(c.get("backend"), c.get("variant"), c.get("copy")) for c in doc.cells
                  if c.get("status") == "failed"}
        for a in doc.attempts():
            cell = data.Cell(a.backend, a.variant, "", "", False).label() + (
                f" #{a.copy}" if a.copy is not None else "")
            gave_up = (a.backend, a.variant, a.copy) in failed
            if not (a.failed or gave_up):
                continue
            why = ", ".join(f"{n}× {r}" for r, n in a.reasons)
            out.append(f"`{path}` ({doc.scenario_name}): cell {cell}: {a}"
                       + (" — its figures are over the samples that succeeded"
                          if a.ok else "")
                       + (" — it gave up (failed too often in a row)" if gave_up else "")
                       + (f". Failed: {why}." if why else "."))
    n_unstable = int((summ["warning"] != "").sum()) if not summ.empty else 0
    if n_unstable:
        out.append(f"{n_unstable} of {len(summ)} figures are unstable (large spread or few "
                   "samples, as pyperf checks): see the ⚠ marks in the tables; re-run them on "
                   "a quieter machine before drawing conclusions.")
    return out


def _layer_warnings(df: pd.DataFrame) -> list[str]:
    """Backends whose writes to the root filesystem went to RAM, and a backend name whose
    writable layer is not the same in every dataset (an `ns` from before its default
    moved to disk next to one from after)."""
    out = []
    ram = sorted({b for _, b in _in_ram(df)})
    if ram:
        out.append(f"Writable layer in RAM (a tmpfs): {', '.join(ram)}. Their writes to the "
                   "root filesystem never reach a disk, so their write-heavy figures (db, "
                   "io on the rootfs, stacks) compare only with each other; they are marked "
                   f"\"{data.RAM_MARK}\" in every chart and table.")
    if "writable_layer" in df.columns:
        for b, g in df.groupby("backend"):
            per = {str(ds): "/".join(sorted(set(x["writable_layer"]))) or "not recorded"
                   for ds, x in g.groupby("dataset")}
            if len(set(per.values())) > 1:
                out.append(f"{b} kept its writable layer in different places: "
                           + ", ".join(f"{v} in {ds}" for ds, v in per.items())
                           + "; its datasets are not like for like.")
    return out


def _dataset_blocks(docs: Sequence[Loaded], df: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = []
    runs = df.drop_duplicates("run_id").set_index("run_id")["dataset"].to_dict()
    by_ds: dict[str, list[Loaded]] = {}
    for path, doc in docs:
        by_ds.setdefault(runs.get(doc.run_id, "(no samples)"), []).append((path, doc))
    for ds in [*data.datasets(df), *(k for k in by_ds if k not in set(df["dataset"]))]:
        items = by_ds.get(ds, [])
        if not items:
            continue
        host = items[0][1].host
        blocks.append(("h3", ds))
        keys = ("id", "hostname", "cpu_model", "cores", "mem_total_gib", "kernel", "distro",
                "cgroup_mode", "governor", "thp", "ksm", "virtualization", "kvm_device",
                "python", "cvbench")
        blocks.append(("table", Table(["host", "value"], [[k, str(host[k])] for k in keys
                                                          if k in host])))
        rows = []
        for path, doc in items:
            tag = doc.image.get("tag")
            rows.append([str(doc.scenario_name), doc.run_id, doc.created or "",
                         f"`{doc.image_digest[:16]}…`" + (f" ({tag})" if tag else ""),
                         f"`{path}`"])
        blocks.append(("table", Table(["scenario", "run", "created", "image digest", "file"],
                                      rows)))
        backends: dict[str, Mapping[str, Any]] = {}
        for _, doc in items:
            backends.update(doc.backends)
        rows = []
        for b in sorted(backends, key=lambda b: (data.KINDS.index(
                data.backend_kind(backends[b])), b)):
            meta = backends[b]
            versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
            accel = str(meta.get("accel", ""))
            if data.is_emulated(meta):
                accel = f"**{accel or 'emulated'} (emulated)**"
            rows.append([b, data.backend_kind(meta), accel, versions])
        blocks.append(("table", Table(["backend", "kind", "accel", "versions"], rows)))
        prot = protections_table(backends)
        if prot is not None:
            blocks += [("p", "Protections each backend applies (its own record; an engine's "
                             "is what it reports):"), ("table", prot)]
    return blocks


def protections_table(backends: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """One row per protection ("what: how" lines of the backends' `protections`), one
    column per backend that records any; None when none does."""
    cols = sorted(b for b in backends if backends[b].get("protections"))
    if not cols:
        return None
    by_backend = {b: dict(str(line).partition(": ")[::2] for line in backends[b]["protections"])
                  for b in cols}
    whats = list(dict.fromkeys(w for b in cols for w in by_backend[b]))
    return Table(["protection", *cols],
                 [[w, *(by_backend[b].get(w, "—") for b in cols)] for w in whats])


def _csv(name: str, frame: pd.DataFrame, what: str) -> list[Block]:
    """The full table as a CSV beside the report, and the line that points to it."""
    return [("csv", (name, frame)), ("p", f"{what}: [{name}]({name}) ({len(frame)} rows).")]


def capped(table: Table, csv: str, cap: int = CAP) -> list[Block]:
    """The table, cut at `cap` rows with a line saying where the rest is."""
    if len(table.rows) <= cap:
        return [("table", table)]
    return [("table", Table(table.columns, table.rows[:cap], table.align)),
            ("p", f"… {len(table.rows) - cap} more rows in [{csv}]({csv}).")]


def wide_table(summ: pd.DataFrame, df: pd.DataFrame, headline: Sequence[str],
               several: bool) -> Table | None:
    """One row per cell, one column per headline metric: "median ±x%" (± = half the
    95 % CI, relative to the median), ⚠ where the figure is unstable."""
    present = list(dict.fromkeys(summ["metric"]))
    metrics = [m for rx in headline for m in sorted(present) if re.fullmatch(rx, m)]
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        return None
    part = summ[summ["metric"].isin(metrics)]
    cells = {(c.backend, c.variant, c.dataset): c for c in data.cells(df)}
    cols = [*(["dataset"] if several else []), "backend", "n",
            *(m.split(".", 1)[1] for m in metrics)]
    rows = []
    for (ds, backend, variant), g in part.groupby(["dataset", "backend", "variant"], sort=False):
        by = {str(r["metric"]): r for r in g.to_dict("records")}
        cell = cells.get((str(backend), str(variant), str(ds)))
        values = []
        for m in metrics:
            r = by.get(m)
            values.append("—" if r is None else " ".join(filter(None, [
                format_value(r["median"], str(r["unit"])), _pm(r["median"], r["ci_lo"],
                                                               r["ci_hi"]),
                "⚠" if r["warning"] else ""])))
        rows.append([*([str(ds)] if several else []),
                     cell.label() if cell else f"{backend} [{variant}]",
                     str(max(int(r["n"]) for r in by.values())), *values])
    return Table(cols, rows, "l" * (len(cols) - len(metrics) - 1) + "r" * (len(metrics) + 1))


def limits_table(df: pd.DataFrame, several: bool) -> Table | None:
    """Per backend and limit: what was used (CPU) or the largest allocation that lived
    (memory), against the limit asked, and the verdict of `claims.enforcement`."""
    t = data.in_order(claims_mod.enforcement(df), df, ["resource", "asked"])
    if t.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "limit", "used / lived", "95 % CI",
            "÷ asked", "host idle", "killed", "verdict", "note"]
    rows = []
    for r in t.to_dict("records"):
        unit = "cores" if r["resource"] == "cpus" else "B"
        cell = data.Cell(r["backend"], r["variant"], r["dataset"], r["kind"], r["emulated"],
                         bool(r["ram"]), tables.tally_of(r))
        killed = "" if unit == "cores" else (format_value(r["killed"], "B")
                                             if math.isfinite(r["killed"]) else "none")
        rows.append([*([str(r["dataset"])] if several else []), cell.label(),
                     data.limit_name(r["resource"], r["asked"]),
                     format_value(r["value"], unit),
                     fmt_ci(r["value"], r["value_lo"], r["value_hi"], unit)[1],
                     f"{r['ratio']:.3g}×",
                     format_value(r["idle"], "cores") if math.isfinite(r["idle"]) else "",
                     killed,
                     f"**{r['verdict']}**" if r["applied"] else r["verdict"], r["note"]])
    return Table(cols, rows, "l" * (len(cols) - 8) + "lrlrrrll")


def density_table(df: pd.DataFrame, several: bool) -> Table | None:
    """One row per cell: memory fixed + marginal × n, the marginal at the low and top end
    of the ramp, the largest count reached, the start latency's p95."""
    t = data.in_order(tables.density(df), df)
    if t.empty:
        return None
    cols = [*(["dataset"] if several else []), "backend", "basis", "fixed",
            "marginal / instance", "95 % CI", "low end", "top end", "max count", "start p95"]
    rows = []
    for r in t.to_dict("records"):
        cell = data.Cell(r["backend"], r["variant"], r["dataset"], r["kind"], r["emulated"],
                         bool(r["ram"]), tables.tally_of(r))

        def size(x: float) -> str:
            return format_value(x, "B") if math.isfinite(x) else "—"

        rows.append([*([str(r["dataset"])] if several else []), cell.label(), r["basis"],
                     size(r["fixed"]), size(r["marginal"]),
                     f"{size(r['marginal_lo'])} – {size(r['marginal_hi'])}",
                     f"{size(r['low'])} (n {r['low_counts']})" if r["low_counts"] else "—",
                     f"{size(r['top'])} (n {r['top_counts']})" if r["top_counts"] else "—",
                     str(r["max_count"]), format_value(r["start_p95"], "s")])
    return Table(cols, rows, "l" * (len(cols) - 7) + "rrrrrrr")


def _per_count(df: pd.DataFrame) -> pd.DataFrame:
    """The density study's figures per instance count (never pooled across counts)."""
    sub = df[df["metric"].map(data.study_of) == "density"]
    part = tables.summary(sub.assign(count=pd.to_numeric(sub["instance"], errors="coerce")),
                          ["dataset", "backend", "variant", "metric", "unit", "count"])
    return _ordered(part.sort_values(["metric", "count"], kind="stable"), df)


# Studies whose summary is a table of their own (the others: `wide_table` of headlines).
CUSTOM: dict[str, Any] = {"memory": memory_table, "limits": limits_table,
                          "density": density_table}
CAPTIONS = {
    "memory": "Per instance, the engine daemons' memory divided among the instances "
              "sampled with them.",
    "limits": "*holds* when used ÷ asked stays at or under 1 (+5 %) with room to go over "
              "(idle host CPU; a larger allocation tried and killed).",
    "density": "Memory = fixed + marginal × instances, fitted over every ramp "
               "(`bench capacity` has the plan); low and top end: the marginal over the "
               "lowest and highest third of the counts alone.",
}


def _study_blocks(study: str, df: pd.DataFrame, summ: pd.DataFrame,
                  several: bool) -> list[Block]:
    info = study_info(study)
    name = f"{study.replace('/', '_')}.csv"
    table = (CUSTOM[study](df, several) if study in CUSTOM
             else wide_table(summ, df, info.headline, several))
    blocks: list[Block] = []
    if table is not None:
        caption = CAPTIONS.get(study, "Medians; ± is half the 95 % CI, relative to the "
                                      "median; ⚠ an unstable figure.")
        blocks += [("p", caption), *capped(table, name)]
    else:  # a study without a summary of its own: its figures, as many as fit
        blocks += capped(medians_table(summ, several, _in_ram(df)), name)
    if study == "density":
        return blocks + _csv(name, _per_count(df), "The full table per instance count, "
                                                   "with 95 % CIs")
    return blocks + _csv(name, summ, "Every figure of the study with its 95 % CI")


def _claims_blocks(t: pd.DataFrame, charts: Mapping[str, Any], several: bool
                   ) -> list[Block]:
    blocks: list[Block] = [("h2", "Seed claims")]
    if t.empty:
        blocks.append(("p", "No claim could be tested: they need backends whose metadata "
                            "declares `kind` container and vm (or process), measured on "
                            "the same host, with the metric the claim is about."))
        return blocks
    blocks.append(("p", "Ratio of medians A / B with its 95 % CI (two-sample bootstrap). "
                        "The verdict reads the CI: *holds* when all of it is on the "
                        "claimed side of 1, *does not hold* when all of it is on the "
                        "other side or within the band of no meaningful difference, "
                        "*inconclusive* otherwise; *inconclusive: failures* when more "
                        f"than {FAILURE_LIMIT * 100:g} % of a cell's samples failed "
                        "(its figures are over the ones that survived; \"n ok / n tried\" "
                        "marks every cell with a failure). Limits: A is what was used, B "
                        "the limit asked."))
    s = claims_mod.summary(t)
    blocks.append(("ul", [
        f"{r['text']}" + (f" ({r['dataset']})" if several else "") + ": "
        + ", ".join(f"{v} {r[v]}" for v in claims_mod.VERDICTS if r[v])
        for r in s.to_dict("records")]))
    blocks += [("chart", charts[n]) for n in ("claims", "claims_io") if n in charts]
    # Fewer rows per claim when several datasets each have theirs (the page stays short).
    per = max(3, PER_CLAIM // t["dataset"].nunique())
    shown = _exceptions_first(t, per)
    blocks.append(("table", claims_table(shown, several)))
    if len(shown) < len(t):
        blocks.append(("p", f"{len(t) - len(shown)} more pairs (at most {per} per claim"
                            + (" and dataset" if several else "") + " are shown, those that "
                            "do not hold first) are in [claims.csv](claims.csv)."))
    blocks.append(("csv", ("claims.csv", t)))
    return blocks


def content(docs: Sequence[Loaded], df: pd.DataFrame, charts: Mapping[str, Any],
            verdicts: pd.DataFrame | None = None) -> list[Block]:
    """The report's blocks; `verdicts`: `claims.evaluate(df)`, if the caller has it."""
    from harness.report import apps  # it builds on this module's tables

    sets = data.datasets(df)
    several = len(sets) > 1
    summ = _ordered(tables.summary(df), df)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        ("h1", "cvbench report"),
        ("p", f"{len(docs)} result file(s), {len(df)} samples, "
              f"{len(sets)} dataset(s) (host, date): {', '.join(sets) or 'none'}. "
              f"Generated {now}. Medians with a bootstrap 95 % confidence interval; "
              "a difference whose CI includes no change is not a difference."),
    ]
    warns = _warnings(docs, df, summ)
    if warns:
        blocks += [("h2", "Read this first"), ("ul", [f"⚠ {w}" for w in warns])]
    blocks += _claims_blocks(claims_mod.evaluate(df) if verdicts is None else verdicts,
                             charts, several)

    studies = [s for s in dict.fromkeys(data.study_of(m) for m in df["metric"])
               if s not in apps.APPS]  # the application section has them
    for study in sorted(studies, key=lambda s: (list(STUDIES).index(s)
                                                if s in STUDIES else 99, s)):
        info = study_info(study)
        blocks.append(("h2", f"{info.title}: {info.question}"))
        blocks += [("chart", charts[n]) for n in info.charts if n in charts]
        blocks += _study_blocks(study, df, summ[summ["metric"].map(data.study_of) == study],
                                several)
    blocks += apps.blocks(docs, df, summ, charts, several)

    if several:
        blocks.append(("h2", "Side by side: datasets compared"))
        blocks.append(("p", f"Each dataset against the first ({sets[0]}): ratio of medians "
                            "new / first with its 95 % CI; ✓ when the CI excludes 1."))
        for k, new in enumerate(sets[1:], 2):
            r = tables.ratios(df, sets[0], new)
            if r.empty:
                continue
            r = r.sort_values("changed", ascending=False, kind="stable")
            rows = [[str(x["backend"]), str(x["variant"]), str(x["metric"]),
                     format_value(x["base"], str(x["unit"])),
                     format_value(x["new"], str(x["unit"])), f"{x['ratio']:.3g}×",
                     f"{x['ratio_lo']:.3g}× – {x['ratio_hi']:.3g}×",
                     f"⚠ not like for like: {x['unlike']}" if x["unlike"]
                     else "✓" if x["changed"] else ""] for x in r.to_dict("records")]
            name = f"side-by-side-{k}.csv"
            blocks += [("h3", f"{new} vs {sets[0]}"),
                       *capped(Table(["backend", "variant", "metric", sets[0], new,
                                      "ratio", "95 % CI", "changed"], rows, "lllrrrrl"), name),
                       ("csv", (name, r))]

    blocks.append(("h2", "Hosts, runs and backends"))
    blocks += _dataset_blocks(docs, df)
    return blocks


# --- Markdown -------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[Block], formats: Sequence[str]) -> str:
    lines: list[str] = []
    prefer = next((f for f in ("png", "svg") if f in formats), None)
    for kind, x in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + x, ""]
        elif kind == "p":
            lines += [x, ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in x] + [""]
        elif kind == "table":
            align = x.align.ljust(len(x.columns), "l")
            lines.append("| " + " | ".join(_md_cell(c) for c in x.columns) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in x.rows]
            lines.append("")
        elif kind == "chart":
            if prefer:
                lines += [f"![{x.title}]({x.name}.{prefer})", ""]
            else:
                lines += [f"{x.title}: " + ", ".join(f"[{p.suffix[1:]}]({p.name})"
                                                     for p in x.paths), ""]
    return "\n".join(lines).rstrip() + "\n"


# --- HTML -----------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;vertical-align:top}th{background:#f3f3f3}
td[style*=right]{font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1.5em 0}figure img{width:100%;max-width:1000px;height:auto;border:1px solid #eee}
li{margin:.3em 0}code{background:#f3f3f3;padding:0 .2em}
.warn{color:#8a4b00}
"""


def _mark_warnings(state: StateCore) -> None:
    """A list item that starts with ⚠ gets class "warn" (the CSS colours it)."""
    tokens = state.tokens
    for i, tok in enumerate(tokens[:-2]):
        # list_item_open, paragraph_open (hidden in a tight list), then the item's text
        if tok.type == "list_item_open" and tokens[i + 2].content.startswith("⚠"):
            tok.attrSet("class", "warn")


def _img(chart: Any) -> str:
    if chart.svg is not None:
        uri = "data:image/svg+xml;base64," + base64.b64encode(chart.svg.encode()).decode()
    elif chart.png is not None:
        uri = "data:image/png;base64," + base64.b64encode(chart.png).decode()
    else:
        return ""
    return (f'<figure><img alt="{html.escape(chart.title)}" src="{uri}">'
            f"<figcaption>{html.escape(chart.title)}</figcaption></figure>")


def to_html(blocks: Sequence[Block]) -> str:
    # Raw HTML stays off: host names, variants and messages come from result files and
    # must show as text. Charts bypass Markdown, whose link check refuses SVG data URIs.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.core.ruler.push("warn_items", _mark_warnings)
    body: list[str] = []
    for is_chart, run in itertools.groupby(blocks, key=lambda b: b[0] == "chart"):
        part = list(run)
        body += [_img(x) for _, x in part] if is_chart else [md.render(markdown(part, ()))]
    title = next((x for k, x in blocks if k == "h1"), "cvbench report")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
