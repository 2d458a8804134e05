"""An OCI bundle's config.json as ns's ContainerConfig (runtime-spec 1.x, config.md and
config-linux.md), for the `cvbench-ns` CLI (oci_cli.py).

Only translation and checks live here: the mechanism is ns's own (process.child_main,
rootfs.setup, security, cgroups). A field ns cannot honour is refused with a UsageError
naming it ("config.json: linux.intelRdt: not supported by cvbench-ns"), never ignored;
properties the specification does not define are ignored, as it requires. Imported by
create, run and exec only: `state`, `kill`... never pay for it.
"""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path

from harness.core.errors import UsageError
from harness.core.record import field, mutable_record, record, replace
from runtimes.limits import Limits
from runtimes.ns import namespaces as ns
from runtimes.ns import security
from runtimes.ns.config import DEVICE_RULES, DEVICES, ContainerConfig, MountPoint
from runtimes.ns.oci_cli import DEFAULT_CGROUP_PARENT

TYPE_CHECKING = False  # (typing costs each cvbench-ns call: only mypy reads these)
if TYPE_CHECKING:
    from typing import Any

WHERE = "config.json"

NAMESPACES = {"pid": ns.CLONE_NEWPID, "network": ns.CLONE_NEWNET, "mount": ns.CLONE_NEWNS,
              "ipc": ns.CLONE_NEWIPC, "uts": ns.CLONE_NEWUTS, "cgroup": ns.CLONE_NEWCGROUP,
              "user": ns.CLONE_NEWUSER, "time": 0x80}
_JOINABLE = {"pid", "network", "ipc", "uts", "cgroup"}

MS_SYNCHRONOUS, MS_MANDLOCK, MS_DIRSYNC, MS_NODIRATIME = 16, 64, 128, 2048
MS_UNBINDABLE, MS_SHARED, MS_RELATIME = 1 << 17, 1 << 20, 1 << 21
# mount(8) options: name -> (flag, set it)
_FLAGS = {
    "ro": (ns.MS_RDONLY, True), "rw": (ns.MS_RDONLY, False),
    "nosuid": (ns.MS_NOSUID, True), "suid": (ns.MS_NOSUID, False),
    "nodev": (ns.MS_NODEV, True), "dev": (ns.MS_NODEV, False),
    "noexec": (ns.MS_NOEXEC, True), "exec": (ns.MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True), "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True), "mand": (MS_MANDLOCK, True), "nomand": (MS_MANDLOCK, False),
    "noatime": (ns.MS_NOATIME, True), "atime": (ns.MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True), "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True), "norelatime": (MS_RELATIME, False),
    "strictatime": (ns.MS_STRICTATIME, True), "nostrictatime": (ns.MS_STRICTATIME, False),
    "defaults": (0, True),
}
_PROPAGATION = {"private": ns.MS_PRIVATE, "shared": MS_SHARED, "slave": ns.MS_SLAVE,
                "unbindable": MS_UNBINDABLE}
_BIND_KEPT = ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC | ns.MS_NOATIME | \
    MS_NODIRATIME | MS_RELATIME | ns.MS_STRICTATIME
_ID = re.compile(r"^[\w+.-]+$")


@record
class Hook:
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    timeout: float | None

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "args": list(self.args), "env": list(self.env),
                "timeout": self.timeout}


@mutable_record
class Bundle:
    """What create needs besides the ContainerConfig: the cgroup, hooks, state fields."""

    config: ContainerConfig
    oci_version: str
    cgroup_parent: str
    cgroup_name: str
    limits: Limits
    device_rules: tuple[str, ...]  # () = no device cgroup asked for
    hooks: dict[str, tuple[Hook, ...]] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    oom_score_adj: int | None = None
    console_size: tuple[int, int] | None = None  # (rows, columns)
    cgroup_mounts: tuple[int, ...] = ()  # indexes of `config.mounts` entries of type cgroup


def bad(key: str, why: str = "not supported by cvbench-ns") -> UsageError:
    return UsageError(f"{WHERE}: {key}: {why}")


def check_id(cid: str) -> None:
    if not _ID.match(cid) or cid in (".", ".."):
        raise UsageError(f"invalid container id {cid!r} (letters, digits, _ + . - only)")


def load(bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads((bundle / "config.json").read_bytes())
    except OSError as e:
        raise UsageError(f"{bundle}/config.json: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{bundle}/config.json: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{bundle}/config.json: must be an object")
    return data


def _obj(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(key, "must be an object")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(key, "must be an array")
    return value


def _refuse_set(obj: dict[str, Any], prefix: str, *keys: str) -> None:
    """Refuse each of `keys` that is set to something other than its zero value."""
    for k in keys:
        if obj.get(k) not in (None, "", 0, False, [], {}):
            raise bad(f"{prefix}.{k}")


def cap_numbers(names: Any, key: str) -> tuple[int, ...]:
    """The capabilities of `key` this process can grant. config.md (Linux process,
    capabilities): a value that cannot be mapped to the kernel or cannot be granted
    otherwise MUST be logged as a warning, and the runtime SHOULD NOT fail for it: a
    name this kernel or cvbench-ns does not know, or one outside the runtime's own
    bounding set (a restricted environment), is left out with a warning."""
    from runtimes.ns.oci_cli import warn

    out, listed = [], _list(names, key)
    bounding = _own_bounding() if listed else 0
    for i, name in enumerate(listed):
        num = security.CAP_NAMES.index(name) if name in security.CAP_NAMES else -1
        if num < 0 or not bounding >> num & 1:
            if name not in _WARNED:  # (once, not for each of the five sets)
                _WARNED.add(name)
                warn(f"config.json: {key}[{i}]: {name!r} cannot be granted here, left out")
            continue
        out.append(num)
    return tuple(sorted(set(out)))


_WARNED: set[Any] = set()


def _own_bounding() -> int:
    """This process's bounding set (the container's process is cloned from it): what
    it can grant at most, and only capabilities the kernel has."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))


def _process(p: dict[str, Any]) -> dict[str, Any]:
    """The process fields of a ContainerConfig (also used by exec's process.json)."""
    _refuse_set(p, "process", "apparmorProfile", "selinuxLabel", "ioPriority", "scheduler",
                "execCPUAffinity", "commandLine")
    args = _list(p.get("args"), "process.args")
    if not args or not all(isinstance(a, str) for a in args):
        raise bad("process.args", "must be a non-empty array of strings")
    cwd = p.get("cwd")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise bad("process.cwd", "must be an absolute path")
    env = _list(p.get("env"), "process.env")
    if not all(isinstance(e, str) for e in env):
        raise bad("process.env", "must be an array of strings")
    user = _obj(p.get("user"), "process.user")
    _refuse_set(user, "process.user", "username")
    caps = _obj(p.get("capabilities"), "process.capabilities")
    effective = cap_numbers(caps.get("effective"), "process.capabilities.effective")
    for kind in ("bounding", "permitted"):
        # ns keeps one set: effective = permitted = bounding (what the engines ask for)
        if cap_numbers(caps.get(kind), f"process.capabilities.{kind}") != effective:
            raise bad(f"process.capabilities.{kind}",
                      "must equal effective (cvbench-ns keeps one set)")
    inheritable = cap_numbers(caps.get("inheritable"), "process.capabilities.inheritable")
    # config.md "Linux Process", capabilities.ambient: kept for the process (raised after
    # capset; the kernel takes only one both permitted and inheritable: else an error here)
    ambient = cap_numbers(caps.get("ambient"), "process.capabilities.ambient")
    if not set(ambient) <= set(effective) & set(inheritable):
        raise bad("process.capabilities.ambient",
                  "must be in both permitted and inheritable (the kernel's rule)")
    if ambient and user.get("uid", 0):
        # a non-root process keeps no capability here (setuid clears them: as Docker)
        raise bad("process.capabilities.ambient", "not supported with a non-root user")
    rlimits, seen = [], set()
    for i, r in enumerate(_list(p.get("rlimits"), "process.rlimits")):
        key = f"process.rlimits[{i}]"
        name = _obj(r, key).get("type")
        res = getattr(resource, str(name), None) if str(name).startswith("RLIMIT_") else None
        if res is None:
            raise bad(f"{key}.type", f"unknown rlimit {name!r}")
        if name in seen:
            raise bad(f"{key}.type", f"{name} given twice")
        seen.add(name)
        rlimits.append((int(res), _u64(r.get("soft"), f"{key}.soft"),
                        _u64(r.get("hard"), f"{key}.hard")))
    umask = user.get("umask")
    return {
        "argv": tuple(args), "env": tuple(env), "workdir": cwd,
        "uid": int(user.get("uid", 0)), "gid": int(user.get("gid", 0)),
        "groups": tuple(int(g) for g in _list(user.get("additionalGids"),
                                              "process.user.additionalGids")),
        "caps": effective,
        "inheritable": inheritable, "ambient": ambient,
        "rlimits": tuple(rlimits), "no_new_privs": bool(p.get("noNewPrivileges", False)),
        "umask": 0o022 if umask is None else int(umask),
        "terminal": bool(p.get("terminal", False)),
    }


def _abs_path(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise bad(key, "must be an absolute path")
    return v


def _u64(v: Any, key: str) -> int:
    if not isinstance(v, int) or not 0 <= v < 2**64:
        raise bad(key, "must be an unsigned 64-bit integer")
    return v  # (2**64-1 is RLIM_INFINITY, as setrlimit takes it)


def mount_options(opts: list[Any], key: str) -> tuple[int, list[str], int, bool, bool]:
    """(flags, data options, propagation flags, bind, recursive read-only) of a mount's
    options, as mount(8) spells them."""
    flags, data, prop, bind, rro = 0, [], 0, False, False
    for o in opts:
        if not isinstance(o, str):
            raise bad(key, "options must be strings")
        if o in ("bind", "rbind"):
            bind = True
            flags |= ns.MS_BIND | (ns.MS_REC if o == "rbind" else 0)
        elif o in _FLAGS:
            bit, on = _FLAGS[o]
            flags = flags | bit if on else flags & ~bit
        elif o.lstrip("r") in _PROPAGATION and o in (o.lstrip("r"), "r" + o.lstrip("r")):
            prop = _PROPAGATION[o.lstrip("r")] | (ns.MS_REC if o.startswith("r") else 0)
        elif o == "rro":
            rro = True
        elif o == "rrw":
            rro = False
        else:
            data.append(o)
    return flags, data, prop, bind, rro


def _mounts(raw: list[Any], bundle: Path) -> tuple[list[MountPoint], list[int]]:
    """The bundle's mounts as MountPoints, in order; a cgroup mount becomes a placeholder
    (its index is returned) that create replaces once the cgroup exists."""
    out: list[MountPoint] = []
    cgroup: list[int] = []
    for i, m in enumerate(raw):
        key = f"mounts[{i}]"
        m = _obj(m, key)
        dest = m.get("destination")
        if not isinstance(dest, str) or not dest.startswith("/") or \
                ".." in dest.split("/"):
            raise bad(f"{key}.destination", "must be an absolute path without '..'")
        target = os.path.normpath(dest).lstrip("/")
        if not target:
            raise bad(f"{key}.destination", "cannot be / (that is root.path)")
        _refuse_set(m, key, "uidMappings", "gidMappings")
        flags, data, prop, bind, rro = mount_options(_list(m.get("options"), key), key)
        typ, src = m.get("type"), m.get("source")
        if bind:
            if data:
                raise bad(f"{key}.options", f"{', '.join(data)}: not supported on a bind mount")
            if not isinstance(src, str) or not src:
                raise bad(f"{key}.source", "a bind mount needs a source")
            src = str(bundle / src) if not src.startswith("/") else src
            if not os.path.exists(src):
                raise bad(f"{key}.source", f"{src} does not exist")
            out.append(MountPoint(src, target, None, flags & (ns.MS_BIND | ns.MS_REC),
                                  file=not os.path.isdir(src),
                                  bind_flags=flags & _BIND_KEPT, propagation=prop,
                                  recursive_readonly=rro))
            continue
        if rro:
            raise bad(f"{key}.options", "rro: only on a bind mount")
        if typ == "cgroup" or typ == "cgroup2":
            cgroup.append(len(out))
            out.append(MountPoint(None, target, "cgroup", flags))
            continue
        if not isinstance(typ, str) or not typ:
            raise bad(f"{key}.type", "required for a mount that is not a bind mount")
        out.append(MountPoint(src if isinstance(src, str) and src else typ, target, typ,
                              flags, ",".join(data) or None, propagation=prop))
    return out, cgroup


def _device_rule(d: dict[str, Any], key: str) -> str:
    kind = d.get("type") or "a"
    if kind not in ("a", "b", "c"):
        raise bad(f"{key}.type", f"unknown device type {kind!r}")
    access = d.get("access") or "rwm"
    if not isinstance(access, str) or not access or set(access) - set("rwm"):
        raise bad(f"{key}.access", f"invalid access {access!r}")
    major = "*" if d.get("major") in (None, -1) else str(int(d["major"]))
    minor = "*" if d.get("minor") in (None, -1) else str(int(d["minor"]))
    return f"{kind} {major}:{minor} {access}"


def _overlaps(a: str, b: str) -> bool:
    (ka, na, aa), (kb, nb, ab) = a.split(), b.split()
    if "a" not in (ka, kb) and ka != kb:
        return False
    for x, y in zip(na.split(":"), nb.split(":"), strict=True):
        if "*" not in (x, y) and x != y:
            return False
    return bool(set(aa) & set(ab))


def device_rules(raw: list[Any]) -> tuple[str, ...]:
    """linux.resources.devices as the cgroup manager's allow-list after "deny a".

    The list is ordered, each entry allowing or denying. ns's managers (v1 devices files,
    and the cgroup v2 device program) take "deny everything, then allow these"; a list
    that starts with a deny of every device maps onto that exactly when no later deny
    takes back part of an earlier allow (a deny that overlaps nothing allowed changes
    nothing: Docker ends its list with one for /dev/fuse). The runtime's own nodes
    (/dev/null, /dev/pts...) are allowed after them, as the spec's default devices must
    work. () means no device cgroup: an empty list, or allows only."""
    rules: list[tuple[bool, str]] = []
    for i, d in enumerate(raw):
        key = f"linux.resources.devices[{i}]"
        d = _obj(d, key)
        rules.append((bool(d.get("allow")), _device_rule(d, key)))
    if not rules or all(allow for allow, _ in rules):
        return ()
    first_allow, first = rules[0]
    if first_allow or first.split()[:2] != ["a", "*:*"] or first.split()[2] != "rwm":
        raise bad("linux.resources.devices[0]",
                  "a list with denies must start with a deny of every device (allow false, "
                  "access rwm) for cvbench-ns")
    allowed: list[str] = []
    for i, (allow, rule) in enumerate(rules[1:], start=1):
        if allow:
            allowed.append(rule)
        elif any(_overlaps(rule, a) for a in allowed):
            raise bad(f"linux.resources.devices[{i}]",
                      "a deny that takes back part of an earlier allow is not supported "
                      "by cvbench-ns")
    return tuple(dict.fromkeys([*allowed, *DEVICE_RULES]))


def _limits(res: dict[str, Any]) -> Limits:
    _refuse_set(res, "linux.resources", "hugepageLimits", "network", "rdma", "unified")
    mem = _obj(res.get("memory"), "linux.resources.memory")
    _refuse_set(mem, "linux.resources.memory", "reservation", "kernel", "kernelTCP",
                "disableOOMKiller", "useHierarchy", "checkBeforeUpdate")
    if mem.get("swappiness") not in (None, -1):
        raise bad("linux.resources.memory.swappiness")
    cpu = _obj(res.get("cpu"), "linux.resources.cpu")
    _refuse_set(cpu, "linux.resources.cpu", "shares", "realtimeRuntime", "realtimePeriod",
                "mems", "idle", "burst")
    blkio = _obj(res.get("blockIO"), "linux.resources.blockIO")
    for k, v in blkio.items():
        if v not in (None, 0, []):
            raise bad(f"linux.resources.blockIO.{k}")
    pids = _obj(res.get("pids"), "linux.resources.pids")
    limit = mem.get("limit")
    memory = int(limit) if isinstance(limit, int) and limit > 0 else None
    swap = mem.get("swap")
    if swap not in (None, 0) and memory is None:
        raise bad("linux.resources.memory.swap", "only with a memory limit")
    cpus = None
    quota, period = cpu.get("quota"), cpu.get("period")
    if isinstance(quota, int) and quota > 0:
        if period not in (None, 0, 100_000):
            raise bad("linux.resources.cpu.period",
                      "only 100000 (the kernel's default period) is supported by cvbench-ns")
        cpus = quota / 100_000
    n = pids.get("limit")
    return Limits(memory=memory, swap=int(swap) if swap not in (None, 0) else None,
                  cpus=cpus, pids=int(n) if isinstance(n, int) and n > 0 else None,
                  cpuset=str(cpu["cpus"]) if cpu.get("cpus") else None)


def _hooks(raw: dict[str, Any]) -> dict[str, tuple[Hook, ...]]:
    out = {}
    for kind, entries in raw.items():
        if kind not in ("prestart", "createRuntime", "createContainer", "startContainer",
                        "poststart", "poststop"):
            continue
        hooks = []
        for i, h in enumerate(_list(entries, f"hooks.{kind}")):
            key = f"hooks.{kind}[{i}]"
            h = _obj(h, key)
            path = h.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise bad(f"{key}.path", "must be an absolute path")
            timeout = h.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
                raise bad(f"{key}.timeout", "must be a positive integer")
            hooks.append(Hook(path, tuple(str(a) for a in _list(h.get("args"), key)) or (path,),
                              tuple(str(e) for e in _list(h.get("env"), key)),
                              float(timeout) if timeout else None))
        out[kind] = tuple(hooks)
    return out


def translate(data: dict[str, Any], bundle: Path, cid: str,
              seccomp_cache: str | None = None) -> Bundle:
    """config.json -> Bundle; UsageError naming the first field ns cannot honour.
    `seccomp_cache`: the directory of compiled seccomp programs (seccomp.compile_oci)."""
    from runtimes.ns import seccomp

    version = data.get("ociVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise bad("ociVersion", f"{version!r}: cvbench-ns implements runtime-spec 1.x")
    if "process" not in data:
        raise bad("process", "required by cvbench-ns at create")
    proc = _process(_obj(data["process"], "process"))
    root = _obj(data.get("root"), "root")
    rpath = root.get("path")
    if not isinstance(rpath, str) or not rpath:
        raise bad("root.path", "required")
    rootdir = (bundle / rpath).resolve()
    if not rootdir.is_dir():
        raise bad("root.path", f"{rootdir} is not a directory")
    linux = _obj(data.get("linux"), "linux")
    _refuse_set(linux, "linux", "uidMappings", "gidMappings", "intelRdt", "personality",
                "timeOffsets", "mountLabel", "memoryPolicy", "netDevices")
    if data.get("domainname"):
        raise bad("domainname")

    flags, join, cgroupns, seen = 0, [], False, set()
    for i, n in enumerate(_list(linux.get("namespaces"), "linux.namespaces")):
        key = f"linux.namespaces[{i}]"
        n = _obj(n, key)
        kind, path = n.get("type"), n.get("path")
        if kind not in NAMESPACES:
            raise bad(f"{key}.type", f"unknown namespace {kind!r}")
        if kind in seen:
            raise bad(f"{key}.type", f"{kind} given twice")
        seen.add(kind)
        if kind in ("user", "time"):
            raise bad(f"{key}", f"{kind} namespaces are not supported by cvbench-ns")
        if path:
            if kind not in _JOINABLE:
                raise bad(f"{key}.path", f"joining a {kind} namespace is not supported "
                                         "by cvbench-ns")
            if kind == "pid":
                raise bad(f"{key}.path", "joining a pid namespace is not supported by "
                                         "cvbench-ns")
            join.append((str(path), NAMESPACES[kind]))
        elif kind == "cgroup":
            cgroupns = True  # unshared once the process is in its cgroup (process.py)
        else:
            flags |= NAMESPACES[kind]
    if "mount" not in seen:
        raise bad("linux.namespaces", "cvbench-ns needs a mount namespace")
    hostname = data.get("hostname") or ""
    if hostname and "uts" not in seen:
        raise bad("hostname", "needs a uts namespace")

    mounts, cgroup_mounts = _mounts(_list(data.get("mounts"), "mounts"), bundle)
    if not any(m.target == "dev" for m in mounts):
        raise bad("mounts", "cvbench-ns needs a mount on /dev (a tmpfs it makes the default "
                            "device nodes in)")
    devices = list(DEVICES)
    for i, d in enumerate(_list(linux.get("devices"), "linux.devices")):
        key = f"linux.devices[{i}]"
        d = _obj(d, key)
        path = str(d.get("path", ""))
        name = path.removeprefix("/dev/")
        if d.get("type") != "c" or name == path or "/" in name or not name:
            raise bad(key, "only character devices directly under /dev are supported")
        if d.get("uid") not in (None, 0) or d.get("gid") not in (None, 0):
            raise bad(key, "only owned by root")
        mode = int(d.get("fileMode", 0o666)) & 0o7777
        devices = [x for x in devices if x[0] != name] + [(name, mode, int(d["major"]),
                                                           int(d["minor"]))]
    res = _obj(linux.get("resources"), "linux.resources")
    rules = device_rules(_list(res.get("devices"), "linux.resources.devices"))
    cgpath = linux.get("cgroupsPath") or f"/{DEFAULT_CGROUP_PARENT}/{cid}"
    if not isinstance(cgpath, str) or ":" in cgpath or ".." in cgpath.split("/"):
        raise bad("linux.cgroupsPath", f"{cgpath!r}: a path (systemd's slice:prefix:name "
                                       "form needs --systemd-cgroup, not supported)")
    parent, _, name = cgpath.strip("/").rpartition("/")
    if not name:
        raise bad("linux.cgroupsPath", "must name a cgroup")

    prop = linux.get("rootfsPropagation") or ""
    props = {"": 0, "slave": 0, "rslave": 0, "private": ns.MS_PRIVATE,
             "rprivate": ns.MS_PRIVATE | ns.MS_REC, "unbindable": MS_UNBINDABLE,
             "runbindable": MS_UNBINDABLE | ns.MS_REC}
    if prop not in props:
        raise bad("linux.rootfsPropagation", f"{prop!r} not supported by cvbench-ns")
    sysctl = _obj(linux.get("sysctl"), "linux.sysctl")
    bpf = b""
    if linux.get("seccomp") is not None:
        bpf = seccomp.compile_oci(linux["seccomp"], f"{WHERE}: linux.seccomp", seccomp_cache)
    # config-linux.md, Masked/Readonly Paths: absolute paths in the container namespace,
    # so what each is (or whether it exists) is looked up there, by the child (rootfs._mask)
    masked, readonly = ([_abs_path(p, f"linux.{key}[{i}]")
                         for i, p in enumerate(_list(linux.get(key), f"linux.{key}"))]
                        for key in ("maskedPaths", "readonlyPaths"))
    size = _obj(_obj(data["process"], "process").get("consoleSize"), "process.consoleSize")
    annotations = _obj(data.get("annotations"), "annotations")
    oom = _obj(data["process"], "process").get("oomScoreAdj")

    cfg = ContainerConfig(
        name=cid, lower=str(rootdir), dev_layer="", upper="", work="", scratch="",
        argv=proc["argv"], env=proc["env"], hostname=hostname, workdir=proc["workdir"],
        clone_flags=flags, cgroup_join=(), mounts=tuple(mounts),
        loopback_up=bool(flags & ns.CLONE_NEWNET), caps=proc["caps"],
        last_cap=security.last_cap(), uid=proc["uid"], gid=proc["gid"],
        groups=proc["groups"], masked=tuple((p, None) for p in masked),
        readonly=tuple(readonly),
        devices=tuple(devices), no_new_privs=proc["no_new_privs"], rlimits=proc["rlimits"],
        seccomp=bpf, die_with_parent=False, bind_root=True,
        readonly_root=bool(root.get("readonly")), root_propagation=props[prop],
        sysctl=tuple((str(k), str(v)) for k, v in sysctl.items()), join=tuple(join),
        inheritable=proc["inheritable"], ambient=proc["ambient"], umask=proc["umask"],
        terminal=proc["terminal"], cgroupns=cgroupns)
    hooks = _hooks(_obj(data.get("hooks"), "hooks"))
    inside = {k: tuple((h.path, h.args, h.env, h.timeout or 0.0) for h in hooks.get(k, ()))
              for k in ("createContainer", "startContainer")}
    if any(inside.values()):
        # the state those hooks get on stdin: the container's process fills in its pid
        state = {"ociVersion": version, "id": cid, "status": "creating", "pid": "@PID@",
                 "bundle": str(bundle), "annotations": annotations}
        cfg = replace(
            cfg, hooks_create=inside["createContainer"], hooks_start=inside["startContainer"],
            hook_state=json.dumps(state).replace('"@PID@"', "@PID@").encode())
    return Bundle(
        config=cfg, oci_version=version, cgroup_parent=parent, cgroup_name=name,
        limits=_limits(res), device_rules=rules,
        hooks=hooks,
        annotations={str(k): str(v) for k, v in annotations.items()},
        oom_score_adj=int(oom) if oom is not None else None,
        console_size=(int(size.get("height", 0)), int(size.get("width", 0))) if size else None,
        cgroup_mounts=tuple(cgroup_mounts))


def exec_process(data: dict[str, Any]) -> dict[str, Any]:
    """An exec's process.json (the process object of a config) as ContainerConfig
    fields to replace (dataclasses.replace)."""
    p = _process(data)
    return {"argv": p["argv"], "env": p["env"], "workdir": p["workdir"], "uid": p["uid"],
            "gid": p["gid"], "groups": p["groups"], "caps": p["caps"],
            "inheritable": p["inheritable"], "ambient": p["ambient"],
            "rlimits": p["rlimits"] or None,
            "no_new_privs": p["no_new_privs"], "umask": p["umask"],
            "terminal": p["terminal"]}
