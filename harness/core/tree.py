"""A root filesystem as data: what an image holds, with each file's owner, mode and mtime,
built from a directory or from image layers, and written as one deterministic tar.

The tar's sha256 is an image's identity, so it is written canonically: entries sorted by
path, numeric owners without names, GNU format, no entry for the root itself. A file's
content is streamed from where it was found (a directory, or the blob store a layer was
spooled into), never held in memory. Hard links are kept: of the paths sharing one file,
the first in sorted order holds the data and the others link to it.

Layers are applied with the OCI image-spec rules (image-spec/layer.md): `.wh.<name>`
deletes <name> from the layers below, `.wh..wh..opq` empties its directory of what the
layers below put there; both act on lower layers only, so a layer's own entries stay,
whatever order they come in. Nothing is written to the host while a tree is built, and
what could write outside the root once the tar is unpacked is refused (BadImage, naming
the source and the entry): absolute paths, `..`, a relative symlink climbing above the
root, a hard link to anything but a file of the image, an entry below a non-directory,
device nodes and FIFOs.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from harness.core.errors import BadImage, ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 40  # as the kernel's path walk


@dataclass(eq=False)
class Node:
    """One file, directory or symlink. Hard-linked paths share one Node."""

    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755  # permission bits, with setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    data: bytes | None = None  # a small file's content, or
    source: Path | None = None  # the file to read `size` bytes from, at `offset`
    offset: int = 0
    target: str = ""  # a symlink's
    children: dict[str, Node] = field(default_factory=dict)  # a directory's

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.source is not None
        f = open(self.source, "rb")  # noqa: SIM115 (the caller closes it)
        f.seek(self.offset)
        return f


def clean(name: str) -> str:
    """A tar member name as a path relative to the root ("" for the root itself); raises
    ValueError for an absolute path or one with `..`."""
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("'..' in the path")
    if any("\0" in p for p in parts):
        raise ValueError("NUL in the path")
    return "/".join(parts)


def climbs_out(link: str, target: str) -> bool:
    """Whether the relative symlink `link` -> `target` leaves the root (lexically: as
    extracting it on a host would). An absolute target stays in: every path cvbench
    uses inside an image is resolved inside its root (rootpath.py), and so do the engines'
    runtimes and a VM's init."""
    if target.startswith("/"):
        return False
    depth = len(link.split("/")) - 1
    for p in target.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                return True
        elif p not in ("", "."):
            depth += 1
    return False


class Tree:
    """The root directory of an image; `origin` names the source in error messages."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.where = ""  # the layer being applied, for error messages
        self.root = Node("dir", 0o755)

    def fail(self, entry: str, problem: str) -> BadImage:
        where = f"{self.where}: " if self.where else ""
        return BadImage(f"{self.origin}: {where}{entry}: {problem}")

    # --- lookup -------------------------------------------------------------------------

    def get(self, path: str) -> Node | None:
        node = self.root
        for part in path.split("/") if path else ():
            if node.kind != "dir" or part not in node.children:
                return None
            node = node.children[part]
        return node

    def resolve(self, path: str) -> Node | None:
        """The node at `path`, following symlinks inside the root (as a chroot would)."""
        parts = [p for p in path.split("/") if p]
        stack: list[Node] = [self.root]
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            node = stack[-1].children.get(part) if stack[-1].kind == "dir" else None
            if node is None:
                return None
            if node.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINKS:
                    return None
                if node.target.startswith("/"):
                    stack = [self.root]
                parts = [p for p in node.target.split("/") if p] + parts
                continue
            stack.append(node)
        return stack[-1]

    def _dir(self, path: str, entry: str) -> Node:
        """The directory at `path`, made (0755, root) where missing, as engines do."""
        node = self.root
        for part in path.split("/") if path else ():
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = Node("dir", 0o755)
            elif child.kind != "dir":
                raise self.fail(entry, f"lies below {path!r}, which is not a directory")
            node = child
        return node

    # --- change ---------------------------------------------------------------------------

    def put(self, path: str, node: Node) -> None:
        """Add `node` at `path` (a directory over a directory keeps its children)."""
        if not path:
            if node.kind != "dir":
                raise self.fail("/", "the root is not a directory")
            self.root.mode, self.root.uid, self.root.gid, self.root.mtime = \
                node.mode, node.uid, node.gid, node.mtime
            return
        if node.kind == "symlink" and climbs_out(path, node.target):
            raise self.fail(path, f"symlink to {node.target!r} leaves the root")
        parent, _, name = path.rpartition("/")
        d = self._dir(parent, path)
        old = d.children.get(name)
        if old is not None and old.kind == "dir" and node.kind == "dir":
            node.children = old.children
        d.children[name] = node

    def link(self, path: str, target: str) -> None:
        """A hard link at `path` to the file at `target`."""
        try:
            tpath = clean(target)
        except ValueError as e:
            raise self.fail(path, f"hard link to {target!r}: {e}") from None
        node = self.get(tpath)
        if node is None or node.kind != "file":
            raise self.fail(path, f"hard link to {target!r}, which is not a file of the image")
        self.put(path, node)

    def delete(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        d = self.get(parent)
        if d is not None and d.kind == "dir":
            d.children.pop(name, None)

    def clear(self, path: str) -> None:
        d = self.get(path)
        if d is not None and d.kind == "dir":
            d.children.clear()

    # --- read -------------------------------------------------------------------------------

    def walk(self) -> list[tuple[str, Node]]:
        """Every (path, node) below the root, sorted by path."""
        out: list[tuple[str, Node]] = []

        def visit(prefix: str, d: Node) -> None:
            for name, child in d.children.items():
                path = f"{prefix}{name}"
                out.append((path, child))
                if child.kind == "dir":
                    visit(path + "/", child)

        visit("", self.root)
        out.sort(key=lambda pn: pn[0])
        return out


# --- sources of trees -------------------------------------------------------------------

def node_of(info: tarfile.TarInfo, origin: Tree) -> Node:
    """The node of a tar member (its content is attached by the caller)."""
    kind = "dir" if info.isdir() else "symlink" if info.issym() else \
        "file" if info.isreg() else ""
    if kind:
        return Node(kind, info.mode & 0o7777, info.uid, info.gid, int(info.mtime),
                    size=info.size if kind == "file" else 0,
                    target=info.linkname if kind == "symlink" else "")
    what = "a device node" if info.ischr() or info.isblk() else \
        "a FIFO" if info.isfifo() else f"an entry of tar type {info.type!r}"
    raise origin.fail(info.name, f"is {what}; an image may hold only files, directories "
                                 "and links")


class Blobs:
    """Where layer contents are spooled while layers are applied (a temporary dir)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.mkdir(parents=True, exist_ok=True)

    def store(self, src: IO[bytes]) -> Path:
        self.count += 1
        dest = self.path / str(self.count)
        with open(dest, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        return dest


def apply_layer(tree: Tree, layer: tarfile.TarFile, blobs: Blobs | None, where: str,
                in_place: tuple[Path, int] | None = None) -> None:
    """Apply one layer (a tar opened for streaming) to `tree`. Whiteouts act on the
    layers below only: they are applied before the layer's own entries. `in_place`:
    the layer is stored uncompressed in this file from this offset, so file contents
    are read from there later instead of being copied out."""
    tree.where = where
    deletions: list[tuple[str, bool]] = []  # (path, opaque)
    entries: list[tuple[str, tarfile.TarInfo, Node | None]] = []
    for info in layer:
        try:
            path = clean(info.name)
        except ValueError as e:
            raise tree.fail(info.name, str(e)) from None
        parent, _, name = path.rpartition("/")
        if name == OPAQUE:
            deletions.append((parent, True))
            continue
        if name.startswith(WHITEOUT):
            if not name.startswith(WHITEOUT + WHITEOUT):  # aufs' own files: skipped
                deletions.append((f"{parent}/{name[4:]}".lstrip("/"), False))
            continue
        if info.islnk():
            entries.append((path, info, None))
            continue
        node = node_of(info, tree)
        if node.kind == "file":
            if in_place is not None:
                node.source, node.offset = in_place[0], in_place[1] + info.offset_data
            else:
                src = layer.extractfile(info)
                assert src is not None and blobs is not None
                node.source = blobs.store(src)
        entries.append((path, info, node))
    for path, opaque in deletions:
        (tree.clear if opaque else tree.delete)(path)
    for path, info, maybe in entries:
        if maybe is None:
            tree.link(path, info.linkname)
        else:
            tree.put(path, maybe)
    tree.where = ""


def read_tar(path: Path, origin: str) -> Tree:
    """The tree of an uncompressed tar file (one this module wrote), its contents read
    in place."""
    tree = Tree(origin)
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
        apply_layer(tree, tf, None, path.name, in_place=(path, 0))
    return tree


def from_directory(root: Path, origin: str, clamp: int | None = None) -> Tree:
    """The tree of a directory on this host, read with lstat (owners, modes, mtimes,
    hard links); mtimes later than `clamp` become `clamp` (reproducible builds'
    SOURCE_DATE_EPOCH: what a build wrote gets a fixed time, packaged files keep theirs)."""
    tree = Tree(origin)
    inodes: dict[tuple[int, int], Node] = {}

    def node(kind: str, st: os.stat_result, **kw: Any) -> Node:
        mtime = int(st.st_mtime)
        return Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    min(mtime, clamp) if clamp is not None else mtime, **kw)

    tree.put("", node("dir", os.lstat(root)))
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        prefix = "" if rel == "." else rel + "/"
        for name in sorted(dirs + files):
            full = os.path.join(top, name)
            st = os.lstat(full)
            path = prefix + name
            if stat.S_ISDIR(st.st_mode):
                tree.put(path, node("dir", st))
            elif stat.S_ISLNK(st.st_mode):
                tree.put(path, node("symlink", st, target=os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in inodes:
                    tree.put(path, inodes[key])
                    continue
                inodes[key] = f = node("file", st, size=st.st_size, source=Path(full))
                tree.put(path, f)
            else:
                raise tree.fail(path, "is a device node, FIFO or socket; an image may hold "
                                      "only files, directories and links")
    return tree


# --- the deterministic tar ------------------------------------------------------------------

class _Hashing:
    """A write-only file that hashes what goes through it (and counts it)."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        if self.out is not None:
            self.out.write(b)
        return len(b)

    def tell(self) -> int:
        return self.size


def write_tar(tree: Tree, out: BinaryIO | None = None,
              skip: Callable[[str], bool] = lambda p: False) -> tuple[str, int]:
    """Write `tree` as the canonical tar to `out` (None: only hash it); its sha256 (hex)
    and size. `skip(path)` leaves entries out (their children too)."""
    sink = _Hashing(out)
    first: dict[int, str] = {}  # id(node) -> the path that holds the data
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for path, node in tree.walk():
            if skip(path):
                continue
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.mode = node.mtime, node.uid, node.gid, node.mode
            info.uname = info.gname = ""
            if node.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif node.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, node.target
                tar.addfile(info)
            elif id(node) in first:
                info.type, info.linkname = tarfile.LNKTYPE, first[id(node)]
                tar.addfile(info)
            else:
                first[id(node)] = path
                info.size = node.size
                with node.open() as src:
                    tar.addfile(info, src)
    return sink.sha.hexdigest(), sink.size


def extract(tar_path: Path, dest: Path) -> None:
    """Unpack a tar this module wrote (checked entries only) into `dest`, with owners
    where this process may set them (root), modes and mtimes. GNU tar: 3x faster than
    tarfile on a Debian image. Its directories' modes and mtimes are set at the end: in
    path order a directory's entries need not follow it at once ("Carp/", "Carp.pm",
    "Carp/Heavy.pm"), and tar would otherwise set Carp's mtime before Heavy.pm moves it."""
    dest.mkdir(mode=0o755)
    proc = subprocess.run(["tar", "-xpf", str(tar_path), "--numeric-owner",
                           "--delay-directory-restore", "-C", str(dest)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"cannot unpack {tar_path}: {proc.stderr.strip()[-300:]}")
