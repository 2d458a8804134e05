"""Paths inside an image's root, resolved there and never on the host (runc's secure-join).

An image is untrusted: its `proc` may be a symlink to `/etc`, its workdir a symlink to
`/root/.ssh`. mount(2), mkdir(2) and open(2) given `<root>/proc` follow that symlink from
the host's root, so a mount or a file meant for the image lands on the host. Every path
the harness creates, opens or mounts inside an image root goes through here instead:

- `lookup` opens a path with openat2(RESOLVE_IN_ROOT): the kernel resolves `..` and
  absolute symlinks as if the root were `/` (a chroot for this one lookup), refuses
  magic links (/proc/PID/root would leave), and returns an O_PATH descriptor of exactly
  the file it found.
- `resolve` follows the image's symlinks inside the root in user space, keeping what is
  missing as named (a symlink to a file the image lacks leads to where it says, inside
  the root, as runc's secure-join); `mkdirs` / `mkfile` then make what is missing one
  component at a time below the root's descriptor, never following a symlink.
- `fd_path` names a descriptor as /proc/self/fd/N: mount(2) on that magic link mounts on
  the very dentry the descriptor holds, so nothing between the lookup and the mount can
  redirect it (runc mounts the same way). A descriptor keeps the dentry it was opened on:
  after mounting on it, look the path up again to reach the new mount (remounts).

Targets are cleaned lexically first, as Docker cleans a mount destination ("a/../b" is
"b"; ".." cannot climb above the root). Linux >= 5.6 (openat2) is needed; every kernel
cvbench targets has it (Debian 12: 6.1, Debian 13: 6.12).
Only ctypes and os here: the ns fork server's children import this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import stat
from pathlib import Path

_SYS_OPENAT2 = 437  # the same on every architecture (asm-generic)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_ONE_STEP = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# What sends mkdirs/mkfile from the one-call lookup to the walk that makes (or names why)
_SLOW_PATH = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class OutsideRoot(OSError):
    """A path of the image that cannot be resolved, or made, inside its root."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ELOOP, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(16):  # EAGAIN: a concurrent rename raced a ".." lookup; try again
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                           path.encode(), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise OSError(err, "openat2 is not available (Linux >= 5.6 is needed to resolve "
                               "image paths inside their root)")
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def clean(path: str) -> str:
    """`path` relative to the root, cleaned lexically ("" for the root itself)."""
    return posixpath.normpath("/" + path).lstrip("/")


def open_root(root: str | Path) -> int:
    """An O_PATH descriptor of the root directory itself (the caller's, trusted path)."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def fd_path(fd: int) -> str:
    """The descriptor as a path a syscall follows to exactly its file (a magic link)."""
    return f"/proc/self/fd/{fd}"


def lookup(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open `path` resolved inside the root (its symlinks too); OSError if it is missing."""
    return openat2(root_fd, clean(path) or ".", flags, 0, _IN_ROOT)


def _refuse(path: str, why: str) -> OutsideRoot:
    return OutsideRoot(f"image path {'/' + clean(path)!r}: {why}")


def resolve(root_fd: int, path: str) -> str:
    """`path` with every symlink resolved inside the root, as a chroot would resolve it
    (filepath-securejoin's SecureJoin): relative to the root, with no symlink left in the
    part that exists; what does not exist is kept as named, so that a symlink to a missing
    file (Ubuntu's /etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf) leads to
    where the image says, made there. More than 40 links (the kernel's bound) is refused."""
    todo = [p for p in clean(path).split("/") if p]
    got: list[str] = []
    hops, missing = 0, False
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if got:
                got.pop()
            continue
        if not missing:
            try:
                fd = lookup(root_fd, "/".join(got), os.O_PATH | os.O_DIRECTORY)
            except NotADirectoryError:
                raise _refuse(path, f"{got[-1]!r} is not a directory inside the image") \
                    from None
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > 40:
                        raise _refuse(path, "too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=fd)
                    if target.startswith("/"):
                        got = []
                    todo = target.split("/") + todo
                    continue
            except FileNotFoundError:
                missing = True
            except NotADirectoryError:
                raise _refuse(path, "a component is not a directory inside the image") \
                    from None
            finally:
                os.close(fd)
        got.append(part)
    return "/".join(got)


def _step(fd: int, part: str, flags: int, path: str) -> int:
    """Open `part` right below `fd`, following no symlink (the path is resolved already:
    one here now is a race, refused)."""
    try:
        return openat2(fd, part, flags | os.O_NOFOLLOW, 0, _ONE_STEP)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EXDEV):
            raise _refuse(path, f"{part!r} changed into a symlink while it was resolved") \
                from None
        if e.errno == errno.ENOTDIR:
            raise _refuse(path, f"{part!r} is not a directory inside the image") from None
        raise


def mkdirs(root_fd: int, path: str, mode: int = 0o755) -> int:
    """mkdir -p `path` inside the root (its symlinks resolved there); an O_PATH
    descriptor of the directory. A component that is not a directory is refused
    (OutsideRoot, naming the path)."""
    try:  # the usual case, an existing directory: one openat2, resolved in the kernel
        return lookup(root_fd, path, os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        if e.errno not in _SLOW_PATH:
            raise  # else made below, or refused with the path named
    fd = os.dup(root_fd)
    try:
        for part in [p for p in resolve(root_fd, path).split("/") if p]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            nxt = _step(fd, part, os.O_PATH | os.O_DIRECTORY, path)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def mkfile(root_fd: int, path: str, mode: int = 0o644) -> int:
    """An O_PATH descriptor of the file at `path` inside the root, made empty where
    missing (a mount point for a file: a device node, /etc/hosts). A directory there is
    refused."""
    try:  # the usual case, an existing file: one openat2, resolved in the kernel
        fd = lookup(root_fd, path)
    except OSError as e:
        if e.errno not in _SLOW_PATH:
            raise
        fd = _make_file(root_fd, path, mode)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(path, "is a directory, where a file is mounted")
    return fd


def _make_file(root_fd: int, path: str, mode: int) -> int:
    """mkfile's slow path: `path` is missing (perhaps behind a link to nothing)."""
    parent, _, name = resolve(root_fd, path).rpartition("/")
    if not name:
        raise _refuse(path, "is the image's root, where a file is mounted")
    pfd = mkdirs(root_fd, parent)
    try:
        with contextlib.suppress(FileExistsError):  # O_EXCL: never through a symlink
            os.close(openat2(pfd, name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode,
                             _ONE_STEP))
        return _step(pfd, name, os.O_PATH, path)
    finally:
        os.close(pfd)


def host_path(root: str | Path, path: str, *, make_dir: bool = False) -> Path:
    """The host path that `path` inside `root` resolves to (symlinks followed inside the
    root), made as a directory if asked. For callers that must hand a path to another
    program (chroot, unshare, tar) at a time nothing else writes into the root."""
    rfd = open_root(root)
    try:
        fd = mkdirs(rfd, path) if make_dir else lookup(rfd, path)
    finally:
        os.close(rfd)
    try:
        return Path(os.readlink(fd_path(fd)))
    finally:
        os.close(fd)


def read_bytes(root: str | Path, path: str) -> bytes:
    """The content of the file at `path` resolved inside `root`."""
    rfd = open_root(root)
    try:
        fd = lookup(rfd, path, os.O_RDONLY)
    finally:
        os.close(rfd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def problem(root: str | Path, path: str, *, directory: bool = True) -> str | None:
    """Why `path` could not be made (or used) inside `root` as a directory (or a file),
    or None. Makes nothing: a check before a run, naming the path (see mkdirs)."""
    rfd = open_root(root)
    try:
        parts = [p for p in resolve(rfd, path).split("/") if p]
        fd = os.dup(rfd)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = _step(fd, part, os.O_PATH, path)
                except FileNotFoundError:
                    return None  # made when it is needed
                os.close(fd)
                fd = nxt
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                if i < len(parts) - 1 and not is_dir:
                    raise _refuse(path, f"{part!r} is not a directory inside the image")
            if stat.S_ISDIR(os.fstat(fd).st_mode) != directory:
                raise _refuse(path, "is a directory, where a file is mounted" if directory
                              is False else "is not a directory")
            return None
        finally:
            os.close(fd)
    except OutsideRoot as e:
        return str(e)
    finally:
        os.close(rfd)
