"""Docker's default seccomp profile, read at run time and compiled once per runner.

The profile is a JSON file in the format moby and containers-common share
(profiles/seccomp/default.json): a default action, an arch map, and rules whose
`includes`/`excludes` name capabilities, architectures and a minimum kernel. `load()`
resolves those conditions for ns's capability set, this machine's architecture and
kernel, exactly as dockerd does before it hands the rules to runc (moby
profiles/seccomp/seccomp_linux.go); `compile_bpf()` turns the result into a classic BPF
program with libseccomp (through pyseccomp), and `oci()` into the `linux.seccomp` section
of an OCI config, so that `oci:*` applies the very same rules.

Which file: $CVBENCH_SECCOMP_PROFILE if set, else Docker's own default as the Debian
package of the installed dockerd ships it (scripts/provision.d/26-seccomp.sh puts it in
/usr/share/cvbench/seccomp), else containers-common's (/usr/share/containers/seccomp.json,
Podman's). They differ: containers-common 0.50 lets a container make user namespaces
(unshare, clone with CLONE_NEWUSER) and call keyctl, which Docker's refuses; the record
names the file and its sha256.

Nothing here runs in the instance: the child (process.py) only loads the compiled bytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import marshal
import os
import stat
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from harness.core.errors import BackendUnavailable, UsageError
from harness.core.record import record

TYPE_CHECKING = False  # (typing costs each cvbench-ns call: only mypy reads these)
if TYPE_CHECKING:
    from typing import Any

PROFILE_ENV = "CVBENCH_SECCOMP_PROFILE"
DOCKER_PROFILE = Path("/usr/share/cvbench/seccomp/docker-default.json")
CONTAINERS_COMMON_PROFILE = Path("/usr/share/containers/seccomp.json")

# The arch names of the profile's includes/excludes are Go's (GOARCH) and libseccomp's.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_LOG")
# A profile's ERRNO without errnoRet means EPERM (runc's default).
_DEFAULT_ERRNO = errno.EPERM


@record
class Rule:
    """One resolved rule: `action` for `names` when every (index, op, value, value_two)
    comparison of its arguments holds."""

    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[tuple[int, str, int, int], ...] = ()


@record
class Profile:
    path: str
    sha256: str
    default_action: str
    default_errno: int | None
    arches: tuple[str, ...]  # libseccomp names: the native one first
    rules: tuple[Rule, ...]  # those whose conditions hold here, in the file's order

    @property
    def source(self) -> str:
        if self.path == str(DOCKER_PROFILE):
            return "docker default"
        if self.path == str(CONTAINERS_COMMON_PROFILE):
            return "containers-common"
        return "custom"

    def describe(self) -> str:
        """One line for the record: where the rules come from and what they default to."""
        default = self.default_action.removeprefix("SCMP_ACT_")
        if self.default_errno is not None:
            default += f"({errno.errorcode.get(self.default_errno, self.default_errno)})"
        return (f"{self.source} profile {self.path} sha256:{self.sha256[:16]}…, "
                f"default {default}, {sum(len(r.names) for r in self.rules)} syscall "
                f"rules for {'+'.join(a.removeprefix('SCMP_ARCH_') for a in self.arches)}")


def find() -> Path | None:
    """The profile file to use here, or None when there is none."""
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV])
    return next((p for p in (DOCKER_PROFILE, CONTAINERS_COMMON_PROFILE) if p.is_file()), None)


def _kernel(release: str) -> tuple[int, int]:
    parts = release.split("-")[0].split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def load(path: Path, caps: tuple[str, ...], machine: str | None = None,
         kernel: str | None = None) -> Profile:
    """Read `path` and keep the rules that apply to a process holding `caps` on this
    machine (or on `machine`/`kernel`, for tests). A malformed file raises UsageError
    naming the file and the field."""
    import hashlib

    machine = machine or os.uname().machine
    kver = _kernel(kernel or os.uname().release)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the seccomp profile: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path}: not JSON: {e}") from None

    def bad(key: str, why: str) -> UsageError:
        return UsageError(f"{path}: {key}: {why}")

    def action(value: Any, key: str) -> str:
        if value not in _ACTIONS:
            raise bad(key, f"unknown action {value!r}")
        return str(value)

    if not isinstance(data, dict):
        raise bad("(top)", "must be an object")
    default_action = action(data.get("defaultAction"), "defaultAction")
    native = _SCMP_ARCH.get(machine)
    if native is None:
        raise BackendUnavailable("ns", f"no seccomp architecture known for {machine}")
    arches = [native]
    for i, entry in enumerate(data.get("archMap") or []):
        if isinstance(entry, dict) and entry.get("architecture") == native:
            arches += [str(a) for a in entry.get("subArchitectures") or []]
        elif not isinstance(entry, dict):
            raise bad(f"archMap[{i}]", "must be an object")
    goarch = _GOARCH[machine]
    rules: list[Rule] = []
    for i, s in enumerate(data.get("syscalls") or []):
        key = f"syscalls[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("names"), list):
            raise bad(key, "must be an object with a list of names")
        if not _applies(s.get("includes") or {}, s.get("excludes") or {}, caps, goarch, kver):
            continue
        args = []
        for j, a in enumerate(s.get("args") or []):
            if not isinstance(a, dict) or a.get("op") not in _OPS:
                raise bad(f"{key}.args[{j}]", f"unknown comparison {a!r}")
            args.append((int(a["index"]), str(a["op"]), int(a.get("value", 0)),
                         int(a.get("valueTwo", 0))))
        errno_ret = s.get("errnoRet")
        rules.append(Rule(tuple(str(n) for n in s["names"]), action(s.get("action"),
                          f"{key}.action"), int(errno_ret) if errno_ret is not None else None,
                          tuple(args)))
    default_errno = data.get("defaultErrnoRet")
    if default_errno is None and default_action == "SCMP_ACT_ERRNO":
        default_errno = _DEFAULT_ERRNO
    return Profile(str(path), hashlib.sha256(raw).hexdigest(), default_action,
                   int(default_errno) if default_errno is not None else None,
                   tuple(arches), tuple(rules))


def _applies(inc: Mapping[str, Any], exc: Mapping[str, Any], caps: tuple[str, ...],
             goarch: str, kver: tuple[int, int]) -> bool:
    """moby's rule filter: every included cap held, the arch listed, the kernel new
    enough; no excluded cap held, the arch not excluded."""
    if inc.get("arches") and goarch not in inc["arches"]:
        return False
    if any(c not in caps for c in inc.get("caps") or ()):
        return False
    if inc.get("minKernel") and kver < _kernel(str(inc["minKernel"])):
        return False
    if goarch in (exc.get("arches") or ()):
        return False
    return not any(c in caps for c in exc.get("caps") or ())


def _action_value(action: str, errno_ret: int | None) -> int:
    import pyseccomp

    if action == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(errno_ret if errno_ret is not None else _DEFAULT_ERRNO))
    name = {"SCMP_ACT_KILL": "KILL", "SCMP_ACT_KILL_THREAD": "KILL_THREAD",
            "SCMP_ACT_KILL_PROCESS": "KILL_PROCESS"}.get(action, action.removeprefix("SCMP_ACT_"))
    return int(getattr(pyseccomp, name))


def compile_bpf(p: Profile) -> bytes:
    """The profile as a classic BPF program (struct sock_filter[]), as libseccomp builds
    it for runc. Names this libseccomp does not know are skipped, as runc skips them."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as e:  # RuntimeError: libseccomp.so not found
        raise BackendUnavailable("ns", f"cannot compile the seccomp profile: {e}",
                                 "apt-get install libseccomp2 (scripts/provision)") from None

    default = _action_value(p.default_action, p.default_errno)
    last = 0  # the highest native number the profile names
    filt = pyseccomp.SyscallFilter(default)
    # A binary tree of syscall numbers, not libseccomp's default linear list: the kernel
    # walks it on every system call the instance makes, and once per syscall number
    # and arch when it loads it (its action cache): half the loading time here.
    filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    native = pyseccomp.system_arch()
    for name in p.arches[1:]:
        arch = getattr(pyseccomp.Arch, name.removeprefix("SCMP_ARCH_"), None)
        if arch is not None and arch != native:
            filt.add_arch(arch)
    for rule in p.rules:
        act = _action_value(rule.action, rule.errno_ret)
        if act == default:  # libseccomp refuses a rule that does what the default does
            last = max([last, *(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n)
                                for n in rule.names)])
            continue
        args = [pyseccomp.Arg(i, _OPS[op], a, b) for i, op, a, b in rule.args]
        # Conditions on distinct arguments all must hold (one rule). Two on the same
        # argument libseccomp cannot AND (EINVAL), and config-linux.md's seccomp `args`
        # does not say how they combine: as runc and crun do, each is then a rule of its
        # own, i.e. any of them matches (personality(0) or personality(8)...).
        indexes = [i for i, *_ in rule.args]
        alternatives = [args] if len(set(indexes)) == len(indexes) else [[a] for a in args]
        for name in rule.names:
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
            if nr == -1:  # __NR_SCMP_ERROR: unknown to this libseccomp
                continue
            last = max(last, nr)
            for conds in alternatives:
                filt.add_rule(act, nr, *conds)
    import tempfile

    with tempfile.TemporaryFile() as f:
        filt.export_bpf(f)
        f.seek(0)
        program = f.read()
    return _enosys_prefix(native, last, int(pyseccomp.ERRNO(errno.ENOSYS))) + program


def _enosys_prefix(arch: int, last_known: int, ret_enosys: int) -> bytes:
    """What runc puts before libseccomp's program (libcontainer/seccomp/patchbpf): a
    native system call above the highest one the profile names gets ENOSYS, not the
    default action, so that a libc newer than the profile falls back to an older call
    (libseccomp itself refuses rules for numbers it cannot name). x32 calls (bit 30 set)
    go on to the filter. Jumps count from the next instruction; the filter's own jumps
    are relative, so nothing in it moves."""
    ld, jeq, jgt, jge, ret = 0x20, 0x15, 0x25, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|.., BPF_RET
    insns = ((ld, 0, 0, 4),                 # A = seccomp_data.arch
             (jeq, 0, 4, arch),             # not native: to the filter
             (ld, 0, 0, 0),                 # A = seccomp_data.nr
             (jgt, 0, 2, last_known),       # known: to the filter
             (jge, 1, 0, 0x40000000),       # x32: to the filter
             (ret, 0, 0, ret_enosys))
    return b"".join(struct.pack("=HBBI", *i) for i in insns)


def oci(p: Profile) -> dict[str, Any]:
    """The resolved profile as an OCI config's linux.seccomp (runtime-spec config-linux):
    the conditions already applied, so the CLI gets exactly the rules ns compiles."""
    out: dict[str, Any] = {"defaultAction": p.default_action, "architectures": list(p.arches)}
    if p.default_errno is not None:
        out["defaultErrnoRet"] = p.default_errno
    calls = []
    for r in p.rules:
        call: dict[str, Any] = {"names": list(r.names), "action": r.action}
        if r.errno_ret is not None:
            call["errnoRet"] = r.errno_ret
        if r.args:
            call["args"] = [{"index": i, "value": a, "valueTwo": b, "op": op}
                            for i, op, a, b in r.args]
        calls.append(call)
    out["syscalls"] = calls
    return out


def from_oci(data: Any, where: str) -> Profile:
    """An OCI config's linux.seccomp (runtime-spec config-linux) as a Profile for
    compile_bpf: the inverse of oci(). What libseccomp cannot do here (an action ns does
    not load, filter flags, a notify listener) raises UsageError naming the field under
    `where` ("config.json: linux.seccomp")."""
    def bad(key: str, why: str) -> UsageError:
        return UsageError(f"{where}.{key}: {why}")

    def action(value: Any, key: str) -> str:
        if value not in _ACTIONS:
            raise bad(key, f"action {value!r} not supported by cvbench-ns")
        return str(value)

    if not isinstance(data, dict):
        raise UsageError(f"{where}: must be an object")
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if data.get(key):
            raise bad(key, "not supported by cvbench-ns")
    import hashlib

    machine = os.uname().machine
    native = _SCMP_ARCH.get(machine)
    if native is None:
        raise UsageError(f"{where}: no seccomp architecture known for {machine}")
    arches = [native, *(str(a) for a in data.get("architectures") or () if a != native)]
    rules = []
    for i, s in enumerate(data.get("syscalls") or ()):
        key = f"syscalls[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("names"), list):
            raise bad(key, "must be an object with a list of names")
        args = []
        for j, a in enumerate(s.get("args") or ()):
            if not isinstance(a, dict) or a.get("op") not in _OPS:
                raise bad(f"{key}.args[{j}]", f"unknown comparison {a!r}")
            args.append((int(a.get("index", 0)), str(a["op"]), int(a.get("value", 0)),
                         int(a.get("valueTwo", 0))))
        errno_ret = s.get("errnoRet")
        rules.append(Rule(tuple(str(n) for n in s["names"]),
                          action(s.get("action"), f"{key}.action"),
                          int(errno_ret) if errno_ret is not None else None, tuple(args)))
    default_action = action(data.get("defaultAction"), "defaultAction")
    default_errno = data.get("defaultErrnoRet")
    if default_errno is None and default_action == "SCMP_ACT_ERRNO":
        default_errno = _DEFAULT_ERRNO
    raw = json.dumps(data, sort_keys=True).encode()
    return Profile(where, hashlib.sha256(raw).hexdigest(), default_action,
                   int(default_errno) if default_errno is not None else None,
                   tuple(arches), tuple(rules))


# --- compiled programs, cached (cvbench-ns) ------------------------------------------------

LIBSECCOMP = "libseccomp.so.2"  # the soname pyseccomp's find_library("seccomp") resolves to
CACHE_FORMAT = 1
CACHE_ENTRIES = 32  # more than that (a profile per container?): start again


def compile_oci(data: Any, where: str, cache: str | None = None) -> bytes:
    """An OCI config's linux.seccomp (see from_oci) compiled by compile_bpf, through the
    cache directory `cache` when given (cvbench-ns: <root>/.seccomp-cache).

    Each `cvbench-ns create` is a new interpreter, and Docker hands every container the
    same profile: importing pyseccomp (which runs ldconfig twice to find its libraries)
    and compiling cost create more than the rest of its own work. An entry holds the
    program and everything it was made from (the profile as canonical JSON, this
    module's source, the machine and kernel, libseccomp's version); it is used only
    when all of those are equal to this call's and the program's checksum holds, in a
    directory and a file that are this user's own and writable by nobody else.
    Anything else (missing, corrupt, another profile under a colliding name) is
    compiled again and the entry rewritten, atomically."""
    inputs = _cache_inputs(data) if cache else None
    if cache is None or inputs is None:
        return compile_bpf(from_oci(data, where))
    name = f"{zlib.crc32(inputs):08x}{zlib.adler32(inputs):08x}"
    dfd = _cache_dir(cache)
    try:
        bpf = _cache_read(dfd, name, inputs) if dfd is not None else None
        if bpf is None:
            bpf = compile_bpf(from_oci(data, where))
            if dfd is not None and _same_library():
                _cache_write(dfd, name, marshal.dumps((inputs, bpf, zlib.crc32(bpf))))
        return bpf
    finally:
        if dfd is not None:
            os.close(dfd)


def _cache_inputs(data: Any) -> bytes | None:
    """What a compiled program depends on, as bytes; None when libseccomp cannot be
    found (compile_bpf then says why)."""
    version = _libseccomp_version()
    if version is None:
        return None
    try:
        with open(__file__, "rb") as f:
            source = f.read()  # (compile_bpf's own code: an update changes the program)
    except OSError:
        return None
    u = os.uname()
    profile = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return marshal.dumps((CACHE_FORMAT, u.machine, u.release, u.version, version, source,
                          profile))


def _libseccomp_version() -> tuple[int, int, int] | None:
    """libseccomp's version (seccomp_version(), 2.3+), loaded with ctypes alone."""
    import ctypes

    try:
        lib = ctypes.CDLL(LIBSECCOMP)
        fn = lib.seccomp_version
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.POINTER(ctypes.c_uint * 3)
    v = fn().contents
    return v[0], v[1], v[2]


def _same_library() -> bool:
    """Whether the program just compiled came from the library _libseccomp_version read
    (pyseccomp finds it by ldconfig; not cached otherwise)."""
    import pyseccomp

    return getattr(pyseccomp, "_libseccomp_path", None) == LIBSECCOMP


def _own(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _cache_dir(path: str) -> int | None:
    """The cache directory, opened (made 0700 if missing); None if it is not this user's
    alone (a symlink, another owner, writable by others): no cache then."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not _own(st := os.fstat(fd)) or st.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def _cache_read(dfd: int, name: str, inputs: bytes) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _own(st):
            return None
        with open(fd, "rb", closefd=False) as f:
            entry = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)
    if not (isinstance(entry, tuple) and len(entry) == 3 and entry[0] == inputs):
        return None
    _, bpf, crc = entry
    if not isinstance(bpf, bytes) or not bpf or len(bpf) % 8 or crc != zlib.crc32(bpf):
        return None
    return bpf


def _cache_write(dfd: int, name: str, data: bytes) -> None:
    """Write the entry atomically (a temporary file renamed over it); a failure only
    costs the next call a compile."""
    tmp = f".{name}.{os.getpid()}"
    try:
        names = os.listdir(dfd)
        if len(names) >= CACHE_ENTRIES:
            for old in names:
                os.unlink(old, dir_fd=dfd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
