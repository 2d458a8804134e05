"""`cvbench-ns`: ns as an OCI runtime command line (runtime-spec 1.x; the commands and
global flags of runc and crun, which dockerd's containerd shim and Podman's conmon pass).

A front over ns's own code, as runc's main package is over libcontainer: oci_bundle.py
turns config.json into a ContainerConfig, and the container's process is
process.child_main, cloned from this process, with ns's rootfs, cgroups and
protections. Lifecycle across separate invocations:

  create  clones the child; the child sets up its root, mounts, hostname, writes "R" on a
          status pipe and blocks reading the exec FIFO <root>/<id>/exec.fifo (opened
          read-write, so the read waits for a byte rather than seeing EOF). create runs
          the prestart/createRuntime hooks, writes --pid-file and exits: the child is
          left held, reparented to the caller's subreaper (the shim, conmon).
  start   writes one byte into the FIFO (open fails with ENXIO if nobody holds it: the
          process is gone) and removes it; the child joins its cgroup, applies the
          protections and execs. Then the poststart hooks.
  state   created (the FIFO exists) / running / paused / stopped (the pid is gone, a
          zombie, or another process's: its start time is kept and compared).
  kill    a signal to the process (--all: to every process of its cgroup).
  delete  the cgroup and the state dir (--force kills first); the poststop hooks.

State: <root>/<id>/state (written once at create, marshal) and the exec FIFO; root is
--root, default /run/cvbench-ns; <root>/.seccomp-cache holds compiled seccomp programs
(seccomp.compile_oci). Each call is a new Python process (the issue's goal is a `state`
call within 25 ms), so each imports only what it uses: state, kill and start the
standard library's small modules, delete the cgroup managers only for a cgroup
that is not empty (create records its directories); create, run and
exec what they need when they run (tests/unit/test_oci_bundle.py checks). entry() is
the command: main() without the interpreter's teardown.

Errors: one line on stderr (and in --log, as JSON with --log-format json, where
containerd and conmon read it), exit 1; a bad invocation or a config.json field
cvbench-ns does not support exits 2, naming it.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False  # (typing itself costs a few ms: only mypy reads these imports)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

DEFAULT_ROOT = "/run/cvbench-ns"
# The cgroup parent of a bundle without linux.cgroupsPath: made by create, and removed by
# delete once no container is left in it (an engine's own parent is the engine's).
DEFAULT_CGROUP_PARENT = "cvbench-ns"
VERSION = "0.1.0"
SPEC_VERSION = "1.1.0"
_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6,
            "BUS": 7, "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13,
            "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19,
            "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
            "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30,
            "SYS": 31}


class CliError(Exception):
    code = 1


class Usage(CliError):
    code = 2


class Globals:
    def __init__(self) -> None:
        self.root = DEFAULT_ROOT
        self.log = ""
        self.log_json = False


G = Globals()

# Flags taking a value, by command ("" = global); every other known flag is a switch.
_VALUED = {
    "": {"root", "log", "log-format", "criu", "rootless"},
    "create": {"bundle", "pid-file", "console-socket", "preserve-fds"},
    "run": {"bundle", "pid-file", "console-socket", "preserve-fds"},
    "exec": {"process", "pid-file", "console-socket", "cwd", "env", "user", "cap",
             "preserve-fds", "process-label", "apparmor", "additional-gids"},
    "ps": {"format"}, "events": {"interval"}, "update": {"resources", "memory",
                                                         "memory-swap", "cpu-quota",
                                                         "cpu-period", "pids-limit"},
    "list": {"format"},
}
_SWITCHES = {
    "": {"debug", "systemd-cgroup", "help", "version"},
    "create": {"no-pivot", "no-new-keyring"},
    "run": {"no-pivot", "no-new-keyring", "detach", "keep"},
    "exec": {"detach", "tty", "no-new-privs"},
    "kill": {"all"}, "delete": {"force"}, "events": {"stats"}, "list": {"quiet"},
}
_SHORT = {"b": "bundle", "d": "detach", "p": "process", "t": "tty", "e": "env",
          "u": "user", "c": "cap", "a": "all", "f": "force", "r": "resources",
          "v": "version", "h": "help", "q": "quiet"}


def parse(cmd: str, args: list[str], stop_at_positional: bool = False
          ) -> tuple[dict[str, list[str]], list[str]]:
    """Go-style flags (-x, --xx, -xx=v, --xx v) of `cmd` before and between positional
    arguments; `stop_at_positional`: everything after the first positional is kept as it
    is (exec's command)."""
    valued, switches = _VALUED.get(cmd, set()), _SWITCHES.get(cmd, set())
    opts: dict[str, list[str]] = {}
    pos: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            pos += args[i + 1:]
            break
        if a.startswith("-") and a != "-":
            name, eq, value = a.lstrip("-").partition("=")
            name = _SHORT.get(name, name)
            if name in valued:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise Usage(f"{cmd or 'cvbench-ns'}: flag --{name} needs a value")
                    value = args[i]
                opts.setdefault(name, []).append(value)
            elif name in switches:
                opts.setdefault(name, []).append("false" if value == "false" else "true")
            else:
                raise Usage(f"{cmd or 'cvbench-ns'}: unknown flag {a}")
        else:
            pos.append(a)
            if stop_at_positional or (cmd == "" and len(pos) == 1):
                pos += args[i + 1:]
                break
        i += 1
    return opts, pos


def flag(opts: dict[str, list[str]], name: str) -> bool:
    return opts.get(name, ["false"])[-1] == "true"


def value(opts: dict[str, list[str]], name: str, default: str = "") -> str:
    return opts.get(name, [default])[-1]


def _log(level: str, msg: str) -> None:
    if not G.log:
        return
    import time

    try:
        with open(G.log, "a") as f:
            if G.log_json:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                f.write(to_json({"level": level, "msg": msg, "time": stamp}) + "\n")
            else:
                f.write(f"{level}: {msg}\n")
    except OSError:
        pass


def warn(msg: str) -> None:
    print(f"cvbench-ns: warning: {msg}", file=sys.stderr)
    _log("warning", msg)


# --- state ---------------------------------------------------------------------------


def state_dir(cid: str) -> str:
    if not cid or "/" in cid or cid in (".", ".."):
        raise Usage(f"invalid container id {cid!r}")
    return f"{G.root}/{cid}"


def load(cid: str) -> dict[str, Any]:
    """The state create wrote: <root>/<id>/state, in marshal's format (json's import
    alone, with re and enum, would cost `state` more than the rest of its work)."""
    try:
        with open(f"{state_dir(cid)}/state", "rb") as f:
            st: dict[str, Any] = marshal.load(f)
    except FileNotFoundError:
        raise CliError(f"container {cid} does not exist") from None
    except (OSError, ValueError, EOFError, TypeError) as e:
        raise CliError(f"container {cid}: unreadable state: {e}") from None
    return st


def to_json(v: Any, pretty: bool = False, depth: int = 0) -> str:
    """JSON of str, int, bool, None, lists and dicts of them (what the state holds)."""
    if isinstance(v, str):
        return '"' + "".join(c if c >= " " and c not in '"\\' else
                             "\\" + c if c in '"\\' else f"\\u{ord(c):04x}"
                             for c in v) + '"'
    if v is True or v is False or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        items = [f"{to_json(str(k))}: {to_json(x, pretty, depth + 1)}" for k, x in v.items()]
        if not pretty or not items:
            return "{" + ", ".join(items) + "}"
        pad = "  " * (depth + 1)
        return "{\n" + pad + (",\n" + pad).join(items) + "\n" + "  " * depth + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(to_json(x) for x in v) + "]"
    raise TypeError(f"not JSON: {type(v).__name__}")


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None if it is gone or a
    zombie: with the pid, it names one process (a pid alone may be reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def status(st: dict[str, Any]) -> str:
    if start_time(st["pid"]) != st["start_time"]:
        return "stopped"
    d = state_dir(st["id"])
    if os.path.exists(f"{d}/exec.fifo"):
        return "created"
    return "paused" if os.path.exists(f"{d}/paused") else "running"


def state_json(st: dict[str, Any], stat: str | None = None) -> dict[str, Any]:
    stat = stat or status(st)
    out: dict[str, Any] = {"ociVersion": st["ociVersion"], "id": st["id"], "status": stat}
    if stat != "stopped":
        out["pid"] = st["pid"]
    out.update(bundle=st["bundle"], rootfs=st["rootfs"], created=st["created"],
               annotations=st["annotations"])
    return out


def cmd_state(args: list[str]) -> int:
    _, pos = parse("state", args)
    st = load(_one_id(pos, "state"))
    print(to_json(state_json(st), pretty=True))
    return 0


def _one_id(pos: list[str], cmd: str) -> str:
    if len(pos) != 1:
        raise Usage(f"{cmd}: expects exactly one container id")
    return pos[0]


# --- start, kill -----------------------------------------------------------------------


def cmd_start(args: list[str]) -> int:
    _, pos = parse("start", args)
    cid = _one_id(pos, "start")
    st = load(cid)
    stat = status(st)
    if stat != "created":
        raise CliError(f"cannot start a container that is {stat}")
    start(st)
    return 0


def start(st: dict[str, Any]) -> None:
    fifo = f"{state_dir(st['id'])}/exec.fifo"
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:  # ENXIO: no reader, the held process is gone
        raise CliError(f"container {st['id']}: its process is gone ({e.strerror})") from None
    try:
        os.write(fd, b"G")
    finally:
        os.close(fd)
    os.unlink(fifo)
    if st["hooks"].get("poststart"):
        from runtimes.ns import oci_hooks

        oci_hooks.run(st, "poststart", state_json(st, "running"), fatal=False)


def signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    n = _SIGNALS.get(name.upper().removeprefix("SIG"))
    if n is None:
        raise Usage(f"kill: unknown signal {name!r}")
    return n


def cmd_kill(args: list[str]) -> int:
    opts, pos = parse("kill", args)
    if len(pos) not in (1, 2):
        raise Usage("kill: expects a container id and an optional signal")
    st = load(pos[0])
    sig = signal_number(pos[1] if len(pos) == 2 else "TERM")
    stat = status(st)
    if stat == "stopped" and not flag(opts, "all"):
        raise CliError(f"container {st['id']} is not running")
    if flag(opts, "all"):
        for pid in _cgroup(st).pids(st["cgroup"]["name"]):
            _signal(pid, sig)
        return 0
    _signal(st["pid"], sig, st["start_time"])
    return 0


def _signal(pid: int, sig: int, start: str | None = None) -> None:
    """Signal `pid` through a pidfd, after checking (start) that it is still ours."""
    import signal as signal_mod

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if start is not None and start_time(pid) != start:
            return
        signal_mod.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _cgroup(st: dict[str, Any]) -> Any:
    from runtimes.ns import cgroups

    c = st["cgroup"]
    return cgroups.new(parent=c["parent"], device_rules=tuple(c["device_rules"]))


# --- delete ----------------------------------------------------------------------------


def cmd_delete(args: list[str]) -> int:
    opts, pos = parse("delete", args)
    cid = _one_id(pos, "delete")
    d = state_dir(cid)
    if not os.path.isdir(d):
        if flag(opts, "force"):
            return 0
        raise CliError(f"container {cid} does not exist")
    st = load(cid)
    delete(st, flag(opts, "force"))
    return 0


def delete(st: dict[str, Any], force: bool) -> None:
    stat = status(st)
    if stat != "stopped" and not force:
        raise CliError(f"cannot delete container {st['id']} that is {stat} (use --force)")
    c = st["cgroup"]
    name, parent = c["name"], c["parent"]
    # A stopped container's cgroup is most often empty: its directories, which create
    # recorded, are removed as they are, without the cgroup managers (their imports cost
    # this call more than its work). Anything left in them (EBUSY) takes the managers'
    # path: kill what is left, then remove.
    if not (stat == "stopped" and _rmdir_all(c.get("dirs"))):
        cg = _cgroup(st)
        if stat == "paused":  # a frozen process takes its SIGKILL only once thawed
            from runtimes.ns import oci_ops

            oci_ops.freeze(st, False)
        if stat != "stopped":
            _signal(st["pid"], 9, st["start_time"])
        cg.kill(name)  # what its first process left behind (a kill does not reach them)
        cg.destroy(name)
    if "mode" in c:
        v1, parents = c["mode"] != "v2", c["parents"]
    else:  # (the state of an older create: the managers know)
        cg = _cgroup(st)
        v1, parents = cg.mode != "v2", [str(p) for p in cg.parents()]
    if v1:  # the freezer cgroup pause made (v1)
        _rmdir_quiet(f"/sys/fs/cgroup/freezer/{parent}/{name}")
    if parent == DEFAULT_CGROUP_PARENT:  # ours: gone with its last container
        for d in [*parents, *([f"/sys/fs/cgroup/freezer/{parent}"] if v1 else [])]:
            _rmdir_quiet(d)  # (fails while another container is still in it)
    remove_state(state_dir(st["id"]))
    if st["hooks"].get("poststop"):
        from runtimes.ns import oci_hooks

        oci_hooks.run(st, "poststop", state_json(st, "stopped"), fatal=False)


def _rmdir_all(dirs: list[str] | None) -> bool:
    """rmdir each of `dirs` (gone already is fine); False at the first that will not go
    (still has processes), or when the state has no such record."""
    if dirs is None:
        return False
    for d in dirs:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


def _rmdir_quiet(d: str) -> bool:
    """Whether `d` was removed (not contextlib.suppress: its import would cost delete
    more than its work)."""
    try:
        os.rmdir(d)
    except OSError:
        return False
    return True


def remove_state(d: str) -> None:
    """Remove the state dir `d` as far as possible. create makes only files in it: not
    shutil.rmtree, whose import (with its compression modules) costs more than this;
    nor contextlib, whose import costs delete more than these few lines."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(f"{d}/{name}")
        except FileNotFoundError:
            continue
        except OSError:
            return
    _rmdir_quiet(d)


# --- create, run -----------------------------------------------------------------------


def cmd_create(args: list[str]) -> int:
    opts, pos = parse("create", args)
    from runtimes.ns import oci_create

    oci_create.create(_one_id(pos, "create"), opts)
    return 0


def cmd_run(args: list[str]) -> int:
    opts, pos = parse("run", args)
    from runtimes.ns import oci_create

    cid = _one_id(pos, "run")
    st = oci_create.create(cid, opts)
    if flag(opts, "detach"):
        start(st)
        return 0
    return oci_create.run_attached(st, not flag(opts, "keep"))


def cmd_exec(args: list[str]) -> int:
    opts, pos = parse("exec", args, stop_at_positional=True)
    from runtimes.ns import oci_exec

    if not pos:
        raise Usage("exec: expects a container id")
    return oci_exec.exec_(load(pos[0]), opts, pos[1:])


def cmd_ps(args: list[str]) -> int:
    opts, pos = parse("ps", args)
    st = load(_one_id(pos, "ps"))
    pids = _cgroup(st).pids(st["cgroup"]["name"])
    if value(opts, "format", "table") == "json":
        print(to_json(pids))
    else:
        print("PID")
        for p in pids:
            print(p)
    return 0


def cmd_list(args: list[str]) -> int:
    opts, _ = parse("list", args)
    out = []
    if os.path.isdir(G.root):
        for cid in sorted(os.listdir(G.root)):
            try:
                out.append(state_json(load(cid)))
            except CliError:
                continue
    if value(opts, "format", "table") == "json":
        print(to_json(out))
    elif flag(opts, "quiet"):
        for s in out:
            print(s["id"])
    else:
        print("ID\tPID\tSTATUS\tBUNDLE")
        for s in out:
            print(f"{s['id']}\t{s.get('pid', 0)}\t{s['status']}\t{s['bundle']}")
    return 0


def cmd_features(args: list[str]) -> int:
    parse("features", args)
    import json

    from runtimes.ns import oci_bundle

    print(json.dumps({
        "ociVersionMin": "1.0.0", "ociVersionMax": SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": sorted([*oci_bundle._FLAGS, "bind", "rbind", "rro", "rrw",
                                *oci_bundle._PROPAGATION,
                                *(f"r{p}" for p in oci_bundle._PROPAGATION)]),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": list(_caps()),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True, "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO",
                                                     "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                                                     "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                                                     "SCMP_ACT_TRAP"],
                        "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
                                      "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ",
                                      "SCMP_CMP_NE"]},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
        },
        "annotations": {"org.cvbench.ns.version": VERSION},
    }, indent=2))
    return 0


def _caps() -> tuple[str, ...]:
    from runtimes.ns import security

    return security.CAP_NAMES[:security.last_cap() + 1]


def _refused(what: str) -> Callable[[list[str]], int]:
    def cmd(args: list[str]) -> int:
        raise CliError(f"{what} is not supported by cvbench-ns")
    return cmd


def cmd_update(args: list[str]) -> int:
    opts, pos = parse("update", args)
    from runtimes.ns import oci_ops

    return oci_ops.update(load(_one_id(pos, "update")), opts)


def cmd_pause(args: list[str]) -> int:
    _, pos = parse("pause", args)
    from runtimes.ns import oci_ops

    return oci_ops.freeze(load(_one_id(pos, "pause")), True)


def cmd_resume(args: list[str]) -> int:
    _, pos = parse("resume", args)
    from runtimes.ns import oci_ops

    return oci_ops.freeze(load(_one_id(pos, "resume")), False)


def cmd_events(args: list[str]) -> int:
    opts, pos = parse("events", args)
    from runtimes.ns import oci_ops

    return oci_ops.events(load(_one_id(pos, "events")), opts)


COMMANDS = {
    "state": cmd_state, "start": cmd_start, "kill": cmd_kill, "delete": cmd_delete,
    "create": cmd_create, "run": cmd_run, "exec": cmd_exec, "ps": cmd_ps,
    "list": cmd_list, "features": cmd_features, "update": cmd_update,
    "pause": cmd_pause, "resume": cmd_resume, "events": cmd_events,
    "checkpoint": _refused("checkpoint (CRIU)"), "restore": _refused("restore (CRIU)"),
}

USAGE = """usage: cvbench-ns [--root DIR] [--log FILE] [--log-format text|json] COMMAND ...
ns (cvbench's namespace runtime) as an OCI runtime (runtime-spec 1.x).
commands: create [--bundle DIR] [--pid-file F] [--console-socket S] ID | start ID |
  state ID | kill ID [SIGNAL] [--all] | delete [--force] ID | run [--bundle DIR] [-d] ID |
  exec [--process F] [--detach] [--pid-file F] [--tty] ID [CMD...] | ps ID | list |
  update [--resources F] ID | pause ID | resume ID | events [--stats] ID | features
refused: checkpoint, restore, --systemd-cgroup"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, pos = parse("", args)
        G.root = value(opts, "root", DEFAULT_ROOT)
        G.log = value(opts, "log")
        G.log_json = value(opts, "log-format", "text") == "json"
        if flag(opts, "version") or pos[:1] == ["version"]:
            print(f"cvbench-ns version {VERSION}\nspec: {SPEC_VERSION}")
            return 0
        if flag(opts, "help") or not pos or pos[0] == "help":
            print(USAGE)
            return 0 if flag(opts, "help") or pos[:1] == ["help"] else 2
        if flag(opts, "systemd-cgroup"):
            raise Usage("--systemd-cgroup: not supported by cvbench-ns (cgroupfs only: "
                        "configure the engine's cgroup manager as cgroupfs)")
        if value(opts, "rootless", "false") not in ("false", "auto"):
            raise Usage("--rootless: not supported by cvbench-ns")
        cmd = COMMANDS.get(pos[0])
        if cmd is None:
            raise Usage(f"unknown command {pos[0]!r} (see cvbench-ns --help)")
        return cmd(pos[1:])
    except CliError as e:
        return _fail(str(e), e.code)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bundle's field (UsageError) or the host refused
        from harness.core.errors import UsageError

        if isinstance(e, UsageError):
            return _fail(str(e), 2)
        if isinstance(e, OSError):
            return _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""), 1)
        raise


def entry() -> NoReturn:
    """The command itself (the console script, and the wrapper provision installs):
    main(), then out without the interpreter's teardown.

    Each call is a new interpreter that lives for milliseconds: collecting garbage while
    `create` imports its modules, and freeing every module at exit, cost it time for
    memory the kernel takes back at once anyway. Every file is closed by then (with
    blocks); stdout and stderr are flushed here."""
    import gc

    gc.disable()
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # (a reader that went away: what the interpreter's own exit says)
        code = code or 120
    os._exit(code)


def _fail(msg: str, code: int) -> int:
    print(f"cvbench-ns: {msg}", file=sys.stderr)
    _log("error", msg)
    return code


def die(msg: str) -> NoReturn:
    raise CliError(msg)


if __name__ == "__main__":  # python -m: run the module the others import, not a copy
    from runtimes.ns import oci_cli

    oci_cli.entry()
