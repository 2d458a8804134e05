"""The container's filesystem, set up by its first process inside its new mount namespace.

Order matters, and each step says why:
1. "/" becomes rslave: mounts we make from here on do not propagate back to the host
   (and host mounts made later still propagate in, as with runc's default).
2. overlay: the image rootfs as the read-only lower layer (shared by every instance),
   under a small "dev layer" holding /dev's device nodes (made once, make_dev_layer),
   and a per-instance upper/work dir; all writes land in the upper dir. By default it
   is on disk, <state>/ns/<instance>/{upper,work}, made by the parent before the child
   starts, where Docker's overlay2 keeps a container's (never mounted `volatile`: fsync
   must reach the disk for I/O figures to mean anything); ns:tmpfs puts it in a tmpfs
   only this mount namespace sees, in RAM. The overlay is mounted over the image
   directory itself: that path is private to our mount namespace, so no per-instance
   mount point has to be made (or removed) on the host.
3. /proc, /dev/pts, /dev/shm, /dev/mqueue, /sys (read-only) and the user's mounts, all
   below the new root before we move into it. (Rootless: /dev is a tmpfs with the host's nodes bound
   in, since an unprivileged user cannot make device nodes.) This happens before
   pivot_root, so an absolute symlink in the image would resolve from the host's root:
   every target is resolved inside the new root and mounted through its descriptor
   (harness/core/rootpath.py, runc's secure-join); a target that leads nowhere inside the
   image is refused.
4. pivot_root(".", ".") stacks the old root under the new one; making it rslave before
   the lazy unmount keeps that unmount from propagating to the host's mounts.
5. masked paths (/proc/kcore...) are covered with /dev/null or an empty read-only
   tmpfs; /proc/sys and friends are remounted read-only.
Because the mounts belong to the instance's mount namespace, the kernel drops them all
when its last process exits: nothing is left in the host's mount table.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from harness.core import rootpath
from runtimes.ns import namespaces as ns
from runtimes.ns.config import ContainerConfig, MountPoint

PROC_FLAGS = ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
              ("ptmx", "pts/ptmx"))


def standard_mounts(new_netns: bool, dev_tmpfs: bool) -> tuple[MountPoint, ...]:
    """The mounts every instance gets (runc's default spec, minus cgroupfs), with Docker's
    flags.
    /dev is a tmpfs filled per instance only without a dev layer (see make_dev_layer)."""
    mounts = [MountPoint("proc", "proc", "proc", PROC_FLAGS)]
    if dev_tmpfs:
        mounts.append(MountPoint("tmpfs", "dev", "tmpfs", ns.MS_NOSUID | ns.MS_STRICTATIME,
                                 "mode=755,size=65536k"))
    mounts += [
        MountPoint("devpts", "dev/pts", "devpts", ns.MS_NOSUID | ns.MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620"),
        MountPoint("shm", "dev/shm", "tmpfs", PROC_FLAGS, "mode=1777,size=65536k"),
        # the IPC namespace's POSIX message queues, as Docker mounts them
        MountPoint("mqueue", "dev/mqueue", "mqueue", PROC_FLAGS),
    ]
    if new_netns:
        # sysfs shows the network namespace that mounts it, so only with a private netns.
        mounts.append(MountPoint("sysfs", "sys", "sysfs", PROC_FLAGS | ns.MS_RDONLY))
    return tuple(mounts)


def _mount_one(root_fd: int, m: MountPoint) -> None:
    """Mount `m` on its target resolved inside the root (rootpath): the image's symlinks
    are followed as the container will see them, never on the host."""
    fd = rootpath.mkfile(root_fd, m.target) if m.file else rootpath.mkdirs(root_fd, m.target)
    try:
        ns.mount(m.source, rootpath.fd_path(fd), m.fstype, m.flags, m.data)
    finally:
        os.close(fd)
    if not (m.readonly_remount or m.recursive_readonly or m.bind_flags or m.propagation):
        return
    # The descriptor holds the dentry under the new mount: look again to reach the mount.
    fd = rootpath.lookup(root_fd, m.target)
    try:
        target = rootpath.fd_path(fd)
        if m.readonly_remount:
            # A bind mount ignores MS_RDONLY; only a remount makes it read-only. MS_REC
            # does not reach submounts here, so the source must not hide writable mounts.
            ns.mount(None, target, None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY | m.flags)
        if m.bind_flags:
            ns.mount(None, target, None, ns.MS_REMOUNT | ns.MS_BIND | m.bind_flags)
        if m.recursive_readonly:
            ns.mount_setattr(target, ns.MOUNT_ATTR_RDONLY)
        if m.propagation:
            ns.mount(None, target, None, m.propagation)
    finally:
        os.close(fd)


def make_dev_layer(path: Path, devices: tuple[tuple[str, int, int, int], ...]) -> Path:
    """An overlay layer holding only dev/: the allowed device nodes, the usual links and
    the pts and shm mount points. Made once (atomically: concurrent runs may race) and
    put above the image, it replaces a per-instance tmpfs on /dev and its mknods.
    Needs CAP_MKNOD on the host, so rootless instances keep the tmpfs."""
    import shutil  # (here: cvbench-ns create loads this module, and needs neither)
    import tempfile

    if path.is_dir():
        return path
    tmp = Path(tempfile.mkdtemp(prefix=".devlayer-", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        dev = tmp / "dev"
        dev.mkdir(0o755)
        for name, mode, major, minor in devices:
            os.mknod(dev / name, stat.S_IFCHR | mode, os.makedev(major, minor))
            os.chmod(dev / name, mode)  # (the umask trimmed it)
        for link, target in _DEV_LINKS:
            os.symlink(target, dev / link)
        (dev / "pts").mkdir(0o755)
        (dev / "mqueue").mkdir(0o1777)
        (dev / "shm").mkdir(0o1777)
        os.chmod(dev / "shm", 0o1777)
        os.rename(tmp, path)
    except FileExistsError:
        pass  # another run made it first
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _devices(root_fd: int, cfg: ContainerConfig) -> None:
    """The device nodes and links in the tmpfs just mounted on the root's dev (resolved
    inside the root, as that mount was)."""
    dev = rootpath.lookup(root_fd, "dev", os.O_PATH | os.O_DIRECTORY)
    try:
        if cfg.userns_map is None:
            for name, mode, major, minor in cfg.devices:
                os.mknod(name, stat.S_IFCHR | mode, os.makedev(major, minor), dir_fd=dev)
        else:
            # In a user namespace mknod is refused (the kernel would let an unprivileged
            # user make any device); bind the host's nodes instead, as rootless runc does.
            for name, *_ in cfg.devices:
                node = rootpath.mkfile(dev, name, 0o666)
                try:
                    ns.mount(f"/dev/{name}", rootpath.fd_path(node), None, ns.MS_BIND)
                finally:
                    os.close(node)
        for link, target in _DEV_LINKS:
            os.symlink(target, link, dir_fd=dev)
    finally:
        os.close(dev)


def masks(paths: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """(path, is a directory) of the masked paths this kernel has, looked up once on the
    host: a fresh procfs or sysfs shows the same entries."""
    out = []
    for path in paths:
        try:
            out.append((path, stat.S_ISDIR(os.stat(path).st_mode)))
        except OSError:
            continue
    return tuple(out)


def _mask(cfg: ContainerConfig) -> None:
    """Masked and read-only paths, in the container's root (after pivot_root). A path
    that is not there is skipped: nothing to read or write (a bundle's paths are the
    container's, config-linux.md: only here can one tell what they are)."""
    for path, is_dir in cfg.masked:
        if is_dir is None:
            try:
                is_dir = stat.S_ISDIR(os.stat(path).st_mode)
            except FileNotFoundError:
                continue
        if is_dir:  # an empty read-only tmpfs over a directory, /dev/null over the rest
            ns.mount("tmpfs", path, "tmpfs", ns.MS_RDONLY)
        else:  # (a file, a device node, a FIFO...)
            ns.mount("/dev/null", path, None, ns.MS_BIND)
    for path in cfg.readonly:
        try:
            ns.mount(path, path, None, ns.MS_BIND | ns.MS_REC)
        except FileNotFoundError:
            continue
        ns.mount(None, path, None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY | PROC_FLAGS)


def setup(cfg: ContainerConfig, before_pivot: Callable[[], None] | None = None) -> None:
    """Build the root filesystem and move into it (runs in the child); `before_pivot`
    runs once the mounts are made (cvbench-ns: the createContainer hooks)."""
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_SLAVE)
    root = cfg.lower
    if cfg.bind_root:
        # cvbench-ns: the bundle's root as the engine prepared it, made a mount point
        # of its own (pivot_root needs one) by binding it on itself.
        ns.mount(root, root, None, ns.MS_BIND | ns.MS_REC)
    else:
        _overlay(cfg)
    root_fd = rootpath.open_root(root)  # the overlay (or bind) just mounted there
    try:
        for m in cfg.mounts:
            _mount_one(root_fd, m)
            if m.target == "dev":
                _devices(root_fd, cfg)
        # A missing workdir is made as root (as Docker makes a WORKDIR), inside the root.
        os.close(rootpath.mkdirs(root_fd, cfg.workdir))
    finally:
        os.close(root_fd)
    if before_pivot is not None:
        before_pivot()
    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.mount(None, ".", None, ns.MS_SLAVE | ns.MS_REC)
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")
    if cfg.root_propagation:
        ns.mount(None, "/", None, cfg.root_propagation)
    for key, value in cfg.sysctl:  # before _mask makes /proc/sys read-only
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    _mask(cfg)
    if cfg.readonly_root:
        ns.mount(None, "/", None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY)


def _overlay(cfg: ContainerConfig) -> None:
    """The image as the lower layer of an overlay mounted over it (see the docstring)."""
    upper, work = cfg.upper, cfg.work
    options = ""
    if not upper:
        # ns:tmpfs, a writable layer in memory: a tmpfs only this mount namespace sees.
        # It is charged to the instance's memory cgroup and vanishes with the namespace.
        ns.mount("tmpfs", cfg.scratch, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=755")
        upper, work = f"{cfg.scratch}/upper", f"{cfg.scratch}/work"
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
        # volatile: overlayfs skips syncing the upper layer; in a tmpfs there is nothing
        # to sync anyway. Never on disk: fsync would then lie to I/O benchmarks.
        options = ",volatile"
    layers = f"{cfg.dev_layer}:{cfg.lower}" if cfg.dev_layer else cfg.lower
    ns.mount("overlay", cfg.lower, "overlay", 0,
             f"lowerdir={layers},upperdir={upper},workdir={work}{options}")
