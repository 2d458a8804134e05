"""The workload image: deterministic, self-contained, identified by its sha256."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness.core import image
from harness.core.errors import ImageError
from tests.conftest import require


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_same_recipe_same_digest(cache: Path, tmp_path: Path) -> None:
    a = image.build(image.Recipe(), cache)
    b = image.build(image.Recipe(), tmp_path / "other-cache")
    assert a.digest == b.digest
    assert a.tar.read_bytes() == b.tar.read_bytes()


def test_digest_is_sha256_of_tar(cache: Path) -> None:
    img = image.build(image.Recipe(), cache)
    assert hashlib.sha256(img.tar.read_bytes()).hexdigest() == img.digest
    image.verify(img)
    assert img.tag == f"cvbench/base:{img.digest[:12]}"


def test_tar_is_normalised(cache: Path) -> None:
    img = image.build(image.Recipe(), cache)
    with tarfile.open(img.tar) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert "bench/init" in names
    init = next(m for m in members if m.name == "bench/init")
    assert init.mode & 0o111


def test_init_announces_then_execs(cache: Path) -> None:
    img = image.build(image.Recipe(), cache)
    text = (img.rootfs / "bench/init").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    # first thing (a VM's initramfs stage that only switches to a root disk defers it
    # to the disk's own init)
    assert 'echo "CVBENCH-READY' in lines[0]
    assert 'exec "$@"' in text


def test_binaries_bring_their_libraries(cache: Path) -> None:
    img = image.build(image.Recipe("withcat", ("cat",)), cache)
    assert (img.rootfs / "usr/bin/cat").exists()
    libs = image.shared_libraries("/usr/bin/cat")
    for lib in libs:
        assert (img.rootfs / lib.lstrip("/")).exists(), lib
    other = image.build(image.Recipe(), cache)
    assert other.digest != img.digest


def test_missing_binary_is_an_image_error(cache: Path) -> None:
    with pytest.raises(ImageError, match="not installed"):
        image.build(image.Recipe("x", ("no-such-binary-xyz",)), cache)


def _elf(binary: str) -> tuple[bool, list[str]]:
    """What binutils' readelf says of `binary`: whether it names an interpreter (a
    PT_INTERP program header) and the libraries it needs (DT_NEEDED)."""
    headers = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True,
                             check=True).stdout
    dynamic = subprocess.run(["readelf", "-dW", binary], capture_output=True, text=True,
                             check=True).stdout
    interp = any(line.split()[:1] == ["INTERP"] for line in headers.splitlines())
    return interp, re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)


def test_static_binary_has_no_libraries() -> None:
    """busybox-static is static by the ELF itself (readelf: no interpreter, no needed
    library) and by the loader's own tool (ldd), and cvbench lists no libraries for it;
    a dynamic binary, by the same sources, has both, and cvbench lists what it needs."""
    bb = next((c for c in image.BUSYBOX_CANDIDATES if os.path.exists(c)), None)
    require("busybox-static", None if bb else
            "busybox-static is not installed (scripts/provision installs it)")
    require("binutils", None if shutil.which("readelf") else "readelf is not installed")
    assert bb is not None
    real = os.path.realpath(bb)
    assert _elf(real) == (False, [])
    ldd = subprocess.run(["ldd", real], capture_output=True, text=True, check=False)
    assert ldd.returncode != 0 and "not a dynamic executable" in ldd.stdout + ldd.stderr
    assert image.shared_libraries(real) == []
    assert image._busybox() == bb  # the image takes it as the static busybox

    cat = os.path.realpath("/bin/cat")
    interp, needed = _elf(cat)
    assert interp and needed
    libs = image.shared_libraries(cat)
    assert set(needed) <= {os.path.basename(lib) for lib in libs}


def test_fallback_without_busybox(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "BUSYBOX_CANDIDATES", ())
    img = image.build(image.Recipe(), cache)
    assert (img.rootfs / "bin/sh").exists()
    assert "not installed" in img.contents["busybox"]
