"""Real images end to end: flattening checked against the engines themselves, engine
refs, a Debian image (built once per machine: the cache keeps it) running and serving on
every backend, http readiness against a host-side curl loop, bad sources exiting 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.core import image, tree
from harness.core.errors import ImageError
from runtimes import registry
from runtimes.base import InstanceSpec
from tests.conftest import backend_or_skip, require

pytestmark = [pytest.mark.root]

BENCH = [sys.executable, "-m", "harness.cli"]
DOCKER = "/usr/bin/docker"
# What `docker export` of a container holds that its image does not: the engine's own
# files, and the mount points of the files it bind-mounts over the image's (emptied).
ENGINE_ADDS = {".dockerenv", "dev/console", "dev/pts", "dev/shm", "etc/mtab"}
ENGINE_REPLACES = {"etc/hostname", "etc/hosts", "etc/resolv.conf"}
ENGINE_TOUCHES = {"dev", "etc"}  # directories the engine wrote into (their mtime)
# Deletes (a file of the lower layer, a whole directory's content through an opaque
# directory), a hard link whose partner a later layer replaces, owners, setuid.
DOCKERFILE = """\
FROM {base}
RUN mkdir -p /opq/sub /del && echo old > /opq/a && echo old > /opq/sub/b && \\
    echo keep > /del/k && echo x > /del/gone && echo one > /f && chmod 4755 /f && \\
    chown 33:33 /del/k && ln /f /hard && ln -s /f /sym
RUN rm -rf /opq && mkdir /opq && echo new > /opq/c && rm /del/gone && echo two > /f && \\
    chmod 0640 /del/k && rm /bin/ls
"""


def docker(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=True, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A three-layer image made by `docker build` FROM an imported recipe rootfs: its
    ref, and its `docker save` archive."""
    backend_or_skip("docker")
    d = tmp_path_factory.mktemp("flat")
    t, _ = image.collect(image.Recipe())
    with open(d / "base.tar", "wb") as f:
        tree.write_tar(t, f)
    tag = f"cvbench-test/flat-{random.randrange(16**8):08x}"
    docker("import", str(d / "base.tar"), f"{tag}:base")
    (d / "ctx").mkdir()
    (d / "ctx" / "Dockerfile").write_text(DOCKERFILE.format(base=f"{tag}:base"))
    try:
        docker("build", "-q", "-t", f"{tag}:1", str(d / "ctx"))
        docker("save", f"{tag}:1", "-o", str(d / "saved.tar"))
        yield f"{tag}:1", d / "saved.tar"
    finally:
        subprocess.run([DOCKER, "rmi", "-f", f"{tag}:1", f"{tag}:base"], capture_output=True,
                       check=False)


def listing(tar_path: Path, skip: set[str] = frozenset()) -> dict[str, tuple[Any, ...]]:  # type: ignore[assignment]
    """name -> (type, mode, uid, gid, mtime, sha256 of content or link target)."""
    out: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            name = m.name.rstrip("/").removeprefix("./")
            if not name or name in skip:
                continue
            body = m.linkname if m.issym() else ""
            if m.isfile() or m.islnk():
                f = tf.extractfile(m)
                assert f is not None
                body = hashlib.sha256(f.read()).hexdigest()
            kind = "file" if m.isfile() or m.islnk() else "dir" if m.isdir() else \
                "symlink" if m.issym() else m.type
            out[name] = (kind, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), body)
    return out


def test_flattening_matches_docker_export(built: tuple[str, Path], tmp_path: Path) -> None:
    ref, saved = built
    img = image.build(image.Archive(str(saved)), tmp_path / "cache")
    ours = listing(img.tar, set(img.init_paths))
    cid = docker("create", ref, "true").stdout.strip()
    try:
        docker("export", cid, "-o", str(tmp_path / "export.tar"))
    finally:
        docker("rm", "-f", cid)
    theirs = listing(tmp_path / "export.tar")
    assert set(theirs) - set(ours) == ENGINE_ADDS
    assert set(ours) - set(theirs) == set()
    differ = {n for n in ours if ours[n] != theirs[n]}
    assert differ <= ENGINE_REPLACES | ENGINE_TOUCHES, \
        {n: (ours[n], theirs[n]) for n in differ - ENGINE_REPLACES - ENGINE_TOUCHES}
    for n in ENGINE_TOUCHES & differ:  # only their mtime: the engine wrote into them
        assert ours[n][:4] == theirs[n][:4]
    # what the layers did, as the engine sees it
    assert "opq/a" not in ours and "opq/sub" not in ours and ours["opq/c"][0] == "file"
    assert "del/gone" not in ours and "bin/ls" not in ours
    assert ours["del/k"][1:4] == (0o640, 33, 33) and ours["f"][1] == 0o4755
    assert ours["hard"][5] != ours["f"][5]  # the link kept the lower layer's content
    assert ours["sym"] == theirs["sym"]


def test_engine_refs_give_the_archive_digest(built: tuple[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import session

    ref, saved = built
    monkeypatch.setenv("CVBENCH_CACHE", str(tmp_path))
    cache = image.cache_dir()
    from_file = image.build(image.Archive(str(saved)), cache)
    rt = registry.get("docker")
    assert isinstance(rt, image.EngineStore)
    from_docker = image.build(image.EngineRef("docker", ref), cache, store=rt)
    assert from_docker.digest == from_file.digest
    assert from_docker.identity["image_id"] == docker("image", "inspect", "-f", "{{.Id}}",
                                                      ref).stdout.strip()
    again = image.build(image.EngineRef("docker", ref), cache, store=rt)
    assert again.build_seconds is None  # keyed by the engine's image id: nothing built
    backend_or_skip("podman")  # the docker half above has passed by then
    subprocess.run(["podman", "load", "-q", "-i", str(saved)], capture_output=True, check=True)
    try:
        via = session.build_image(image.EngineRef("podman", ref))
        assert via.digest == from_file.digest and via.rootfs_digest == from_file.rootfs_digest
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, check=False)


def build_debian(source: image.Debian, cache: Path | None = None) -> image.Image:
    """`source` built (or found in `cache`), skipped or failed (CVBENCH_REQUIRE) where
    there is no root, no debootstrap or no Debian archive to reach."""
    require("root", None if subprocess.run(["id", "-u"], capture_output=True, text=True)
            .stdout.strip() == "0" else "debootstrap needs root")
    require("debootstrap", None if shutil.which("debootstrap") else
            "debootstrap is not installed (scripts/provision installs it)")
    try:
        return image.build(source, cache)
    except ImageError as e:
        if "cannot reach" in str(e):
            require("debian-archive", str(e))
        raise


@pytest.fixture(scope="session")
def debian() -> image.Image:
    """bookworm minbase + busybox (its httpd serves the readiness tests). Built once per
    machine: later sessions find it in the cache by its source."""
    return build_debian(image.Debian("bookworm", ("busybox",)))


def test_debian_image_is_reproducible_and_recorded(debian: image.Image) -> None:
    ident = debian.identity
    assert ident["suite"] == "bookworm" and ident["requested"] == ["busybox"]
    assert "busybox" in ident["packages"] and "dpkg" in ident["packages"]
    assert ident["index"].startswith("sha256:") and ident["normalised"]
    root = debian.rootfs
    assert (root / "etc/hostname").read_text() == "cvbench\n"
    assert not any((root / "var/lib/apt/lists").iterdir())
    assert not any((root / "dev").iterdir())
    assert (root / "usr/sbin/policy-rc.d").exists() is False
    # a second request builds nothing
    assert image.build(image.Debian("bookworm", ("busybox",))).build_seconds is None


@pytest.mark.slow
def test_debian_image_built_twice_from_scratch_has_one_digest(tmp_path: Path) -> None:
    """Two builds of the same request, each into its own empty cache (its own
    debootstrap and apt-get install, nothing shared): the same digest. The first
    differing entries are named otherwise."""
    src = image.Debian("bookworm", ("busybox",))
    try:
        a = build_debian(src, tmp_path / "a")
        b = build_debian(src, tmp_path / "b")
        if a.identity["index"] != b.identity["index"]:  # the archive moved in between
            a = build_debian(src, tmp_path / "c")
        assert a.build_seconds is not None and b.build_seconds is not None
        assert a.identity["index"] == b.identity["index"]
        if a.digest != b.digest:
            one, two = listing(a.tar), listing(b.tar)
            differ = sorted(n for n in one.keys() | two.keys() if one.get(n) != two.get(n))
            pytest.fail(f"two builds, two digests; they differ in {len(differ)} entries: "
                        + "; ".join(f"{n}: {one.get(n)} / {two.get(n)}" for n in differ[:8]))
    finally:
        for d in ("a", "b", "c"):
            shutil.rmtree(tmp_path / d, ignore_errors=True)


def _scenario(path: Path, img: dict[str, Any], argv: list[str], readiness: str,
              backends: list[str]) -> Path:
    def lit(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {lit(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    path.write_text(
        f'name = "serve"\nstudy = "startup"\nbackends = {lit(backends)}\nnetwork = "bridge"\n'
        f"[workload]\nimage = {lit(img)}\nargv = {lit(argv)}\nreadiness = {lit(readiness)}\n"
        f"probe_interval = 0.02\n[sampling]\nmetric = \"startup.to_serving\"\ntimeout = 180\n")
    return path


def available(*names: str) -> list[str]:
    out = []
    for n in names:
        a = registry.get(n).availability()
        if a.ok:
            out.append(n)
        else:
            require(n.split(":")[0], f"{a.reason} (fix: {a.fix})")
    return out


def test_debian_image_serves_on_every_backend(debian: image.Image, tmp_path: Path) -> None:
    """One sample per backend of busybox httpd from the Debian image, http readiness:
    the same digest everywhere, to_serving per backend, the host run chrooted."""
    port = random.randrange(20000, 30000)
    backends = available("host", "ns", "docker", "podman", "libvirt:disk")
    path = _scenario(tmp_path / "serve.toml", {"debian": "bookworm", "packages": ["busybox"]},
                     ["busybox", "httpd", "-f", "-p", str(port), "-h", "/etc"],
                     f"http:{port}/hostname", backends)
    p = subprocess.run([*BENCH, "run", str(path), "--out", str(tmp_path / "out"),
                        "--warmups", "0", "--min-samples", "1", "--max-samples", "1"],
                       capture_output=True, text=True, timeout=900, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(next(f for f in (tmp_path / "out").glob("serve-*.json")
                             if not f.name.endswith(".pyperf.json")).read_text())
    assert result["image"]["digest"] == debian.digest
    assert result["image"]["source"] == {"kind": "debian", "debian": "bookworm",
                                         "packages": ["busybox"],
                                         "mirror": "http://deb.debian.org/debian"}
    serving = {s["backend"]: s["value"] for s in result["samples"]
               if s["metric"] == "startup.to_serving"}
    assert set(serving) == set(backends) and all(v > 0 for v in serving.values())
    if "host" in backends:
        assert "chroot" in result["backends"]["host"]["prepared"]["mode"]
    # the runs only read the cached image (rootfs/: host's and ns's overlay lower layer,
    # libvirt's mkfs source; image.tar: the engines' import): its seal still holds
    entry = debian.tar.parent
    assert (entry / image.SEAL).read_text().strip() == image._fingerprint(entry)


def test_http_readiness_agrees_with_a_curl_loop(tmp_path: Path) -> None:
    """The probe's first answer and a host-side `curl` retry loop's, on the same
    instance, agree within one polling interval (plus curl's own attempt)."""
    from harness.sampling import Context, PlainPlacement
    from harness.studies import _lifecycle as life

    rt = backend_or_skip("docker")
    require("curl", None if shutil.which("curl") else "curl is not installed")
    interval = 0.1
    img = image.build(image.Recipe())
    where = PlainPlacement(rt, rt.prepare(img), "docker")  # type: ignore[attr-defined]
    ctx = Context(f"{random.randrange(16**10):010x}", 60)
    ctx.probe_interval = interval
    spec = InstanceSpec(run_id=ctx.run_id, name=f"cvbench-{ctx.run_id}-1", network="bridge",
                        argv=("sh", "-c", "sleep 1.5; exec httpd -f -p 8080 -h /etc"),
                        readiness="http:8080/hostname")
    inst = rt.create(spec, where.prepared)  # type: ignore[attr-defined]
    ctx.track(where, inst)
    try:
        rt.start(inst)  # type: ignore[attr-defined]
        rt.wait_ready(inst, 30)  # type: ignore[attr-defined]
        addr = rt.address(inst)  # type: ignore[attr-defined]
        curl: dict[str, float] = {}

        def loop() -> None:
            url = f"http://{addr}:8080/hostname"
            while True:
                began = time.monotonic()
                ok = subprocess.run(["curl", "-sf", "-o", "/dev/null", "--max-time", "1", url],
                                    check=False).returncode == 0
                if ok:
                    curl.update(t=time.monotonic(), cost=time.monotonic() - began)
                    return
                time.sleep(max(0.0, began + interval - time.monotonic()))

        t = threading.Thread(target=loop)
        t.start()
        served = life.serve(ctx, where, inst, time.monotonic() + 30)
        t.join(30)
        assert served is not None and curl
        gap = abs(served / 1e9 - curl["t"])
        print(f"http probe vs curl loop: {gap * 1e3:.1f} ms apart (interval "
              f"{interval * 1e3:.0f} ms; curl's answering attempt {curl['cost'] * 1e3:.1f} ms)")
        assert gap <= interval + curl["cost"], (gap, curl)
    finally:
        ctx.cleanup()


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=600,
                          check=False)


def test_bad_sources_exit_2_with_one_line(tmp_path: Path, debian: image.Image) -> None:
    """Unknown engine ref, unknown Debian package, hostile and truncated archives: one line
    naming the source and the entry, exit 2, nothing left in the cache's temp dir."""
    backend_or_skip("docker")
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as t:
        info = tarfile.TarInfo("dev/sda")
        info.type = tarfile.BLKTYPE
        t.addfile(info)
    layer = evil.getvalue()
    lid = hashlib.sha256(layer).hexdigest()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as t:
        for name, data in (("manifest.json", json.dumps([{"Config": "c.json",
                                                          "Layers": ["l/layer.tar"]}]).encode()),
                           ("c.json", json.dumps({"rootfs": {"diff_ids": [f"sha256:{lid}"]}})
                            .encode()), ("l/layer.tar", layer)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (tmp_path / "evil.tar").write_bytes(archive.getvalue())
    (tmp_path / "cut.tar").write_bytes(archive.getvalue()[:700])
    cases = [
        (["--engine", "docker", "--ref", "cvbench-test/no-such-image:0"],
         "docker image cvbench-test/no-such-image:0"),
        (["--debian", "bookworm", "--package", "no-such-package-cvbench"],
         "no-such-package-cvbench"),
        (["--archive", str(tmp_path / "evil.tar")], "dev/sda: is a device node"),
        (["--archive", str(tmp_path / "cut.tar")], "cut.tar"),
    ]
    tmp_dir = image.cache_dir() / ".tmp"
    before = set(tmp_dir.iterdir()) if tmp_dir.exists() else set()
    for args, fragment in cases:
        p = _bench("image", *args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (args, p.stderr)
        assert lines[0].startswith("bench: error: ") and fragment in lines[0], lines[0]
    after = set(tmp_dir.iterdir()) if tmp_dir.exists() else set()
    assert after <= before  # every failed build removed its temp dir


@pytest.mark.parametrize("backend", ["host", "ns", "docker", "podman", "libvirt:disk"])
def test_user_and_workdir_of_a_real_image(debian: image.Image, backend: str) -> None:
    """The image's user www-data, resolved to uid:gid once, and a workdir the image lacks
    (made as root before the switch): the same on every backend that can switch user."""
    from harness import session

    backend_or_skip(backend)
    user = image.resolve_user(debian.rootfs, "www-data")
    run = dict(timeout=120, user=user, workdir="/var/www/new")
    ex, problems = session.exec_once(backend, ["sh", "-c", "id -u; id -g; pwd"], debian,
                                     **run)  # type: ignore[arg-type]
    assert not problems and ex.code == 0, ex.stderr
    assert ex.stdout.decode().split() == ["33", "33", "/var/www/new"]
