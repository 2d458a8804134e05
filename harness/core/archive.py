"""Image archives: `docker save` / `podman save` tarballs and OCI image layouts (a
directory, or a tar of one), flattened into one tree.

Layers are applied in order with the OCI whiteout rules (harness.core.tree). Every layer
is checked against the digest its manifest or config gives (a docker-save layer against
its diff_id, an OCI blob against its digest, and its uncompressed content against the
config's diff_id), so a truncated or corrupted archive is refused, never half-used. An
uncompressed layer of an uncompressed archive file is read in place; a compressed one
(gzip) is spooled into the build's temp dir.

Every name the archive's metadata gives (manifest.json's Config and Layers, an OCI blob's
digest) is a path inside the archive: an absolute name, `..`, a NUL or an unexpected type
is refused, and a directory's files are opened without following any symlink, so no name
reads a file outside the archive. A defect of the metadata (a missing field, a wrong type)
is one BadImage line naming the archive and the field. `max_bytes` caps the uncompressed
bytes read from all layers together, counted as they stream: a layer that expands beyond
it (a gzip bomb) is refused before it fills the disk.

The image config gives the workload's defaults (ImageConfig: Entrypoint, Cmd, Env,
WorkingDir, User, ExposedPorts) and the identity recorded next to the rootfs digest: the
archive's sha256, the manifest's and the config's digests (the config digest is the
image ID engines show), and the repository tags.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from harness.core.errors import BadImage
from harness.core.tree import Blobs, Tree, apply_layer, clean
from harness.core.units import format_size

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_METADATA = 16 << 20  # a manifest, index or config is KiB; more is not image metadata


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI/Docker image config a workload takes as defaults."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    labels: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"entrypoint": list(self.entrypoint), "cmd": list(self.cmd),
                "env": dict(self.env), "workdir": self.workdir, "user": self.user,
                "exposed_ports": list(self.exposed_ports), "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageConfig:
        return cls(entrypoint=tuple(d.get("entrypoint", ())), cmd=tuple(d.get("cmd", ())),
                   env=tuple(sorted(d.get("env", {}).items())), workdir=d.get("workdir", ""),
                   user=d.get("user", ""), exposed_ports=tuple(d.get("exposed_ports", ())),
                   labels=tuple(sorted(d.get("labels", {}).items())))

    def oci(self) -> dict[str, Any]:
        """As the `config` object of an image config (what `export` writes)."""
        out: dict[str, Any] = {}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.env:
            out["Env"] = [f"{k}={v}" for k, v in self.env]
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


def parse_config(raw: dict[str, Any], origin: str) -> ImageConfig:
    c = raw.get("config") or {}
    if not isinstance(c, dict):
        raise BadImage(f"{origin}: image config: `config` is not an object")

    def strings(key: str) -> tuple[str, ...]:
        v = c.get(key) or []
        if isinstance(v, str):  # the shell form some tools write
            v = ["/bin/sh", "-c", v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadImage(f"{origin}: image config: {key} is not a list of strings")
        return tuple(v)

    env = []
    for item in strings("Env"):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise BadImage(f"{origin}: image config: Env entry {item!r} is not KEY=VALUE")
        env.append((k, v))
    labels, ports = c.get("Labels") or {}, c.get("ExposedPorts") or {}
    for key, value in (("Labels", labels), ("ExposedPorts", ports)):
        if not isinstance(value, dict):
            raise BadImage(f"{origin}: image config: {key} is not an object")
    return ImageConfig(
        entrypoint=strings("Entrypoint"), cmd=strings("Cmd"), env=tuple(env),
        workdir=str(c.get("WorkingDir") or ""), user=str(c.get("User") or ""),
        exposed_ports=tuple(sorted(str(p) for p in ports)),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Budget:
    """The uncompressed bytes all layers of a build may still expand to (the size cap)."""

    def __init__(self, origin: str, limit: int | None) -> None:
        self.origin, self.limit, self.used = origin, limit, 0

    def take(self, n: int, where: str) -> None:
        self.used += n
        if self.limit is not None and self.used > self.limit:
            raise BadImage(f"{self.origin}: {where}: the layers expand beyond the image size "
                           f"cap of {format_size(self.limit)} ({self.limit} bytes; "
                           "CVBENCH_IMAGE_MAX_BYTES sets it)")


class _HashingReader:
    """A read-only file that hashes what is read through it (and counts it against a
    budget: the cap is enforced as the bytes arrive, never after they were written)."""

    def __init__(self, f: _Readable, budget: Budget | None = None, where: str = "") -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.budget, self.where = budget, where

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        if self.budget is not None:
            self.budget.take(len(b), self.where)
        return b

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.sha.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _open_beneath(root: Path, path: str) -> IO[bytes]:
    """The regular file `path` (clean, relative) below the directory `root`, opened one
    component at a time without following symlinks: an archive's name never leads outside
    it (OSError ELOOP/ENOTDIR for a symlink, EINVAL for anything but a regular file)."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *dirs, last = path.split("/")
        for part in dirs:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
        # O_NONBLOCK: a FIFO must not hang the open (it is refused below)
        f = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(f).st_mode):
        os.close(f)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(f, "rb")


class _Files:
    """The files of an archive: a tar's members, or an OCI layout directory's files.
    Every name is confined to the archive (`name`)."""

    def __init__(self, path: Path, origin: str, stack: ExitStack) -> None:
        self.path, self.origin = path, origin
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        try:
            self.tar = stack.enter_context(tarfile.open(path))  # noqa: SIM115
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise BadImage(f"{origin}: not a readable tar archive (truncated or corrupt?): "
                           f"{_one_line(e)}") from None
        for m in members:
            self.members[self.name(m.name, "archive member")] = m

    def name(self, name: object, field: str) -> str:
        """`name`, which the archive gives in `field`, as a clean path inside the archive;
        BadImage for anything that is not one."""
        if not isinstance(name, str) or not name:
            raise BadImage(f"{self.origin}: {field}: {name!r} is not a file name")
        try:
            path = clean(name)
        except ValueError as e:
            raise BadImage(f"{self.origin}: {field}: {name!r} leaves the archive ({e})"
                           ) from None
        if not path and field != "archive member":
            raise BadImage(f"{self.origin}: {field}: {name!r} is not a file name")
        return path

    def has(self, name: str) -> bool:
        """Whether the archive has an entry `name` (a constant, top-level name)."""
        return name in self.members if self.tar else os.path.lexists(self.path / name)

    def open(self, name: object, field: str) -> IO[bytes]:
        path = self.name(name, field)
        if self.tar is None:
            try:
                return _open_beneath(self.path, path)
            except OSError as e:
                why = str(e.strerror)
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    why = ("is a symlink" if e.errno == errno.ELOOP else "a directory on its "
                           "way is a symlink or not a directory") + \
                        " (symlinks are refused: an archive's files must be inside it)"
                raise BadImage(f"{self.origin}: {field}: {path}: {why}") from None
        m = self.members.get(path)
        f = self.tar.extractfile(m) if m is not None and m.isreg() else None
        if f is None:
            raise BadImage(f"{self.origin}: {field}: {path}: "
                           + ("missing from the archive" if m is None else
                              "not a regular file of the archive"))
        return f

    def read(self, name: object, field: str) -> bytes:
        """A metadata file's bytes (at most MAX_METADATA)."""
        with self.open(name, field) as f:
            data = f.read(MAX_METADATA + 1)
        if len(data) > MAX_METADATA:
            raise BadImage(f"{self.origin}: {field}: larger than {format_size(MAX_METADATA)}"
                           ", which no image metadata is")
        return data

    def json(self, name: object, field: str) -> Any:
        data = self.read(name, field)
        try:
            return json.loads(data)
        except ValueError as e:
            raise BadImage(f"{self.origin}: {field}: not valid JSON ({e})") from None


def _one_line(e: BaseException) -> str:
    return "; ".join(line.strip(" -") for line in str(e).splitlines() if line.strip())[:200]


def _plain_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return not head.startswith(GZIP_MAGIC) and head != ZSTD_MAGIC


@dataclass(frozen=True)
class Layer:
    name: str  # its file in the archive
    digest: str | None  # what the file's own bytes must hash to (OCI blobs)
    diff_id: str | None  # what its uncompressed tar must hash to


@contextmanager
def _layer_stream(files: _Files, layer: Layer, where: str, budget: Budget) -> Iterator[
        tuple[tarfile.TarFile, _HashingReader, _HashingReader, bool]]:
    """The layer as a streamed tar, the readers hashing its stored bytes and its
    uncompressed content (counted against `budget`), and whether it is compressed."""
    f = files.open(layer.name, where)
    head = f.read(4)
    f.seek(0)
    if head == ZSTD_MAGIC:
        raise BadImage(f"{files.origin}: {where}: zstd-compressed layers are not supported "
                       "(re-save the image with gzip or uncompressed layers)")
    raw = _HashingReader(f)
    gz = head.startswith(GZIP_MAGIC)
    content = _HashingReader(gzip.GzipFile(fileobj=raw) if gz else raw,  # type: ignore[call-overload]
                             budget, where)
    try:
        with f, tarfile.open(fileobj=content, mode="r|") as tf:  # type: ignore[call-overload]
            yield tf, raw, content, gz
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, ValueError) as e:
        raise BadImage(f"{files.origin}: {where}: truncated or corrupt layer "
                       f"({_one_line(e)})") from None


_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _want(files: _Files, value: Any, kind: type, field: str, optional: bool = False) -> Any:
    """`value` (the archive's `field`) if it is of `kind` (an empty one if it is absent
    and `optional`); BadImage naming the field otherwise."""
    if value is None and optional:
        return kind()
    if not isinstance(value, kind):
        what = "missing" if value is None else f"not {_KINDS[kind]}"
        raise BadImage(f"{files.origin}: {field}: {what}")
    return value


def _strings(files: _Files, value: Any, field: str) -> list[str]:
    items = _want(files, value, list, field, optional=True)
    for i, x in enumerate(items):
        _want(files, x, str, f"{field}[{i}]")
    return list(items)


def _amd64(files: _Files, m: Any, field: str) -> bool:
    m = _want(files, m, dict, field)
    platform = _want(files, m.get("platform"), dict, f"{field}.platform", optional=True)
    return platform.get("architecture") in (None, "amd64")


def _layers(files: _Files) -> tuple[list[Layer], dict[str, Any], dict[str, Any]]:
    """The layers in order, the image config and the identity, for either format."""
    o = files.origin
    if files.has("index.json") and files.has("oci-layout"):
        index = _want(files, files.json("index.json", "index.json"), dict, "index.json")
        manifests = _want(files, index.get("manifests"), list, "index.json: manifests",
                          optional=True)
        chosen = [i for i, m in enumerate(manifests)
                  if _amd64(files, m, f"index.json: manifests[{i}]")]
        if len(chosen) != 1:
            raise BadImage(f"{o}: index.json lists {len(manifests)} manifests; cvbench takes "
                           "an archive of one image (one linux/amd64 manifest)")
        field = f"index.json: manifests[{chosen[0]}].digest"
        mdigest = _want(files, manifests[chosen[0]].get("digest"), str, field)
        manifest = _want(files, _blob_json(files, mdigest, field), dict, field)
        if "manifests" in manifest:  # an image index inside: one more level
            where = f"image index {mdigest}"
            inner = [m for i, m in enumerate(_want(files, manifest["manifests"], list,
                                                   f"{where}: manifests"))
                     if _amd64(files, m, f"{where}: manifests[{i}]")]
            if not inner:
                raise BadImage(f"{o}: {mdigest}: no linux/amd64 manifest")
            field = f"{where}: manifests[0].digest"
            mdigest = _want(files, inner[0].get("digest"), str, field)
            manifest = _want(files, _blob_json(files, mdigest, field), dict, field)
        where = f"manifest {mdigest}"
        field = f"{where}: config.digest"
        cdigest = _want(files, _want(files, manifest.get("config"), dict, f"{where}: config"
                                     ).get("digest"), str, field)
        config = _blob_json(files, cdigest, field)
        layers = []
        for i, m in enumerate(_want(files, manifest.get("layers"), list, f"{where}: layers",
                                    optional=True)):
            field = f"{where}: layers[{i}].digest"
            digest = _want(files, _want(files, m, dict, f"{where}: layers[{i}]").get("digest"),
                           str, field)
            layers.append(Layer(_blob_path(files, digest, field), digest, None))
        tags = []
        for i, m in enumerate(manifests):
            notes = _want(files, m.get("annotations"), dict,
                          f"index.json: manifests[{i}].annotations", optional=True)
            if notes.get("org.opencontainers.image.ref.name"):
                tags.append(str(notes["org.opencontainers.image.ref.name"]))
        ident = {"format": "oci", "manifest": mdigest, "config": cdigest, "tags": tags}
    elif files.has("manifest.json"):
        manifest = files.json("manifest.json", "manifest.json")
        if not isinstance(manifest, list) or len(manifest) != 1:
            n = len(manifest) if isinstance(manifest, list) else "no"
            raise BadImage(f"{o}: manifest.json lists {n} images; cvbench takes an archive "
                           "of one image")
        entry = _want(files, manifest[0], dict, "manifest.json: [0]")
        raw = files.read(entry.get("Config"), "manifest.json: Config")
        cdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
        try:
            config = json.loads(raw)
        except ValueError as e:
            raise BadImage(f"{o}: manifest.json: Config: not valid JSON ({e})") from None
        layers = [Layer(files.name(n, f"manifest.json: Layers[{i}]"), None, None)
                  for i, n in enumerate(_strings(files, entry.get("Layers"),
                                                 "manifest.json: Layers"))]
        mdig = "sha256:" + hashlib.sha256(files.read("manifest.json", "manifest.json")
                                          ).hexdigest()
        ident = {"format": "docker-save", "manifest": mdig, "config": cdigest,
                 "tags": _strings(files, entry.get("RepoTags"), "manifest.json: RepoTags")}
    else:
        raise BadImage(f"{o}: neither a docker-save archive (manifest.json) nor an OCI image "
                       "layout (index.json + oci-layout)")
    if not isinstance(config, dict):
        raise BadImage(f"{o}: the image config is not a JSON object")
    rootfs = _want(files, config.get("rootfs"), dict, "image config: rootfs", optional=True)
    diff_ids = _strings(files, rootfs.get("diff_ids"), "image config: rootfs.diff_ids")
    if ident["format"] == "docker-save" and len(layers) != len(diff_ids):
        raise BadImage(f"{o}: manifest.json names {len(layers)} layers, the config "
                       f"{len(diff_ids)}")
    layers = [Layer(x.name, x.digest, diff_ids[i] if i < len(diff_ids) else None)
              for i, x in enumerate(layers)]
    return layers, config, ident


def _blob_path(files: _Files, digest: str, field: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise BadImage(f"{files.origin}: {field}: invalid blob digest {digest!r}")
    return f"blobs/sha256/{hexd}"


def _blob_json(files: _Files, digest: str, field: str) -> Any:
    name = _blob_path(files, digest, field)
    data = files.read(name, field)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise BadImage(f"{files.origin}: {name}: content does not match its digest (corrupt)")
    try:
        return json.loads(data)
    except ValueError as e:
        raise BadImage(f"{files.origin}: {name}: not valid JSON ({e})") from None


def read(path: Path, origin: str, blobs: Path, max_bytes: int | None = None
         ) -> tuple[Tree, ImageConfig, dict[str, Any]]:
    """Flatten the image archive at `path` (a file, or an OCI layout directory): its
    tree, config and identity. Layer contents that cannot be read in place are spooled
    into `blobs` (inside the build's temp dir). `max_bytes`: the most uncompressed bytes
    all layers together may expand to (None: no cap)."""
    if not path.exists():
        raise BadImage(f"{origin}: no such file or directory")
    with ExitStack() as stack:
        files = _Files(path, origin, stack)
        layers, raw_config, ident = _layers(files)
        if not path.is_dir():
            ident["archive"] = sha256_file(path)
        tree = Tree(origin)
        store = Blobs(blobs)
        budget = Budget(origin, max_bytes)
        plain = not path.is_dir() and _plain_tar(path)
        for i, layer in enumerate(layers, 1):
            where = f"layer {i} ({layer.name})"
            member = files.members.get(layer.name) if files.tar else None
            with _layer_stream(files, layer, where, budget) as (tf, raw, content, gz):
                in_place = (path, member.offset_data) if plain and member and not gz else None
                apply_layer(tree, tf, store, where, in_place)
                content.drain()
                raw.drain()
            if layer.digest and raw.sha.hexdigest() != layer.digest.partition(":")[2]:
                raise BadImage(f"{origin}: {where}: content does not match its digest "
                               f"{layer.digest} (corrupt)")
            if layer.diff_id and "sha256:" + content.sha.hexdigest() != layer.diff_id:
                raise BadImage(f"{origin}: {where}: content does not match its diff_id "
                               f"{layer.diff_id} (corrupt or truncated)")
        ident["layers"] = len(layers)
        return tree, parse_config(raw_config, origin), ident
    raise AssertionError("unreachable")
