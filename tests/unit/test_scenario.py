"""Scenario parsing: the valid shapes, and every error path naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import scenario, validate
from harness.core.errors import ScenarioError

MINIMAL = 'name = "s"\n[workload]\nargv = ["true"]\n'
TOP = 'name = "s"\n'  # + top-level keys, then WL
VALID = 'name = "s"\nstudy = "startup"\n[workload]\nargv = ["true"]\n'
WL = '[workload]\nargv = ["true"]\n'


def write(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_minimal_defaults(tmp_path: Path) -> None:
    s = scenario.load(write(tmp_path, MINIMAL))
    assert s.name == "s" and s.study == "s"
    assert s.workload.argv == ("true",)
    assert s.network == "none"
    assert [v.name for v in s.variants] == ["default"]


def test_full(tmp_path: Path) -> None:
    text = '''
name = "full"
description = "d"
study = "startup"
backends = ["host", "ns"]
network = "host"
[workload]
image = { recipe = "io", binaries = ["cat"] }
argv = ["sh", "-c", "true"]
readiness = "exit"
env = { A = "1" }
[limits]
cpus = 0.5
memory = "64M"
pids = 10
[[mounts]]
type = "tmpfs"
target = "/scratch"
size = "1M"
[[mounts]]
type = "volume"
source = "data"
target = "/data"
[sampling]
warmups = 0
min_samples = 3
max_samples = 5
target_ci = 0.1
[variants]
network = ["none", "host"]
limits = { cpus = [0.5, 1] }
'''
    s = scenario.load(write(tmp_path, text))
    assert s.limits.memory == 64 << 20 and s.limits.cpus == 0.5 and s.limits.pids == 10
    assert s.mounts[0].size == 1 << 20 and s.mounts[1].source == "data"
    assert s.workload.image.binaries == ("cat",)
    assert len(s.variants) == 4
    names = {v.name for v in s.variants}
    assert "limits.cpus=1,network=host" in names
    cfg = s.config(next(v for v in s.variants if v.name == "limits.cpus=1,network=host"))
    assert cfg.network == "host" and cfg.limits.cpus == 1.0 and cfg.limits.memory == 64 << 20
    validate.check(s)
    assert s.as_dict()["limits"]["memory"] == 64 << 20


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("name = \n", "", "invalid TOML"),
    ('name = "s"\nbogus = 1\n', "bogus", "unknown key"),
    ('name = 3\n', "name", "must be a string"),
    ('name = "a b"\n', "name", "letters"),
    (TOP + 'network = "wifi"\n' + WL, "network", "must be one of"),
    (MINIMAL + '[limits]\nmemory = -5\n', "limits.memory", "negative"),
    (MINIMAL + '[limits]\ncpus = -1\n', "limits.cpus", "positive"),
    (MINIMAL + '[limits]\npids = 0\n', "limits.pids", "at least 1"),
    (MINIMAL + '[limits]\nmemory = "lots"\n', "limits.memory", "not a size"),
    (MINIMAL + '[limits]\nswap = 1\n', "limits.swap", "unknown key"),
    ('name = "s"\n[workload]\nargv = []\n', "workload.argv", "must not be empty"),
    ('name = "s"\n[workload]\nargv = "true"\n', "workload.argv", "list of strings"),
    ('name = "s"\n[workload]\nreadiness = "soon"\n', "workload.readiness", "is not one of"),
    ('name = "s"\nworkload = 3\n', "workload", "must be a table"),
    (MINIMAL + '[[mounts]]\ntype = "nfs"\ntarget = "/x"\n', "mounts[0].type", "one of"),
    (MINIMAL + '[[mounts]]\ntype = "bind"\ntarget = "x"\nsource = "/"\n', "mounts[0].target",
     "absolute"),
    (MINIMAL + '[[mounts]]\ntype = "tmpfs"\ntarget = "/x"\nsource = "/"\n', "mounts[0].source",
     "no source"),
    (MINIMAL + '[sampling]\nmin_samples = 5\nmax_samples = 2\n', "sampling.max_samples",
     ">= min_samples"),
    (MINIMAL + '[sampling]\ntarget_ci = "tight"\n', "sampling.target_ci", "number"),
    (MINIMAL + '[variants]\nnetwork = []\n', "variants.network", "non-empty"),
    (MINIMAL + '[variants]\ncolour = ["red"]\n', "variants.colour", "unknown key"),
    (TOP + 'backends = ["host", "host"]\n' + WL, "backends", "twice"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as exc:
        scenario.load(path)
    assert exc.value.source == path
    assert exc.value.key == key
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_toml_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"line 2"):
        scenario.load(write(tmp_path, 'name = "s"\nx = = 1\n'))


@pytest.mark.parametrize(("text", "key"), [
    (TOP + 'study = "startup"\nbackends = ["nope"]\n' + WL, "backends"),
    (TOP + 'study = "nope"\n' + WL, "study"),
    (VALID + '[limits]\ncpus = 4096\n', "limits.cpus"),
    (VALID + '[limits]\nmemory = "100T"\n', "limits.memory"),
    (VALID + '[[mounts]]\ntype = "bind"\ntarget = "/x"\nsource = "/no/such/path"\n',
     "mounts[0].source"),
    ('name = "s"\nstudy = "startup"\n[workload]\nimage = { binaries = ["no-such-binary-xyz"] }\n',
     "workload.image.binaries"),
    (VALID + '[sampling]\nmetric = "memory.pss"\n', "sampling.metric"),
    (VALID + '[params]\nfoo = 1\n', "params.foo"),
])
def test_host_validation(tmp_path: Path, text: str, key: str) -> None:
    s = scenario.load(write(tmp_path, text))
    with pytest.raises(ScenarioError) as exc:
        validate.check(s)
    assert exc.value.key == key


def test_named_scenarios_resolve_and_validate() -> None:
    known = scenario.available()
    assert "startup" in known
    for name in known:
        validate.check(scenario.load(name))


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ScenarioError, match=r"known: .*startup"):
        scenario.resolve("no-such-scenario")
