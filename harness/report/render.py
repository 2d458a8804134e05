"""report.md: the host, the image, a table of medians with CI, stability warnings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report import charts, tables
from harness.units import format_value


def build(docs: Sequence[tuple[str, Mapping[str, Any]]], df: pd.DataFrame, out: Path,
          formats: Sequence[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = charts.startup(df, out, formats)
    summ = tables.summary(df)
    lines = ["# cvbench report", ""]
    for path, doc in docs:
        host = doc["host"]
        lines += [f"## {doc['scenario']['name']} — run {doc['run_id']} ({doc.get('created')})",
                  "", f"- file: `{path}`",
                  f"- host: {host.get('hostname')} (id {host.get('id')}): {host.get('cpu_model')}, "
                  f"{host.get('cores')} cores, {host.get('mem_total_gib')} GiB, kernel "
                  f"{host.get('kernel')}, {host.get('distro')}, cgroup {host.get('cgroup_mode')}",
                  f"- image: `{doc['image']['digest']}` ({doc['image'].get('tag')})", ""]
        for b, meta in doc["backends"].items():
            versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
            lines.append(f"- backend `{b}`: {versions}")
        lines.append("")
    lines += ["## Medians with 95 % CI", "",
              "| scenario | backend | variant | metric | n | median | 95 % CI | note |",
              "|---|---|---|---|---:|---:|---|---|"]
    for r in summ.to_dict("records"):
        u = str(r["unit"])
        lines.append(f"| {r['scenario']} | {r['backend']} | {r['variant']} | {r['metric']} | "
                     f"{r['n']} | {format_value(r['median'], u)} | "
                     f"{format_value(r['ci_lo'], u)} – {format_value(r['ci_hi'], u)} | "
                     f"{r['warning']} |")
    lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in written
                                      if p.suffix == ".png"]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return [*written, md]
