"""The documentation site's generated reference: one page per study and per backend, read
from their plug-ins (entry-point groups cvbench.studies, cvbench.reports, cvbench.runtimes),
and the scenario format, read from harness.scenario's schema.

mkdocs runs this file as a hook (mkdocs.yml `hooks:`): at every build the pages are made
afresh in memory (never written into docs/, never committed, so never stale) and added to
the nav under "Reference". `python docs/gen.py DIR` writes them to DIR to read or diff.
Nothing here lists a study or a backend: a new plug-in gets its page by being installed.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import textwrap
import tomllib
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from harness import scenario, studies
from harness.core import record
from harness.report import presentation
from harness.results import FAILURE_LIMIT
from harness.sampling import FAILURES_TO_GIVE_UP
from harness.scenario import parser as scenario_parser
from runtimes import registry
from runtimes.base import Limits, Mount

STUDIES_DIR = "reference/studies"
BACKENDS_DIR = "reference/backends"
SCENARIO_PAGE = "reference/scenario.md"
CLI_PAGE = "reference/cli.md"
TWO_CORE = "On a 2-core host"  # the docstring paragraph a study page shows as such
SHIPPED = Path(__file__).resolve().parent.parent / "scenarios"


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def _module_doc(obj: Any) -> str:
    mod = inspect.getmodule(obj if inspect.isclass(obj) else type(obj))
    return _doc(mod) if mod else ""


def _as_markdown(doc: str) -> str:
    """A docstring as Markdown: an indented block stays code, the rest is prose."""
    out: list[str] = []
    for para in doc.split("\n\n"):
        lines = para.split("\n")
        if all(ln.startswith("  ") or not ln for ln in lines[1:]) and \
                lines[0].startswith("  "):
            out.append("```text\n" + textwrap.dedent(para) + "\n```")
        elif any(ln.startswith("  ") for ln in lines[1:]) and lines[0].endswith(":"):
            head, rest = lines[0], "\n".join(lines[1:])
            out.append(head + "\n\n```text\n" + textwrap.dedent(rest) + "\n```")
        else:
            out.append(para)
    return "\n\n".join(out)


def _split_two_core(doc: str) -> tuple[str, str]:
    """(the docstring without its 2-core paragraph, that paragraph or "")."""
    paras = doc.split("\n\n")
    note = [p for p in paras if p.startswith(TWO_CORE)]
    return "\n\n".join(p for p in paras if not p.startswith(TWO_CORE)), "\n\n".join(note)


# Defaults whose Python form reads otherwise in TOML: tables held as tuples of pairs, the
# image source (its own table), the variants (none given: one, "default").
AS_WRITTEN = {"params": "`{}`", "env": "`{}`", "depends_on": "`{}`", "rlimits": "`{}`",
              "variants": "none: one variant, `default`",
              "image": '`{ recipe = "base" }`: busybox-static, nothing else'}


def _code(v: Any) -> str:
    """A default as a scenario file writes it (TOML), or "unset" (the code decides)."""
    if v is None:
        return "unset"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        v = {k: x for k, x in dataclasses.asdict(v).items() if x not in (None, ())}
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, bool):
        text = str(v).lower()
    elif isinstance(v, str):
        text = '"' + v + '"'
    else:
        text = repr(v).replace("'", '"')
    return "`" + text.replace("|", "\\|") + "`"


def _shipped_scenarios() -> dict[str, list[str]]:
    """Study name -> the shipped scenario files that run it."""
    out: dict[str, list[str]] = {}
    for path in sorted(SHIPPED.glob("*.toml")):
        with path.open("rb") as f:
            study = tomllib.load(f).get("study", scenario.Scenario.study)
        out.setdefault(study, []).append(path.name)
    return out


FAILURES = f"""\
## Failure rules

What holds for every study (the runner's and the report's rules, not this study's):

- A sample that raises (a timeout, a workload that exits non-zero, a tool's unusable
  output: what the study's `sample` refuses, above) leaves **no figure**; it is counted
  against its cell with its reason (`cells` in the result: samples, failures, attempts,
  reasons), and its tool output stays in `artifacts`, marked `failed: true`.
- A cell gives up after **{FAILURES_TO_GIVE_UP} failures in a row**
  (`harness.sampling.FAILURES_TO_GIVE_UP`); the other cells go on.
- A seed claim drawn from a cell of which more than **{FAILURE_LIMIT * 100:g} %**
  (`harness.results.FAILURE_LIMIT`) of the samples failed is *inconclusive: failures*;
  `bench compare` calls a cell whose failures on NEW exceed that share, and BASE's, a
  regression whatever its median did. See [Reading results](../../results.md).
"""

GENERAL_TWO_CORE = """\
What holds for every study: the runner interleaves the cells of a run in a fresh random
order each round, so the load of a shared machine falls on every backend alike and ratios
between backends stay meaningful while absolute figures move; a VM here runs under TCG
(no KVM inside a VM without nested virtualization): its figures measure QEMU's emulator,
marked "(TCG, emulated)" in every chart ([VMs and TCG](../../vms.md))."""


def study_page(name: str) -> str:
    st = studies.get(name)
    pres = presentation.of(name)
    doc, two_core = _split_two_core(_module_doc(st))
    title = f"{pres.title} (`{name}`)" if pres.title != name else f"`{name}`"
    mod = inspect.getmodule(type(st))
    question = f"*{pres.question[:1].upper() + pres.question[1:]}.* " if pres.question else ""
    out = [f"# {title}", "", f"{question}Run it: `bench run {name}`.", "",
           "!!! note \"Generated\"",
           f"    From the plug-in `{mod.__name__ if mod else '?'}` (entry point `{name}` of "
           f"`{studies.GROUP}`) and its presentation (`{presentation.GROUP}`); "
           "edit those, not this page.", "",
           _as_markdown(doc), ""]
    # What a study shares with others of its kind (a server study's sample, network modes
    # and CPU placement) is documented once, in the shared module its class comes from.
    shared = dict.fromkeys(inspect.getmodule(c) for c in type(st).__mro__[1:])
    for m in shared:
        if m is not None and m is not mod and m.__name__.startswith(studies.__name__ + "._") \
                and _doc(m):
            out += [f"## Shared with its kind: `{m.__name__}`", "", _as_markdown(_doc(m)), ""]
    out += ["## Parameters", ""]
    if st.params:
        out += ["`[params]` of a scenario of this study, with their defaults:", "",
                "| key | default | type |", "|---|---|---|"]
        out += [f"| `{k}` | {_code(v)} | {type(v).__name__} |" for k, v in st.params.items()]
    else:
        out.append("None: the study takes no `[params]`.")
    out += ["", "## Figures", "", "| metric | unit |", "|---|---|"]
    out += [f"| `{m}{'<…>' if m.endswith('.') else ''}` | {u} |" for m, u in st.metrics.items()]
    out += ["", "In the report: the chapter *" + pres.title + "*, ranked " + str(pres.rank)
            + " (lower comes first)."]
    if pres.charts:
        out += ["", "| chart (file name) | title |", "|---|---|"]
        out += [f"| `{c}` | {t} |" for c, (t, _) in pres.charts.items()]
    if pres.app is not None:
        out += ["", f"An application study: in the applications section, throughput "
                    f"`{pres.app.throughput}`" + (f", p99 `{pres.app.p99}`" if pres.app.p99
                                                  else "") + ", against the bare host."]
    if pres.headline:
        out += ["", "Summary table columns (regular expressions over metric names): "
                + ", ".join(f"`{h}`" for h in pres.headline) + "."]
    out += ["", "## Tools on the host", ""]
    if st.tools:
        out += ["`bench doctor` and validation name what is missing; "
                "`make provision` installs them.", "",
                "| program | Debian package |", "|---|---|"]
        out += [f"| `{t}` | `{p}` |" for t, p in st.tools.items()]
    else:
        out.append("None besides cvbench itself.")
    shipped = _shipped_scenarios().get(name, [])
    out += ["", "## Shipped scenarios", ""]
    out.append(", ".join(f"`scenarios/{s}`" for s in shipped) if shipped
               else "None: write one ([scenario format](../scenario.md)).")
    out += ["", FAILURES, f"## {TWO_CORE}", ""]
    if two_core:
        text = two_core.removeprefix(TWO_CORE).lstrip(":, ")
        out += [text[:1].upper() + text[1:], ""]
    out += [GENERAL_TWO_CORE, ""]
    return "\n".join(out)


def backend_page(base: str) -> str:
    ep = {e.name: e for e in entry_points(group=registry.GROUP)}[base]
    cls: Any = ep.load()
    names = [base, *(f"{base}:{f}" for f in cls.flavours)]
    out = [f"# `{base}`", "",
           "!!! note \"Generated\"",
           f"    From the plug-in `{ep.value}` (entry point `{base}` of `{registry.GROUP}`): "
           "its module's and its class's docstrings; edit those, not this page.", "",
           "Backend names: " + ", ".join(f"`{n}`" for n in names)
           + ". `bench doctor` says whether each works on this host, and how to fix it; "
             "the [backends](../../backends.md) page compares them.", "",
           "## The module", "", _as_markdown(_module_doc(cls)), ""]
    mod = inspect.getmodule(cls)
    package = sys.modules.get(mod.__package__ or "") if mod else None
    if package is not None and package.__name__ != "runtimes" and _doc(package):
        out += [f"## The package `{package.__name__}`", "", _as_markdown(_doc(package)), ""]
    if _doc(cls):
        out += ["## The class", "", _as_markdown(_doc(cls)), ""]
    return "\n".join(out)


def _defaults(cls: Any) -> dict[str, object]:
    """Field name -> its default (dataclasses.MISSING: required), of a dataclass or a
    record (harness.core.record: Limits)."""
    if not dataclasses.is_dataclass(cls):
        given = record.defaults(cls)
        return {n: given.get(n, dataclasses.MISSING) for n in record.fields(cls)}
    return {f.name: f.default if f.default_factory is dataclasses.MISSING
            else f.default_factory() for f in dataclasses.fields(cls)}


def _dataclass_table(cls: Any, keys: Mapping[str, str] | None = None) -> list[str]:
    rows = ["| key | default |", "|---|---|"]
    for name, value in _defaults(cls).items():
        if name == "raw" or (keys is not None and name not in keys):
            continue
        if name in AS_WRITTEN:
            default = AS_WRITTEN[name]
        elif value is not dataclasses.MISSING:
            default = _code(value)
        else:
            default = "required"
        rows.append(f"| `{keys[name] if keys else name}` | {default} |")
    return rows


def scenario_page() -> str:
    top = sorted(scenario.TOP_KEYS)
    wl = sorted(scenario.WORKLOAD_KEYS)
    sv = sorted(scenario.SERVICE_KEYS)
    defaults = {f.name: f for f in dataclasses.fields(scenario.Scenario)}
    out = ["# Scenario format", "",
           "!!! note \"Generated\"",
           "    From `harness.scenario`'s schema (its dataclasses and the sets of keys its "
           "parser accepts); an unknown key is refused with one line naming it (exit 2).",
           "", "A scenario is a TOML file; `bench list` shows the shipped ones "
           "(`scenarios/`). `bench run FILE` runs one of your own.", "",
           "## Top level", "", "| key | default |", "|---|---|"]
    for k in top:
        f = defaults.get(k)
        if f is None or dataclasses.is_dataclass(f.default):
            out.append(f"| `{k}` | see below |")
        elif k in AS_WRITTEN:
            out.append(f"| `{k}` | {AS_WRITTEN[k]} |")
        elif f.default is not dataclasses.MISSING:
            out.append(f"| `{k}` | {_code(f.default)} |")
        else:
            out.append(f"| `{k}` | required |")
    out += ["", "`study` is one of the installed studies: "
            + ", ".join(f"[`{s}`](studies/{s}.md)" for s in studies.names()) + ".",
            "`backends` names backends (`bench list`); empty means every one available.", "",
            "## `[workload]`", "", "Keys: " + ", ".join(f"`{k}`" for k in wl) + ".", ""]
    out += _dataclass_table(scenario.Workload, {k: k for k in wl})
    out += ["", "`image` is one table of these kinds (the keys each takes):", "",
            "| kind | keys |", "|---|---|"]
    out += [f"| `{kind}` | {', '.join(f'`{k}`' for k in sorted(keys))} |"
            for kind, keys in scenario.IMAGE_KEYS.items()]
    out += ["", "See [Images](../images.md) and [Readiness](../readiness.md).", "",
            "## `[limits]`", ""]
    out += _dataclass_table(Limits)
    out += ["", "## `[[mounts]]`", ""]
    out += _dataclass_table(Mount)
    out += ["", "## `[sampling]`", ""]
    out += _dataclass_table(scenario.Sampling)
    out += ["", "## `[params]`", "",
            "The study's own: each study's reference page lists its keys and defaults.",
            "", "## `[variants]`", "",
            "A matrix: each key takes a list of values and every combination is a variant "
            "(a cell per backend). Keys: " + ", ".join(f"`{k}`" for k in scenario.VARIANT_KEYS)
            + ". `network` takes " + ", ".join(f"`{n}`" for n in scenario.SCENARIO_NETWORKS)
            + "; `placement` (stacks) " + ", ".join(f"`{p}`" for p in scenario.PLACEMENTS)
            + ".", "", "## `[[services]]` and `[stack]` (study `stack`)", "",
            "Keys of a service: " + ", ".join(f"`{k}`" for k in sv) + "; `depends_on` "
            "maps a service to " + " or ".join(f"`{c}`" for c in scenario.CONDITIONS) + ".",
            "", "`healthcheck`:", ""]
    out += _dataclass_table(scenario.Healthcheck)
    out += ["", "`[stack]` takes `front`: the service whose readiness ends the stack's start "
            "(default: the one no other depends on). See [Stacks](../stacks.md)."]
    example = _doc(scenario_parser).split("\n\n", 1)
    if len(example) == 2 and "name =" in example[1]:
        out += ["", "## An annotated example", "",
                "From `harness.scenario.parser`'s docstring:",
                "", "```toml", _toml_block(example[1]), "```"]
    return "\n".join(out) + "\n"


def _toml_block(doc: str) -> str:
    """The indented example in harness.scenario.parser's docstring."""
    lines = doc.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("    "))
    block = []
    for ln in lines[start:]:
        if ln and not ln.startswith("    "):
            break
        block.append(ln)
    return textwrap.dedent("\n".join(block)).strip("\n")


WIDTH: dict[str, Any] = {"terminal_width": 100, "max_content_width": 100}


def _commands(group: click.Group, ctx: click.Context) -> list[click.Context]:
    """A context per command under `group`, subcommands after their group."""
    out: list[click.Context] = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx, **WIDTH)
        out.append(sub)
        if isinstance(cmd, click.Group):
            out += _commands(cmd, sub)
    return out


def cli_page() -> str:
    """Every command's --help, as the command line prints it."""
    from harness.cli import cli

    root = click.Context(cli, info_name="bench", **{**cli.context_settings, **WIDTH})
    out = ["# Command reference", "",
           "!!! note \"Generated\"",
           "    From the command line itself (`harness/cli/`): what `bench COMMAND --help` "
           "prints. [Commands](../commands.md) gives an overview.", "",
           "```text", cli.get_help(root), "```"]
    for ctx in _commands(cli, root):
        out += ["", f"## `{ctx.command_path}`", "", "```text", ctx.get_help(), "```"]
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """Every generated page: its path under docs/ -> its Markdown."""
    out = {f"{STUDIES_DIR}/{n}.md": study_page(n) for n in studies.names()}
    out |= {f"{BACKENDS_DIR}/{b}.md": backend_page(b) for b in registry.base_names()}
    out[SCENARIO_PAGE] = scenario_page()
    out[CLI_PAGE] = cli_page()
    return out


def nav() -> list[Any]:
    """The nav's Reference section."""
    return [{"Reference": [
        {"Commands": CLI_PAGE},
        {"Scenario format": SCENARIO_PAGE},
        {"Studies": [{n: f"{STUDIES_DIR}/{n}.md"} for n in studies.names()]},
        {"Backends": [{b: f"{BACKENDS_DIR}/{b}.md"} for b in registry.base_names()]},
    ]}]


# --- mkdocs hooks ---------------------------------------------------------------------

def on_config(config: Any) -> Any:
    config["nav"] = [*config["nav"], *nav()]
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/gen.py OUT_DIR")
    for path, text in pages().items():
        dest = Path(sys.argv[1]) / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
