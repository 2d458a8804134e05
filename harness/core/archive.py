"""Image archives: `docker save` / `podman save` tarballs and OCI image layouts (a
directory, or a tar of one), flattened into one tree.

Layers are applied in order with the OCI whiteout rules (harness.core.tree). Every layer
is checked against the digest its manifest or config gives (a docker-save layer against
its diff_id, an OCI blob against its digest, and its uncompressed content against the
config's diff_id), so a truncated or corrupted archive is refused, never half-used. An
uncompressed layer of an uncompressed archive file is read in place; a compressed one
(gzip) is spooled into the build's temp dir.

The image config gives the workload's defaults (ImageConfig: Entrypoint, Cmd, Env,
WorkingDir, User, ExposedPorts) and the identity recorded next to the rootfs digest: the
archive's sha256, the manifest's and the config's digests (the config digest is the
image ID engines show), and the repository tags.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from harness.core.errors import BadImage
from harness.core.tree import Blobs, Tree, apply_layer, clean

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


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
    labels = c.get("Labels") or {}
    return ImageConfig(
        entrypoint=strings("Entrypoint"), cmd=strings("Cmd"), env=tuple(env),
        workdir=str(c.get("WorkingDir") or ""), user=str(c.get("User") or ""),
        exposed_ports=tuple(sorted(c.get("ExposedPorts") or {})),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _HashingReader:
    """A read-only file that hashes what is read through it."""

    def __init__(self, f: _Readable) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
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


class _Files:
    """The files of an archive: a tar's members, or an OCI layout directory's files."""

    def __init__(self, path: Path, origin: str, stack: ExitStack) -> None:
        self.path, self.origin = path, origin
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        try:
            self.tar = stack.enter_context(tarfile.open(path))  # noqa: SIM115
            for m in self.tar.getmembers():
                self.members[clean(m.name)] = m
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise BadImage(f"{origin}: not a readable tar archive (truncated or corrupt?): "
                           f"{_one_line(e)}") from None

    def has(self, name: str) -> bool:
        return name in self.members if self.tar else (self.path / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        if self.tar is None:
            try:
                return open(self.path / name, "rb")
            except OSError as e:
                raise BadImage(f"{self.origin}: {name}: {e.strerror}") from None
        m = self.members.get(clean(name))
        f = self.tar.extractfile(m) if m is not None and m.isreg() else None
        if f is None:
            raise BadImage(f"{self.origin}: {name}: missing from the archive")
        return f

    def json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read()
        try:
            return json.loads(data)
        except ValueError as e:
            raise BadImage(f"{self.origin}: {name}: not valid JSON ({e})") from None


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
def _layer_stream(files: _Files, layer: Layer, where: str) -> Iterator[
        tuple[tarfile.TarFile, _HashingReader, _HashingReader, bool]]:
    """The layer as a streamed tar, the readers hashing its stored bytes and its
    uncompressed content, and whether it is compressed."""
    f = files.open(layer.name)
    head = f.read(4)
    f.seek(0)
    if head == ZSTD_MAGIC:
        raise BadImage(f"{files.origin}: {where}: zstd-compressed layers are not supported "
                       "(re-save the image with gzip or uncompressed layers)")
    raw = _HashingReader(f)
    gz = head.startswith(GZIP_MAGIC)
    content = _HashingReader(gzip.GzipFile(fileobj=raw) if gz else raw)  # type: ignore[call-overload]
    try:
        with f, tarfile.open(fileobj=content, mode="r|") as tf:  # type: ignore[call-overload]
            yield tf, raw, content, gz
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, ValueError) as e:
        raise BadImage(f"{files.origin}: {where}: truncated or corrupt layer "
                       f"({_one_line(e)})") from None


def _layers(files: _Files) -> tuple[list[Layer], dict[str, Any], dict[str, Any]]:
    """The layers in order, the image config and the identity, for either format."""
    o = files.origin
    if files.has("index.json") and files.has("oci-layout"):
        index = files.json("index.json")
        manifests = index.get("manifests") or []
        chosen = [m for m in manifests if (m.get("platform") or {}).get("architecture")
                  in (None, "amd64")]
        if len(chosen) != 1:
            raise BadImage(f"{o}: index.json lists {len(manifests)} manifests; cvbench takes "
                           "an archive of one image (one linux/amd64 manifest)")
        mdigest = str(chosen[0].get("digest", ""))
        manifest = _blob_json(files, mdigest)
        if "manifests" in manifest:  # an image index inside: one more level
            inner = [m for m in manifest["manifests"]
                     if (m.get("platform") or {}).get("architecture") in (None, "amd64")]
            if not inner:
                raise BadImage(f"{o}: {mdigest}: no linux/amd64 manifest")
            mdigest = str(inner[0]["digest"])
            manifest = _blob_json(files, mdigest)
        cdigest = str((manifest.get("config") or {}).get("digest", ""))
        config = _blob_json(files, cdigest)
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
        layers = [Layer(_blob_path(o, str(m.get("digest", ""))), str(m.get("digest")),
                        diff_ids[i] if i < len(diff_ids) else None)
                  for i, m in enumerate(manifest.get("layers") or [])]
        tags = [str((m.get("annotations") or {}).get("org.opencontainers.image.ref.name"))
                for m in manifests if (m.get("annotations") or {}).get(
                    "org.opencontainers.image.ref.name")]
        ident = {"format": "oci", "manifest": mdigest, "config": cdigest, "tags": tags}
    elif files.has("manifest.json"):
        manifest = files.json("manifest.json")
        if not isinstance(manifest, list) or len(manifest) != 1:
            n = len(manifest) if isinstance(manifest, list) else "no"
            raise BadImage(f"{o}: manifest.json lists {n} images; cvbench takes an archive "
                           "of one image")
        entry = manifest[0]
        config = files.json(str(entry.get("Config", "")))
        with files.open(str(entry["Config"])) as f:
            cdigest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
        names = [str(x) for x in entry.get("Layers") or []]
        if len(names) != len(diff_ids):
            raise BadImage(f"{o}: manifest.json names {len(names)} layers, the config "
                           f"{len(diff_ids)}")
        layers = [Layer(n, None, diff_ids[i]) for i, n in enumerate(names)]
        with files.open("manifest.json") as f:
            mdig = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        ident = {"format": "docker-save", "manifest": mdig, "config": cdigest,
                 "tags": [str(t) for t in entry.get("RepoTags") or []]}
    else:
        raise BadImage(f"{o}: neither a docker-save archive (manifest.json) nor an OCI image "
                       "layout (index.json + oci-layout)")
    if not isinstance(config, dict):
        raise BadImage(f"{o}: the image config is not a JSON object")
    return layers, config, ident


def _blob_path(origin: str, digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise BadImage(f"{origin}: invalid blob digest {digest!r}")
    return f"blobs/sha256/{hexd}"


def _blob_json(files: _Files, digest: str) -> Any:
    name = _blob_path(files.origin, digest)
    with files.open(name) as f:
        data = f.read()
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise BadImage(f"{files.origin}: {name}: content does not match its digest (corrupt)")
    try:
        return json.loads(data)
    except ValueError as e:
        raise BadImage(f"{files.origin}: {name}: not valid JSON ({e})") from None


def read(path: Path, origin: str, blobs: Path) -> tuple[Tree, ImageConfig, dict[str, Any]]:
    """Flatten the image archive at `path` (a file, or an OCI layout directory): its
    tree, config and identity. Layer contents that cannot be read in place are spooled
    into `blobs` (inside the build's temp dir)."""
    if not path.exists():
        raise BadImage(f"{origin}: no such file or directory")
    with ExitStack() as stack:
        files = _Files(path, origin, stack)
        layers, raw_config, ident = _layers(files)
        if not path.is_dir():
            ident["archive"] = sha256_file(path)
        tree = Tree(origin)
        store = Blobs(blobs)
        plain = not path.is_dir() and _plain_tar(path)
        for i, layer in enumerate(layers, 1):
            where = f"layer {i} ({layer.name})"
            member = files.members.get(clean(layer.name)) if files.tar else None
            with _layer_stream(files, layer, where) as (tf, raw, content, gz):
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
