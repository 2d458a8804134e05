"""The image cache checks what it hands out: a tampered entry (a rootfs/ file changed,
added or removed, image.tar rewritten) is refused on its next use and by `bench image
verify`; the Debian key is the normalising code, a directory archive's key its content."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harness.core import debian, image
from harness.core.errors import BadImage, ImageError
from tests.unit.test_image_sources import BASE, UPPER, docker_save, oci_layout


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _keep_times(path: Path, change: Callable[[], None]) -> None:
    """Change a file and put its atime/mtime back: only its ctime tells."""
    st = os.stat(path)
    change()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _flip_byte(path: Path, at: int) -> None:
    def flip() -> None:
        with open(path, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x20]))
    _keep_times(path, flip)


def tamper(img: image.Image, how: str) -> str:
    """Change `img`'s cache entry; the text the refusal must hold."""
    if how == "byte":  # same size, same mtime: only the content and the ctime differ
        _flip_byte(img.rootfs / "bench/init", 20)
        return "rootfs/bench/init differs from image.tar: content"
    if how == "added":
        (img.rootfs / "bench/extra").write_text("x\n")
        return "rootfs/bench/extra: not in image.tar (added)"
    if how == "removed":
        (img.rootfs / "bin/sh").unlink()
        return "rootfs/bin/sh: missing (image.tar has it)"
    # image.tar: one byte of a member's content, same size and mtime
    with tarfile.open(img.tar) as tf:
        member = next(m for m in tf.getmembers() if m.isfile() and m.size > 10)
    _flip_byte(img.tar, member.offset_data + 5)
    return "image.tar hashes to sha256:"


@pytest.fixture
def archive(tmp_path: Path) -> image.Archive:
    path = tmp_path / "d.tar"
    path.write_bytes(docker_save([BASE, UPPER]))
    return image.Archive(str(path))


def _source(kind: str, archive: image.Archive) -> image.Source:
    return image.Recipe() if kind == "recipe" else archive


@pytest.mark.parametrize("kind", ["recipe", "archive"])
@pytest.mark.parametrize("how", ["byte", "added", "removed"])
def test_a_tampered_rootfs_is_unpacked_again_on_its_next_use(
        cache: Path, archive: image.Archive, kind: str, how: str) -> None:
    """rootfs/ is made from image.tar: when it no longer matches a sound tar, the next
    use says what differs and unpacks it again."""
    src = _source(kind, archive)
    img = image.build(src, cache)
    said: list[str] = []
    image.build(src, cache, progress=said.append)
    assert not [line for line in said if "unpacked again" in line]  # untouched: as it is
    expect = tamper(img, how)
    again = image.build(src, cache, progress=said.append)
    assert again.digest == img.digest
    assert [line for line in said if expect in line and "unpacked again" in line], said
    assert image.problem(again) is None and not (img.rootfs / "bench/extra").exists()
    said.clear()
    image.build(src, cache, progress=said.append)
    assert not [line for line in said if "unpacked again" in line]


def test_a_tampered_tar_is_refused_on_a_cache_hit(cache: Path, archive: image.Archive) -> None:
    """A hit by source key (nothing built) on an image.tar that no longer hashes to its
    digest: refused in one line, with the fix."""
    img = image.build(archive, cache)
    expect = tamper(img, "tar")
    with pytest.raises(ImageError) as exc:
        image.build(archive, cache)
    text = str(exc.value)
    assert expect in text and f"bench image verify --rebuild {img.digest[:12]}" in text
    assert "\n" not in text
    with pytest.raises(ImageError):  # refused again, however often it is asked for
        image.build(archive, cache)
    with pytest.raises(ImageError, match=r"image\.tar hashes to"):
        image.verify(img)


def test_a_build_of_the_same_digest_replaces_a_tampered_tar(cache: Path) -> None:
    """A recipe is collected and written afresh on every build: that build, checked in
    full, replaces an entry whose tar no longer matches, and says so."""
    img = image.build(image.Recipe(), cache)
    expect = tamper(img, "tar")
    said: list[str] = []
    again = image.build(image.Recipe(), cache, progress=said.append)
    assert again.digest == img.digest
    assert [line for line in said if expect in line and "replaced by this build" in line], said
    assert image.problem(again) is None


def test_the_cheap_check_passes_an_untouched_entry_without_rehashing(
        cache: Path, archive: image.Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    img = image.build(archive, cache)
    image.build(image.Recipe(), cache)
    # a run reads the rootfs and the tar (an overlay's lower layer, an engine's import)
    for path in (img.rootfs / "bin/sh", img.tar):
        path.read_bytes()

    def rehash(entry: Path, digest: str) -> str | None:
        raise AssertionError("the full check ran on an untouched entry")

    monkeypatch.setattr(image, "_tar_mismatch", rehash)
    monkeypatch.setattr(image, "_rootfs_mismatch", rehash)
    assert image.build(archive, cache).build_seconds is None
    image.build(image.Recipe(), cache)


def test_an_entry_without_a_seal_is_fully_checked_then_sealed(cache: Path) -> None:
    """An entry an older cvbench made (no seal): checked in full once, then sealed."""
    img = image.build(image.Recipe(), cache)
    seal = img.tar.parent / image.SEAL
    sealed = seal.read_text()
    seal.unlink()
    image.build(image.Recipe(), cache)
    assert seal.read_text() == sealed


def _bench(cache: Path, *args: str) -> Any:
    from harness.cli import cli

    return CliRunner().invoke(cli, ["image", *args], env={"CVBENCH_CACHE": str(cache)})


def test_bench_image_verify(tmp_path: Path, archive: image.Archive) -> None:
    base = tmp_path / "c"  # CVBENCH_CACHE: the images are in base/images
    img = image.build(image.Recipe(), base / "images")
    other = image.build(archive, base / "images")
    r = _bench(base, "verify")
    assert r.exit_code == 0, r.output
    assert sorted(r.output.splitlines()) == sorted(
        [f"ok {img.tag} sha256:{img.digest}", f"ok {other.tag} sha256:{other.digest}"])

    expect = tamper(img, "byte")
    r = _bench(base, "verify")
    assert r.exit_code == 1
    assert f"mismatch {img.tag} sha256:{img.digest}: {expect}" in r.output
    assert f"ok {other.tag} sha256:{other.digest}" in r.output
    assert isinstance(r.exception, ImageError)
    assert f"fix: bench image verify --rebuild {img.digest[:12]}" in str(r.exception)

    r = _bench(base, "verify", "--rebuild", img.digest[:12])  # the tar is sound
    assert r.exit_code == 0, r.output
    assert f"{img.tag}: unpacked again" in r.output
    r = _bench(base, "verify", img.digest[:12])
    assert r.output == f"ok {img.tag} sha256:{img.digest}\n"

    expect = tamper(img, "tar")
    r = _bench(base, "verify", img.digest[:12])
    assert r.exit_code == 1 and expect in r.output
    r = _bench(base, "verify", "--rebuild", img.digest[:12])
    assert r.exit_code == 0, r.output
    assert f"rebuilt {img.tag} sha256:{img.digest}" in r.output  # the same digest again
    r = _bench(base, "verify")
    assert r.exit_code == 0 and r.output.count("ok ") == 2


def _fake_debian(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No mirror, no debootstrap: a fixed index, a tiny root; how many builds ran."""
    built: list[int] = []

    def build(suite: str, packages: tuple[str, ...], mirror: str, index: tuple[str, int],
              cache: Path, tmp: Path, origin: str, progress: Any) -> tuple[Path, dict[str, Any]]:
        root = tmp / "root"
        (root / "bin").mkdir(parents=True)
        (root / "bin/sh").write_text("#!shell\n")
        built.append(1)
        return root, {"suite": suite}

    monkeypatch.setattr(debian, "fetch_index", lambda suite, mirror, origin: ("ab" * 32, 1))
    monkeypatch.setattr(debian, "build", build)
    return built


def test_the_debian_key_is_the_normalising_code(cache: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    built = _fake_debian(monkeypatch)
    src = image.Debian("bookworm", ("busybox",))
    image.build(src, cache)
    image.build(src, cache)
    assert len(built) == 1  # the same request and code: cached
    # a description changed, the code not: still cached
    monkeypatch.setattr(debian, "NORMALISED", (*debian.NORMALISED, "a rule described"))
    image.build(src, cache)
    assert len(built) == 1

    real = debian.normalise

    def normalise(root: Path) -> None:  # one more rule, NORMALISED unchanged
        real(root)
        (root / "var/cache/cvbench-rule").unlink(missing_ok=True)

    monkeypatch.setattr(debian, "normalise", normalise)
    assert image.build(src, cache).build_seconds is not None
    assert len(built) == 2


def _unpack(data: bytes, dest: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="data")
    return dest


@pytest.mark.parametrize("fmt", ["docker-save", "oci"])
def test_a_directory_archive_is_keyed_by_its_content(cache: Path, tmp_path: Path,
                                                     fmt: str) -> None:
    data = docker_save([BASE, UPPER]) if fmt == "docker-save" else oci_layout([BASE, UPPER])
    first = _unpack(data, tmp_path / "first")
    img = image.build(image.Archive(str(first)), cache)
    assert img.build_seconds is not None
    # the same files elsewhere: the same cache entry, nothing built
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, moved)
    again = image.build(image.Archive(str(moved)), cache)
    assert again.digest == img.digest and again.build_seconds is None
    # one layer blob changed where it lies: not the cached image, the archive is read
    # (and refused: the blob no longer matches its digest)
    blob = max((p for p in moved.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes().replace(b"x1", b"x9", 1) if fmt == "docker-save"
                     else blob.read_bytes()[:-8] + bytes(8))
    with pytest.raises(BadImage, match="does not match its"):
        image.build(image.Archive(str(moved)), cache)


def test_rootfs_directories_keep_their_mtime_whatever_follows_them(cache: Path,
                                                                   tmp_path: Path) -> None:
    """In path order "Carp/", "Carp.pm", "Carp/Heavy.pm": the directory's entries do not
    follow it at once (as in every Debian image's perl-base). Unpacked, Carp keeps the
    tar's mtime (tar set it before Heavy.pm was written into it)."""
    from tests.unit.test_image_sources import SH, layer

    data = docker_save([layer(("bin", "d", {}), SH, ("Carp", "d", {"mtime": 1_500_000_000}),
                              ("Carp.pm", "f", {"data": b"pm"}),
                              ("Carp/Heavy.pm", "f", {"data": b"heavy"}))])
    (tmp_path / "carp.tar").write_bytes(data)
    img = image.build(image.Archive(str(tmp_path / "carp.tar")), cache)
    assert os.lstat(img.rootfs / "Carp").st_mtime == 1_500_000_000
    assert image.problem(img) is None
