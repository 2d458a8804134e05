"""Image paths resolved inside the image's root (harness/core/rootpath.py), never on the
host: an image's absolute symlinks, `..` and links to missing files, checked against what
the kernel itself finds (os.readlink of the descriptor) and against the host directory
the links name, which must stay untouched."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core import rootpath


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory of the host that a hostile image's links name."""
    d = tmp_path / "host"
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "passwd").write_text("host-secret\n")
    return d


@pytest.fixture
def root(tmp_path: Path, host: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("image\n")
    (r / "usr" / "lib").mkdir(parents=True)
    os.symlink(str(host), r / "proc")  # absolute: inside the root it is <root><host>
    os.symlink(str(host / "etc"), r / "sys")
    os.symlink("../../../../../../etc", r / "usr" / "lib" / "climb")  # climbs past /
    os.symlink("../run/systemd/resolve/stub-resolv.conf", r / "etc" / "resolv.conf")
    os.symlink("/etc/passwd", r / "passwd-link")
    os.symlink("loop", r / "loop")
    return r


@pytest.fixture
def rfd(root: Path) -> Iterator[int]:
    fd = rootpath.open_root(root)
    yield fd
    os.close(fd)


def real(fd: int) -> str:
    try:
        return os.readlink(rootpath.fd_path(fd))
    finally:
        os.close(fd)


def listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_absolute_links_resolve_inside_the_root(root: Path, rfd: int, host: Path) -> None:
    before = listing(host)
    assert rootpath.resolve(rfd, "proc/x") == f"{str(host).lstrip('/')}/x"
    made = real(rootpath.mkdirs(rfd, "proc/x/y"))
    assert made == f"{root}{host}/x/y"
    assert real(rootpath.mkdirs(rfd, "sys")) == f"{root}{host}/etc"
    assert listing(host) == before  # nothing made on the host


def test_dotdot_stops_at_the_root(root: Path, rfd: int) -> None:
    assert real(rootpath.lookup(rfd, "usr/lib/climb")) == f"{root}/etc"
    assert rootpath.resolve(rfd, "../../etc/passwd") == "etc/passwd"
    assert rootpath.read_bytes(root, "passwd-link") == b"image\n"


def test_a_link_to_a_missing_file_is_made_where_it_points_inside(root: Path,
                                                                 rfd: int) -> None:
    assert real(rootpath.mkfile(rfd, "etc/resolv.conf")) == \
        f"{root}/run/systemd/resolve/stub-resolv.conf"
    assert (root / "run/systemd/resolve/stub-resolv.conf").is_file()
    assert os.path.islink(root / "etc" / "resolv.conf")  # the image's link is kept


def test_refusals_name_the_path(root: Path, rfd: int) -> None:
    with pytest.raises(rootpath.OutsideRoot, match="'/loop/x': too many levels"):
        rootpath.mkdirs(rfd, "loop/x")
    with pytest.raises(rootpath.OutsideRoot, match="'/etc/passwd/x': 'passwd' is not a dir"):
        rootpath.mkdirs(rfd, "etc/passwd/x")
    with pytest.raises(rootpath.OutsideRoot, match="is a directory, where a file"):
        rootpath.mkfile(rfd, "usr")
    assert rootpath.problem(root, "loop") is not None
    assert rootpath.problem(root, "etc", directory=False) is not None
    assert rootpath.problem(root, "etc/passwd") == "image path '/etc/passwd': is not a directory"
    assert rootpath.problem(root, "proc/new/dir") is None  # made inside when needed
    assert rootpath.problem(root, "etc/resolv.conf", directory=False) is None


def test_host_path_and_read(root: Path, host: Path) -> None:
    assert rootpath.host_path(root, "proc", make_dir=True) == Path(f"{root}{host}")
    assert rootpath.read_bytes(root, "etc/passwd") == b"image\n"
    with pytest.raises(FileNotFoundError):
        rootpath.read_bytes(root, "proc/etc/passwd")  # the host's is not reachable


def test_magic_links_are_refused() -> None:
    """Once a procfs is mounted in a root, /proc/self/root must not lead a later lookup
    out of it: the host's own / with its procfs stands in for such a root."""
    fd = rootpath.open_root("/")
    try:
        with pytest.raises(OSError) as e:
            rootpath.lookup(fd, "proc/self/root/etc")
        assert e.value.errno == 40  # ELOOP: RESOLVE_NO_MAGICLINKS
    finally:
        os.close(fd)
