"""`cvbench-ns create` and `run`: the bundle's container made with ns's mechanism (see
oci_cli.py for the lifecycle)."""

from __future__ import annotations

import contextlib
import marshal
import os
import pickle
import signal
import socket
import time
from pathlib import Path

from harness.core.record import replace
from runtimes.ns import cgroups, oci_bundle, oci_hooks, process
from runtimes.ns import namespaces as ns
from runtimes.ns.config import MountPoint
from runtimes.ns.oci_cli import (
    CliError,
    Usage,
    delete,
    flag,
    remove_state,
    start,
    start_time,
    state_dir,
    state_json,
    value,
)

TYPE_CHECKING = False  # (typing costs each cvbench-ns call: only mypy reads these)
if TYPE_CHECKING:
    from typing import Any

SETUP_TIMEOUT = 60.0
SECCOMP_CACHE = ".seccomp-cache"  # in the root: compiled programs (seccomp.compile_oci)


def _cgroup_mounts(b: oci_bundle.Bundle, cg: cgroups.Manager) -> tuple[MountPoint, ...]:
    """The bundle's `cgroup` mounts, now that the cgroup exists: the container's own
    cgroup in each hierarchy, bound read-only (as runc does without a cgroup namespace),
    under a tmpfs on cgroup v1, alone on v2."""
    out: list[MountPoint] = []
    name = b.cgroup_name
    for i, m in enumerate(b.config.mounts):
        if i not in b.cgroup_mounts:
            out.append(m)
            continue
        ro = m.flags & ns.MS_RDONLY
        keep = m.flags & (ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
        if cg.mode == "v2":
            out.append(MountPoint(str(cg.path(name)), m.target, None, ns.MS_BIND | ns.MS_REC,
                                  bind_flags=keep | ro))
            continue
        out.append(MountPoint("tmpfs", m.target, "tmpfs", keep, "mode=755"))
        for procs in cg.join_files(name):
            d = Path(procs).parent
            hierarchy = d.parents[len(Path(b.cgroup_parent).parts)].name
            out.append(MountPoint(str(d), f"{m.target}/{hierarchy}", None,
                                  ns.MS_BIND | ns.MS_REC, bind_flags=keep | ro))
        if ro:  # the tmpfs itself, once the binds are in it
            out.append(MountPoint(None, m.target, None,
                                  ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY | keep))
    return tuple(out)


def _console(path: str, size: tuple[int, int] | None) -> int:
    """A pseudo-terminal for the container: its master goes to the engine over the
    console socket (SCM_RIGHTS, as runc sends it); the slave is returned."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    try:
        if size and all(size):
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            socket.send_fds(s, [os.ttyname(slave).encode()], [master])
    except OSError as e:
        os.close(slave)
        raise CliError(f"--console-socket {path}: {e.strerror or e}") from None
    finally:
        os.close(master)
    return slave


def create(cid: str, opts: dict[str, list[str]]) -> dict[str, Any]:
    """Create container `cid` from the bundle; returns its state (state.json)."""
    oci_bundle.check_id(cid)
    if value(opts, "preserve-fds", "0") != "0":
        raise Usage("--preserve-fds: not supported by cvbench-ns")
    bundle = Path(value(opts, "bundle") or os.getcwd()).resolve()
    d = Path(state_dir(cid))
    os.makedirs(d.parent, mode=0o711, exist_ok=True)
    b = oci_bundle.translate(oci_bundle.load(bundle), bundle, cid,
                             seccomp_cache=str(d.parent / SECCOMP_CACHE))
    cfg = b.config
    if cfg.terminal and not value(opts, "console-socket"):
        raise Usage("process.terminal is true: --console-socket is required")
    if flag(opts, "no-new-keyring"):
        cfg = replace(cfg, keyring=False)
    try:
        d.mkdir(0o711)
    except FileExistsError:
        raise CliError(f"container {cid} already exists") from None
    cg = cgroups.new(parent=b.cgroup_parent, device_rules=b.device_rules)
    pid = 0
    made_cgroup = False
    hook_failed: dict[str, Any] | None = None
    try:
        if b.device_rules and cg.device_rules != b.device_rules:
            raise oci_bundle.bad("linux.resources.devices", "this host's cgroups cannot "
                                 f"enforce device rules (cgroup {cg.mode})")
        if b.limits.swap is not None and cg.mode == "v2":
            raise oci_bundle.bad("linux.resources.memory.swap", "not supported by cvbench-ns "
                                 "on cgroup v2 (swap is off there)")
        problem = cg.check()
        if problem:
            raise CliError(f"cgroups: {problem}")
        cg.setup()
        made_cgroup = True  # (destroy is idempotent: a half-made cgroup goes too)
        cg.create(b.cgroup_name, b.limits)
        cfg = replace(
            cfg, mounts=_cgroup_mounts(b, cg),
            cgroup_join=tuple(_split(p, b.cgroup_name) for p in cg.join_files(b.cgroup_name)))
        os.mkfifo(d / "exec.fifo", 0o600)
        # Read-write: the child's read then waits for start's byte (a FIFO opened only
        # for reading would read EOF at once while no writer has it open).
        go = os.open(d / "exec.fifo", os.O_RDWR | os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        stdio = (0, 1, 2)
        if cfg.terminal:
            tty = _console(value(opts, "console-socket"), b.console_size)
            stdio = (tty, tty, tty)
            # /dev/console is the terminal (the spec's default devices; ttyname() inside
            # finds it there: the pty itself is the host's, not in the container's devpts)
            at = next(i for i, m in enumerate(cfg.mounts) if m.target == "dev") + 1
            console = MountPoint(os.ttyname(tty), "dev/console", None, ns.MS_BIND, file=True)
            cfg = replace(cfg, mounts=(*cfg.mounts[:at], console,
                                                   *cfg.mounts[at:]))
        ignored = process.default_signals()
        pid = ns.clone(cfg.clone_flags)
        if pid == 0:
            os.close(status_r)
            # (in its cgroup already: this process puts it there, below)
            process.child_main(replace(cfg, cgroup_join=()), go, status_w,
                               stdio[1], stdio[2], stdio[0])
        for sig in ignored:  # this process's own again: a hook that leaves its stdin
            signal.signal(sig, signal.SIG_IGN)  # unread must not kill it with SIGPIPE
        # Into its cgroup at once, as runc does: its set-up is charged to it, and the
        # engine's shim, which finds the cgroup by the pid it gets, reads the right one.
        for parent, procs in cfg.cgroup_join:
            Path(parent, procs).write_text(str(pid))
        os.close(go)
        os.close(status_w)
        if cfg.terminal:
            os.close(stdio[0])
        answer = _read_status(status_r)
        os.close(status_r)
        if answer != b"R":
            _reap(pid)
            msg = answer[1:].decode(errors="replace") if answer[:1] == b"E" else \
                "the container's process died during its set-up"
            raise CliError(f"creating {cid}: {msg.strip().splitlines()[0] if msg else msg}")
        if b.oom_score_adj is not None:
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(b.oom_score_adj))
        st = {
            "ociVersion": b.oci_version, "id": cid, "pid": pid,
            "start_time": start_time(pid), "bundle": str(bundle), "rootfs": cfg.lower,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "annotations": b.annotations,
            # The rules only where later calls need them to find the cgroup (v1: the
            # devices hierarchy to remove it from); on v2 they are a program attached
            # now, which each delete or kill would load again for nothing.
            "cgroup": {"parent": b.cgroup_parent, "name": b.cgroup_name,
                       "device_rules": list(b.device_rules) if cg.mode != "v2" else [],
                       # what delete removes without the managers (oci_cli.delete)
                       "mode": cg.mode, "parents": [p for p, _ in cfg.cgroup_join],
                       "dirs": [f"{p}/{b.cgroup_name}" for p, _ in cfg.cgroup_join]},
            "hooks": {k: [h.as_json() for h in v] for k, v in b.hooks.items()},
        }
        _write(d / "state", marshal.dumps(st))  # (read by every later command: oci_cli.load)
        # What an exec applies: the very protections of the first process (pickled
        # ContainerConfig, as the fork server gets it; the state dir is root's only).
        _write(d / "config.pickle", pickle.dumps(cfg, pickle.HIGHEST_PROTOCOL))
        for kind in ("prestart", "createRuntime"):
            try:
                oci_hooks.run(st, kind, state_json(st, "created"), fatal=True)
            except CliError:
                # runtime.md, Lifecycle: a failing prestart or createRuntime hook is an
                # error; the container is stopped and the lifecycle goes on at its
                # deletion (below), whose poststop hooks run then
                hook_failed = st
                raise
        if value(opts, "pid-file"):
            _write(Path(value(opts, "pid-file")), str(pid).encode())
        return st
    except BaseException:
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        if made_cgroup:
            with contextlib.suppress(OSError):
                cg.destroy(b.cgroup_name)
        remove_state(str(d))
        if hook_failed:
            oci_hooks.run(hook_failed, "poststop", state_json(hook_failed, "stopped"),
                          fatal=False)
        raise


def _split(procs: str, name: str) -> tuple[str, str]:
    """".../<parent>/<name>/cgroup.procs" -> (".../<parent>", "<name>/cgroup.procs")."""
    parent = str(Path(procs).parent.parent)
    return parent, f"{name}/cgroup.procs"


def _read_status(fd: int) -> bytes:
    """The child's answer: b"R" once set up (it then waits for start), or b"E..." / b""."""
    import select

    buf = b""
    deadline = time.monotonic() + SETUP_TIMEOUT
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while buf != b"R":
        left = deadline - time.monotonic()
        if left <= 0:
            return b"Etimed out waiting for the container's set-up"
        if not poller.poll(int(left * 1000) + 1):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _write(path: Path, data: bytes) -> None:
    """Atomically (a reader sees the whole file or none: containerd polls the pid file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def run_attached(st: dict[str, Any], remove: bool) -> int:
    """`run` without --detach: start, forward the signals this CLI gets to the container
    (as runc run does), wait for it (we are its parent) and exit with its status; then
    delete it unless --keep."""
    pid = st["pid"]

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    start(st)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    if remove:
        delete(st, force=True)
    return code
