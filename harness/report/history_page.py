"""The page of `bench history` (harness.history finds the series and their moves): the
summary, the moves newest first, the machines, one trend chart per series, written as
history.md, a self-contained index.html and history.json."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness import results
from harness.core.units import format_value
from harness.history import (
    WINDOW,
    Differences,
    History,
    Move,
    Point,
    Series,
    format_change,
    what_changed,
)
from harness.report.blocks import Table
from harness.report.charts import Chart
from harness.report.draw import style_context
from harness.report.render import markdown, to_html


def _counted(p: Point, m: Move) -> str:
    """" (4 ok / 6 tried)" when samples of the move's cell failed in that run."""
    a = results.attempts_of(p.doc, m.key.backend, m.key.variant)
    return f" ({a})" if a is not None and a.failed else ""


def blocks(h: History, charts: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The page as report blocks (harness.report.render): summary, moves newest first,
    machines, charts, skipped files."""
    moves = h.moves
    machines = h.machines
    out: list[tuple[str, Any]] = [("h1", "cvbench history")]
    out.append(("p", f"{h.runs} runs, {len(h.series)} series on {len(machines)} "
                     f"machine{'s' if len(machines) != 1 else ''}; **{len(moves)} "
                     f"move{'s' if len(moves) != 1 else ''}** found"
                     + (f"; {len(h.skipped)} files skipped (listed at the end)"
                        if h.skipped else "") + "."))
    out.append(("p", f"A move is a change of a figure's level between two runs of one "
                     f"machine: the most likely split of a stretch of runs (Pettitt's rank "
                     f"statistic on the run medians), kept when `bench compare`'s decision "
                     f"holds between up to {WINDOW} runs on either side (Mann-Whitney p < "
                     f"{h.alpha:g}, the 95 % CI of the ratio excludes 1, the change exceeds "
                     f"{h.threshold:.0%} and the run-to-run noise band). Each is annotated "
                     f"with what differs between the last run before it and the first after "
                     f"it."))
    out.append(("h2", "Moves, newest first"))
    if moves:
        rows = []
        for i, m in enumerate(moves, 1):
            icon = f"**{m.verdict}**"
            d = m.decision
            rows.append([f"M{i}", icon, m.after.when.strftime("%Y-%m-%d %H:%M"),
                         f"{machines[m.key.hardware].get('hostname', '?')} "
                         f"({m.key.hardware[:8]})", m.key.cell,
                         f"{format_change(d.ratio)} "
                         f"({format_change(d.lo)} … {format_change(d.hi)})",
                         f"{format_value(m.before.median, m.key.unit)}{_counted(m.before, m)} → "
                         f"{format_value(m.after.median, m.key.unit)}{_counted(m.after, m)}",
                         f"run {m.index + 1} ({m.runs_before}+{m.runs_after} runs)",
                         what_changed(m)])
        out.append(("table", Table(["", "verdict", "first run after", "machine", "series",
                                    "change (95 % CI)", "run medians", "at", "what changed"],
                                   rows, "lllllrrll")))
    else:
        out.append(("p", "No move: every series stayed within its noise band and the "
                         "threshold."))
    out.append(("h2", "Machines"))
    rows = []
    for hw, host in machines.items():
        ss = [s for s in h.series if s.key.hardware == hw]
        runs = {p.doc.run_id: p.when for s in ss for p in s.points}
        rows.append([hw, ", ".join(sorted({n for s in ss for n in s.hostnames})),
                     str(host.get("cpu_model", "?")), str(host.get("cores", "?")),
                     f"{host.get('mem_total_gib', '?')} GiB", str(host.get("arch", "?")),
                     str(len(runs)), min(runs.values()).strftime("%Y-%m-%d"),
                     max(runs.values()).strftime("%Y-%m-%d")])
    out.append(("table", Table(["hardware id", "hostname", "CPU", "cores", "memory", "arch",
                                "runs", "first", "last"], rows, "lllrrlrll")))
    if h.failures:
        out.append(("h2", "Runs with failed samples"))
        out.append(("p", "A point of these cells is the median of the samples that "
                         "succeeded; the result file keeps each failure's reason and output."))
        out.append(("table", Table(
            ["run", "machine", "scenario", "cell", "samples", "failed"],
            [[f"{p.when:%Y-%m-%d %H:%M} ({p.doc.run_id})",
              str(p.doc.host.get("hostname", "?")), str(p.doc.scenario_name),
              a.backend + ("" if a.variant == "default" else f" [{a.variant}]"), str(a),
              "; ".join(f"{n}× {r}" for r, n in a.reasons)] for p, a in h.failures])))
    quiet = [s for s in h.series if s.note]
    if quiet:
        out.append(("p", "Not searched for moves: " + "; ".join(
            f"{s.key.cell} on {s.key.hardware[:8]} ({s.note})" for s in quiet) + "."))
    if charts:
        out.append(("h2", "Trends"))
        out.append(("p", "Each point is one run: the median of its samples with its "
                         "95 % CI; the thin steps are the level between moves; a dashed "
                         "line marks a move (M1 is the newest). Each machine is its own "
                         "line; a kernel or engine upgrade stays on it."))
        out += [("chart", c) for c in charts.values()]
    if h.skipped:
        out.append(("h2", "Skipped files"))
        out.append(("ul", [f"⚠ {line}" for line in h.skipped]))
    return out


MACHINE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def chart_groups(h: History) -> dict[tuple[str, str, str, str], list[Series]]:
    """One chart per (scenario, metric, variant, unit): a panel per backend, a line per
    machine."""
    out: dict[tuple[str, str, str, str], list[Series]] = {}
    for s in h.series:
        out.setdefault((s.key.scenario, s.key.metric, s.key.variant, s.key.unit),
                       []).append(s)
    # Charts with moves first, then by name.
    return dict(sorted(out.items(), key=lambda kv: (not any(s.moves for s in kv[1]), kv[0])))


def draw(h: History, out: Path, style: str = "paper") -> dict[str, Any]:
    """Trend charts into `out` (PNG), kept in memory for the page; name -> Chart."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    labels = {id(m): f"M{i}" for i, m in enumerate(h.moves, 1)}
    colours = {hw: MACHINE_COLOURS[i % len(MACHINE_COLOURS)]
               for i, hw in enumerate(h.machines)}
    charts: dict[str, Any] = {}
    with style_context(style) as st:
        for (scen, metric, variant, unit), group in chart_groups(h).items():
            backends = sorted({s.key.backend for s in group})
            fig = _figure(st, len(backends))
            axes = fig.subplots(len(backends), 1, sharex=True, squeeze=False)[:, 0]
            for ax, backend in zip(axes, backends, strict=True):
                for s in (s for s in group if s.key.backend == backend):
                    _draw_series(ax, s, colours[s.key.hardware], labels, h.machines,
                                 h.diffs)
                emu = any(s.emulated for s in group if s.key.backend == backend)
                ax.set_title(backend + (" (TCG, emulated)" if emu else ""), loc="left",
                             fontsize="medium")
                meds = [p.median for s in group if s.key.backend == backend for p in s.points]
                if min(meds) > 0 and max(meds) / min(meds) > 20:  # levels apart: log
                    ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(
                    lambda v, _, u=unit: format_value(v, u)))
                ax.grid(True, axis="y")
                ax.legend(loc="upper left", fontsize="small", frameon=False)
            loc = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
            axes[-1].xaxis.set_major_locator(loc)
            axes[-1].xaxis.set_major_formatter(
                mdates.ConciseDateFormatter(loc))  # type: ignore[no-untyped-call]
            v = "" if variant == "default" else f" [{variant}]"
            fig.suptitle(f"{scen} · {metric}{v}", fontweight="bold", x=0.01, ha="left")
            name = "trend-" + "-".join(x.replace("/", "_").replace(" ", "_")
                                       for x in (scen, metric, variant))
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=st.dpi)
            path = out / f"{name}.png"
            path.write_bytes(buf.getvalue())
            charts[name] = Chart(name, f"{scen} · {metric}{v}", (path,), None,
                                 buf.getvalue())
    return charts


def _figure(st: Any, panels: int) -> Any:
    from matplotlib.figure import Figure

    w, h = st.size
    return Figure(figsize=(w, max(h * 0.6, 1.0 + 2.0 * panels)), dpi=st.dpi,
                  layout="constrained")


def _draw_series(ax: Any, s: Series, colour: str, labels: Mapping[int, str],
                 machines: Mapping[str, Mapping[str, Any]], diffs: Differences) -> None:
    x = [p.when for p in s.points]
    med = np.asarray([p.median for p in s.points])
    err = np.abs(np.asarray([[p.median - p.lo, p.hi - p.median] for p in s.points]).T)
    host = machines[s.key.hardware].get("hostname", "?")
    ax.errorbar(x, med, yerr=err, fmt="o", ms=3.5, color=colour, ecolor=colour,
                elinewidth=0.8, capsize=1.5, label=f"{host} ({s.key.hardware[:8]})")
    # The level between moves: the median of the run medians of each stretch.
    cuts = [0, *(m.index for m in s.moves), len(s.points)]
    for a, b in itertools.pairwise(cuts):
        level = float(np.median(med[a:b]))
        ax.plot([x[a], x[b - 1]], [level, level], color=colour, lw=1.0, alpha=0.6)
    # What changed on the machine (not the commit: that changes with every run), marked
    # where it happened, so that an upgrade without a move shows too.
    for p, q in itertools.pairwise(s.points):
        changed = sorted({c.what.split(": ")[-1] for c in diffs(p.doc, q.doc,
                          s.key.backend) if c.what != "commit"})
        if changed:
            at = p.when + (q.when - p.when) / 2
            ax.axvline(at, color="#999999", ls=":", lw=0.8)
            ax.annotate(", ".join(changed), (at, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(2, 2), textcoords="offset points", va="bottom", ha="left",
                        color="#666666", fontsize="x-small", rotation=90)
    for m in s.moves:
        at = m.before.when + (m.after.when - m.before.when) / 2
        c = "#d73027" if m.verdict == "regression" else "#1a9850"
        ax.axvline(at, color=c, ls="--", lw=1.0)
        ax.annotate(f"{labels.get(id(m), '')} {format_change(m.decision.ratio)}", (at, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(3, -2),
                    textcoords="offset points", va="top", ha="left", color=c,
                    fontweight="bold", fontsize="small")


def write(h: History, out: Path, style: str = "paper") -> list[Path]:
    """index.html (self-contained), history.md, history.json and the chart PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    charts = draw(h, out, style)
    page = blocks(h, charts)
    written = [p for c in charts.values() for p in c.paths]
    for name, text in (("history.md", markdown(page, ("png",))), ("index.html", to_html(page)),
                       ("history.json", json.dumps(h.as_json(), indent=1,
                                                   allow_nan=False) + "\n")):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
