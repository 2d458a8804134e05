"""`cvbench-ns exec`: a further process in a running container (what `docker exec` and
`podman exec` ask for), with the first process's own protections.

The ContainerConfig the container was created with (config.pickle in its state dir) is
applied again with the exec's process (--process FILE, or the command line's) over it:
the same capabilities' bound, rlimits, seccomp program, no_new_privs unless asked,
cgroup. This process joins the container's namespaces (one setns through a pidfd of its
first process), then forks: the child, inside its pid namespace, joins its cgroup,
chroots into its root (/proc/PID/root, opened before), changes to the cwd and runs
process.confine_and_exec, as ns's own exec does (process.exec_main). Everything on the
host (the pid file's directory, the cgroup files, imports) is opened before the setns,
as the host's paths are out of sight after it. --detach: the pid file gets the
command's pid and this process exits, leaving it to the caller's subreaper."""

from __future__ import annotations

import json
import os
import pickle
import select
from pathlib import Path

from harness.core.record import replace
from runtimes.ns import namespaces as ns
from runtimes.ns import oci_bundle, process, security
from runtimes.ns.config import ContainerConfig
from runtimes.ns.oci_cli import CliError, Usage, flag, state_dir, status, value

TYPE_CHECKING = False  # (typing costs each cvbench-ns call: only mypy reads these)
if TYPE_CHECKING:
    from typing import Any


def _user(spec: str) -> tuple[int, int]:
    uid, _, gid = spec.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise Usage(f"exec: --user {spec!r}: numeric uid[:gid] only")
    return int(uid), int(gid or 0)


def config(st: dict[str, Any], opts: dict[str, list[str]], command: list[str]
           ) -> ContainerConfig:
    with open(f"{state_dir(st['id'])}/config.pickle", "rb") as f:
        base: ContainerConfig = pickle.load(f)
    if value(opts, "process"):
        path = value(opts, "process")
        try:
            data = json.loads(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise Usage(f"exec: --process {path}: {e}") from None
        oci_bundle.WHERE = path  # errors name the process file
        fields = oci_bundle.exec_process(data)
        if fields["rlimits"] is None:
            fields["rlimits"] = base.rlimits
    else:
        if not command:
            raise Usage("exec: a command or --process is required")
        uid, gid = _user(value(opts, "user", "0:0"))
        env = dict(e.partition("=")[::2] for e in (*base.env, *opts.get("env", ()))
                   if "=" in e)
        caps = base.caps + tuple(security.cap_numbers(tuple(opts.get("cap", ()))))
        fields = {"argv": tuple(command), "env": tuple(f"{k}={v}" for k, v in env.items()),
                  "workdir": value(opts, "cwd", base.workdir), "uid": uid, "gid": gid,
                  "groups": (), "caps": caps, "terminal": flag(opts, "tty"),
                  "no_new_privs": base.no_new_privs or flag(opts, "no-new-privs")}
    return replace(base, **fields)


def exec_(st: dict[str, Any], opts: dict[str, list[str]], command: list[str]) -> int:
    if status(st) not in ("running", "created"):
        raise CliError(f"container {st['id']} is not running")
    if value(opts, "preserve-fds", "0") != "0":
        raise Usage("exec: --preserve-fds: not supported by cvbench-ns")
    cfg = config(st, opts, command)
    stdio = (0, 1, 2)
    if cfg.terminal:
        from runtimes.ns.oci_create import _console

        if not value(opts, "console-socket"):
            raise Usage("exec: a terminal needs --console-socket")
        tty = _console(value(opts, "console-socket"), None)
        stdio = (tty, tty, tty)
    pid = st["pid"]
    pidfd = os.pidfd_open(pid)
    root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    joins = [os.open(f"{parent}/{procs}", os.O_WRONLY | os.O_CLOEXEC)
             for parent, procs in cfg.cgroup_join]
    pid_file = value(opts, "pid-file")
    pid_dir = os.open(os.path.dirname(os.path.abspath(pid_file)), os.O_PATH | os.O_DIRECTORY) \
        if pid_file else -1
    flags = cfg.clone_flags | (ns.CLONE_NEWCGROUP if cfg.cgroupns else 0)
    for _, f in cfg.join:
        flags |= f
    env = dict(e.split("=", 1) for e in cfg.env if "=" in e)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    process.default_signals()
    ns.setns(pidfd, flags)  # this process: every namespace but pid, which its children get
    child = os.fork()
    if child == 0:
        try:
            os.close(status_r)
            for fd, target in zip(stdio, (0, 1, 2), strict=True):
                if fd != target:
                    os.dup2(fd, target)
            if cfg.terminal:
                import fcntl
                import termios

                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            for fd in joins:
                os.write(fd, b"0")
            os.fchdir(root)
            os.chroot(".")
            os.chdir(cfg.workdir)
            process.confine_and_exec(cfg, env, status_w)
        except BaseException as e:
            process._fail(status_w, e)
    os.close(status_w)
    for fd in (pidfd, root, *joins):
        os.close(fd)
    if cfg.terminal:
        os.close(stdio[0])
    answer = b""
    poller = select.poll()
    poller.register(status_r, select.POLLIN)
    while poller.poll():
        chunk = os.read(status_r, 4096)
        if not chunk:
            break
        answer += chunk
    os.close(status_r)
    if answer:
        os.waitpid(child, 0)
        raise CliError(f"exec {cfg.argv[0]}: {answer[1:].decode(errors='replace').strip()}")
    if pid_file:
        name = os.path.basename(pid_file)
        tmp = os.open(f".{name}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644,
                      dir_fd=pid_dir)
        os.write(tmp, str(child).encode())
        os.close(tmp)
        os.rename(f".{name}.tmp", name, src_dir_fd=pid_dir, dst_dir_fd=pid_dir)
        os.close(pid_dir)
    if flag(opts, "detach"):
        return 0
    _, code = os.waitpid(child, 0)
    return os.WEXITSTATUS(code) if os.WIFEXITED(code) else 128 + os.WTERMSIG(code)
