"""Compose files as the seed writes them: interpolation by the compose specification's
rules (its own examples, and Debian's docker-compose as a second reader), `.env`,
`build:` contexts that must stay inside the compose file's directory (`..`, absolute
paths, symlinks), several networks, links, container_name, lists of names at the top
level, and the hint to scripts/stack-images."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import compose
from harness.core.errors import ScenarioError
from harness.core.image import EngineBuild, EngineRef
from harness.scenario import Scenario, parse
from tests.unit.test_stack import STACK, found_in

ENV = {"SET": "v", "EMPTY": "", "FOO": "foo"}


def base() -> Scenario:
    import tomllib

    return parse(tomllib.loads(STACK), "s.toml")


@pytest.mark.parametrize("template, want", [
    # the specification's examples ("Interpolation"), with SET=v, EMPTY="", UNSET unset
    ("$SET", "v"), ("${SET}", "v"),
    ("${UNSET:-default}", "default"), ("${EMPTY:-default}", "default"),
    ("${SET:-default}", "v"),
    ("${UNSET-default}", "default"), ("${EMPTY-default}", ""), ("${SET-default}", "v"),
    ("${SET:+replacement}", "replacement"), ("${EMPTY:+replacement}", ""),
    ("${UNSET:+replacement}", ""),
    ("${SET+replacement}", "replacement"), ("${EMPTY+replacement}", "replacement"),
    ("${UNSET+replacement}", ""),
    ("${UNSET:-${FOO}}", "foo"), ("${UNSET:-${UNSET2:-default}}", "default"),
    ("${EMPTY?$FOO}", ""),  # (set, so no error, even empty)
    ("$$", "$"), ("$$SET", "$SET"), ("$${SET}", "${SET}"), ("a$$$SET", "a$v"),
    ("$SET-default", "v-default"),  # unbraced: the name ends where letters end
    ("${UNSET}", ""), ("$UNSET", ""),  # unset, no default: empty, as compose has it
    ("no variables", "no variables"), ("${SET}${SET}x$SET", "vvxv"),
    ("${SET:-a}}", "v}"), ("${UNSET:-{x}}", "{x}"),
])
def test_interpolation_follows_the_specification(template: str, want: str) -> None:
    assert compose.interpolate(template, ENV) == want


@pytest.mark.parametrize("template, var, message", [
    ("${UNSET:?is needed}", "UNSET", "is needed"), ("${EMPTY:?is needed}", "EMPTY", "is needed"),
    ("${UNSET?is needed}", "UNSET", "is needed"),
    ("${UNSET?}", "UNSET", "is not set"), ("${EMPTY:?}", "EMPTY", "is not set or empty"),
    ("${UNSET:?needs $FOO}", "UNSET", "needs foo"),
])
def test_a_missing_required_variable_names_it(template: str, var: str, message: str) -> None:
    with pytest.raises(compose.Missing) as e:
        compose.interpolate(template, ENV)
    assert e.value.var == var and str(e.value) == message


@pytest.mark.parametrize("template", ["$", "a $ b", "$1", "${", "${SET", "${}", "${1A}",
                                      "${SET:x}", "${SET!}"])
def test_an_invalid_template_is_refused(template: str) -> None:
    with pytest.raises(compose.Invalid):
        compose.interpolate(template, ENV)


V1_CASES = ["${SET}", "${UNSET:-def}", "${EMPTY:-def}", "${EMPTY-def}", "${UNSET-def}",
            "$$SET", "$SET-x", "a${SET}b$SET", "${UNSET}"]


def test_interpolation_agrees_with_docker_compose(tmp_path: Path) -> None:
    """Debian's docker-compose (1.29, `make provision`) reads the same templates the
    same way (its `config` prints a literal $ escaped again as $$)."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make provision)")
    doc = {"version": "3.9", "services": {"a": {"image": "x", "environment": {
        f"T{i}": t for i, t in enumerate(V1_CASES)}}}}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    out = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=60,
                         env={"PATH": os.environ["PATH"], **ENV})
    theirs = yaml.safe_load(out.stdout)["services"]["a"]["environment"]
    for i, t in enumerate(V1_CASES):
        assert compose.interpolate(t, ENV) == str(theirs[f"T{i}"]).replace("$$", "$"), t


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "compose.yaml"
    f.write_text(text)
    return f


LOOKUP = found_in({"docker": {"cvbench/web:1", "cvbench/app:1", "cvbench/db:1"}})


def read(f: Path, env: dict[str, str] | None = None) -> Scenario:
    return compose.read(f, base(), LOOKUP, env={} if env is None else env)


def test_values_come_from_the_environment_over_dotenv(tmp_path: Path) -> None:
    f = write(tmp_path, "services:\n  web:\n    image: cvbench/${IMG:-none}:1\n"
                        "    environment: {A: '${A}', B: '${B:-b-default}', C: '${C}'}\n")
    (tmp_path / ".env").write_text("# a comment\nIMG=web\nA=from-dotenv\nC='quoted'\n")
    s = read(f, {"A": "from-env"})
    w = s.services[0].workload
    assert w.image == EngineRef("docker", "cvbench/web:1")
    assert dict(w.env) == {"A": "from-env", "B": "b-default", "C": "quoted"}


def test_a_missing_required_variable_is_one_line_naming_file_field_variable(
        tmp_path: Path) -> None:
    f = write(tmp_path, "services:\n  web:\n    image: cvbench/web:1\n"
                        "    environment: {TOKEN: '${TOKEN:?set TOKEN to the API token}'}\n")
    with pytest.raises(ScenarioError) as e:
        read(f)
    assert str(e.value) == (f"{f}: services.web.environment.TOKEN: variable TOKEN is "
                            "required: set TOKEN to the API token")
    f = write(tmp_path, "services:\n  web:\n    image: cvbench/web:1\n    command: a $1\n")
    with pytest.raises(ScenarioError) as e:
        read(f)
    assert str(e.value).startswith(f"{f}: services.web.command: invalid interpolation")


# --- build: ------------------------------------------------------------------------------

def project(tmp_path: Path) -> Path:
    (tmp_path / "p" / "web").mkdir(parents=True)
    (tmp_path / "p" / "web" / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "p" / "web" / "Other.dockerfile").write_text("FROM x\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "Dockerfile").write_text("FROM x\n")
    return tmp_path / "p"


def test_build_is_an_engine_source_with_its_context_inside(tmp_path: Path) -> None:
    p = project(tmp_path)
    f = write(p, "services:\n  web:\n    build: ./web\n  app:\n    image: cvbench/app:1\n"
                 "    build:\n      context: web\n      dockerfile: Other.dockerfile\n"
                 "      args: {V: '${V:-1}', W: two}\nx-cvbench: {front: web}\n")
    by = {s.name: s.workload.image for s in read(f).services}
    ctx = str((p / "web").resolve())
    assert by["web"] == EngineRef("", "", EngineBuild(ctx, "Dockerfile"))
    assert by["app"] == EngineRef("", "", EngineBuild(ctx, "Other.dockerfile",
                                                     (("V", "1"), ("W", "two"))))
    s = read(f)
    assert parse(s.raw, "again", resumed=True).services == s.services  # a resumed run
    # A scenario file cannot name the directory build contexts are read from: only a
    # run's own record does (else `services_from = "/x"` would build from any host dir).
    with pytest.raises(ScenarioError, match=r"stack\.services_from"):
        parse(s.raw, "hand-written.toml")


@pytest.mark.parametrize("build, where", [
    ("../outside", "services.web.build.context"),
    ("web/../../outside", "services.web.build.context"),
    ("OUTSIDE_ABS", "services.web.build.context"),
    ("link-out", "services.web.build.context"),  # a symlink in the project to outside
    ("{context: web, dockerfile: ../../outside/Dockerfile}", "services.web.build.dockerfile"),
    ("{context: web, dockerfile: OUTSIDE_ABS/Dockerfile}", "services.web.build.dockerfile"),
    ("{context: web, dockerfile: df-link}", "services.web.build.dockerfile"),
])
def test_a_build_context_cannot_leave_the_compose_directory(tmp_path: Path, build: str,
                                                            where: str) -> None:
    p = project(tmp_path)
    (p / "link-out").symlink_to(tmp_path / "outside")
    (p / "web" / "df-link").symlink_to(tmp_path / "outside" / "Dockerfile")
    f = write(p, "services:\n  web:\n    build: "
              + build.replace("OUTSIDE_ABS", str(tmp_path / "outside")) + "\n")
    with pytest.raises(ScenarioError) as e:
        read(f)
    text = str(e.value)
    assert text.startswith(f"{f}: {where}: ") and "outside" in text and "\n" not in text


def test_a_symlink_that_stays_inside_is_followed_there(tmp_path: Path) -> None:
    p = project(tmp_path)
    (p / "alias").symlink_to(p / "web")
    f = write(p, "services:\n  web:\n    build: alias\n")
    src = read(f).services[0].workload.image
    assert isinstance(src, EngineRef) and src.build is not None
    assert src.build.context == str((p / "web").resolve())


def test_a_scenario_toml_build_is_held_to_its_own_directory(tmp_path: Path) -> None:
    import tomllib

    p = project(tmp_path)
    (p / "s.toml").write_text("")
    toml = STACK.replace('name = "web"\n', 'name = "web"\nimage = { build = "../outside" }\n',
                         1)
    with pytest.raises(ScenarioError) as e:
        parse(tomllib.loads(toml), str(p / "s.toml"))
    assert "services.web.image.build.context: '../outside' resolves to" in str(e.value)
    ok = parse(tomllib.loads(STACK.replace('name = "web"\n',
                                           'name = "web"\nimage = { build = "web" }\n', 1)),
               str(p / "s.toml"))
    assert ok.services[-1].workload.image == EngineRef(
        "", "", EngineBuild(str((p / "web").resolve())))


# --- networks, links, container_name, the seed's lists ------------------------------------

SEED = """
services:
  db:
    image: cvbench/db:1
    container_name: database
    networks: [back]
  app:
    image: cvbench/app:1
    links: ["db:sql"]
    depends_on: {db: {condition: service_started}}
    networks: [back, front]
  web:
    image: cvbench/web:1
    ports: ["8080:80"]
    links: [app]
    networks: [front]
networks:
  - front
  - back
volumes:
  - data
"""


def test_the_seed_layout_reads_with_several_networks(tmp_path: Path) -> None:
    s = read(write(tmp_path, SEED))
    by = {sv.name: sv for sv in s.services}
    assert by["db"].networks == ("back",) and by["app"].networks == ("back", "front")
    assert by["web"].networks == ("front",)
    assert set(by["db"].aliases) == {"database", "sql"}  # container_name, a link's alias
    assert by["web"].depends_on == (("app", "service_started"),)  # a link waits
    assert by["app"].depends_on == (("db", "service_started"),)
    assert [sv.name for sv in s.services] == ["db", "app", "web"] and s.front == "web"


def test_a_service_without_networks_is_on_default(tmp_path: Path) -> None:
    s = read(write(tmp_path, "services:\n  web:\n    image: cvbench/web:1\n"))
    assert s.services[0].networks == ("default",)


@pytest.mark.parametrize("change, where", [
    (("networks: [front]\n", "networks: [elsewhere]\n"),
     "services.web.networks: 'elsewhere' is not declared"),
    (("networks: [front]\n", "networks: {front: {aliases: [x]}}\n"),
     "services.web.networks.front: network options"),
    (("  - front\n  - back\n", "  front: {driver: overlay}\n  back:\n"),
     "networks.front.driver: only bridge"),
    (("links: [app]", "links: [db]"), "services.web.links[0]: db shares no network with web"),
    (("links: [app]", "links: [nobody]"), "services.web.links[0]: 'nobody' is not another"),
    (("container_name: database", "container_name: Bad_Name!"),
     "services.db.container_name: a name is lower-case"),
])
def test_network_and_link_problems_name_the_field(tmp_path: Path, change: tuple[str, str],
                                                  where: str) -> None:
    f = write(tmp_path, SEED.replace(*change))
    with pytest.raises(ScenarioError) as e:
        read(f)
    assert where in str(e.value) and str(e.value).startswith(str(f)), str(e.value)


def test_the_examples_missing_images_name_scripts_stack_images(tmp_path: Path) -> None:
    f = write(tmp_path, "services:\n  redis:\n    image: cvbench/stack-redis:bookworm\n")
    with pytest.raises(ScenarioError) as e:
        compose.read(f, base(), found_in({}), env={})
    assert "scripts/stack-images" in str(e.value)
    assert (Path(__file__).resolve().parents[2] / "scripts" / "stack-images").is_file()



def test_an_environment_name_alone_takes_its_value_from_here(tmp_path: Path) -> None:
    """`environment: [A]` (or `{A: }`): A's value in the environment compose reads (the
    process's over .env); unset there, it is left out, as compose leaves it unset."""
    f = write(tmp_path, "services:\n  web:\n    image: cvbench/web:1\n"
                        "    environment: [A, B, 'C=3']\n  app:\n    image: cvbench/app:1\n"
                        "    environment: {A: , D: }\nx-cvbench: {front: web}\n")
    (tmp_path / ".env").write_text("B=from-dotenv\n")
    by = {s.name: dict(s.workload.env) for s in read(f, {"A": "from-env"}).services}
    assert by == {"web": {"A": "from-env", "B": "from-dotenv", "C": "3"},
                  "app": {"A": "from-env"}}
