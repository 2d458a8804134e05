"""`bench`: run scenarios, inspect backends, report, clean up.

Exit codes: 0 success; 1 a run in which a cell failed; 2 a usage error (bad scenario,
unknown backend, missing file: one line naming the file and field); 3 a backend that is
not usable here (with the reason and the fix); 130 interrupted.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from harness import results, scenario, studies
from harness.cli.live import RichReporter, print_summary
from harness.cli.params import SIZE, ChartFile, KeyValue, MountSpec, NameCount, Seconds, Size
from harness.cli.term import err, out, print_table
from harness.core.errors import EXIT_USAGE, BenchError, CleanupError, UsageError
from harness.core.probes import kernel_limits
from harness.core.units import format_value
from harness.fleet import cli as fleet_cli
from runtimes import registry
from runtimes.base import Leftover, Mount


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cvbench")
def cli() -> None:
    """cvbench: the same workload under host, ns, Docker, Podman and VMs, measured alike.

    Start with `bench doctor` (what works here), `bench list` (scenarios), then
    `bench run startup` and `bench report results/runs/<file>.json`.
    """


@cli.command()
@click.argument("scenario_name", metavar="SCENARIO", required=False)
@click.option("--backends", help="Comma-separated backends (default: the scenario's list, "
              "skipping those not available here).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/runs"), show_default=True, help="Directory for results.")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="Continue an interrupted or "
              "killed run from its journal/result in --out (SCENARIO is then not needed).")
@click.option("--seed", type=int, help="Seed of the round order (default: random).")
@click.option("--warmups", type=click.IntRange(0), help="Override sampling.warmups.")
@click.option("--min-samples", type=click.IntRange(1), help="Override sampling.min_samples.")
@click.option("--max-samples", type=click.IntRange(1), help="Override sampling.max_samples.")
@click.option("--time-budget", type=click.FloatRange(min=1), help="Override the run's "
              "time budget (s).")
@click.option("--copies", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Run every cell this many times, interleaved (2: A/A, `bench calibrate`).")
@click.option("--compose", "compose_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A stack scenario (e.g. stack) with the services of this compose file, "
                   "interpolated from the environment over a .env beside it; its build: "
                   "contexts are built for the run (the supported subset: docs/stacks.md).")
def run(scenario_name: str | None, backends: str | None, out_dir: Path,
        resume_id: str | None, seed: int | None, warmups: int | None,
        min_samples: int | None, max_samples: int | None, time_budget: float | None,
        copies: int, compose_file: Path | None) -> None:
    """Run SCENARIO (a name from `bench list` or a path to a .toml file).

    Ctrl-C (or SIGTERM) stops after the current sample, removes live instances and writes
    the samples taken; `--resume RUN_ID` continues such a run, or one that was killed.
    """
    from harness import bookkeeping, session

    t_begin = time.monotonic()
    resumed = None
    if resume_id:
        if copies != 1:
            raise click.UsageError("--copies cannot be combined with --resume")
        if scenario_name or backends:
            raise click.UsageError("--resume takes the scenario and backends from the run")
        resumed = bookkeeping.find_resumable(out_dir, resume_id)
        scen = scenario.from_header(resumed.header)
    elif scenario_name:
        scen = scenario.load(scenario_name)
    else:
        raise click.UsageError("give a SCENARIO, or --resume RUN_ID")
    if compose_file is not None:
        if resumed:
            raise click.UsageError("--resume takes the stack from the run, not --compose")
        from harness import compose

        scen = compose.read(compose_file, scen, session.engine_lookup)
    scen = session.overrides(scen, warmups=warmups, min_samples=min_samples,
                             max_samples=max_samples, time_budget=time_budget)
    done = session.Session(scen, _split(backends), out_dir, RichReporter(), seed=seed,
                           copies=copies, resume=resumed).execute()
    doc = results.load_result(done.result)
    loaded = [(str(done.result), doc)]
    print_summary(results.with_attempts(results.frame(loaded), loaded), order=done.backends)
    for problem in done.problems:
        err.print(f"[red]clean-up problem:[/] {problem}")
    for c in done.failed:
        err.print(f"[red]cell {escape(c.label)} failed[/] after {c.samples} samples "
                  f"({c.failures} failures); see the events in the result")
    for a in doc.attempts():
        if a.failed:  # the table's figures are over the samples that succeeded: say why not all
            from harness import data

            why = "; ".join(f"{n}× {r}" for r, n in a.reasons)
            cell = data.ResultCell(a.backend, a.variant, "", "", False).label()
            err.print(f"[yellow]{escape(cell)}[/]: {a}; failed: {escape(why)}")
    # Plain print: these lines are read by scripts (make bench), never wrapped.
    final = done.result
    print(f"result: {final}")
    print(f"pyperf: {final.with_name(final.name.removesuffix('.json') + '.pyperf.json')}")
    err.print(f"took {time.monotonic() - t_begin:.1f} s ({done.outcome.rounds} rounds)")
    if done.outcome.interrupted:
        print(f"interrupted: the samples taken are in the result above; continue with: "
              f"bench run --resume {done.run_id} --out {out_dir}", file=sys.stderr)
        sys.exit(130)
    if done.failed:
        sys.exit(1)


@cli.command("list")
def list_() -> None:
    """List scenarios and backends."""
    t = Table(title="scenarios")
    t.add_column("name")
    t.add_column("study")
    t.add_column("description")
    t.add_column("file")
    for name, path in sorted(scenario.available().items()):
        try:
            s = scenario.load(str(path))
            t.add_row(name, s.study, s.description, str(path))
        except BenchError as e:
            t.add_row(name, "?", f"[red]{e}[/]", str(path))
    out.print(t)
    out.print("backends: " + ", ".join(registry.all_names()))


@cli.command()
def doctor() -> None:
    """Say, per backend, whether it is available here, why not, and the fix."""
    t = Table(title="backends on this host")
    for col in ("backend", "available", "why / fix", "versions"):
        t.add_column(col)
    for name in registry.all_names():
        try:
            a = registry.get(name).availability()
        except BenchError as e:
            t.add_row(name, "[red]no[/]", str(e), "")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in a.versions.items())
        detail = ", ".join(f"{k}: {v}" for k, v in a.details.items())
        if a.ok:
            t.add_row(name, "[green]yes[/]", detail, versions)
        else:
            t.add_row(name, "[red]no[/]", f"{a.reason}" + (f"\nfix: {a.fix}" if a.fix else ""),
                      versions)
    out.print(t)
    tools = Table(title="load generators and host tools the studies run")
    for col in ("program", "installed", "package", "studies"):
        tools.add_column(col)
    for prog, (pkg, users) in studies.all_tools().items():
        found = shutil.which(prog)
        tools.add_row(prog, f"[green]{found}[/]" if found else "[red]no[/]", pkg,
                      ", ".join(users))
    out.print(tools)


@cli.command()
@click.argument("result_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/report"), show_default=True)
@click.option("--format", "formats", default="png,svg", show_default=True,
              help="Comma-separated chart formats (png, svg, pdf).")
@click.option("--style", type=click.Choice(["paper", "slides"]), default="paper",
              show_default=True, help="paper: compact figures; slides: 16:9, large type.")
@click.option("--all", "keep_all", is_flag=True,
              help="From a directory, keep every result (default: the newest of each "
                   "scenario per host).")
def report(result_files: tuple[Path, ...], out_dir: Path, formats: str, style: str,
           keep_all: bool) -> None:
    """Write charts, report.md, CSVs and a self-contained index.html for RESULT_FILES
    (files or directories).

    From a directory, the newest result of each scenario per host is reported (--all:
    every result); files named on the command line are always reported. Several hosts,
    or one study run on several dates, are shown side by side."""
    from harness import data
    from harness.report import render

    fmts = _split(formats) or ["png"]
    bad = [f for f in fmts if f not in ("png", "svg", "pdf")]
    if bad:
        raise click.BadParameter(f"unknown format {bad[0]!r}", param_hint="--format")
    docs = results.load_all(result_files)
    if not keep_all:
        in_dirs = {str(p) for d in result_files if d.is_dir() for p in results.expand(d)}
        picked = data.latest([x for x in docs if x[0] in in_dirs])
        dropped = sum(x[0] in in_dirs for x in docs) - len(picked)
        if dropped:
            click.echo(f"report: the newest result of each scenario per host; {dropped} "
                       "older result(s) left out (--all keeps them)", err=True)
        keep = {id(x) for x in picked}
        docs = [x for x in docs if x[0] not in in_dirs or id(x) in keep]
    df = results.frame(docs)
    written = render.build(docs, df, out_dir, fmts, style)
    for w in written:
        print(w)


@cli.command()
@click.argument("result_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host-memory", required=True, type=Size(positive=True), metavar="SIZE",
              help="Memory of the host to plan for, e.g. 64G.")
@click.option("--host-cpus", required=True, type=click.IntRange(1), metavar="N",
              help="Its CPUs (scales the count at which the start-latency SLO is reached).")
@click.option("--reserve", type=click.FloatRange(0, 100, max_open=True), default=10.0,
              show_default=True, metavar="PCT", help="Percent of memory kept for the OS.")
@click.option("--workload-memory", type=SIZE, default="0", metavar="SIZE", show_default=True,
              help="Memory the real workload adds per instance, e.g. 50M.")
@click.option("--slo-start", type=Seconds(), metavar="P95",
              help="Start-latency SLO on the p95, e.g. 2s.")
@click.option("--basis", type=click.Choice(["pss+kernel", "pss", "cgroup", "host"]),
              default="pss+kernel",
              show_default=True, help="What memory the fit uses (see `harness/capacity/fit.py`).")
@click.option("--limit", "limits", multiple=True, type=NameCount(), metavar="NAME=VALUE",
              help="A kernel limit of the host to plan for (default: the measured host's), "
                   f"e.g. pid_max=4194304; repeatable. Names: {', '.join(kernel_limits.BY_NAME)}.")
@click.option("--max-extrapolation", type=click.FloatRange(1), default=5.0,
              show_default=True, metavar="FACTOR",
              help="Refuse a plan more than FACTOR times the measured instances.")
@click.option("--allow-extrapolation", is_flag=True,
              help="Plan beyond --max-extrapolation anyway, flagged.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--chart", "chart_file", type=ChartFile(),
              help="Also draw projected instances per host (png, svg or pdf by suffix).")
@click.option("--rate", type=float, metavar="N",
              help="Application results: what each instance serves, in the study's unit "
                   "(req/s, ops/s, tx/s); default: the measured saturation.")
def capacity(result_files: tuple[Path, ...], host_memory: int, host_cpus: int,
             reserve: float, workload_memory: int, slo_start: float | None, basis: str,
             limits: tuple[tuple[str, int], ...], max_extrapolation: float,
             allow_extrapolation: bool, as_json: bool, chart_file: Path | None,
             rate: float | None) -> None:
    """Instances per host from density or application (http, kv, db) RESULT_FILES.

    From density: the memory curve (the marginal per
    instance at 40 and at the top of the measured range, with CI), the kernel limits that
    bind before memory, the start-latency knee and p95, and which limit binds first.
    A plan more than --max-extrapolation times the measured range is refused.

    From an application study's result: how many instances, each serving
    --rate, fit by CPU (the measured throughput per core) and by memory (PSS under load,
    the daemons once), and which binds."""
    import json

    from harness import capacity as cap
    from harness.capacity import apps as app_cap
    from harness.report import capacity as shown
    from harness.report import presentation

    given = dict(limits)
    target = cap.TargetHost(memory=host_memory, cpus=host_cpus, reserve=reserve / 100,
                            workload_memory=workload_memory, slo_start=slo_start, basis=basis,
                            limits=given, max_extrapolation=max_extrapolation)
    docs = cap.load(result_files)
    throughput = {name: app.throughput for name, app in presentation.apps().items()}
    if app_cap.is_application(docs, throughput):
        for given_opt, hint in ((chart_file, "--chart"), (slo_start, "--slo-start"),
                                (given, "--limit")):
            if given_opt:
                raise click.BadParameter("density results only", param_hint=hint)
        app_plan = app_cap.plan(docs, target, rate, throughput)
        if as_json:
            print(json.dumps(app_cap.as_json(app_plan), indent=1))
            return
        print_table(shown.app_table(app_plan))
        for cell in app_plan.cells:
            for note in cell.notes:
                out.print(f"  {cell.label}: {note}", markup=False)
        out.print("assumptions:")
        for a in app_plan.assumptions:
            out.print(f"  - {a}")
        return
    if rate is not None:
        raise click.BadParameter("application results only", param_hint="--rate")
    plan = cap.analyse(docs, target)
    if not allow_extrapolation:
        cap.refuse_extrapolation(plan)
    for c in plan.too_far():
        err.print(f"[bold red]EXTRAPOLATED[/]: {c.label}: {c.instances:,.0f} instances "
                  f"planned from {c.max_measured:,} measured ({c.extrapolation:.3g}×, beyond "
                  f"{max_extrapolation:g}×)")
    if as_json:
        print(json.dumps(cap.as_json(plan), indent=1))
    else:
        print_table(shown.table(plan))
        out.print("kernel limits (instances at which each binds):")
        for line in shown.limits_lines(plan):
            out.print(f"  {line}")
        for c in plan.cells:
            for note in ([c.slo_note] if c.slo_note else []) + c.notes:
                out.print(f"  {c.label}: {note}")
        out.print("assumptions:")
        for a in plan.assumptions:
            out.print(f"  - {a}")
    if chart_file is not None:
        err.print(f"chart: {shown.chart(plan, chart_file)}")


@cli.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--run", "only_run", metavar="RUN_ID", help="Only this (dead) run's leftovers.")
def gc_(dry_run: bool, only_run: str | None) -> None:
    """Remove what dead runs left behind (containers, VMs, cgroups, dirs, HAProxy fronts...).

    Runs still in progress (their lock is held) are left alone.
    """
    from harness.bookkeeping import HOOKS, clear_stale_locks, collect, live_runs, others

    live = live_runs()
    if only_run in live:
        raise click.UsageError(f"run {only_run} is still running")
    total = 0
    failed: list[str] = []
    for base, rt in [*((b, registry.get(b, HOOKS)) for b in registry.base_names()),
                     *((o.name, o) for o in others())]:
        try:
            found = collect(rt, live, only_run, dry_run)
        except CleanupError as e:  # the rest was removed; these are still there
            found = [x for x in e.removed if isinstance(x, Leftover)]
            failed += e.failed
            for problem in e.failed:
                err.print(f"[red]{base}[/]: could not remove {problem}")
        except BenchError as e:
            err.print(f"[yellow]{base}[/]: not checked: {e}")
            continue
        for item in found:
            total += 1
            verb = "would remove" if dry_run else "removed"
            out.print(f"{verb} {item.backend} {item.kind} {item.name} (run {item.run_id})")
    if not dry_run:
        clear_stale_locks()
    out.print(f"{total} leftover(s){' found' if dry_run else ' removed'}; "
              f"{len(live)} live run(s) left alone")
    if failed:
        raise CleanupError("bench gc", failed)


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("backend")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--network", type=click.Choice(["none", "bridge", "host"]), default="none",
              show_default=True)
@click.option("--memory", type=SIZE, help="Memory limit, e.g. 32M.")
@click.option("--cpus", type=click.FloatRange(min=0.01), help="CPU limit in cores.")
@click.option("--pids", type=click.IntRange(1), help="Process limit.")
@click.option("--mount", "mounts", multiple=True, type=MountSpec(), metavar="SPEC",
              help="type=bind|volume|tmpfs,source=…,target=…[,readonly][,size=…] (repeatable)")
@click.option("--env", "envs", multiple=True, type=KeyValue(), metavar="KEY=VALUE")
@click.option("--recipe", default="base", show_default=True, help="Image recipe name.")
@click.option("--binary", "binaries", multiple=True, help="Extra host binary in the image.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True)
def exec_(backend: str, command: tuple[str, ...], network: str, memory: int | None,
          cpus: float | None, pids: int | None, mounts: tuple[Mount, ...],
          envs: tuple[tuple[str, str], ...], recipe: str, binaries: tuple[str, ...],
          timeout: float) -> None:
    """Run COMMAND once in the workload image under BACKEND; pass its output and exit
    status through (an OOM-killed command is reported as such and exits 137).

    Example: bench exec ns --network none --memory 32M -- sh -c 'echo hi'
    """
    from harness import session
    from harness.core import image as image_mod
    from runtimes.base import Limits

    registry.check(backend)
    limits = Limits(cpus=cpus, memory=memory, pids=pids)
    img = image_mod.build(image_mod.Recipe(name=recipe, binaries=binaries))
    ex, problems = session.exec_once(backend, command, img, timeout=timeout, env=dict(envs),
                                     limits=limits, network=network, mounts=mounts)
    for problem in problems:
        print(f"bench: exec: clean-up problem: {problem}", file=sys.stderr)
    sys.stdout.buffer.write(ex.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(ex.stderr)
    sys.stderr.flush()
    if ex.oom_killed:
        print(f"bench: exec: {backend}: the command was OOM-killed (memory limit "
              f"{limits.memory} bytes)", file=sys.stderr)
        sys.exit(137)
    sys.exit(ex.code)


@cli.group(invoke_without_command=True)
@click.option("--recipe", help="A recipe image (default: base).")
@click.option("--binary", "binaries", multiple=True, help="Extra host binary (recipe).")
@click.option("--debian", "suite", metavar="SUITE", help="A Debian root filesystem of SUITE "
              "(debootstrap minbase), e.g. bookworm.")
@click.option("--package", "packages", multiple=True, help="Debian package to install "
              "(repeatable; with --debian).")
@click.option("--mirror", help="Debian mirror (with --debian; default deb.debian.org).")
@click.option("--archive", type=click.Path(path_type=Path), help="A docker/podman save "
              "tarball or an OCI image layout (directory or tar).")
@click.option("--engine", help="An image in this engine's store (docker, podman); with --ref.")
@click.option("--ref", help="The image's name:tag or id in --engine's store.")
@click.option("--scenario", "scenario_name", metavar="SCENARIO",
              help="The image of SCENARIO's [workload].")
@click.pass_context
def image(ctx: click.Context, recipe: str | None, binaries: tuple[str, ...],
          suite: str | None, packages: tuple[str, ...], mirror: str | None,
          archive: Path | None, engine: str | None, ref: str | None,
          scenario_name: str | None) -> None:
    """Build (or show the cached) workload image; print its digest and source identity.

    One source: --recipe (the default: base), --debian SUITE [--package P]...,
    --archive PATH, --engine docker|podman --ref REF, or --scenario NAME. A second call
    builds nothing. Subcommands: list, rm, prune, verify, export, import.
    """
    from harness.core import image as image_mod
    from harness.core.debian import DEFAULT_MIRROR

    if ctx.invoked_subcommand:
        return
    given = [n for n, v in (("--recipe", recipe), ("--debian", suite), ("--archive", archive),
                            ("--engine", engine), ("--scenario", scenario_name)) if v]
    if len(given) > 1:
        raise click.UsageError(f"give one source, not {' and '.join(given)}")
    if (engine is None) != (ref is None):
        raise click.UsageError("--engine and --ref go together")
    if packages and not suite:
        raise click.UsageError("--package needs --debian SUITE")
    source: image_mod.Source
    if scenario_name:
        source = scenario.load(scenario_name).workload.image
    elif suite:
        source = image_mod.Debian(suite, packages, mirror or DEFAULT_MIRROR)
    elif archive:
        source = image_mod.Archive(str(archive.resolve()))
    elif engine and ref:
        source = image_mod.EngineRef(engine, ref)
    else:
        source = image_mod.Recipe(recipe or "base", binaries)
    _show_image(_build_image(source))


def _build_image(source: Any) -> Any:
    from harness import session

    t0 = time.monotonic()
    with err.status(f"image: {source.describe()}…") as shown:
        img = session.build_image(source, lambda note: shown.update(f"image: {note[:110]}"))
    took = time.monotonic() - t0
    err.print(f"built in {img.build_seconds:.1f} s" if img.build_seconds is not None
              else f"cached: nothing built ({took:.2f} s)")
    return img


def _show_image(img: Any) -> None:
    ident = dict(img.identity)
    packages = ident.pop("packages", None)
    ident.pop("normalised", None)
    lines = [img.tag, f"sha256:{img.digest}  (what runs: the image + cvbench's init layer)",
             f"image:  sha256:{img.rootfs_digest}  (as given)",
             f"init:   sha256:{img.init_digest}  (adds /{', /'.join(img.init_paths)})",
             f"source: {img.source.describe()}"]
    lines += [f"  {k}: {v}" for k, v in sorted(ident.items()) if v not in (None, "", [], {})]
    if packages:
        lines.append(f"  packages ({len(packages)}): "
                     + ", ".join(f"{k}={v}" for k, v in sorted(packages.items())))
    config = {k: v for k, v in img.config.as_dict().items() if v and k != "labels"}
    if config:
        lines.append("defaults: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    lines += [f"tar: {img.tar}", f"rootfs: {img.rootfs}", f"size: {img.size} bytes"]
    print("\n".join(lines))


@image.command("list")
def image_list() -> None:
    """The cached images: digest, name, source, size, when built."""
    import json

    from harness.core import image as image_mod

    table = Table("digest", "name", "source", "size", "built", box=None)
    for path in image_mod.listing():
        d = json.loads((path / "image.json").read_text())
        src = image_mod.source_from_dict(d["source"])
        table.add_row(d["digest"][:12], d["name"], src.describe(),
                      f"{d['size'] / 2**20:.1f} MiB", d.get("created", "?"))
    out.print(table)


@image.command("rm")
@click.argument("digests", nargs=-1, required=True, metavar="DIGEST...")
def image_rm(digests: tuple[str, ...]) -> None:
    """Remove cached images (a unique digest prefix will do). What engines imported
    (docker/podman images cvbench/...) and VM disks built from them stay."""
    from harness.core import image as image_mod

    for d in digests:
        img = image_mod.remove(d)
        print(f"removed {img.tag} sha256:{img.digest}")


@image.command("prune")
def image_prune() -> None:
    """Remove what no cached image needs: stale source keys, old Debian base stages,
    temp dirs of builds that died."""
    from harness.core import image as image_mod

    gone = image_mod.prune()
    print("\n".join(f"removed {g}" for g in gone) or "nothing to prune")


@image.command("verify")
@click.argument("digests", nargs=-1, metavar="[DIGEST...]")
@click.option("--rebuild", is_flag=True, help="Repair an image that does not match: its "
              "rootfs/ unpacked again from a sound tar, else built again from its source.")
def image_verify(digests: tuple[str, ...], rebuild: bool) -> None:
    """Fully check cached images (all, or DIGEST...): image.tar hashes to the digest and
    the unpacked rootfs/ holds exactly what it holds. One line per image; a mismatch
    exits 1 (with --rebuild: a rootfs/ is unpacked again from its sound tar, an image
    whose tar does not match is removed and built again from its source)."""
    from harness.core import image as image_mod
    from harness.core.errors import ImageError

    images = [image_mod.load(d) for d in digests] or \
        [image_mod.load(p.name) for p in image_mod.listing()]
    bad: list[str] = []
    for img in images:
        problem = image_mod.problem(img)
        if problem is None:
            print(f"ok {img.tag} sha256:{img.digest}")
            continue
        print(f"mismatch {img.tag} sha256:{img.digest}: {problem}")
        if not rebuild:
            bad.append(img.digest[:12])
            continue
        try:
            image_mod.check(img)  # a sound tar: its rootfs/ is unpacked again
            print(f"{img.tag}: unpacked again from its tar")
        except ImageError:  # the tar itself: built again from the source
            image_mod.remove(img.digest)
            new = _build_image(img.source)
            print(f"rebuilt {new.tag} sha256:{new.digest}"
                  + ("" if new.digest == img.digest else
                     f" (a new digest: its source no longer gives sha256:{img.digest[:12]})"))
    if bad:
        raise ImageError(f"{len(bad)} of {len(images)} cached images do not match; fix: "
                         f"bench image verify --rebuild {' '.join(bad)}")


@image.command("export")
@click.argument("digest")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def image_export(digest: str, file: Path) -> None:
    """Write image DIGEST (as given, without cvbench's init layer) to FILE as a
    `docker save` archive; `bench image import FILE` on another host gives the same
    digests (and `docker load -i FILE` loads it)."""
    from harness.core import image as image_mod

    img = image_mod.load(digest)
    sha = image_mod.export(img, file)
    print(f"{file}: {img.tag} sha256:{img.digest} (archive sha256:{sha.removeprefix('sha256:')})")


@image.command("import")
@click.argument("file", type=click.Path(path_type=Path))
def image_import(file: Path) -> None:
    """Import FILE (an archive `bench image export`, docker or podman save wrote, or an
    OCI layout) into the cache; print its digest."""
    from harness.core import image as image_mod

    _show_image(_build_image(image_mod.Archive(str(file.resolve()))))


# --- regression tracking: compare, calibrate, baseline ----------------------------------

@cli.command("compare")
@click.argument("base_spec", metavar="BASE")
@click.argument("new_spec", metavar="NEW")
@click.option("--threshold", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Smallest change (%) that may count as a regression or improvement.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.01, show_default=True,
              help="Significance level (Mann-Whitney U; also sets the noise band).")
@click.option("--metric", "metric_globs", default="*", show_default=True,
              help="Comma-separated globs of the metrics to compare, e.g. 'startup.total'.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the comparison as JSON here.")
@click.option("--allow-cross-host", is_flag=True,
              help="Compare results from different machines (hardware ids; indicative only).")
@click.option("--baselines", "baselines_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/baselines"), show_default=True,
              help="Where calibrated noise bands are looked up (<host id>/<scenario>.json).")
def compare_(base_spec: str, new_spec: str, threshold: float, alpha: float,
             metric_globs: str, markdown_path: Path | None, json_path: Path | None,
             allow_cross_host: bool, baselines_dir: Path) -> None:
    """Did NEW regress against BASE? Each is a result file, a directory of results or a
    quoted glob. Exit 0: no regression; 1: a regression; 2: bad input (or hosts differ).

    Cells (scenario, backend, variant, metric) are matched by name. Per cell: the ratio of
    medians NEW/BASE with its bootstrap 95 % CI, a Mann-Whitney p-value and a verdict. A
    cell regresses only when p < alpha, the CI excludes 1 and the change exceeds both
    --threshold and the cell's noise band (from `bench calibrate` and/or several runs per
    side). Whether higher is worse is decided by the unit: rates (B/s, iops) are better
    when higher; times and bytes when lower.
    """
    from harness import compare as cmp

    c = cmp.compare(cmp.load_set(base_spec), cmp.load_set(new_spec),
                    threshold=threshold / 100, alpha=alpha,
                    metrics=_split(metric_globs) or ["*"],
                    allow_cross_host=allow_cross_host, baselines_dir=baselines_dir,
                    base_label=base_spec, new_label=new_spec)
    t = Table(title=c.headline())
    for col in ("verdict", "cell", "base", "new", "ratio (95 % CI)", "p", "band", "why"):
        t.add_column(col, justify="right" if col in ("base", "new", "p") else "left")
    style = {"regression": "bold red", "improvement": "green"}
    for cell in c.cells:
        d = cell.decision
        ratio = "—" if d.ratio != d.ratio else f"{d.ratio:.3f} ({d.lo:.3f}–{d.hi:.3f})"
        t.add_row(f"[{style.get(d.verdict, '')}]{d.verdict}[/]" if d.verdict in style
                  else d.verdict, cell.label,
                  " ".join(filter(None, [format_value(cell.median_base, cell.unit),
                                         cell.attempts("base")])),
                  " ".join(filter(None, [format_value(cell.median_new, cell.unit),
                                         cell.attempts("new")])), ratio,
                  "—" if d.p != d.p else f"{d.p:.2g}",
                  "?" if cell.band != cell.band else f"{cell.band:.0%}", d.why)
    out.print(t)
    for n in c.notes:
        err.print(f"[yellow]note:[/] {n}")
    cmp.write_outputs(c, markdown_path, json_path)
    sys.exit(c.exit_code)


@cli.command("history")
@click.argument("result_paths", metavar="RESULTS...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where index.html, history.md, history.json and the charts go.")
@click.option("--scenario", help="Only this scenario (other files are skipped, one line each).")
@click.option("--metric", "metric_globs", default="*", show_default=True,
              help="Comma-separated globs of the metrics, e.g. 'startup.total'.")
@click.option("--backend", "backend_globs", default="*", show_default=True,
              help="Comma-separated globs of the backends.")
@click.option("--host", help="Only this machine: a hardware id, host id or hostname.")
@click.option("--threshold", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Smallest change (%) that may count as a move.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.01, show_default=True, help="Significance level, as bench compare's.")
@click.option("--min-runs", type=click.IntRange(1), default=2, show_default=True,
              help="Runs needed on each side of a move (1 lets a single run count).")
def history_(result_paths: tuple[Path, ...], out_dir: Path, scenario: str | None,
             metric_globs: str, backend_globs: str, host: str | None, threshold: float,
             alpha: float, min_runs: int) -> None:
    """Every figure over time, per machine: trend charts, and the points where a figure
    moved, each with what changed there (commit range, component versions, kernel).

    RESULTS are result files or directories of them, in any order (runs are put in time
    order). A series is one machine (hardware id) x scenario x backend x variant x metric:
    a kernel or engine upgrade stays in the series and annotates its moves. Unreadable
    files and files of another scenario or machine (--scenario, --host) are skipped with
    one line each. Writes index.html (self-contained), history.md, history.json.
    """
    from harness import history as hist
    from harness.report import history_page

    loaded = hist.load(result_paths, scenario, host)
    for line in loaded.skipped:
        err.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)
    if not loaded.runs:
        raise UsageError(f"{', '.join(map(str, result_paths))}: no usable result files")
    h = hist.history(loaded, metrics=_split(metric_globs) or ["*"],
                     backends=_split(backend_globs) or ["*"], threshold=threshold / 100,
                     alpha=alpha, min_runs=min_runs)
    if not h.series:
        raise UsageError(f"no series for --metric {metric_globs} --backend {backend_globs}")
    history_page.write(h, out_dir)
    moves = h.moves
    t = Table(title=f"{h.runs} runs, {len(h.series)} series: {len(moves)} moves "
                    "(newest first)")
    for col in ("verdict", "machine", "series", "change", "first run after", "what changed"):
        t.add_column(col)
    for m in moves:
        t.add_row(f"[{'bold red' if m.verdict == 'regression' else 'green'}]{m.verdict}[/]",
                  m.key.hardware[:8], m.key.cell, hist.format_change(m.decision.ratio),
                  f"{m.after.doc.run_id} ({m.after.when:%Y-%m-%d %H:%M})",
                  hist.what_changed(m))
    out.print(t)
    print(f"history: {out_dir / 'index.html'} (and history.md, history.json)")


@cli.command()
@click.argument("scenario_name", metavar="SCENARIO")
@click.option("--runs", type=click.IntRange(2), default=10, show_default=True,
              help="Calibration runs; each runs every cell twice, interleaved.")
@click.option("--backends", help="Comma-separated backends (default: the scenario's).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/calibration"), show_default=True,
              help="Directory for the calibration runs' results.")
@click.option("--baselines", "baselines_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/baselines"), show_default=True)
@click.option("--over", "over_s", type=click.FloatRange(min=0), default=300.0,
              show_default=True, help="Spread the runs evenly over this many seconds.")
@click.option("--force", is_flag=True, help="Replace an existing noise band.")
def calibrate(scenario_name: str, runs: int, backends: str | None, out_dir: Path,
              baselines_dir: Path, over_s: float, force: bool) -> None:
    """Measure the noise band of SCENARIO on this host: A/A runs, each running every cell
    twice, interleaved, and store the per-cell spread in the host's baseline
    (results/baselines/<host id>/<scenario>.json; created from the first run when there
    is none yet). `bench compare` uses it.

    Two spreads are measured per cell: between the two copies of one run (what
    interleaving leaves: sampling noise) and from run to run (what separate runs add: the
    host's load changing). The band uses the run-to-run one, because comparisons are
    between separate runs. The runs are spread over --over seconds: back to back, ten runs
    of a fast scenario take seconds and see one state of a busy host, and the band they
    give is too narrow for a comparison made minutes later (measured: 3 false alarms in
    10 single-run A/A comparisons after such a calibration).
    """
    from harness import baseline

    target, noise = baseline.calibrate(scenario_name, _split(backends),
                                       out_dir, baselines_dir, runs, over_s, force,
                                       RichReporter, err.print)
    t = Table(title=f"A/A spread over {runs} runs (sd of log median; largest A/A change)")
    for col in ("cell", "within a run", "run to run", "largest A/A: same run",
                "different runs"):
        t.add_column(col, justify="left" if col == "cell" else "right")
    for r in noise:
        v = "" if r.variant == "default" else f" [{r.variant}]"
        t.add_row(f"{r.backend}{v} · {r.metric}", f"{r.sigma_within:.3f}",
                  f"{r.sigma_between:.3f}", f"{r.max_aa_within:.0%}", f"{r.max_aa_cross:.0%}")
    out.print(t)
    print(f"baseline: {target}")


@cli.group("baseline")
def baseline_group() -> None:
    """Baselines CI compares against: results/baselines/<host id>/<scenario>.json."""


@baseline_group.command("update")
@click.argument("result_file", metavar="RESULT", type=click.Path(dir_okay=False,
                                                                  path_type=Path))
@click.option("--baselines", "baselines_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/baselines"), show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing baseline.")
def baseline_update(result_file: Path, baselines_dir: Path, force: bool) -> None:
    """Make RESULT the baseline of its host and scenario (an existing one is replaced only
    with --force; its calibrated noise band is kept, since it belongs to the host)."""
    from harness import baseline

    doc = results.load_result(result_file)
    target = baseline.path_for(baselines_dir, baseline.host_id(doc, str(result_file)),
                               str(doc.scenario["name"]))
    if target.exists() and not force:
        raise UsageError(f"{target}: a baseline exists; pass --force to replace it")
    old = results.load_result(target).baseline if target.exists() else None
    noise = old.noise if old is not None else ()
    cal = old.calibration if old is not None else None
    baseline.write(target, baseline.make(doc, str(result_file), noise, cal), force=force)
    if noise:
        err.print(f"kept the calibrated noise band of {target}")
    print(f"baseline: {target}")


cli.add_command(fleet_cli.fleet)  # bench fleet: its own module (harness/fleet/cli.py)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per error, the right exit code, no traceback."""
    try:
        cli.main(args=argv, prog_name="bench", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:  # one line, like every other user mistake
        cmd = f"bench {e.ctx.info_name} --help" if e.ctx and e.ctx.parent else "bench --help"
        print(f"bench: error: {e.format_message()} (see `{cmd}`)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code if e.exit_code else EXIT_USAGE)
    except click.Abort:
        err.print("aborted")
        sys.exit(130)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
