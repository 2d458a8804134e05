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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore

from harness import data
from harness.core.units import format_value
from harness.report import apps, charts, presentation, tables
from harness.report import blocks as page
from harness.report import claims as claims_mod
from harness.results import FAILURE_LIMIT, Loaded

PER_CLAIM = 5  # rows per claim in the claims table (exceptions first)


def build(docs: Sequence[Loaded], df: pd.DataFrame, out: Path,
          formats: Sequence[str] = ("png", "svg"), style: str = "paper") -> list[Path]:
    """Write the charts, report.md and index.html into `out`; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    df = data.enrich(df, docs)
    verdicts = claims_mod.evaluate(df)
    drawn = charts.render_all(df, out, style, formats, inline=True, claims_table=verdicts)
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


def claims_table(t: pd.DataFrame, several: bool) -> page.Table:
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
    return page.Table(cols, rows, "l" * (len(cols) - 6) + "rrrrll")


def _exceptions_first(t: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most `n` rows per dataset and claim: those that do not hold first, then the
    inconclusive ones, then those that hold (the rest are in the CSV)."""
    rank = {claims_mod.FAILS: 0, claims_mod.INCONCLUSIVE_FAILURES: 1,
            claims_mod.INCONCLUSIVE: 1}
    t = t.assign(_r=t["verdict"].map(lambda v: rank.get(v, 2)), _i=range(len(t)))
    keep = (t.sort_values(["_r", "_i"], kind="stable")
            .groupby(["dataset", "claim"], sort=False).head(n))
    return t.loc[sorted(keep.index, key=list(t.index).index)].drop(columns=["_r", "_i"])


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
    for _, doc in docs:
        if doc.host.get("emulated"):
            out.append(f"{doc.host.get('hostname')} is itself an emulated machine "
                       f"({doc.host['emulated']}): every timing measured there (run "
                       f"{doc.run_id}) is an emulator's, marked \"(TCG, emulated)\".")
    emu = sorted(set(df[df["emulated"].astype(bool) & (df["kind"] == "vm")]["backend"]))
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
            cell = data.ResultCell(a.backend, a.variant, "", "", False).label() + (
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
    ram = sorted({b for _, b in page.in_ram(df)})
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


def _dataset_blocks(docs: Sequence[Loaded], df: pd.DataFrame) -> list[page.Block]:
    blocks: list[page.Block] = []
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
        blocks.append(("table", page.Table(["host", "value"], [[k, str(host[k])] for k in keys
                                                          if k in host])))
        rows = []
        for path, doc in items:
            tag = doc.image.get("tag")
            rows.append([str(doc.scenario_name), doc.run_id, doc.created or "",
                         f"`{doc.image_digest[:16]}…`" + (f" ({tag})" if tag else ""),
                         f"`{path}`"])
        blocks.append(("table", page.Table(["scenario", "run", "created", "image digest", "file"],
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
        blocks.append(("table", page.Table(["backend", "kind", "accel", "versions"], rows)))
        prot = protections_table(backends)
        if prot is not None:
            blocks += [("p", "Protections each backend applies (its own record; an engine's "
                             "is what it reports):"), ("table", prot)]
    return blocks


def protections_table(backends: Mapping[str, Mapping[str, Any]]) -> page.Table | None:
    """One row per protection ("what: how" lines of the backends' `protections`), one
    column per backend that records any; None when none does."""
    cols = sorted(b for b in backends if backends[b].get("protections"))
    if not cols:
        return None
    by_backend = {b: dict(str(line).partition(": ")[::2] for line in backends[b]["protections"])
                  for b in cols}
    whats = list(dict.fromkeys(w for b in cols for w in by_backend[b]))
    return page.Table(["protection", *cols],
                 [[w, *(by_backend[b].get(w, "—") for b in cols)] for w in whats])


def _study_blocks(study: str, df: pd.DataFrame, summ: pd.DataFrame,
                  several: bool) -> list[page.Block]:
    """A study's table (its own, or one of its headline figures), and its CSV."""
    pres = presentation.of(study)
    name = f"{study.replace('/', '_')}.csv"
    table = (pres.table(df, several) if pres.table is not None
             else page.wide_table(summ, df, pres.headline, several))
    blocks: list[page.Block] = []
    if table is not None:
        blocks += [("p", pres.caption), *page.capped(table, name)]
    else:  # a study without a summary of its own: its figures, as many as fit
        blocks += page.capped(page.medians_table(summ, several, page.in_ram(df)), name)
    if pres.full is not None:
        full, what = pres.full
        return blocks + page.csv_blocks(name, full(df), what)
    return blocks + page.csv_blocks(name, summ, "Every figure of the study with its 95 % CI")


def _claims_blocks(t: pd.DataFrame, charts: Mapping[str, Any], several: bool
                   ) -> list[page.Block]:
    blocks: list[page.Block] = [("h2", "Seed claims")]
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
            verdicts: pd.DataFrame | None = None) -> list[page.Block]:
    """The report's blocks; `verdicts`: `claims.evaluate(df)`, if the caller has it."""
    sets = data.datasets(df)
    several = len(sets) > 1
    summ = page.ordered(tables.summary(df), df)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[page.Block] = [
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

    applications = presentation.apps()  # the application section has them
    studies = [s for s in dict.fromkeys(data.study_of(m) for m in df["metric"])
               if s not in applications]
    for pres in sorted(map(presentation.of, studies), key=lambda p: (p.rank, p.study)):
        blocks.append(("h2", f"{pres.title}: {pres.question}"))
        blocks += [("chart", charts[n]) for n in pres.charts if n in charts]
        blocks += _study_blocks(pres.study, df,
                                summ[summ["metric"].map(data.study_of) == pres.study], several)
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
                       *page.capped(page.Table(["backend", "variant", "metric", sets[0], new,
                                      "ratio", "95 % CI", "changed"], rows, "lllrrrrl"), name),
                       ("csv", (name, r))]

    blocks.append(("h2", "Hosts, runs and backends"))
    blocks += _dataset_blocks(docs, df)
    return blocks


# --- Markdown -------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[page.Block], formats: Sequence[str]) -> str:
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


def to_html(blocks: Sequence[page.Block]) -> str:
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
