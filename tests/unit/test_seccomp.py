"""The seccomp profile: conditions resolved as dockerd resolves them, compiled by
libseccomp, written into an OCI config (no privileges: nothing is loaded here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import UsageError
from runtimes.ns import seccomp
from runtimes.ns.config import DEFAULT_CAPS, NO_MKNOD_CAPS

PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["unshare", "mount"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                   "op": "SCMP_CMP_MASKED_EQ"}],
         "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]}},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["amd64"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["no_such_call_anywhere"], "action": "SCMP_ACT_ALLOW"},
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def names(p: seccomp.Profile) -> set[str]:
    return {n for r in p.rules for n in r.names}


def test_conditions_resolve_like_dockerd(tmp_path: Path) -> None:
    path = write(tmp_path, PROFILE)
    p = seccomp.load(path, DEFAULT_CAPS, machine="x86_64", kernel="6.1.0-13-amd64")
    # no CAP_SYS_ADMIN: unshare/mount stay denied, clone only without namespace flags
    assert names(p) == {"read", "write", "clone", "clone3", "arch_prctl", "ptrace",
                        "no_such_call_anywhere"}
    clone = next(r for r in p.rules if r.names == ("clone",))
    assert clone.args == ((0, "SCMP_CMP_MASKED_EQ", 2114060288, 0),)
    assert next(r for r in p.rules if r.names == ("clone3",)).errno_ret == 38
    assert p.arches == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert p.default_errno == 1  # ERRNO without errnoRet: EPERM, as runc reads it

    admin = seccomp.load(path, (*DEFAULT_CAPS, "CAP_SYS_ADMIN"), machine="x86_64",
                         kernel="6.1.0")
    assert {"unshare", "mount"} <= names(admin) and "clone3" not in names(admin)
    arm_old = seccomp.load(path, DEFAULT_CAPS, machine="aarch64", kernel="4.4.0")
    assert "arch_prctl" not in names(arm_old) and "ptrace" not in names(arm_old)
    assert arm_old.arches == ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")


def test_compiles_to_bpf_and_skips_unknown_names(tmp_path: Path) -> None:
    p = seccomp.load(write(tmp_path, PROFILE), NO_MKNOD_CAPS)
    program = seccomp.compile_bpf(p)
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes each
    # one more allowed call makes a different program: the rules are really in it
    more = dict(PROFILE, syscalls=[*PROFILE["syscalls"],
                                   {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}])
    assert seccomp.compile_bpf(seccomp.load(write(tmp_path, more), NO_MKNOD_CAPS)) != program


def test_oci_section_carries_the_resolved_rules(tmp_path: Path) -> None:
    p = seccomp.load(write(tmp_path, PROFILE), DEFAULT_CAPS, machine="x86_64",
                     kernel="6.1")
    out = seccomp.oci(p)
    assert out["defaultAction"] == "SCMP_ACT_ERRNO" and out["defaultErrnoRet"] == 1
    assert out["architectures"] == list(p.arches)
    clone = next(c for c in out["syscalls"] if c["names"] == ["clone"])
    assert clone["args"] == [{"index": 0, "value": 2114060288, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    assert not any("unshare" in c["names"] for c in out["syscalls"])


@pytest.mark.parametrize(("data", "field"), [
    ({"archMap": []}, "defaultAction"),
    (dict(PROFILE, syscalls=[{"names": "read", "action": "SCMP_ACT_ALLOW"}]), "syscalls[0]"),
    (dict(PROFILE, syscalls=[{"names": ["read"], "action": "SCMP_ACT_MAYBE"}]),
     "syscalls[0].action"),
    (dict(PROFILE, syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                              "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]),
     "syscalls[0].args[0]"),
])
def test_bad_profile_names_the_file_and_field(tmp_path: Path, data: object,
                                              field: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(UsageError, match=re.escape(f"{path}: {field}:")):
        seccomp.load(path, DEFAULT_CAPS)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not JSON"):
        seccomp.load(path, DEFAULT_CAPS)


def test_dockers_profile_closes_user_namespaces() -> None:
    """Docker's own default, as provisioned: without CAP_SYS_ADMIN, no unshare, setns,
    mount or keyctl; clone without namespace flags only."""
    if not seccomp.DOCKER_PROFILE.is_file():
        pytest.skip(f"{seccomp.DOCKER_PROFILE}: run make provision")
    p = seccomp.load(seccomp.DOCKER_PROFILE, DEFAULT_CAPS, machine="x86_64", kernel="6.1")
    allowed = {n for r in p.rules if r.action == "SCMP_ACT_ALLOW" and not r.args
               for n in r.names}
    assert not {"unshare", "setns", "mount", "keyctl", "add_key", "bpf", "userfaultfd",
                "perf_event_open", "open_by_handle_at", "clone"} & allowed
    assert {"read", "execve", "close_range"} <= allowed
    assert p.source == "docker default"
