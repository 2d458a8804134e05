"""The workload image: a source -> one deterministic rootfs tar -> its sha256 digest.

Sources (the scenario's `[workload] image`):
  Recipe    busybox-static (or, where it is not installed, the host's own shell and
            tools) + the recipe's extra host binaries with the shared libraries the
            dynamic loader resolves for them; owners root, mtimes 0
  Debian    debootstrap --variant=minbase of a suite + packages (harness.core.debian)
  Archive   a `docker save` / `podman save` tarball or an OCI image layout, flattened
            (harness.core.archive)
  EngineRef an image in a local engine's store, exported through the engine's API (an
            EngineStore the orchestration passes in), then handled as an archive; with
            a `build` (a compose `build:`), the orchestration first builds the context
            with the engine (offline, labelled with the run) and exports what it built
Whatever the source, the result is one tree written as a deterministic tar
(harness.core.tree: sorted entries, numeric owners; a real image keeps each file's own
owner, mode and mtime, since its services run as their own users).

cvbench's own init is a separate layer, the same on every backend: /bench/init, a shell
script that prints `CVBENCH-READY <nonce>` and execs the workload (it runs on the image's
own /bin/sh, so the image must have one). What runs is the image + that layer: `digest`,
the sha256 of that tar, is what every backend runs and every result records; next to
it, `rootfs_digest` (the image as given), `init_digest` (the init layer's own tar) and
the source's identity (archive and config digests, package versions...). A VM's PID 1
duties (drivers, mounts, network, power-off) live in the VM's initramfs
(runtimes/vm/initramfs.py), not in the image.

Images are cached by digest under ~/.cache/cvbench/images/<digest>/ as `image.tar`, an
unpacked `rootfs/` (the read-only lower layer `ns` shares between instances, what `mkfs.ext4
-d` turns into a VM disk) and `image.json` (this module's record of it). A non-recipe
source is also indexed by its own key (sources/<key>: an archive file by its sha256, a
directory archive by its files' contents, a Debian request by suite, mirror, packages,
archive index and the code that builds it, an engine ref by its image id), so asking for
it again builds nothing. Builds happen in a temp dir under the cache (.tmp/), moved into
place when complete and removed otherwise: a bad source leaves nothing behind. An
archive's layers may expand to at most `max_bytes(cache)` (CVBENCH_IMAGE_MAX_BYTES),
enforced as they are read.

A cache entry is checked before it is used (`check`, on every build that finds it): the
cheap check compares a fingerprint of the entry with its `seal` (the lstat of image.tar
and of every path in rootfs/: type, mode, owner, size, mtime, inode and ctime, so a file
changed, added, removed or replaced, or a rewritten tar, changes it; runs read rootfs/
only, as an overlay's lower layer or mkfs's source, which leaves all of that alone). When
it differs (or the entry has no seal yet), the full check hashes image.tar against the
digest and compares rootfs/ with it path by path (type, mode, owner, mtime, link target,
hard links, content); a match re-seals the entry. rootfs/ is made from image.tar: when
only it differs, it is unpacked again from the tar, and the build says so. An image.tar
that no longer hashes to its digest is the image itself gone: a build that has just made
the same digest afresh (a recipe is collected on every build; a source whose key is new)
replaces the entry and says so; a hit by source key (nothing built) is refused in one line
naming the difference and the fix (`bench image verify --rebuild DIGEST` builds it again
from its recorded source), not rebuilt behind the user's back: something outside cvbench
changed the cache, and a rebuild may give another digest (a newer archive, other host
binaries). `bench image verify` runs the full check. A new entry is fully checked once,
before it is sealed and moved into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from harness.core import archive, debian, rootpath
from harness.core.archive import ImageConfig
from harness.core.debian import Progress
from harness.core.errors import BadImage, ImageError, UsageError
from harness.core.tree import Node, Tree, extract, from_directory, read_tar, write_tar
from harness.core.units import parse_size

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# Tools the image needs when busybox-static is not installed (copied from the host).
FALLBACK_TOOLS = ("sh", "true", "false", "sleep", "cat", "echo", "ls", "id", "hostname",
                  "head", "dd", "sync", "mkdir", "rm", "env", "uname", "mount", "umount")
LOADERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_BYTES_ENV = "CVBENCH_IMAGE_MAX_BYTES"

# cvbench's init layer. The ready line comes first; the host timestamps its arrival. Then
# exec: the workload becomes the instance's main process on every backend. Where the
# backend cannot set the working directory itself (a chroot: `host` with a real image, a
# VM's init), it passes CVBENCH_WORKDIR.
INIT_SCRIPT = """\
#!/bin/sh
# cvbench's init layer: announce readiness, then become the workload.
echo "CVBENCH-READY ${CVBENCH_NONCE:-none}"
if [ -n "$CVBENCH_WORKDIR" ]; then
  mkdir -p "$CVBENCH_WORKDIR" && cd "$CVBENCH_WORKDIR" || exit 125
  unset CVBENCH_WORKDIR
fi
exec "$@"
"""
INIT_PATH = "bench/init"

# The recipe image's files besides its binaries (Docker's set of engine-provided files
# is written into every image, so no backend has to mount them).
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/hostname": "cvbench\n",
    "etc/resolv.conf": "",
}
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555,
        "root": 0o700, "run": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755,
        "usr/bin": 0o755, "sbin": 0o755, "mnt": 0o755, "data": 0o755, "var": 0o755,
        "var/tmp": 0o1777}
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
SEAL = "seal"  # an entry's fingerprint, written after a full check matched


# --- sources ------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """What goes into a recipe image: a name (for tags) and extra host binaries."""

    kind: ClassVar[str] = "recipe"
    name: str = "base"
    binaries: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "binaries": list(self.binaries)}

    def describe(self) -> str:
        return f"recipe {self.name}"


@dataclass(frozen=True)
class Debian:
    """A Debian root filesystem: debootstrap minbase of `suite` + `packages`."""

    kind: ClassVar[str] = "debian"
    suite: str = "bookworm"
    packages: tuple[str, ...] = ()
    mirror: str = debian.DEFAULT_MIRROR

    def as_dict(self) -> dict[str, Any]:
        return {"debian": self.suite, "packages": list(self.packages), "mirror": self.mirror}

    def describe(self) -> str:
        return f"debian {self.suite}" + (f" [{', '.join(self.packages)}]" if self.packages
                                         else "")


@dataclass(frozen=True)
class Archive:
    """An image archive: `docker save` / `podman save` tar or OCI layout (dir or tar)."""

    kind: ClassVar[str] = "archive"
    path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"archive": self.path}

    def describe(self) -> str:
        return f"archive {self.path}"


@dataclass(frozen=True)
class EngineBuild:
    """A build context (a directory checked to be inside the file that names it), its
    Dockerfile and build arguments: what `docker build` is given."""

    context: str
    dockerfile: str = "Dockerfile"  # relative to the context, as compose reads it
    args: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"context": self.context, "dockerfile": self.dockerfile,
                "args": dict(self.args)}


@dataclass(frozen=True)
class EngineRef:
    """An image in a local engine's store (`engine`: a backend that is an EngineStore),
    or, with `build`, the image that engine builds ("" engine: docker, else podman,
    whichever is available here) and stores under a tag of the run, `ref` then."""

    kind: ClassVar[str] = "engine"
    engine: str = "docker"
    ref: str = ""
    build: EngineBuild | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"engine": self.engine, "ref": self.ref}
        if self.build is not None:
            out["build"] = self.build.as_dict()
        return out

    def describe(self) -> str:
        if self.build is not None and not self.ref:
            return f"{self.engine or 'engine'} build of {self.build.context}"
        return f"{self.engine} image {self.ref}"


Source = Recipe | Debian | Archive | EngineRef


def source_from_dict(d: Mapping[str, Any]) -> Source:
    """The source of a stored image record (image.json, a result's `image.source`).
    Only a record that says "recipe" is one: the `host` backend runs a recipe image's
    files unchrooted (they are this host's own binaries), so an unknown or missing kind
    is refused, never taken for a recipe."""
    kind = d.get("kind")
    if kind == "debian":
        return Debian(d["debian"], tuple(d.get("packages", ())),
                      d.get("mirror", debian.DEFAULT_MIRROR))
    if kind == "archive":
        return Archive(d["archive"])
    if kind == "engine":
        b = d.get("build")
        return EngineRef(d["engine"], d["ref"], EngineBuild(
            b["context"], b.get("dockerfile", "Dockerfile"),
            tuple(sorted(b.get("args", {}).items()))) if b else None)
    if kind == "recipe":
        return Recipe(d.get("name", "base"), tuple(d.get("binaries", ())))
    raise UsageError(f"image source of unknown kind {kind!r} (from a newer cvbench?)")


@runtime_checkable
class EngineStore(Protocol):
    """What a backend that keeps images (Docker, Podman) lends an EngineRef build."""

    def image_id(self, ref: str) -> str:
        """The id (config digest) of `ref` in the store; BadImage if it is not there."""
        ...

    def save_image(self, ref: str, dest: Path) -> None:
        """Write `ref` as a `docker save` archive to `dest`."""
        ...

    def build_image(self, build: EngineBuild, tag: str, labels: Mapping[str, str]) -> str:
        """Build `build` offline (no pull, no network for its steps) into the store as
        `tag` with `labels`; its image id. BadImage (one line) if the build fails."""
        ...


# --- the built image ------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    """A built image. `digest` is the hex sha256 of `tar`: the image + cvbench's init
    layer, what every backend runs."""

    name: str
    digest: str
    tar: Path
    rootfs: Path
    size: int
    source: Source = Recipe()
    rootfs_digest: str = ""  # the image as given, without the init layer
    init_digest: str = ""
    init_paths: tuple[str, ...] = ()  # what the init layer added
    config: ImageConfig = ImageConfig()
    identity: Mapping[str, Any] = field(default_factory=dict, compare=False)
    contents: dict[str, str] = field(default_factory=dict, compare=False)
    build_seconds: float | None = field(default=None, compare=False)  # None: cached

    @property
    def tag(self) -> str:
        """The name engines store it under: cvbench/<name>:<digest[:12]>."""
        return f"cvbench/{self.name}:{self.digest[:12]}"

    @property
    def recipe(self) -> Recipe | None:
        return self.source if isinstance(self.source, Recipe) else None

    def as_dict(self) -> dict[str, Any]:
        """What a result records (the keys of older results kept: digest, recipe for a
        recipe image, size, tag, contents)."""
        out: dict[str, Any] = {
            "digest": self.digest, "name": self.name, "size": self.size, "tag": self.tag,
            "source": {"kind": self.source.kind, **self.source.as_dict()},
            "rootfs_digest": self.rootfs_digest,
            "init": {"digest": self.init_digest, "paths": list(self.init_paths)},
            "config": self.config.as_dict(), "identity": dict(self.identity)}
        if isinstance(self.source, Recipe):
            out.update(recipe=self.source.as_dict(), contents=self.contents)
        return out


def cache_dir() -> Path:
    base = os.environ.get("CVBENCH_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get("CVBENCH_CACHE") else root / "cvbench") / "images"


def max_bytes(cache: Path) -> int:
    """The most bytes an archive's layers may expand to (uncompressed, all together):
    $CVBENCH_IMAGE_MAX_BYTES (bytes, or e.g. 20G), else a third of the free space of the
    cache's filesystem less a margin (10 % of it, at most 1 GiB): a build writes what it
    reads up to three times (the spooled layer contents, image.tar, the unpacked rootfs)."""
    given = os.environ.get(MAX_BYTES_ENV)
    if given:
        try:
            return parse_size(given)
        except ValueError as e:
            raise UsageError(f"{MAX_BYTES_ENV}: {e}") from None
    st = os.statvfs(cache)
    free = st.f_bavail * st.f_frsize
    return (free - min(1 << 30, free // 10)) // 3


def which(name: str) -> str:
    if "/" in name:
        if not os.access(name, os.X_OK):
            raise ImageError(f"image binary {name!r} is not an executable file")
        return name
    found = shutil.which(name, path=PATH_ENV)
    if not found:
        raise ImageError(f"image binary {name!r} is not installed on this host "
                         f"(install the Debian package that provides it)")
    return found


def _loader() -> str:
    for cand in LOADERS:
        if os.path.exists(cand):
            return cand
    raise ImageError("no dynamic loader found (looked for " + ", ".join(LOADERS) + ")")


_LIB = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _has_interpreter(binary: str) -> bool:
    """True for a dynamically linked ELF (it has a PT_INTERP program header)."""
    with open(binary, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False  # a script: no libraries of its own
        is64, order = head[4] == 2, "<" if head[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(order + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
        else:
            phoff, = struct.unpack_from(order + "I", head, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return any(struct.unpack_from(order + "I", table, i * phentsize)[0] == pt_interp
               for i in range(phnum))


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries the dynamic loader resolves for `binary`."""
    if not _has_interpreter(binary):
        return []  # static, or a script
    proc = subprocess.run([_loader(), "--list", binary], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ImageError(f"cannot list the libraries of {binary}: {proc.stderr.strip()}")
    libs: list[str] = []
    for line in proc.stdout.splitlines():
        if "not found" in line:
            raise ImageError(f"{binary}: a library is missing on this host: {line.strip()}")
        m = _LIB.search(line)
        if m and m.group(1) not in libs:
            libs.append(m.group(1))
    return libs


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from e


def _busybox() -> str | None:
    for cand in BUSYBOX_CANDIDATES:
        if os.path.exists(cand) and not shared_libraries(os.path.realpath(cand)):
            return cand
    return None


def collect(recipe: Recipe) -> tuple[Tree, dict[str, str]]:
    """The recipe's tree and a summary of where its binaries came from."""
    tree = Tree(recipe.describe())
    contents: dict[str, str] = {}

    def add(path: str, kind: str, mode: int, data: bytes = b"", target: str = "") -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if tree.get(parent) is None:
                tree.put(parent, Node("dir", DIRS.get(parent, 0o755)))
        tree.put(path, Node(kind, mode, size=len(data), data=data if kind == "file" else None,
                            target=target))

    for d, mode in DIRS.items():
        add(d, "dir", mode)
    for name, text in ETC_FILES.items():
        add(name, "file", 0o644, text.encode())
    # (host path, path in the image): recipe binaries go to /usr/bin, fallback tools to /bin.
    extra = [(which(b), f"usr/bin/{Path(b).name}") for b in recipe.binaries]
    busybox = _busybox()
    if busybox:
        real = os.path.realpath(busybox)
        add("bin/busybox", "file", 0o755, _read(real))
        contents["busybox"] = real
        listing = subprocess.run([real, "--list"], capture_output=True, text=True, check=True)
        for applet in sorted(set(listing.stdout.split())):
            if applet != "busybox" and "/" not in applet:
                add(f"bin/{applet}", "symlink", 0o777, target="busybox")
    else:
        contents["busybox"] = "not installed: host tools copied instead"
        for tool in FALLBACK_TOOLS:
            try:
                extra.append((which(tool), f"bin/{tool}"))
            except ImageError:
                continue
        if "bin/sh" not in {dest for _, dest in extra}:
            raise ImageError("neither busybox-static nor a shell is installed on this host")
    for binary, dest in extra:
        real = os.path.realpath(binary)
        add(dest, "file", 0o755, _read(real))
        contents[Path(dest).name] = real
        for lib in shared_libraries(real):
            add(lib.lstrip("/"), "file", 0o755, _read(os.path.realpath(lib)))
    return tree, contents


# --- the init layer -------------------------------------------------------------------

def init_layer() -> Tree:
    t = Tree("cvbench's init layer")
    t.put("bench", Node("dir", 0o755))
    data = INIT_SCRIPT.encode()
    t.put(INIT_PATH, Node("file", 0o755, size=len(data), data=data))
    return t


def _add_init(tree: Tree) -> tuple[str, ...]:
    """Put the init layer on `tree`; the paths it added. The image must have a /bin/sh
    (the init is a shell script) and no /bench/init of its own."""
    sh = tree.resolve("bin/sh")
    if sh is None or sh.kind != "file":
        raise BadImage(f"{tree.origin}: the image has no /bin/sh, which cvbench's init "
                       "layer (/bench/init, a shell script) needs")
    bench = tree.get("bench")
    if bench is not None and (bench.kind != "dir" or INIT_PATH.split("/")[1] in bench.children):
        raise BadImage(f"{tree.origin}: the image has its own /bench"
                       f"{'/init' if bench.kind == 'dir' else ''}, where cvbench's init "
                       "layer goes")
    added = (INIT_PATH,) if bench is not None else ("bench", INIT_PATH)
    for path, node in init_layer().walk():
        if path in added:
            tree.put(path, node)
    return added


# --- building -------------------------------------------------------------------------

@contextlib.contextmanager
def _tmpdir(cache: Path) -> Iterator[Path]:
    """A build's temp dir under the cache (removed however the build ends)."""
    (cache / ".tmp").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache / ".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _store(tree: Tree, source: Source, name: str, config: ImageConfig,
           identity: Mapping[str, Any], cache: Path, tmp: Path, say: Progress,
           contents: dict[str, str] | None = None) -> Image:
    """Write `tree` (+ the init layer) into the cache; the Image (already cached and
    still matching: as it is)."""
    rootfs_digest, _ = write_tar(tree)
    added = _add_init(tree)
    init_digest, _ = write_tar(init_layer())
    stage = tmp / "stage"
    stage.mkdir()
    with open(stage / "image.tar", "wb") as f:
        digest, size = write_tar(tree, f)
    final = cache / digest
    # The record of this request: a digest cached already (the same rootfs from another
    # source) keeps its files and first record, but the request's own source, identity
    # and defaults are what it answers with.
    img = Image(name=name, digest=digest, tar=final / "image.tar", rootfs=final / "rootfs",
                size=size, source=source, rootfs_digest=rootfs_digest,
                init_digest=init_digest, init_paths=added, config=config,
                identity=dict(identity), contents=contents or {})
    if (final / "image.json").exists():
        found = _on_use(img, say)
        if found is None:
            return img
        # This build made the same digest afresh: it replaces the entry that no longer
        # matches.
        say(f"cached image sha256:{digest[:12]} no longer matched its digest ({found}): "
            "replaced by this build")
        _aside(final, cache)
    extract(stage / "image.tar", stage / "rootfs")
    (stage / "image.json").write_text(json.dumps(_record(img), indent=1))
    sealed = _fingerprint(stage)
    problem = _rootfs_mismatch(stage, digest)
    if problem:
        raise ImageError(f"{tree.origin}: the unpacked image differs from its tar ({problem})")
    _seal(stage, sealed)
    try:
        os.rename(stage, final)
    except OSError:  # another process cached the same digest first
        if not (final / "image.json").exists():
            raise
        return check(img, say)
    return img


def _record(img: Image) -> dict[str, Any]:
    return {**img.as_dict(), "created": datetime.now(UTC).isoformat(timespec="seconds")}


def _from_record(d: Mapping[str, Any], path: Path) -> Image:
    return Image(name=d["name"], digest=d["digest"], tar=path / "image.tar",
                 rootfs=path / "rootfs", size=d["size"],
                 source=source_from_dict(d["source"]), rootfs_digest=d["rootfs_digest"],
                 init_digest=d["init"]["digest"], init_paths=tuple(d["init"]["paths"]),
                 config=ImageConfig.from_dict(d.get("config", {})),
                 identity=d.get("identity", {}), contents=d.get("contents", {}))


def load(digest: str, cache: Path | None = None) -> Image:
    """The cached image of `digest` (a unique prefix will do)."""
    cache = cache or cache_dir()
    digest = digest.removeprefix("sha256:")
    path = cache / digest
    if not _current(path):
        found = [p for p in listing(cache) if p.name.startswith(digest)] if digest else []
        if len(found) != 1:
            raise UsageError(f"image {digest or '?'}: "
                             + ("no such image in the cache" if not found else
                                f"ambiguous ({len(found)} images start with it)")
                             + f" ({cache})")
        path = found[0]
    return _from_record(json.loads((path / "image.json").read_text()), path)


def listing(cache: Path | None = None) -> list[Path]:
    """The cache's image directories."""
    cache = cache or cache_dir()
    if not cache.is_dir():
        return []
    return sorted(p for p in cache.iterdir() if _DIGEST.match(p.name) and _current(p))


def _current(path: Path) -> bool:
    """Whether `path` holds an image this cvbench cached (an older one's record, in a
    cache shared with it, has no source, a newer one's may have a source this one does
    not know: either is left alone)."""
    try:
        source_from_dict(json.loads((path / "image.json").read_text())["source"])
        return True
    except (OSError, ValueError, KeyError, TypeError, UsageError):
        return False


def _index(cache: Path, key: str) -> Path:
    return cache / "sources" / f"{key}.json"


def _lookup(cache: Path, key: str, say: Progress) -> Image | None:
    """The image a source key led to, as that source's record (None: not cached),
    checked before it is used."""
    try:
        d = json.loads(_index(cache, key).read_text())
        img = _from_record(d, load(d["digest"], cache).tar.parent)
    except (OSError, ValueError, KeyError, UsageError):
        return None
    return check(img, say)


def _remember(cache: Path, key: str, img: Image) -> None:
    path = _index(cache, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_record(img), indent=1))
    os.replace(tmp, path)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _dir_digest(path: Path) -> str:
    """A directory archive (docker-save or OCI layout) by its content: each file's path
    and sha256, each symlink's path and target, hashed; where it lies plays no part."""
    h = hashlib.sha256()
    for top, dirs, files in os.walk(path):
        dirs.sort()
        rel = os.path.relpath(top, path)
        for name in sorted(dirs + files):
            full = os.path.join(top, name)
            if os.path.islink(full):
                line = f"link\0{os.path.join(rel, name)}\0{os.readlink(full)}"
            elif os.path.isfile(full):
                line = f"file\0{os.path.join(rel, name)}\0{archive.sha256_file(Path(full))}"
            else:
                continue
            h.update(line.encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _tag_name(text: str, fallback: str) -> str:
    """A repository name engines accept: lower-case [a-z0-9], single separators."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].strip("-")
    return name or fallback


def _name_of(tags: list[str], config: ImageConfig, fallback: str) -> str:
    labelled = dict(config.labels).get("cvbench.name")
    if labelled:
        return _tag_name(labelled, fallback)
    repo = tags[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] if tags else ""
    return _tag_name(repo, fallback)


def build(source: Source, cache: Path | None = None, progress: Progress | None = None,
          store: EngineStore | None = None) -> Image:
    """Build (or reuse from the cache) the image of `source`. An EngineRef needs the
    engine's `store`. `build_seconds` of the result is None when nothing was built."""
    cache = cache or cache_dir()
    say = progress or (lambda text: None)
    t0 = time.monotonic()
    if isinstance(source, Recipe):
        tree, contents = collect(source)
        with _tmpdir(cache) as tmp:
            img = _store(tree, source, source.name, ImageConfig(cmd=("true",)),
                         source.as_dict(), cache, tmp, say, contents)
        return img
    origin = source.describe()
    if isinstance(source, Debian):
        problem = debian.check_names(source.suite, source.packages)
        if problem:
            raise BadImage(f"{origin}: {problem}")
        index = debian.fetch_index(source.suite, source.mirror, origin)
        # The code that makes the tree is part of the key (its source, not the rules'
        # descriptions): a build made before a rule changed is not reused.
        key = _key("debian", source.suite, source.mirror, index[0],
                   *sorted(set(source.packages)), debian.code_identity())
    elif isinstance(source, Archive):
        path = Path(source.path)
        if not path.exists():
            raise BadImage(f"{origin}: no such file or directory")
        key = _key("archive", archive.sha256_file(path) if path.is_file() else
                   _dir_digest(path))
    else:
        if store is None:
            raise ImageError(f"{origin}: no engine store to export it from")
        if not source.ref:  # (the orchestration builds it first, under the run's lock)
            raise ImageError(f"{origin}: not built yet")
        image_id = store.image_id(source.ref)
        key = _key("engine", source.engine, image_id)
    hit = _lookup(cache, key, say)
    if hit is not None:
        say(f"{origin}: cached as sha256:{hit.digest}")
        return hit
    with _tmpdir(cache) as tmp:
        if isinstance(source, Debian):
            root, identity = debian.build(source.suite, tuple(sorted(set(source.packages))),
                                          source.mirror, index, cache / "debian", tmp,
                                          origin, say)
            say("writing the image")
            tree = from_directory(root, origin, clamp=index[1])
            name = _tag_name("-".join(("debian", source.suite, *source.packages)), "debian")
            img = _store(tree, source, name, ImageConfig(), identity, cache, tmp, say)
        else:
            if isinstance(source, EngineRef):
                say(f"exporting {source.ref} from {source.engine}")
                saved = tmp / "saved.tar"
                assert store is not None
                store.save_image(source.ref, saved)
                path, extra = saved, {"engine": source.engine, "ref": source.ref,
                                      "image_id": image_id}
            else:
                path, extra = Path(source.path), {}
            say(f"flattening {origin}")
            tree, config, ident = archive.read(path, origin, tmp / "blobs", max_bytes(cache))
            exported = dict(config.labels).get("cvbench.source")
            if exported:  # an image `bench image export` wrote: what it was made from
                try:
                    ident["exported_from"] = json.loads(exported)
                except ValueError:
                    raise BadImage(f"{origin}: image config: label cvbench.source is not "
                                   "JSON") from None
            img = _store(tree, source, _name_of(ident.get("tags", []), config, source.kind),
                         config, {**ident, **extra}, cache, tmp, say)
    _remember(cache, key, img)
    return replace(img, build_seconds=time.monotonic() - t0)


def derive(img: Image, files: Mapping[str, bytes], suffix: str, cache: Path | None = None,
           progress: Progress | None = None) -> Image:
    """`img` with `files` added or replaced (regular files, mode 0644, root's): the same
    workload under another digest, named `<name>-<suffix>` (the scale study's rolling
    update to a new image). Its source stays `img`'s; its identity says what it was
    derived from and what was added. Cached as any build."""
    cache = cache or cache_dir()
    say = progress or (lambda text: None)
    added = sorted(files)
    key = _key("derived", img.digest, suffix,
               *(f"{p}={hashlib.sha256(files[p]).hexdigest()}" for p in added))
    hit = _lookup(cache, key, say)
    if hit is not None:
        return hit
    tree = read_tar(img.tar, f"{img.name} (derived)")
    for path in sorted(img.init_paths, reverse=True):  # _store puts the init layer back
        tree.delete(path)
    for path in added:
        tree.put(path.strip("/"), Node("file", 0o644, size=len(files[path]), data=files[path]))
    identity = {**img.identity, "derived_from": img.digest, "added": added}
    with _tmpdir(cache) as tmp:
        new = _store(tree, img.source, f"{img.name}-{suffix}", img.config, identity, cache,
                     tmp, say)
    _remember(cache, key, new)
    return new


def _table(rootfs: Path, name: str) -> list[list[str]]:
    try:  # the image's own file: an `etc` that is a symlink to /etc is the image's /etc
        text = rootpath.read_bytes(rootfs, f"etc/{name}").decode(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


# Where a backend mounts or makes something in every instance's root (Docker's set, as
# (path, is a directory)): an image must let each be made inside its root.
MOUNT_POINTS = (("proc", True), ("sys", True), ("dev", True), ("dev/pts", True),
                ("dev/shm", True), ("dev/mqueue", True), ("etc/hosts", False),
                ("etc/hostname", False), ("etc/resolv.conf", False))


def check_paths(img: Image, paths: Iterator[tuple[str, bool]] | tuple[tuple[str, bool], ...]
                = ()) -> None:
    """BadImage (one line naming the image and the path) where a mount point or a
    directory the run needs (`paths`: workdir, mount targets) cannot be made inside the
    image's root: a component that is not a directory, a loop of symlinks. Symlinks are
    followed inside the root (rootpath), so they are no reason to refuse."""
    for path, is_dir in (*MOUNT_POINTS, *paths):
        why = rootpath.problem(img.rootfs, path, directory=is_dir)
        if why is not None:
            raise BadImage(f"{img.source.describe()}: {why}")


def resolve_user(rootfs: Path, user: str) -> str:
    """`user` ("name", "uid", "name:group", "uid:gid") as numeric "uid:gid", looked up
    in the image's /etc/passwd and /etc/group as Docker does (a uid without an entry
    gets gid 0); UsageError naming what is unknown."""
    name, _, group = user.partition(":")
    passwd = _table(rootfs, "passwd")
    row = next((p for p in passwd if len(p) > 3 and name in (p[0], p[2])), None)
    if name.isdigit():
        uid, gid = name, (row[3] if row else "0")
    elif row is None:
        raise UsageError(f"workload.user: no user {name!r} in the image's /etc/passwd")
    else:
        uid, gid = row[2], row[3]
    if group:
        if group.isdigit():
            gid = group
        else:
            g = next((g for g in _table(rootfs, "group") if len(g) > 2 and g[0] == group), None)
            if g is None:
                raise UsageError(f"workload.user: no group {group!r} in the image's /etc/group")
            gid = g[2]
    return f"{uid}:{gid}"


# --- images as files ------------------------------------------------------------------

def export(img: Image, dest: Path, tag: str | None = None) -> str:
    """Write `img` as given (without cvbench's init layer) as a `docker save` archive of
    one layer, whose diff_id is its rootfs digest; `docker load` and `bench image
    import` read it, and the import gives the same digests on any host. The config
    keeps the image's defaults and, in labels, its name and where it was made from.
    The archive is itself deterministic. Returns the archive's sha256. `tag`: the name
    `docker load` gives it (default img.tag, which an engine backend also gives the image
    with the init layer it imports: loading it then takes that name from it)."""
    check(img)
    tree = read_tar(img.tar, f"image {img.digest[:12]}")
    init = set(img.init_paths)
    layer = dest.parent / f".{dest.name}.layer"
    config = img.config.oci()
    config["Labels"] = {**config.get("Labels", {}), "cvbench.name": img.name,
                        "cvbench.source": json.dumps(
                            {"source": {"kind": img.source.kind, **img.source.as_dict()},
                             "identity": dict(img.identity), "digest": img.digest},
                            sort_keys=True)}
    try:
        with open(layer, "wb") as f:
            rootfs_digest, _ = write_tar(tree, f, skip=lambda p: p in init)
        if rootfs_digest != img.rootfs_digest:
            raise ImageError(f"cached image {img.digest[:12]}: its rootfs no longer hashes to "
                             f"sha256:{img.rootfs_digest}; delete it and build it again")
        # (a history entry for its one layer: Podman's builder refuses to build FROM an
        # image whose history counts fewer layers than it has; no date, to stay the same)
        raw = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                          "rootfs": {"type": "layers",
                                     "diff_ids": [f"sha256:{rootfs_digest}"]},
                          "history": [{"created_by": "cvbench image export"}]},
                         sort_keys=True).encode()
        cdigest = hashlib.sha256(raw).hexdigest()
        manifest = json.dumps([{"Config": f"{cdigest}.json", "RepoTags": [tag or img.tag],
                                "Layers": [f"{rootfs_digest}/layer.tar"]}]).encode()
        tmp = dest.parent / f".{dest.name}.tmp"
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as out:
            for name, data in (("manifest.json", manifest), (f"{cdigest}.json", raw)):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                out.addfile(info, io.BytesIO(data))
            d = tarfile.TarInfo(rootfs_digest)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            out.addfile(d)
            with open(layer, "rb") as f:
                info = out.gettarinfo(fileobj=f, arcname=f"{rootfs_digest}/layer.tar")
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o644
                out.addfile(info, f)
        os.replace(tmp, dest)
    finally:
        layer.unlink(missing_ok=True)
        (dest.parent / f".{dest.name}.tmp").unlink(missing_ok=True)
    return archive.sha256_file(dest)


def remove(digest: str, cache: Path | None = None) -> Image:
    """Remove a cached image (and the source keys that lead to it); what was removed."""
    cache = cache or cache_dir()
    img = load(digest, cache)
    for key in (cache / "sources").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(key.read_text())["digest"] == img.digest:
                key.unlink()
    shutil.rmtree(img.tar.parent)
    return img


def prune(cache: Path | None = None, age: float = 3600.0) -> list[str]:
    """Remove what no image needs: source keys of removed images, Debian base stages
    older than the newest of their suite, build temp dirs older than `age` seconds
    (younger ones may belong to a build going on). What was removed."""
    cache = cache or cache_dir()
    gone: list[str] = []
    digests = {p.name for p in listing(cache)}
    for key in sorted((cache / "sources").glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(key.read_text())["digest"] not in digests:
                key.unlink()
                gone.append(f"source key {key.stem[:12]}")
    bases = sorted((cache / "debian").glob("*-*-*"), key=lambda p: p.stat().st_mtime) \
        if (cache / "debian").is_dir() else []
    newest: dict[str, Path] = {}
    for b in bases:
        newest[b.name.rsplit("-", 1)[0]] = b
    for b in bases:
        if newest[b.name.rsplit("-", 1)[0]] != b:
            shutil.rmtree(b)
            gone.append(f"debian base {b.name}")
    now = time.time()
    for t in sorted((cache / ".tmp").glob("*")) if (cache / ".tmp").is_dir() else []:
        if now - t.stat().st_mtime > age:
            shutil.rmtree(t, ignore_errors=True)
            gone.append(f"temp dir {t.name}")
    return gone


# --- checking a cache entry -------------------------------------------------------------

def _fingerprint(entry: Path) -> str:
    """The lstat of image.tar and of every path in rootfs/, hashed ("" if unreadable).
    A content change moves a file's ctime (and mtime), a replacement its inode."""
    h = hashlib.sha256()

    def add(name: str, st: os.stat_result) -> None:
        h.update(f"{name}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0"
                 f"{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())

    def fail(e: OSError) -> None:
        raise e

    root = entry / "rootfs"
    try:
        add("image.tar", os.stat(entry / "image.tar"))
        add("", os.lstat(root))
        for top, dirs, files in os.walk(root, onerror=fail):
            dirs.sort()
            rel = os.path.relpath(top, root)
            for name in sorted(dirs + files):
                add(os.path.join(rel, name), os.lstat(os.path.join(top, name)))
    except OSError:
        return ""
    return h.hexdigest()


def _seal(entry: Path, fingerprint: str) -> None:
    tmp = entry / f".{SEAL}.{os.getpid()}"
    tmp.write_text(fingerprint + "\n")
    os.replace(tmp, entry / SEAL)


def _file_sha(node: Node) -> str:
    h = hashlib.sha256()
    left = node.size
    with node.open() as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


_FIELDS = ("type", "mode", "owner", "group", "mtime", "size", "link target", "hard link to")


def _entries(t: Tree, owners: bool) -> dict[str, dict[str, Any]]:
    """path -> what _FIELDS name (a file's hard link: the first path of its inode). A
    symlink's mode is not compared: Linux has none (unpacked, it is 0777 whatever the
    tar says)."""
    first: dict[int, str] = {}
    out: dict[str, dict[str, Any]] = {}
    for path, n in t.walk():
        link = first.setdefault(id(n), path) if n.kind == "file" else ""
        mode = f"{n.mode:o}" if n.kind != "symlink" else "-"
        out[path] = dict(zip(_FIELDS, (n.kind, mode, n.uid if owners else "-",
                                       n.gid if owners else "-", n.mtime, n.size, n.target,
                                       link), strict=True))
    return out


def _tar_mismatch(entry: Path, digest: str) -> str | None:
    """Whether image.tar, the image itself, still hashes to its digest."""
    try:
        got = archive.sha256_file(entry / "image.tar").removeprefix("sha256:")
    except OSError as e:
        return f"image.tar: cannot read it ({e.strerror})"
    return None if got == digest else f"image.tar hashes to sha256:{got}, not to its digest"


def _rootfs_mismatch(entry: Path, digest: str) -> str | None:
    """What differs first between rootfs/ and image.tar (already checked), or None.
    Owners are compared when rootfs/ was unpacked by root (its own directory is root's);
    tar run by another user cannot set them."""
    tar, root = entry / "image.tar", entry / "rootfs"
    try:
        have = from_directory(root, f"{entry.name[:12]}/rootfs")
        owners = os.lstat(root).st_uid == 0
        if owners and write_tar(have)[0] == digest:  # the quick way to a match
            return None
        want = read_tar(tar, f"{entry.name[:12]}/image.tar")
    except (OSError, BadImage) as e:
        return f"rootfs/: cannot read it ({e})"
    a, b = _entries(want, owners), _entries(have, owners)
    nodes_a, nodes_b = dict(want.walk()), dict(have.walk())
    odd = sorted(a.keys() ^ b.keys())  # first, what is missing or added
    if odd:
        return f"rootfs/{odd[0]}: " + ("missing (image.tar has it)" if odd[0] in a else
                                       "not in image.tar (added)")
    for path in sorted(a):
        x, y = a[path], b[path]
        differ = [f"{k} {y[k]!r}, not {x[k]!r}" for k in _FIELDS if x[k] != y[k]]
        if x["type"] == y["type"] == "file" and x["size"] == y["size"] \
                and x["hard link to"] == path:
            try:
                if _file_sha(nodes_a[path]) != _file_sha(nodes_b[path]):
                    differ.insert(0, "content")
            except OSError as e:
                differ.insert(0, f"unreadable ({e.strerror})")
        if differ:
            return f"rootfs/{path} differs from image.tar: {', '.join(differ)}"
    return None


def problem(img: Image) -> str | None:
    """The full check of `img`'s cache entry (see the module's doc): the first
    difference, or None (and the entry is sealed again)."""
    entry = img.tar.parent
    fingerprint = _fingerprint(entry)  # before the check: a change during it shows later
    found = _tar_mismatch(entry, img.digest) or _rootfs_mismatch(entry, img.digest)
    if found is None:
        _seal(entry, fingerprint)
    return found


def _refused(img: Image, found: str) -> ImageError:
    short = img.digest[:12]
    return ImageError(f"cached image sha256:{short} ({img.tar.parent}) does not match its "
                      f"digest: {found}; fix: `bench image verify --rebuild {short}` builds "
                      f"it again from its source (or `bench image rm {short}`)")


def verify(img: Image) -> None:
    """The full check of `img`'s cache entry; ImageError naming the first difference
    and the fix."""
    found = problem(img)
    if found:
        raise _refused(img, found)


def _aside(path: Path, cache: Path) -> None:
    """Move `path` (an entry, or its rootfs/) out of the way into the cache's temp dir,
    where `prune` removes it later: an instance may still have it as a lower layer."""
    (cache / ".tmp").mkdir(exist_ok=True)
    stale = Path(tempfile.mkdtemp(prefix="stale-", dir=cache / ".tmp"))
    with contextlib.suppress(FileNotFoundError):  # another process moved it first
        os.rename(path, stale / path.name)


def _unpack_again(entry: Path) -> None:
    """rootfs/ made again from image.tar (already checked); the old one set aside."""
    fresh = entry / f".rootfs.{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    extract(entry / "image.tar", fresh)
    _aside(entry / "rootfs", entry.parent)
    try:
        os.rename(fresh, entry / "rootfs")
    except OSError:  # another process unpacked it first
        shutil.rmtree(fresh)


def _on_use(img: Image, say: Progress) -> str | None:
    """The check before a use: the entry's fingerprint against its seal; when they
    differ (or there is no seal), the full check. A rootfs/ that no longer matches a
    sound image.tar is unpacked again from it (and said); what still differs, or None."""
    entry = img.tar.parent
    try:
        sealed = (entry / SEAL).read_text().strip()
    except OSError:
        sealed = ""
    fingerprint = _fingerprint(entry)
    if sealed and fingerprint == sealed:
        return None
    found = _tar_mismatch(entry, img.digest)
    if found:
        return found
    found = _rootfs_mismatch(entry, img.digest)
    if found:
        say(f"cached image sha256:{img.digest[:12]}: {found}; unpacked again from its tar")
        _unpack_again(entry)
        fingerprint = _fingerprint(entry)
        found = _rootfs_mismatch(entry, img.digest)
        if found:
            return found
    _seal(entry, fingerprint)
    return None


def check(img: Image, progress: Progress | None = None) -> Image:
    """`img`, checked before it is used (_on_use); ImageError if it does not match."""
    found = _on_use(img, progress or (lambda text: None))
    if found:
        raise _refused(img, found)
    return img
