"""`bench fleet`: one scenario on many hosts through Ansible (harness.fleet)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column

from harness import fleet as fl
from harness import scenario
from harness.core.errors import UsageError

err = Console(stderr=True, highlight=False)


class _Shown:
    """Live progress, a fleet.FleetReporter: a line per host with its stage and time."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def host(self, host: str, stage: str) -> None:
        if host not in self.tasks:
            self.tasks[host] = self.progress.add_task(host, total=None, stage="")
        done = stage == "done" or stage.startswith("failed")
        self.progress.update(self.tasks[host], stage=escape(stage[:100]))
        if done:  # the spinner stops
            self.progress.update(self.tasks[host], total=1, completed=1)

    def info(self, text: str) -> None:
        self.progress.console.print(text, markup=False)


@contextmanager
def _live(hosts: Iterable[str]) -> Iterator[_Shown]:
    width = max(map(len, hosts), default=8)  # host names whole; the stage gives way
    with Progress(SpinnerColumn(finished_text="·"),
                  TextColumn("{task.description}",
                             table_column=Column(min_width=width, no_wrap=True)),
                  TextColumn("{task.fields[stage]}",
                             table_column=Column(no_wrap=True, overflow="ellipsis")),
                  TimeElapsedColumn(), console=err, transient=False) as progress:
        yield _Shown(progress)


@click.group("fleet")
def fleet() -> None:
    """One scenario on many hosts through Ansible (an inventory; fleet/ has an example
    and the playbook), one report with a series per host."""


@fleet.command("run")
@click.argument("scenario_name", metavar="SCENARIO", required=False)
@click.option("--inventory", "-i", "inventory", type=click.Path(path_type=Path),
              help="An Ansible inventory (e.g. fleet/example.yml).")
@click.option("--limit", help="Only the hosts matching this Ansible pattern.")
@click.option("--backends", help="Comma-separated backends (default: the scenario's, each "
              "host skipping those not available there).")
@click.option("--serial", type=click.IntRange(0), default=0, show_default=True,
              help="Hosts at a time (0: all in parallel).")
@click.option("--resume", "resume_id", metavar="FLEET_ID", help="Continue the hosts of "
              "this fleet run that did not finish (each with `bench run --resume`).")
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path),
              help="Dependency wheels shipped with cvbench's own, for hosts without an "
                   "index (with cvbench_pip_args: --no-index in the inventory).")
@click.option("--image", "image_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Ship this image file (`bench image export` wrote it) as the "
                   "scenario's image, instead of the image built here.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/fleet"), show_default=True,
              help="Fleet runs go to OUT/<fleet id>/<host>/.")
@click.option("--warmups", type=click.IntRange(0), help="Override sampling.warmups.")
@click.option("--min-samples", type=click.IntRange(1), help="Override sampling.min_samples.")
@click.option("--max-samples", type=click.IntRange(1), help="Override sampling.max_samples.")
@click.option("--time-budget", type=click.FloatRange(min=1), help="Override the run's "
              "time budget (s) on each host.")
def fleet_run(scenario_name: str | None, inventory: Path | None, limit: str | None,
              backends: str | None, serial: int, resume_id: str | None,
              wheelhouse: Path | None, image_file: Path | None, out_dir: Path,
              warmups: int | None,
              min_samples: int | None, max_samples: int | None,
              time_budget: float | None) -> None:
    """Run SCENARIO on every host of --inventory: install this tree's cvbench (a wheel,
    in a virtualenv per build), scripts/provision, the scenario's image as a file (its
    digest checked on the host), `bench run` there (every timing on the host's own
    clock), and the result files back to OUT/<fleet id>/<host>/.

    A host that fails is reported with its reason and the others go on; exit 0 only if
    every host succeeded (1: some failed; 130: interrupted). Ctrl-C stops every host's
    run, runs `bench gc` there and fetches what it wrote; `--resume FLEET_ID` continues.
    """
    t0 = time.monotonic()
    if resume_id:
        if scenario_name or backends or wheelhouse or image_file or \
                (warmups, min_samples, max_samples, time_budget) != (None,) * 4:
            raise click.UsageError("--resume takes the scenario, backends and wheels from "
                                   "the fleet run")
        f = fl.open_fleet(out_dir, resume_id)
        if inventory is not None:
            f.inventory = str(inventory)
        if limit:
            keep = set(fl.hosts(Path(f.inventory), limit))
            f.hosts = {h: s for h, s in f.hosts.items() if h in keep}
        for key in ("cvbench_wheels", "cvbench_image_file"):
            if not Path(str(f.extravars.get(key, ""))).exists():
                raise UsageError(f"{f.dir / fl.VARS}: {key}: {f.extravars.get(key)} is gone; "
                                 "start a new fleet run")
        todo = [h for h, s in f.hosts.items() if s.state != fl.OK]
        if not todo:
            print(f"fleet: {f.id}: every host finished; nothing to resume")
            return
        err.print(f"fleet {f.id}: resuming {', '.join(todo)}")
    else:
        if not scenario_name:
            raise click.UsageError("give a SCENARIO, or --resume FLEET_ID")
        if inventory is None:
            raise click.UsageError("--inventory is needed")
        names = fl.hosts(inventory, limit)
        scen = scenario.load(scenario_name)
        fleet_id = fl.new_id()
        with err.status("preparing") as status:
            def say(note: str) -> None:
                status.update(f"preparing: {note[:100]}")

            b = fl.build(wheelhouse, say)
            sampling = {k: v for k, v in (("warmups", warmups), ("min_samples", min_samples),
                                          ("max_samples", max_samples),
                                          ("time_budget", time_budget)) if v is not None}
            shipped = fl.ship_image(scen, say, sampling, image_file)
        err.print(f"fleet {fleet_id}: {scen.name} on {', '.join(names)}; cvbench "
                  f"{b.commit[:12]}{' (dirty tree)' if b.dirty else ''}, image "
                  f"sha256:{shipped.digest[:12]}")
        f = fl.Fleet(fleet_id, out_dir / fleet_id, str(inventory),
                     {h: fl.HostState() for h in names},
                     fl.extravars(fleet_id, out_dir / fleet_id, b, shipped, scen, backends,
                                  serial))
    forks = serial or len(f.hosts)
    with _live(f.hosts) as shown:
        interrupted = fl.run(f, forks, shown)
    for h, s in sorted(f.hosts.items()):
        where = f.dir / h
        if s.state == fl.OK:
            err.print(f"[green]{escape(h)}[/]: ok (run {s.run_id}) → {where}/")
        else:
            err.print(f"[red]{escape(h)}[/]: {s.state}: {escape(s.reason)}")
    err.print(f"took {time.monotonic() - t0:.0f} s")
    print(f"fleet: {f.dir}")  # read by scripts: plain print
    if interrupted:
        print(f"interrupted: continue with: bench fleet run --resume {f.id} --out "
              f"{f.dir.parent}", file=sys.stderr)
        sys.exit(130)
    if f.failed():
        sys.exit(1)


@fleet.command("gc")
@click.option("--inventory", "-i", "inventory", required=True,
              type=click.Path(path_type=Path), help="An Ansible inventory.")
@click.option("--limit", help="Only the hosts matching this Ansible pattern.")
def fleet_gc(inventory: Path, limit: str | None) -> None:
    """`bench gc` on every host of --inventory, through Ansible (the newest cvbench
    installed there by `bench fleet run`). Exit 1 if it failed on a host."""
    names = fl.hosts(inventory, limit)
    with _live(names) as shown:
        outcome = fl.gc(str(inventory), names, {}, shown)
    for h, why in sorted(outcome.items()):
        err.print(f"[green]{escape(h)}[/]: cleaned up" if not why
                  else f"[red]{escape(h)}[/]: {escape(why)}")
    if any(outcome.values()):
        sys.exit(1)
