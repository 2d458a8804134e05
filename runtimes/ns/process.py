"""Parent side of an instance's first process, and the code that runs in the child.

create: the runner asks the fork server (forkserver.py) to clone() the child into its
  new namespaces, then makes the instance's cgroup while the child (on the other CPU)
  maps its user namespace (rootless), builds its root filesystem, sets hostname and
  loopback, writes "R" on the status pipe and reads the go pipe (like runc's exec fifo:
  all the set-up can happen before start). ns:intocgroup: the runner makes the cgroup
  first, and the fork server clones the child into it (clone3, CLONE_INTO_CGROUP).
start: the runner writes one byte on the go pipe and waits. The child joins its cgroup
  (unless it was cloned into it), enters a new cgroup namespace, then applies the
  protections and execs /bench/init
  (`confine_and_exec`: session keyring, rlimits, capabilities and privileges, every
  other descriptor closed, the seccomp filter last). The status pipe is close-on-exec,
  so EOF after "R" means the exec succeeded; an "E..." message means a step failed (the
  child then exits 127). The runner thus sleeps once per instance, not at every step,
  which matters most on a busy host.
ns:pool (cfg.pooled): the cgroup is made first and the child joins it (and a new cgroup
  namespace), then applies `confine` (confine_and_exec's protections but the user's
  switch) and loads the seccomp filter, before its "R", which the pool's thread reads
  (wait_set_up), said by the small static program it execs to wait (slot_waiter.c):
  a slot, set up, confined and waiting. start then writes "G" and the instance's
  HANDED_OVER values (argv, env, workdir, user; `handover`), which the waiter reads
  before it does what `become_user` does, and execs.
exec (a further command in a running instance, `exec_main`): a helper joins every
  namespace of the instance, forks the process that joins its cgroup, enters its root
  and workdir and runs the same `confine_and_exec` with the instance's own config, so an
  exec'd command and the first process cannot drift apart.

The child is a clone of the single-threaded fork server (`serve()` below, see
forkserver.py) and leaves with execve or os._exit, never by returning into the caller's
code.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import pickle
import select
import signal
import socket
import termios
import time

from harness.core.record import mutable_record
from runtimes.ns import namespaces as ns
from runtimes.ns import rootfs, security
from runtimes.ns.config import ContainerConfig, ExecConfig

TYPE_CHECKING = False  # (typing: neither in the fork server nor in cvbench-ns; mypy only)
if TYPE_CHECKING:
    from typing import NoReturn

    from runtimes.ns.forkserver import ForkServer, Ticket


class SetupError(Exception):
    """The child could not set up the instance (the message comes from the child)."""


@mutable_record
class Child:
    """The parent's handle on an instance's first process. Its pid is known once the
    fork server's answer has been read (`resolve`)."""

    ticket: Ticket
    go_w: int
    status_r: int
    pid: int = 0
    pidfd: int = -1
    set_up: bool = False  # its "R" was read already (a pool's slot, wait_set_up)

    def resolve(self) -> int:
        if not self.pid:
            self.pid = self.ticket.pid()
            self.pidfd = os.pidfd_open(self.pid)
        return self.pid


def _write(path: str, data: str, dir_fd: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY, dir_fd=dir_fd)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _enter_userns(uid: int, gid: int) -> None:
    """Map the invoking user to root in the new user namespace. An unprivileged process
    may map only its own ids, and must give up setgroups() before writing gid_map."""
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def child_main(cfg: ContainerConfig, go_r: int, status_w: int, out_w: int,
               err_w: int, in_r: int = -1) -> NoReturn:
    """Runs in the cloned child; never returns. stdin is `in_r`, or /dev/null."""
    try:
        os.set_inheritable(status_w, False)  # EOF at exec tells the parent it happened
        for path, flag in cfg.join:  # namespaces of others (cvbench-ns: a bundle's paths)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            ns.setns(fd, flag)
            os.close(fd)
        if cfg.userns_map is not None:
            _enter_userns(*cfg.userns_map)
        if cfg.die_with_parent:
            # Die with the runner (a SIGKILLed runner must not leave instances running).
            ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.umask(0)
        os.dup2(in_r if in_r >= 0 else os.open("/dev/null", os.O_RDONLY), 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        if cfg.terminal:  # a session of its own, the terminal on fd 0 its controlling tty
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # The instance's cgroup may not exist yet (the runner makes it while we set up):
        # keep handles on its parents, which pivot_root puts out of sight. (ns:intocgroup:
        # cloned into it, nothing to join.)
        joins = () if cfg.into_cgroup else cfg.cgroup_join
        cgroup_parents = [os.open(d, os.O_PATH | os.O_DIRECTORY) for d, _ in joins]
        # A slot's waiter, a host file: opened before pivot_root puts it out of sight.
        waiter = os.open(cfg.waiter, os.O_PATH | os.O_CLOEXEC) if cfg.pooled else -1
        # (the host's /proc is still ours: "self" there is our pid on the host)
        state = cfg.hook_state.replace(b"@PID@", os.readlink("/proc/self").encode()) \
            if cfg.hook_state else b""
        rootfs.setup(cfg, (lambda: run_hooks(cfg.hooks_create, state, "createContainer"))
                     if cfg.hooks_create else None)
        if cfg.hostname:
            ns.sethostname(cfg.hostname)
        if cfg.loopback_up:
            ns.loopback_up()
        os.chdir(cfg.workdir)  # (made by rootfs.setup if it was missing)
        env = dict(e.split("=", 1) for e in cfg.env)
        if cfg.pooled:
            # A pool's slot waits in its cgroup (made before the clone) and its cgroup
            # namespace: what it holds idle is charged there, and taking it moves no
            # task between cgroups on the timed path. It waits confined: every
            # protection but the user's switch (confine_and_exec's, less become_user,
            # the seccomp filter included) is applied now; then it execs the waiter
            # (slot_waiter.c), which says "R", reads the hand-over, does what
            # become_user does and execs the workload: this interpreter's address
            # space is torn down now, not by the workload's exec on the request's
            # path. (A slot runs no startContainer hooks: ns:pool has none.)
            _join_cgroup(cfg, cgroup_parents, joins)
            confine(cfg, keep=(status_w, go_r, waiter))
            if cfg.seccomp and cfg.no_new_privs:
                security.load_seccomp(cfg.seccomp)
            os.set_inheritable(go_r, True)
            os.set_inheritable(status_w, True)  # (the waiter makes it close-on-exec)
            os.execve(waiter, waiter_argv(cfg, go_r, status_w), {})
        os.write(status_w, b"R")
        if os.read(go_r, 1) != b"G":
            os._exit(0)  # the parent went away or removed us before start
        # Started: the cgroup exists. Join it only now, with the set-up done: that was
        # this runtime's work (as a shim's would be), and the workload never runs
        # outside it.
        _join_cgroup(cfg, cgroup_parents, joins)
        run_hooks(cfg.hooks_start, state.replace(b'"creating"', b'"created"'), "startContainer")
        confine_and_exec(cfg, env, status_w)
    except BaseException as e:
        _fail(status_w, e)


def _join_cgroup(cfg: ContainerConfig, parents: list[int],
                 joins: tuple[tuple[str, str], ...]) -> None:
    """Join the instance's cgroup (one cgroup.procs per hierarchy, through the handles
    on its parents), then enter a new cgroup namespace rooted there."""
    for fd, (_, procs) in zip(parents, joins, strict=True):
        _write(procs, "0", fd)  # 0 = the writing process; our pid here is 1
        os.close(fd)
    if cfg.cgroupns:  # after joining: the new namespace is rooted at our own cgroup
        ns.unshare(ns.CLONE_NEWCGROUP)


def handover(cfg: ContainerConfig) -> bytes:
    """What release() hands a pool's slot (cfg.pooled): the HANDED_OVER values of the
    instance's config (its waiter, slot_waiter.c, reads them); b"" otherwise. A fixed
    layout, NUL-separated (no argument or environment entry can hold a NUL): workdir,
    uid, gid, the number of arguments, the arguments, the environment."""
    if not cfg.pooled:
        return b""
    return b"\0".join(os.fsencode(v) for v in (cfg.workdir, str(cfg.uid), str(cfg.gid),
                                                str(len(cfg.argv)), *cfg.argv, *cfg.env))


def waiter_argv(cfg: ContainerConfig, go_r: int, status_w: int) -> list[str]:
    """The slot waiter's arguments (slot_waiter.c says what each is): what become_user
    takes from the slot's config, the rest comes with the hand-over."""
    def mask(caps: tuple[int, ...]) -> str:
        return f"{sum(1 << c for c in set(caps)):x}"

    return ["cvbench-slot-waiter", str(go_r), str(status_w), cfg.workdir,
            "0" if cfg.userns_map is not None else "1", ",".join(map(str, cfg.groups)),
            mask(cfg.caps), mask(cfg.caps if cfg.inheritable is None else cfg.inheritable),
            ",".join(map(str, cfg.ambient))]


def run_hooks(hooks: tuple[tuple[str, tuple[str, ...], tuple[str, ...], float], ...],
              state: bytes, kind: str) -> None:
    """Run OCI hooks from the container's process, in its namespaces, one after the
    other, each with `state` on its stdin; the first that fails (or outlives its
    timeout, and is then killed) raises."""
    for i, (path, argv, env, timeout) in enumerate(hooks):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(r, 0)
                os.execve(path, list(argv), dict(e.split("=", 1) for e in env if "=" in e))
            finally:
                os._exit(127)
        os.close(r)
        with contextlib.suppress(BrokenPipeError):
            os.write(w, state)
        os.close(w)
        if timeout:  # wait on a pidfd (readable at its exit), not by polling waitpid
            pidfd = os.pidfd_open(pid)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            exited = poller.poll(int(timeout * 1000))
            os.close(pidfd)
            if not exited:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise RuntimeError(f"hooks.{kind}[{i}] ({path}): timed out after {timeout:g} s")
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"hooks.{kind}[{i}] ({path}): exit status "
                               f"{os.waitstatus_to_exitcode(status)}")


def confine(cfg: ContainerConfig, keep: tuple[int, ...]) -> None:
    """The protections that do not depend on the user: session keyring, rlimits, the
    bounding set, no_new_privs, umask, every descriptor from 3 up but `keep` closed; and
    the seccomp filter where it must come first (no no_new_privs: see below). Applied by
    confine_and_exec, and by a pool's slot before it waits (its user comes with the
    hand-over). The order matters (security.py says why)."""
    if cfg.keyring:
        security.new_session_keyring()
    security.set_rlimits(cfg.rlimits)
    if cfg.seccomp and not cfg.no_new_privs:
        # Without no_new_privs only CAP_SYS_ADMIN may install a filter: load it while we
        # still hold it, so the rest of this set-up runs under it (as runc does).
        security.load_seccomp(cfg.seccomp)
    security.drop_bounding(cfg.caps, cfg.last_cap)
    if cfg.no_new_privs:
        security.no_new_privs()
    os.umask(cfg.umask)
    security.close_inherited(keep)


def become_user(cfg: ContainerConfig) -> None:
    """Switch to the instance's user: its groups, gid and uid, which clears every
    capability of a non-root user; root keeps the instance's set (and ambient ones).
    (A pool's slot waiter does the same in C: slot_waiter.c.)"""
    if cfg.userns_map is None:  # (a user namespace has setgroups denied)
        # Only the user's own groups, not whatever the runner had (runc's default:
        # the primary group when /etc/group lists none).
        os.setgroups(list(cfg.groups or (cfg.gid,)))
    if cfg.gid:
        os.setgid(cfg.gid)
    if cfg.uid:
        os.setuid(cfg.uid)  # clears every capability of the now non-root process
    else:
        security.set_caps(cfg.caps, cfg.inheritable)
        security.raise_ambient(cfg.ambient)


def confine_and_exec(cfg: ContainerConfig, env: dict[str, str], status_w: int) -> NoReturn:
    """Apply the instance's protections to this process, then exec cfg.argv (searched
    on env's PATH when it has no "/"): the tail an instance's first process and every
    exec share (a pool's slot splits it around its wait: confine, then the hand-over,
    become_user and exec, the seccomp filter loaded before the wait). `status_w` is
    kept open, close-on-exec."""
    confine(cfg, keep=(status_w,))
    become_user(cfg)
    if cfg.seccomp and cfg.no_new_privs:
        security.load_seccomp(cfg.seccomp)  # last: from here on, only what it allows
    os.execvpe(cfg.argv[0], list(cfg.argv), env)


def _fail(status_w: int, e: BaseException) -> NoReturn:
    """Report a failure to the parent on the status pipe, then leave."""
    try:
        msg = f"E{type(e).__name__}: {e}"
        if not isinstance(e, OSError):
            import traceback  # only on this error path: keep the fork server small

            msg += "\n" + traceback.format_exc(limit=3)
        try:
            os.write(status_w, msg.encode(errors="replace")[:4000])
        except OSError:  # nobody reads it (cvbench-ns: create has returned): on stderr
            os.write(2, f"cvbench-ns: {msg[1:]}\n".encode(errors="replace"))
    finally:
        os._exit(127)


def exec_main(x: ExecConfig, pidfd: int, root: int, status_w: int, out_w: int) -> NoReturn:
    """An exec's helper (a child of the runner, cloned by the fork server); never returns.

    `pidfd` is the instance's first process, `root` its root directory (/proc/PID/root,
    opened by the runner). The helper joins every namespace of that process with one
    setns, then forks: a pid namespace is entered only by the children of the process
    that joined it. The child, the one that runs the command, moves into the instance's
    cgroup, chroots into its root, changes to the workdir (after the chroot, so the
    path resolves inside the root, its symlinks included), then confine_and_exec. The
    helper stays outside the instance's pid namespace and cgroup, waits for the child
    and exits with its status (128 + the signal that killed it, as a shell reports
    it). stdout and stderr both go to `out_w`."""
    cfg = x.container
    try:
        os.set_inheritable(status_w, False)  # EOF at the command's exec
        ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the runner
        # Not dumpable until the exec (which resets it): no process of the instance may
        # open our /proc entries (/proc/PID/exe is the host's python) before then.
        ns.prctl(ns.PR_SET_DUMPABLE, 0)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        for fd in (null, out_w):
            os.close(fd)
        # Opened on the host, written by the child once it is in the pid namespace.
        joins = [os.open(f"{parent}/{procs}", os.O_WRONLY) for parent, procs in cfg.cgroup_join]
        ns.setns(pidfd, cfg.clone_flags | ns.CLONE_NEWCGROUP)
        os.close(pidfd)
        pid = os.fork()
        if pid == 0:
            for fd in joins:
                os.write(fd, b"0")
                os.close(fd)
            os.fchdir(root)
            os.chroot(".")
            os.close(root)
            os.chdir(cfg.workdir)
            confine_and_exec(cfg, dict(e.split("=", 1) for e in cfg.env), status_w)
        for fd in (*joins, root, status_w, 1, 2):
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status)
                 else 128 + os.WTERMSIG(status))
    except BaseException as e:
        _fail(status_w, e)


def _read_to_eof(fd: int, deadline: float) -> bytes | None:
    """What `fd` gives until EOF; None if `deadline` passes first."""
    buf = b""
    poller = select.poll()  # not select(): descriptors above 1024 at a thousand instances
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(max(1, int(left * 1000))):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return buf
        buf += chunk


def spawn(server: ForkServer, cfg: ContainerConfig, out_w: int, err_w: int,
          cgroup: int | None = None) -> Child:
    """Ask the fork server to clone the instance's first process (create); `cgroup`: the
    descriptor of the cgroup v2 directory to clone it into (cfg.into_cgroup). Nothing is
    waited for: the child sets itself up meanwhile, and release() collects the result."""
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        ticket = server.request(cfg, [go_r, status_w, out_w, err_w,
                                      *([] if cgroup is None else [cgroup])])
    except BaseException:
        os.close(go_w)
        os.close(status_r)
        raise
    finally:
        os.close(go_r)
        os.close(status_w)  # now only the child holds it: EOF when it execs or dies
    return Child(ticket=ticket, go_w=go_w, status_r=status_r)


def wait_set_up(child: Child, timeout: float) -> None:
    """Block until the child has set itself up and waits for the go byte (its "R"): a
    pool's slot, made ready ahead of the request. SetupError with the child's message
    if a step failed, or if it died or did not answer within `timeout`."""
    poller = select.poll()
    poller.register(child.status_r, select.POLLIN)
    if not poller.poll(max(1, int(timeout * 1000))):
        raise SetupError("the instance's first process did not set up in time")
    status = os.read(child.status_r, 4096)
    if status == b"R":
        child.set_up = True
        return
    if status[:1] == b"E":
        status += _read_to_eof(child.status_r, time.monotonic() + 1) or b""
        raise SetupError(status[1:].decode(errors="replace"))
    raise SetupError("the instance's first process died during its set-up")


def release(child: Child, timeout: float, handover: bytes = b"") -> None:
    """Let the child exec the workload (start); returns once the exec has happened.

    "G" is written at once: a child still setting up finds it when it is ready, so the
    runner waits (and wakes up) only once, at the exec. The child's "R" then EOF means
    success; "E..." carries the step that failed. A pool's slot gets `handover` (its
    HANDED_OVER values) after the "G", ended by closing the pipe."""
    data = memoryview(b"G" + handover)
    try:
        while data:  # (a blocking pipe: only a long hand-over waits for the child's read)
            data = data[os.write(child.go_w, data):]
    finally:
        os.close(child.go_w)
        child.go_w = -1
    try:
        status = _read_to_eof(child.status_r, time.monotonic() + timeout)
    finally:
        os.close(child.status_r)
        child.status_r = -1
        child.resolve()
    if status is None:
        raise SetupError("the instance's first process did not answer in time")
    if child.set_up:
        status = b"R" + status  # (read by wait_set_up)
    if status == b"R":
        return
    failure = status.removeprefix(b"R")  # set up, but the exec itself failed
    raise SetupError(failure[1:].decode(errors="replace") if failure[:1] == b"E"
                     else "the instance's first process died during its set-up")


def exec_start(server: ForkServer, x: ExecConfig, pidfd: int, root: int, out_w: int,
               timeout: float) -> tuple[int, int, bytes | None]:
    """Ask the fork server for an exec's helper (exec_main, see its arguments) and wait
    until the command has been exec'd: (the helper's pid, its pidfd, b"" once exec'd, or
    b"E<the step that failed>", or None if `timeout` passed first). The helper is the
    caller's child: to reap, or to kill with everything it started."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            ticket = server.request(x, [pidfd, root, status_w, out_w])
        finally:
            os.close(status_w)  # now only the helper holds it
        pid = ticket.pid()
        helper = os.pidfd_open(pid)
        return pid, helper, _read_to_eof(status_r, time.monotonic() + timeout)
    finally:
        os.close(status_r)


def abort(child: Child) -> None:
    """Kill and reap a child that never started (closing the go pipe alone would let it
    exit by itself, once its set-up is done)."""
    for fd in (child.go_w, child.status_r):
        if fd >= 0:
            os.close(fd)
    child.go_w = child.status_r = -1
    try:
        child.resolve()
    except Exception:
        return  # the fork server could not clone it: nothing to kill
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child.pid, 0)


def default_signals() -> tuple[int, ...]:
    """Children inherit ignored signals and the signal mask through exec; a shell must not
    start with SIGTERM ignored (POSIX: it could not even trap it). Python itself ignores
    SIGPIPE and SIGXFSZ, and the runner may have ignored more. Returns the signals it
    set back to their default (a parent that goes on may ignore them again)."""
    reset = []
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP) and \
                signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
            reset.append(int(sig))
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    return tuple(reset)


def serve(fd: int, runner: int) -> None:
    """The fork server's loop (runs in the small interpreter)."""
    ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != runner:  # the runner died before the line above
        return
    default_signals()
    # Children share our pages copy-on-write: a garbage collection in one would write to
    # every object it visits. Nothing here makes reference cycles, so collect never.
    gc.freeze()
    gc.disable()
    sock = socket.socket(fileno=fd)
    sock.send(b"ok")
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 8)
        except ConnectionResetError:
            return
        if not msg:
            return  # the runner closed its end
        try:
            cfg = pickle.loads(msg)
            if isinstance(cfg, ExecConfig):  # a plain fork (it joins the namespaces itself)
                pid = ns.clone(ns.CLONE_PARENT)
            elif cfg.into_cgroup:  # ns:intocgroup: made in its cgroup (the last fd)
                pid = ns.clone3(cfg.clone_flags | ns.CLONE_PARENT, fds[-1])
            else:
                pid = ns.clone(cfg.clone_flags | ns.CLONE_PARENT)
        except Exception as e:
            for f in fds:
                os.close(f)
            sock.send(b"E" + f"{type(e).__name__}: {e}".encode(errors="replace"))
            continue
        if pid == 0:
            with contextlib.suppress(OSError):
                sock.close()
            if isinstance(cfg, ExecConfig):
                exec_main(cfg, *fds)
            if cfg.into_cgroup:
                os.close(fds.pop())
            child_main(cfg, *fds)
        for f in fds:
            os.close(f)
        sock.send(b"P%d" % pid)
