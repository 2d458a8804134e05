"""The eBPF device program ns attaches on cgroup v2 (runtimes/ns/cgroups/devices_bpf.py),
enforced by the real kernel: a cgroup is made in the cgroup2 hierarchy (on this hybrid
host /sys/fs/cgroup/unified: it holds no controller, but the kernel asks its device
programs as well as the v1 devices controller), the program generated from ns's own
allow-list is attached, a fresh process joins the cgroup, and what the kernel answers
to its open() and mknod() calls is compared with the list. bpftool, which is not
cvbench, says independently what is attached."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.ns.cgroups import devices_bpf
from runtimes.ns.config import DEVICE_RULES
from tests.conftest import require
from tests.integration._nsutil import fresh_cgroup, node_dir

pytestmark = pytest.mark.root

# Joins the cgroup argv[1], then per argument "open:PATH" or "mknod:PATH:c|b:MAJOR:MINOR"
# prints OK or the errno's name.
_SCRIPT = """
import errno, os, stat, sys
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write("0")
for op in sys.argv[2:]:
    kind, path, *dev = op.split(":")
    try:
        if kind == "open":
            os.close(os.open(path, os.O_RDWR))
        else:
            mode = stat.S_IFCHR if dev[0] == "c" else stat.S_IFBLK
            os.mknod(path, mode | 0o600, os.makedev(int(dev[1]), int(dev[2])))
        print("OK")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""


@pytest.fixture
def cgroup(run_id: str) -> Iterator[Path]:
    yield from fresh_cgroup(run_id, "devices")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Path]:
    with node_dir(tmp_path) as d:
        yield d


@pytest.fixture
def nodes(dev: Path) -> tuple[str, str]:
    """/dev/mem's node (c 1:1) and /dev/kmsg's (c 1:11), made outside any device program."""
    out = []
    for name, minor in (("mem", 1), ("kmsg", 11)):
        os.mknod(dev / name, stat.S_IFCHR | 0o600, os.makedev(1, minor))
        out.append(str(dev / name))
    return out[0], out[1]


def in_cgroup(cgroup: Path, *ops: str) -> list[str]:
    res = subprocess.run([sys.executable, "-I", "-c", _SCRIPT, str(cgroup), *ops],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res
    return res.stdout.split()


def test_ns_allow_list_is_enforced(cgroup: Path, nodes: tuple[str, str], dev: Path) -> None:
    mem, kmsg = nodes
    ops = ("open:/dev/null", "open:/dev/zero", f"open:{kmsg}", f"open:{mem}",
           f"mknod:{dev}/mem2:c:1:1", f"open:{dev}/mem2")
    # Without a program the same process opens /dev/kmsg's node (the control: what
    # refuses below is the program, nothing else); /dev/mem's only where the kernel
    # has the device (ENXIO where it was built without it).
    before = in_cgroup(cgroup, *ops[:4])
    assert before[:3] == ["OK", "OK", "OK"] and before[3] in ("OK", "ENXIO"), before
    devices_bpf.attach(devices_bpf.loaded(DEVICE_RULES), cgroup)
    # /dev/null and /dev/zero are on the list, /dev/kmsg and /dev/mem are not: they cannot
    # be opened; any node can be made ("c *:* m", as in Docker's list), not opened.
    assert in_cgroup(cgroup, *ops) == ["OK", "OK", "EPERM", "EPERM", "OK", "EPERM"]


def test_mknod_outside_the_list_is_refused(cgroup: Path, dev: Path) -> None:
    devices_bpf.attach(devices_bpf.loaded(("c 1:3 rwm", "c 1:5 r")), cgroup)
    assert in_cgroup(cgroup, f"mknod:{dev}/null:c:1:3", f"mknod:{dev}/zero:c:1:5",
                     f"mknod:{dev}/sda:b:8:0", "open:/dev/null",
                     "open:/dev/zero") == ["OK", "EPERM", "EPERM", "OK", "EPERM"]
    # (/dev/zero: "r" only, and O_RDWR asks for write as well)


def test_bpftool_sees_the_program(cgroup: Path) -> None:
    bpftool = shutil.which("bpftool")
    require("bpftool", None if bpftool else "bpftool is not installed (scripts/provision "
            "installs it)")
    assert bpftool is not None
    devices_bpf.attach(devices_bpf.loaded(DEVICE_RULES), cgroup)
    attached = json.loads(subprocess.run([bpftool, "-j", "cgroup", "show", str(cgroup)],
                                         capture_output=True, text=True, check=True).stdout)
    assert [(p["attach_type"], p["attach_flags"], p["name"]) for p in attached] == \
        [("cgroup_device", "multi", "cvbench_devices")]
    prog = json.loads(subprocess.run([bpftool, "-j", "prog", "show", "id",
                                      str(attached[0]["id"])],
                                     capture_output=True, text=True, check=True).stdout)
    assert prog["type"] == "cgroup_device"
    assert prog["bytes_xlated"] == len(devices_bpf.program(DEVICE_RULES))  # 8 per insn


def test_a_program_the_verifier_refuses_says_why() -> None:
    require("root", None if os.geteuid() == 0 else "needs root")
    with pytest.raises(OSError, match="verifier: last insn is not an exit"):
        devices_bpf.load(devices_bpf.insn(devices_bpf.MOV32_K, 0, imm=1))  # no exit
