"""clone3 with CLONE_INTO_CGROUP (namespaces.clone3, what the ns fork server calls for
ns:intocgroup), checked against the kernel's own view: the child's /proc/PID/cgroup and
the cgroup's cgroup.procs name it, though nothing was written to cgroup.procs. The
cgroup is made in the cgroup2 hierarchy (on this hybrid host /sys/fs/cgroup/unified,
which has no controller but takes processes all the same). Then the flavour itself:
NotApplicable where the host's cgroup manager is not v2, a real instance where it is."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core.errors import NotApplicable
from harness.core.hostinfo import cgroup_mode
from runtimes.base import InstanceSpec, Prepared
from runtimes.ns.config import BASE_FLAGS
from runtimes.ns.runtime import NsRuntime
from tests.conftest import require
from tests.integration._nsutil import (
    HERE,
    cgroup2_mount,
    close_env,
    fresh_cgroup,
    open_env,
)

pytestmark = pytest.mark.root

# In a fresh interpreter (single-threaded, as the fork server is): clone3 a child into the
# cgroup argv[1] with the flags ns's fork server uses (its namespaces and CLONE_PARENT:
# the child is the test's), print its pid and exit; the child waits for a byte on its
# stdin, then exits 7.
_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[2])
from runtimes.ns import namespaces as ns
cgroup = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
pid = ns.clone3(int(sys.argv[3]) | ns.CLONE_PARENT, cgroup)
if pid == 0:
    os.closerange(1, 3)  # (the test reads our stdout and stderr to their end)
    os.read(0, 1)
    os._exit(7)
print(pid, flush=True)
"""


@pytest.fixture
def cgroup(run_id: str) -> Iterator[Path]:
    yield from fresh_cgroup(run_id, "clone3")


def test_clone3_places_the_child_in_its_cgroup(cgroup: Path) -> None:
    assert (cgroup / "cgroup.procs").read_text() == ""
    r, w = os.pipe()
    try:
        out = subprocess.run([sys.executable, "-I", "-c", _SCRIPT, str(cgroup),
                              str(HERE.parents[1]), str(BASE_FLAGS)], stdin=r,
                             capture_output=True, text=True, timeout=60, check=True)
        pid = int(out.stdout)
        try:
            root = cgroup2_mount()
            assert root is not None
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            assert f"0::/{cgroup.relative_to(root)}" in lines, lines
            assert (cgroup / "cgroup.procs").read_text().split() == [str(pid)]
            # ...with ns's namespaces: PID 1 of a new pid namespace
            nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split()
            assert nspid[:2] == [str(pid), "1"], nspid
            # ...and ours (CLONE_PARENT): not the cloning process's, which has exited
            assert int(Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[1]) \
                == os.getpid()
        finally:
            os.write(w, b"x")
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
    finally:
        os.close(r)
        os.close(w)


def test_intocgroup_flavour(run_id: str) -> None:
    """Not v2 (this machine): NotApplicable at create, nothing made, and the same reason
    in the backend's availability (`bench doctor`). v2: a real instance, which the
    kernel shows in the instance's own cgroup."""
    require("root", None if os.geteuid() == 0 else "needs root")
    mode = cgroup_mode()
    if mode != "v2":
        rt = NsRuntime("intocgroup")
        reason = f"needs cgroup v2 (this host: {'v1 hybrid' if mode == 'hybrid' else mode})"
        assert rt.availability().details["clone3"] == f"not applicable here: {reason}"
        spec = InstanceSpec(run_id=run_id, name=f"cvbench-{run_id}-1", argv=("true",))
        with pytest.raises(NotApplicable) as e:
            rt.create(spec, Prepared(image=None, backend=rt.name, ref="/nonexistent"))  # type: ignore[arg-type]
        assert str(e.value) == f"ns:intocgroup: {reason}"
        assert rt.leftovers([]) == [] or all(run_id not in x.name for x in rt.leftovers([]))
        return
    env, lock = open_env("ns:intocgroup")
    try:
        assert env.rt.traits().settings["start"].startswith("clone3(")
        inst = env.started(("sleep", "100"))
        try:
            path = env.rt.cg.path(inst.spec.name)
            root = path.parents[1]  # <root>/cvbench/<name>
            assert f"0::/{path.relative_to(root)}" in \
                Path(f"/proc/{inst.pid}/cgroup").read_text().splitlines()
            assert str(inst.pid) in (path / "cgroup.procs").read_text().split()
            # inside, the cgroup namespace is rooted at it; an exec joins it too
            ex = env.rt.exec(inst, ("cat", "/proc/self/cgroup"))
            assert ex.code == 0 and ex.stdout.split() == [b"0::/"], ex
        finally:
            env.rt.stop(inst, grace=0)
            env.rt.remove(inst)
    finally:
        assert close_env(env, lock) == []
