"""The seccomp profile: conditions resolved as dockerd resolves them, compiled by
libseccomp, written into an OCI config (no privileges: nothing is loaded here)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import UsageError
from runtimes.ns import seccomp
from runtimes.ns.config import DEFAULT_CAPS, NO_MKNOD_CAPS
from tests.conftest import require

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


def run_bpf(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """What the kernel's filter returns for system call `nr` of `arch` with `args` (the
    rest 0): a classic BPF interpreter over struct seccomp_data, for the instructions
    libseccomp and runc's prefix use (an unknown one fails the test)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args, *([0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, a = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # BPF_LD|BPF_W|BPF_ABS
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x54:  # BPF_ALU|BPF_AND|BPF_K
            a &= k
        elif code == 0x05:  # BPF_JMP|BPF_JA
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # JEQ, JGT, JGE, JSET (K)
            taken = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # BPF_RET|BPF_K
            return k
        else:
            raise AssertionError(f"instruction {code:#x} at {pc - 1}: not interpreted here")


ALLOW, ERRNO = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno


def test_compiles_to_bpf_and_skips_unknown_names(tmp_path: Path) -> None:
    """A name this libseccomp does not know is left out of the program (which is then the
    program of the profile without it), and the names beside it, in its rule and in the
    others, are in: run on the kernel's input, the program allows them, returns a rule's
    errno, and gives the default to a call the profile does not name."""
    import pyseccomp

    def compiled(profile: dict[str, Any]) -> bytes:
        return seccomp.compile_bpf(seccomp.load(write(tmp_path, profile), NO_MKNOD_CAPS))

    def nr(name: str) -> int:
        return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))

    assert nr("no_such_call_anywhere") == -1  # unknown to this libseccomp
    program = compiled(PROFILE)
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes each
    known = [r for r in PROFILE["syscalls"] if r["names"] != ["no_such_call_anywhere"]]
    assert compiled(dict(PROFILE, syscalls=known)) == program
    arch = int(pyseccomp.system_arch())
    for name in ("read", "write", "ptrace"):
        assert run_bpf(program, nr(name), arch) == ALLOW, name
    assert run_bpf(program, nr("clone3"), arch) == ERRNO | 38
    assert run_bpf(program, nr("getpid"), arch) == ERRNO | 1  # not named: the default
    assert run_bpf(program, nr("mount"), arch) == ERRNO | 1  # its rule needs CAP_SYS_ADMIN
    # the unknown name in one rule with a known one: the known one still goes in
    mixed = compiled(dict(PROFILE, syscalls=[
        *known, {"names": ["no_such_call_anywhere", "getpid"], "action": "SCMP_ACT_ALLOW"}]))
    assert run_bpf(mixed, nr("getpid"), arch) == ALLOW
    assert run_bpf(mixed, nr("read"), arch) == ALLOW


def test_conditions_on_one_argument_are_alternatives() -> None:
    """An OCI profile may compare one argument several times in a rule (runtime-tools'
    default config allows personality(0), (8) and (0xffffffff) so): libseccomp cannot
    AND those, and they are compiled as alternatives, any of them allowing the call, while
    conditions on distinct arguments still must all hold."""
    import pyseccomp

    profile = seccomp.from_oci({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}
                      for v in (0, 8, 0xFFFFFFFF)]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]}]},
        "config.json: linux.seccomp")
    program = seccomp.compile_bpf(profile)
    arch = int(pyseccomp.system_arch())
    personality = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "personality"))
    socket = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "socket"))
    for value in (0, 8, 0xFFFFFFFF):
        assert run_bpf(program, personality, arch, (value,)) == ALLOW, value
    assert run_bpf(program, personality, arch, (1,)) == ERRNO | 1
    assert run_bpf(program, socket, arch, (1, 2)) == ALLOW
    assert run_bpf(program, socket, arch, (1, 3)) == ERRNO | 1
    assert run_bpf(program, socket, arch, (2, 2)) == ERRNO | 1


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
    require("seccomp-profile", None if seccomp.DOCKER_PROFILE.is_file() else
            f"{seccomp.DOCKER_PROFILE}: run make provision")
    p = seccomp.load(seccomp.DOCKER_PROFILE, DEFAULT_CAPS, machine="x86_64", kernel="6.1")
    allowed = {n for r in p.rules if r.action == "SCMP_ACT_ALLOW" and not r.args
               for n in r.names}
    assert not {"unshare", "setns", "mount", "keyctl", "add_key", "bpf", "userfaultfd",
                "perf_event_open", "open_by_handle_at", "clone"} & allowed
    assert {"read", "execve", "close_range"} <= allowed
    assert p.source == "docker default"


# --- cvbench-ns's cache of compiled programs (seccomp.compile_oci) -----------------------


def oci_profile(tmp_path: Path, profile: dict[str, Any] = PROFILE) -> dict[str, Any]:
    """A profile as it comes in a bundle's linux.seccomp."""
    data: dict[str, Any] = json.loads(json.dumps(seccomp.oci(
        seccomp.load(write(tmp_path, profile), NO_MKNOD_CAPS))))
    return data


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The profiles compile_bpf compiled (each by its source), counted as it runs."""
    seen: list[str] = []
    real = seccomp.compile_bpf

    def counted(p: seccomp.Profile) -> bytes:
        seen.append(p.sha256)
        return real(p)

    monkeypatch.setattr(seccomp, "compile_bpf", counted)
    return seen


def entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir())


def test_cache_compiles_once_and_gives_libseccomps_program(
        tmp_path: Path, compiles: list[str]) -> None:
    data = oci_profile(tmp_path)
    direct = seccomp.compile_bpf(seccomp.from_oci(data, "x"))  # (the reference: no cache)
    cache = tmp_path / "cache"
    assert seccomp.compile_oci(data, "x", str(cache)) == direct
    assert seccomp.compile_oci(json.loads(json.dumps(data)), "x", str(cache)) == direct
    assert len(compiles) == 2  # the reference, then the first call: not the second
    assert cache.stat().st_mode & 0o777 == 0o700
    (entry,) = entries(cache)
    assert entry.stat().st_mode & 0o777 == 0o600
    other = oci_profile(tmp_path, dict(PROFILE, defaultAction="SCMP_ACT_KILL_PROCESS"))
    assert seccomp.compile_oci(other, "x", str(cache)) == \
        seccomp.compile_bpf(seccomp.from_oci(other, "x"))
    assert len(entries(cache)) == 2


def test_cache_entry_corrupt_or_for_another_input_is_rebuilt(
        tmp_path: Path, compiles: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = oci_profile(tmp_path)
    cache = tmp_path / "cache"
    good = seccomp.compile_oci(data, "x", str(cache))
    (entry,) = entries(cache)
    raw = entry.read_bytes()
    i = raw.rindex(good) + len(good) // 2  # a bit of the program flipped
    for bad in (raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:], raw[:len(raw) // 2], b"",
                b"\x00" * 64):
        entry.write_bytes(bad)
        n = len(compiles)
        assert seccomp.compile_oci(data, "x", str(cache)) == good
        assert len(compiles) == n + 1 and entry.read_bytes() == raw  # compiled, rewritten
    # another profile's entry under this one's name (a colliding name) is not taken
    other = oci_profile(tmp_path, dict(PROFILE, defaultAction="SCMP_ACT_KILL_PROCESS"))
    seccomp.compile_oci(other, "x", str(cache))
    (other_entry,) = [e for e in entries(cache) if e != entry]
    other_entry.replace(entry)
    assert seccomp.compile_oci(data, "x", str(cache)) == good
    # another libseccomp, or another version of the compiler's source: not the same key
    n = len(compiles)
    monkeypatch.setattr(seccomp, "_libseccomp_version", lambda: (9, 9, 9))
    assert seccomp.compile_oci(data, "x", str(cache)) == good
    assert len(compiles) == n + 1


def test_cache_of_others_is_not_trusted(tmp_path: Path, compiles: list[str]) -> None:
    """A directory or an entry that others may write is not used; a symlink is not
    followed."""
    data = oci_profile(tmp_path)
    cache = tmp_path / "cache"
    good = seccomp.compile_oci(data, "x", str(cache))
    (entry,) = entries(cache)
    entry.chmod(0o666)
    n = len(compiles)
    assert seccomp.compile_oci(data, "x", str(cache)) == good and len(compiles) == n + 1
    assert entry.stat().st_mode & 0o777 == 0o600  # rewritten, its own
    cache.chmod(0o777)
    assert seccomp.compile_oci(data, "x", str(cache)) == good and len(compiles) == n + 2
    cache.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(cache)
    assert seccomp.compile_oci(data, "x", str(link)) == good and len(compiles) == n + 3
    # invalid profiles are refused as without a cache, and leave nothing behind
    with pytest.raises(UsageError, match=r"x\.flags"):
        seccomp.compile_oci(dict(data, flags=["SECCOMP_FILTER_FLAG_LOG"]), "x", str(cache))
    assert len(entries(cache)) == 1
