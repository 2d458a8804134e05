"""Stacks: [[services]] parsed and checked, compose files translated into the same model,
their problems one line naming the file, the service and the key."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness import compose, scenario
from harness.cli import main
from harness.core.errors import ScenarioError
from harness.core.image import Debian, EngineRef, Image
from harness.report import draw
from harness.report.studies import stack as stack_chapter
from harness.scenario import Healthcheck, Port, Scenario, parse
from harness.studies import stack

STACK = """
name = "s"
study = "stack"
[[services]]
name = "web"
argv = ["httpd", "-f"]
readiness = "http:80/"
depends_on = { app = "service_healthy" }
ports = ["8080:80", 443]
[[services]]
name = "app"
argv = ["app"]
user = "nobody"
depends_on = { db = "service_started" }
healthcheck = { test = ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8000/"], interval = 0.5 }
limits = { cpus = 0.5, memory = "64M" }
[[services]]
name = "db"
image = { debian = "bookworm", packages = ["redis-server"] }
argv = ["redis-server"]
expose = [6379]
mounts = [{ type = "volume", source = "data", target = "/data" }]
healthcheck = { test = ["CMD", "redis-cli", "ping"], interval = 1, retries = 5 }
[variants]
placement = ["per-service", "single-vm"]
"""


def load(text: str, source: str = "s.toml") -> Scenario:
    return parse(tomllib.loads(text), source)


def test_services_in_dependency_order_with_the_front_found() -> None:
    s = load(STACK)
    assert [sv.name for sv in s.services] == ["db", "app", "web"]
    assert s.front == "web" and s.network == "bridge"
    web = s.services[2]
    assert web.ports == (Port(80, 8080), Port(443, 0))
    assert s.services[0].ports == (Port(6379),)
    app = s.services[1]
    assert app.healthcheck == Healthcheck(("/bin/sh", "-c", "wget -q -O- http://127.0.0.1:8000/"),
                                          interval=0.5)
    assert app.limits.memory == 64 << 20 and app.workload.user == "nobody"
    assert s.workload == web.workload  # the front stands for the stack
    assert {s.config(v).placement for v in s.variants} == {"per-service", "single-vm"}
    assert s.as_dict()["services"][0]["depends_on"] == {}


@pytest.mark.parametrize("change, key, words", [
    (('app = "service_healthy"', 'app = "service_ready"'), "services.web.depends_on.app",
     "must be one of"),
    (('db = "service_started"', 'web = "service_started"'), "services", "cycle"),
    (('db = "service_started"', 'nope = "service_started"'), "services.app.depends_on.nope",
     "not another service"),
    (('name = "app"', 'name = "web"'), "services", "two services"),
    (('readiness = "http:80/"', 'readiness = "exit"'), "services.web.readiness",
     "keeps running"),
    (('"8080:80"', '"1.2.3.4:8080:80"'), "services.web.ports[0]", "host addresses"),
    (('healthcheck = { test = ["CMD", "redis-cli", "ping"], interval = 1, retries = 5 }', ''),
     "services.app.depends_on.db", None),
    (('argv = ["app"]', 'argv = ["app"]\nrestart = "always"'), "services.app.restart",
     "unknown key"),
])
def test_bad_stacks_name_the_key(change: tuple[str, str], key: str, words: str | None) -> None:
    text = STACK.replace(*change)
    if words is None:  # service_healthy on a service without a healthcheck
        text = text.replace('db = "service_started"', 'db = "service_healthy"')
        words = "needs a healthcheck"
    with pytest.raises(ScenarioError) as e:
        load(text)
    assert e.value.key == key and words in e.value.message


def test_front_must_be_named_when_ambiguous_and_placements_need_a_stack() -> None:
    two_roots = STACK.replace('depends_on = { app = "service_healthy" }\n', "")
    with pytest.raises(ScenarioError, match=r"stack\.front: name the front service"):
        load(two_roots)
    assert load(two_roots + '[stack]\nfront = "app"\n').front == "app"
    with pytest.raises(ScenarioError, match=r"variants\.placement: only a stack"):
        load('name = "x"\n[variants]\nplacement = ["single-vm"]\n')
    with pytest.raises(ScenarioError, match="workload: a stack's workloads"):
        load(STACK + '[workload]\nargv = ["x"]\n')


# --- compose ----------------------------------------------------------------------------

COMPOSE = """
version: "3.9"
services:
  web:
    image: cvbench/web:1
    command: httpd -f
    ports: ["8080:80", 443]
    depends_on:
      app: {condition: service_healthy}
    x-cvbench: {readiness: "http:80/"}
    networks: [back]
  app:
    image: cvbench/app:1
    command: ["app"]
    user: nobody
    depends_on: [db]
    healthcheck:
      test: wget -q -O- http://127.0.0.1:8000/
      interval: 500ms
    cpus: 0.5
    mem_limit: 64m
  db:
    image: cvbench/db:1
    entrypoint: redis-server
    environment: ["A=1", "B=two words"]
    expose: [6379]
    volumes: ["data:/data", "./conf:/etc/conf:ro",
              {type: tmpfs, target: /scratch, tmpfs: {size: 1m}}]
    tmpfs: /run:size=2m
    healthcheck: {test: ["CMD", "redis-cli", "ping"], interval: 1s, retries: 5,
                  start_period: 1m30s}
volumes:
  data:
networks:
  back: {driver: bridge}
"""


def found_in(store: dict[str, set[str]]) -> compose.Lookup:
    def lookup(engine: str, ref: str) -> str | None:
        return None if ref in store.get(engine, set()) else "not in the store"
    return lookup


def base() -> Scenario:
    return load(STACK)


def test_compose_translates_into_the_same_model(tmp_path: Path) -> None:
    f = tmp_path / "compose.yaml"
    f.write_text(COMPOSE)
    s = compose.read(f, base(), found_in({"docker": {"cvbench/web:1", "cvbench/app:1"},
                                          "podman": {"cvbench/db:1"}}))
    by = {sv.name: sv for sv in s.services}
    assert [sv.name for sv in s.services] == ["db", "app", "web"] and s.front == "web"
    assert by["web"].workload.image == EngineRef("docker", "cvbench/web:1")
    assert by["db"].workload.image == EngineRef("podman", "cvbench/db:1")  # docker's first
    assert by["web"].workload.argv == ("httpd", "-f")
    assert by["web"].workload.readiness == "http:80/"
    assert by["db"].workload.entrypoint == ("redis-server",)
    assert dict(by["db"].workload.env) == {"A": "1", "B": "two words"}
    assert by["app"].depends_on == (("db", "service_started"),)
    assert by["app"].healthcheck == Healthcheck(
        ("/bin/sh", "-c", "wget -q -O- http://127.0.0.1:8000/"), interval=0.5)
    assert by["db"].healthcheck == Healthcheck(("redis-cli", "ping"), interval=1.0,
                                               retries=5, start_period=90.0)
    assert by["app"].limits.cpus == 0.5 and by["app"].limits.memory == 64 << 20
    mounts = {m.target: m for m in by["db"].mounts}
    assert mounts["/data"].type == "volume" and mounts["/data"].source == "data"
    assert mounts["/etc/conf"].source == str(tmp_path / "conf") and mounts["/etc/conf"].readonly
    assert mounts["/scratch"].size == 1 << 20 and mounts["/run"].size == 2 << 20
    assert s.raw["services"][0]["name"] == "web"  # kept for --resume
    assert parse(s.raw, "again", resumed=True).services == s.services  # ...and reads back the same


@pytest.mark.parametrize("change, where", [
    (("    command: httpd -f", "    command: httpd -f\n    restart: always"),
     "services.web.restart: unsupported service key"),
    (("  data:\n", "  data: {driver: local}\n"), "volumes.data: volume options"),
    (("command: httpd -f", "command: httpd ${CVBENCH_TEST_UNSET:?give a port}"),
     "services.web.command: variable CVBENCH_TEST_UNSET is required: give a port"),
    (("interval: 500ms", "interval: soon"), "services.app.healthcheck.interval: 'soon'"),
    (('"data:/data"', '"other:/data"'), "services.db.volumes[0]: volume 'other'"),
    (("image: cvbench/app:1", "image: cvbench/nowhere:1"),
     "services.app.image: cvbench/nowhere:1 is in no local store"),
    (("networks: [back]", "networks: [front]"),
     "services.web.networks: 'front' is not declared under the top-level networks"),
    (("version:", "secrets: {}\nversion:"), "secrets: unsupported top-level key"),
    (("tmpfs: /run:size=2m", "tmpfs: /run:mode=1777"), "services.db.tmpfs[0]: tmpfs option 'mode'"),
])
def test_compose_refusals_name_file_service_and_key(tmp_path: Path, change: tuple[str, str],
                                                     where: str) -> None:
    f = tmp_path / "compose.yaml"
    f.write_text(COMPOSE.replace(*change))
    lookup = found_in({"docker": {"cvbench/web:1", "cvbench/app:1", "cvbench/db:1"}})
    with pytest.raises(ScenarioError) as e:
        compose.read(f, base(), lookup)
    assert str(e.value).startswith(f"{f}: {where}"), str(e.value)


def test_compose_error_is_one_line_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("services:\n  a:\n    image: x\n    privileged: true\n")
    scen = tmp_path / "s.toml"
    scen.write_text(STACK)
    with pytest.raises(SystemExit) as e:
        main(["run", str(scen), "--compose", str(f), "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and "services.a.privileged: unsupported service key" in lines[0]
    assert not (tmp_path / "r").exists()  # nothing half-written


# --- single-VM union ---------------------------------------------------------------------

def image(source: Any, identity: dict[str, Any] | None = None) -> Image:
    return Image(name="x", digest="0" * 64, tar=Path("/nonexistent"), rootfs=Path("/n"),
                 size=1, source=source, identity=identity or {})


def test_single_vm_union_of_debian_packages_or_the_reason() -> None:
    s = load(STACK)
    deb = image(Debian("bookworm", ("redis-server",)))
    exported = image(EngineRef("docker", "cvbench/app:1"), {"exported_from": {
        "source": {"kind": "debian", "debian": "bookworm", "packages": ["python3"],
                   "mirror": Debian().mirror}}})
    union, why = stack.union_source(s.services, {"db": deb, "app": exported, "web": deb})
    assert union == Debian("bookworm", ("python3", "redis-server")) and not why
    union, why = stack.union_source(s.services, {"db": deb, "app": exported,
                                                 "web": image(EngineRef("docker", "b"))})
    assert union is None and "service web's image (docker image b) is not made of Debian" in why


# --- the shipped example: scenarios/stack.toml and examples/compose.yaml -----------------

def test_example_compose_file_is_the_stack_scenario() -> None:
    """The same services, commands, users, healthcheck, limits, dependencies and front;
    the compose images are the TOML's Debian images under the tags scripts/stack-images
    gives them (that their digests are equal is checked against docker's store by
    tests/integration/test_stack.py)."""
    toml = scenario.load("stack")
    root = Path(__file__).resolve().parents[2]
    refs: list[tuple[str, str]] = []

    def lookup(engine: str, ref: str) -> str | None:
        refs.append((engine, ref))
        return None

    composed = compose.read(root / "examples" / "compose.yaml", toml, lookup)
    assert composed.front == toml.front and composed.variants == toml.variants
    assert [s.name for s in composed.services] == [s.name for s in toml.services]
    for c, t in zip(composed.services, toml.services, strict=True):
        assert isinstance(t.workload.image, Debian)
        assert c.workload.image == EngineRef(
            "docker", f"cvbench/stack-{t.name}:{t.workload.image.suite}")
        assert replace(c, workload=replace(c.workload, image=t.workload.image)) == t, t.name
    assert {e for e, _ in refs} == {"docker"}


# --- the timeline chart ---------------------------------------------------------------

def test_timeline_chart_services_in_dependency_order_per_cell() -> None:

    times = {"web": (1.0, 1.2, 1.3, None), "app": (0.5, 0.7, 0.8, 1.0),
             "db": (0.0, 0.1, 0.2, 0.5)}  # (the frame's order is not the stack's)
    rows = []
    for backend, kind, scale in (("docker", "container", 1.0), ("libvirt", "vm", 20.0)):
        for rnd in (1, 2):
            for service, ts in times.items():
                for metric, t in zip(("created", "started", "ready", "healthy"), ts,
                                     strict=True):
                    if t is not None:
                        rows.append({"backend": backend, "kind": kind, "emulated": False,
                                     "dataset": "d", "created": "t",
                                     "metric": f"stack.service.{metric}",
                                     "unit": "s", "round": rnd, "value": t * scale,
                                     "sub": f"service={service}",
                                     "variant": f"placement=per-service,service={service}"})
            rows.append({"backend": backend, "kind": kind, "emulated": False,
                         "dataset": "d", "created": "t", "metric": "stack.start", "unit": "s",
                         "round": rnd,
                         "value": 1.3 * scale, "sub": None,
                         "variant": "placement=per-service"})
    df = pd.DataFrame(rows)
    one_vm = df[df["backend"] == "libvirt"].copy()
    one_vm["variant"] = one_vm["variant"].str.replace("per-service", "single-vm")
    boot = one_vm[one_vm["metric"] == "stack.start"].assign(metric="stack.vm_boot", value=3.0)
    both = pd.concat([df, one_vm, boot], ignore_index=True)
    vm_axes = stack_chapter.stack_timeline(both, draw.Look.of(both)).get_axes()  # type: ignore[union-attr]
    assert [t.get_text() for t in vm_axes[-1].get_yticklabels()] == \
        ["(the VM)", "db", "app", "web"]  # a single VM's boot comes first
    fig = stack_chapter.stack_timeline(df, draw.Look.of(df))
    assert fig is not None
    axes = fig.get_axes()
    assert [ax.get_title(loc="left") for ax in axes] == ["docker [per-service]",
                                                        "libvirt [per-service]"]
    for ax, scale in zip(axes, (1.0, 20.0), strict=True):
        # created first at the top: the dependency order, whatever the frame's order
        assert [t.get_text() for t in ax.get_yticklabels()] == ["db", "app", "web"]
        bars = sorted((p.get_y(), p.get_x(), p.get_x() + p.get_width()) for p in ax.patches)
        assert [(round(x0 / scale, 6), round(x1 / scale, 6)) for _, x0, x1 in bars] == \
            [(0.0, 0.1), (0.1, 0.2), (0.5, 0.7), (0.7, 0.8), (1.0, 1.2), (1.2, 1.3)]
        diamonds = [ln.get_xdata()[0] / scale for ln in ax.lines if ln.get_marker() == "D"]
        assert diamonds == pytest.approx([0.5, 1.0])  # db and app have healthchecks
    assert stack_chapter.stack_timeline(df[~df["metric"].str.startswith("stack.service.")],
                                 draw.Look.of(df)) is None
    # docker:swarm: no create call of a service's own: in the order they started, the
    # bars started -> ready only
    swarm = df[(df["backend"] == "docker") & (df["metric"] != "stack.service.created")]
    swarm = swarm.assign(backend="docker:swarm")
    for metric, t in (("started", 0.75), ("ready", 0.85)):  # db started after app
        swarm.loc[(swarm["sub"] == "service=db")
                  & (swarm["metric"] == f"stack.service.{metric}"), "value"] = t
    ax = stack_chapter.stack_timeline(swarm, draw.Look.of(swarm)).get_axes()[0]  # type: ignore[union-attr]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["app", "db", "web"]
    assert sorted((round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6))
                  for p in ax.patches) == [(0.7, 0.8), (0.75, 0.85), (1.2, 1.3)]


# --- docker:swarm: the stack as a compose document ---------------------------------------

def test_swarm_document_runs_the_prepared_images_by_id_labelled_with_the_run() -> None:
    """Every service runs the image the other backends run, by its id, through
    /bench/init with the nonce; limits, healthcheck, volumes and networks carried over;
    without IPVS every service is dnsrr with nothing published; labelled_stack then
    labels the services, the networks and the volume with the run."""
    import yaml

    from runtimes.swarm import labelled_stack

    s = load(STACK)
    refs = {x.name: f"sha256:{i:064x}" for i, x in enumerate(s.services)}
    doc = stack.swarm_document(s.services, {x.name: x.workload for x in s.services}, refs,
                               "n0nce", mesh=False)
    assert yaml.safe_load(yaml.safe_dump(doc)) == doc  # (plain data, as the CLI reads it)
    svc = doc["services"]
    assert {n: v["image"] for n, v in svc.items()} == refs
    app, db, web = svc["app"], svc["db"], svc["web"]
    assert app["entrypoint"] == ["/bench/init"] and app["command"] == ["app"]
    assert app["environment"]["CVBENCH_NONCE"] == "n0nce" and app["user"] == "nobody"
    assert app["deploy"]["resources"] == {"limits": {"cpus": "0.5", "memory": str(64 << 20)}}
    assert app["healthcheck"] == {"test": ["CMD", "/bin/sh", "-c",
                                           "wget -q -O- http://127.0.0.1:8000/"],
                                  "interval": "500ms", "timeout": "30000ms", "retries": 3,
                                  "start_period": "0ms"}
    assert db["volumes"] == [{"type": "volume", "source": "data", "target": "/data",
                              "read_only": False}]
    assert all(v["deploy"]["endpoint_mode"] == "dnsrr" and "ports" not in v
               for v in svc.values())
    assert doc["networks"] == {"default": {"driver": "overlay"}}
    labelled = labelled_stack(doc, "aaaaaaaa01")
    assert labelled["networks"]["default"]["labels"] == {"cvbench.run": "aaaaaaaa01"}
    assert labelled["volumes"] == {"data": {"labels": {"cvbench.run": "aaaaaaaa01"}}}
    assert all(v["deploy"]["labels"] == {"cvbench.run": "aaaaaaaa01"}
               for v in labelled["services"].values())
    # with the routing mesh: the VIP, and the ports published (a port swarm picks: none)
    mesh = stack.swarm_document(s.services, {x.name: x.workload for x in s.services}, refs,
                                "n0nce", mesh=True)["services"]["web"]
    assert "endpoint_mode" not in mesh["deploy"]
    assert mesh["ports"] == [{"target": 80, "published": 8080, "protocol": "tcp",
                              "mode": "ingress"},
                             {"target": 443, "protocol": "tcp", "mode": "ingress"}]
    assert web["networks"] == {"default": None}
    assert "placement" not in web["deploy"]
    here = stack.swarm_document(s.services, {x.name: x.workload for x in s.services}, refs,
                                "n0nce", mesh=False, node="abc")["services"]["web"]
    assert here["deploy"]["placement"] == {"constraints": ["node.id == abc"]}


def test_swarm_document_aliases_of_container_name_and_links(tmp_path: Path) -> None:
    """A compose file's container_name and links' aliases (which `docker stack deploy`
    would ignore) are network aliases in the swarm document: the names still resolve."""
    (tmp_path / "c.yaml").write_text(
        "services:\n"
        "  db: {image: x, container_name: the-db, networks: [back]}\n"
        "  web: {image: x, links: ['db:database'], networks: [back, front]}\n"
        "networks: {back: {}, front: {}}\n")
    s = compose.read(tmp_path / "c.yaml", base(), found_in({"docker": {"x"}}))
    doc = stack.swarm_document(s.services, {x.name: x.workload for x in s.services},
                               dict.fromkeys(("db", "web"), "sha256:" + "0" * 64), "n",
                               mesh=False)
    assert doc["services"]["db"]["networks"] == {"back": {"aliases": ["the-db", "database"]}}
    assert doc["services"]["web"]["networks"] == {"back": None, "front": None}
    assert set(doc["networks"]) == {"back", "front"}
