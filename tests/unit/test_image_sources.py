"""Image archives flattened with the OCI whiteout rules, hostile archives refused, the
deterministic tar keeping owners/modes/mtimes, export -> import keeping the digests.

Archives are made here, in Python (layer tars with whiteouts, device nodes, links that
leave the root): no engine needed. tests/integration/test_images.py checks the
flattening against `docker export` of the same image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from harness.core import debian, image, tree
from harness.core.errors import BadImage, UsageError

Entry = tuple[str, str, dict[str, Any]]  # (name, kind, options)


def layer(*entries: Entry) -> bytes:
    """A layer tar: kind "d" dir, "f" file (data), "l" symlink / "h" hard link (target),
    "c" char device, "p" FIFO; options mode, uid, gid, mtime."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, o in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid = o.get("mode", 0o755), o.get("uid", 0), o.get("gid", 0)
            info.mtime = o.get("mtime", 1_600_000_000)
            data = o.get("data", b"")
            info.type = {"d": tarfile.DIRTYPE, "f": tarfile.REGTYPE, "l": tarfile.SYMTYPE,
                         "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE, "p": tarfile.FIFOTYPE}[kind]
            info.linkname = o.get("target", "")
            if kind == "f":
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return buf.getvalue()


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def docker_save(layers: list[bytes], config: dict[str, Any] | None = None,
                tags: tuple[str, ...] = ("example/app:1",)) -> bytes:
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config or {},
                      "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}})
    files = {"manifest.json": json.dumps([{
        "Config": "config.json", "RepoTags": list(tags),
        "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}]).encode(),
        "config.json": cfg.encode(), **{f"{i}/layer.tar": x for i, x in enumerate(layers)}}
    return _tar(files)


GZ_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def oci_layout(layers: list[bytes], config: dict[str, Any] | None = None) -> bytes:
    """An OCI image layout as a tar, its layers gzip-compressed."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        blobs[f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"] = data
        return sha(data)

    gz = [gzip.compress(x, mtime=0) for x in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config or {},
                      "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}})
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": blob(cfg.encode())},
                           "layers": [{"digest": blob(g), "mediaType": GZ_LAYER}
                                      for g in gz]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": blob(manifest)}]})
    return _tar({"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
                 "index.json": index.encode(), **blobs})


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SH: Entry = ("bin/sh", "f", {"data": b"#!shell\n"})
BASE = layer(("bin", "d", {}), SH,
             ("a", "d", {}), ("a/x", "f", {"data": b"x1"}),
             ("a/y", "f", {"data": b"y", "mode": 0o640, "uid": 33, "gid": 33}),
             ("b", "d", {"mode": 0o700}), ("b/1", "f", {"data": b"1"}),
             ("b/2", "f", {"data": b"2"}),
             ("c", "f", {"data": b"c"}), ("s", "l", {"target": "a/x"}),
             ("h", "h", {"target": "a/x"}),
             ("suid", "f", {"data": b"s", "mode": 0o4755, "mtime": 1_234_567_890}))
# deletes c, makes b opaque (its own b/3 stays; b itself, not in this layer, keeps its
# mode), replaces a/x (the hard link h keeps x1)
UPPER = layer(("b/3", "f", {"data": b"3"}), ("b/.wh..wh..opq", "f", {}), (".wh.c", "f", {}),
              ("a/x", "f", {"data": b"x2"}))
TOP = layer(("a/.wh.y", "f", {}))


def contents(t: tree.Tree) -> dict[str, tuple[str, int, int, int, bytes | str]]:
    out: dict[str, tuple[str, int, int, int, bytes | str]] = {}
    for path, n in t.walk():
        body: bytes | str = n.target if n.kind == "symlink" else b""
        if n.kind == "file":
            with n.open() as f:
                body = f.read(n.size)
        out[path] = (n.kind, n.mode, n.uid, n.gid, body)
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_layers_flatten_with_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    from harness.core import archive

    t, _config, ident = archive.read(write(tmp_path, "a.tar", docker_save([BASE, UPPER, TOP])),
                                    "archive a.tar", tmp_path / "blobs")
    got = contents(t)
    assert sorted(got) == ["a", "a/x", "b", "b/3", "bin", "bin/sh", "h", "s", "suid"]
    assert got["a/x"][4] == b"x2" and got["h"][4] == b"x1"  # the link kept the lower file
    assert got["b"][1] == 0o700 and got["suid"][1] == 0o4755
    assert got["s"] == ("symlink", 0o755, 0, 0, "a/x")
    assert ident["format"] == "docker-save" and ident["tags"] == ["example/app:1"]
    assert ident["layers"] == 3 and ident["archive"].startswith("sha256:")


def test_docker_save_and_oci_layout_give_the_same_image(tmp_path: Path, cache: Path) -> None:
    cfg = {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1", "PATH=/bin"],
           "WorkingDir": "/a", "User": "33:33", "ExposedPorts": {"80/tcp": {}}}
    a = image.build(image.Archive(str(write(tmp_path, "d.tar", docker_save([BASE, UPPER], cfg)))),
                    cache)
    b = image.build(image.Archive(str(write(tmp_path, "o.tar", oci_layout([BASE, UPPER], cfg)))),
                    cache)
    assert a.digest == b.digest and a.rootfs_digest == b.rootfs_digest
    assert a.build_seconds is not None and b.build_seconds is not None  # b found a's digest
    assert a.config.entrypoint == ("/bin/app",) and a.config.cmd == ("--serve",)
    assert dict(a.config.env) == {"A": "1", "PATH": "/bin"} and a.config.user == "33:33"
    assert a.config.workdir == "/a" and a.config.exposed_ports == ("80/tcp",)
    # a second call builds nothing
    again = image.build(image.Archive(str(tmp_path / "d.tar")), cache)
    assert again.digest == a.digest and again.build_seconds is None
    # what runs = the image + the init layer; the image as given is recorded apart
    with tarfile.open(a.tar) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert a.init_paths == ("bench", "bench/init") and "bench/init" in members
    assert members["a/y"].uid == 33
    assert members["suid"].mode == 0o4755 and members["suid"].mtime == 1_234_567_890
    assert members["h"].isreg() and not members["h"].islnk()  # its link partner was replaced
    assert (a.rootfs / "bench/init").read_text() == image.INIT_SCRIPT
    names = [m for m in members]
    assert names == sorted(names)


def test_real_owners_and_modes_survive(tmp_path: Path, cache: Path) -> None:
    img = image.build(image.Archive(str(write(tmp_path, "d.tar", docker_save([BASE])))), cache)
    with tarfile.open(img.tar) as tf:
        y = tf.getmember("a/y")
        b = tf.getmember("b")
        h = tf.getmember("h")
    assert (y.uid, y.gid, y.mode, y.mtime) == (33, 33, 0o640, 1_600_000_000)
    assert b.mode == 0o700 and y.uname == "" and y.gname == ""
    assert h.islnk() and h.linkname == "a/x"  # hard links stay links (first path: the data)


def test_export_then_import_keeps_the_digests(tmp_path: Path, cache: Path) -> None:
    img = image.build(image.Archive(str(write(tmp_path, "d.tar", docker_save([BASE, UPPER])))),
                      cache)
    out = tmp_path / "exported.tar"
    first = image.export(img, out)
    assert image.export(img, tmp_path / "again.tar") == first  # the archive is deterministic
    other = tmp_path / "other-host-cache"
    back = image.build(image.Archive(str(out)), other)
    assert (back.digest, back.rootfs_digest, back.init_digest) == \
        (img.digest, img.rootfs_digest, img.init_digest)
    assert back.identity["exported_from"]["source"]["archive"] == str(tmp_path / "d.tar")
    assert back.name == img.name


@pytest.mark.parametrize(("entries", "names"), [
    ([("/etc/evil", "f", {})], ["/etc/evil", "absolute path"]),
    ([("../evil", "f", {})], ["../evil", "'..'"]),
    ([("a", "d", {}), ("a/up", "l", {"target": "../../etc/shadow"})], ["a/up", "leaves the root"]),
    ([("x", "h", {"target": "../../etc/passwd"})], ["x", "hard link"]),
    ([("x", "h", {"target": "bin/nothing"})], ["x", "not a file of the image"]),
    ([("d", "l", {"target": "/tmp"}), ("d/cvbench-escape-probe", "f", {"data": b"!"})],
     ["d/cvbench-escape-probe", "not a directory"]),
    ([("dev/sda", "c", {})], ["dev/sda", "device node"]),
    ([("fifo", "p", {})], ["fifo", "FIFO"]),
])
def test_hostile_entries_are_refused_naming_source_and_entry(
        tmp_path: Path, cache: Path, entries: list[Entry], names: list[str]) -> None:
    path = write(tmp_path, "evil.tar", docker_save([layer(("bin", "d", {}), SH, *entries)]))
    with pytest.raises(BadImage) as exc:
        image.build(image.Archive(str(path)), cache)
    message = str(exc.value)
    assert message.startswith(f"archive {path}: layer 1") and "\n" not in message
    for n in names:
        assert n in message
    _nothing_written(cache)
    assert not Path("/tmp/cvbench-escape-probe").exists()


def _nothing_written(cache: Path) -> None:
    """The cache holds no image, and its temp dir nothing, after a refused build."""
    assert not image.listing(cache)
    assert not any((cache / ".tmp").iterdir()) if (cache / ".tmp").exists() else True


def test_truncated_corrupt_and_missing_archives(tmp_path: Path, cache: Path) -> None:
    good = docker_save([BASE, UPPER])
    cases = {
        "truncated.tar": good[:len(good) // 2],
        "garbage.tar": b"not a tar at all" * 100,
        # one byte of a file's content changed: the layer no longer matches its diff_id
        "corrupt.tar": good.replace(b"x1", b"x9", 1),
        "no-manifest.tar": _tar({"hello": b"x"}),
    }
    why = {"truncated.tar": "truncated", "garbage.tar": "not a readable tar",
           "corrupt.tar": "does not match its diff_id", "no-manifest.tar": "neither"}
    for name, data in cases.items():
        path = write(tmp_path, name, data)
        with pytest.raises(BadImage) as exc:
            image.build(image.Archive(str(path)), cache)
        assert str(exc.value).startswith(f"archive {path}:"), str(exc.value)
        assert why[name] in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(BadImage, match="no such file"):
        image.build(image.Archive(str(tmp_path / "absent.tar")), cache)
    _nothing_written(cache)


def test_an_image_needs_a_shell_and_no_init_of_its_own(tmp_path: Path, cache: Path) -> None:
    no_sh = write(tmp_path, "nosh.tar", docker_save([layer(("etc", "d", {}))]))
    with pytest.raises(BadImage, match="no /bin/sh"):
        image.build(image.Archive(str(no_sh)), cache)
    own = write(tmp_path, "own.tar", docker_save([layer(
        ("bin", "d", {}), SH, ("bench", "d", {}), ("bench/init", "f", {"data": b"x"}))]))
    with pytest.raises(BadImage, match="its own /bench/init"):
        image.build(image.Archive(str(own)), cache)
    # /bin/sh through merged-usr symlinks is found
    merged = write(tmp_path, "merged.tar", docker_save([layer(
        ("usr", "d", {}), ("usr/bin", "d", {}), ("usr/bin/dash", "f", {"data": b"d"}),
        ("usr/bin/sh", "l", {"target": "dash"}), ("bin", "l", {"target": "usr/bin"}))]))
    assert image.build(image.Archive(str(merged)), cache).init_paths == ("bench", "bench/init")


def test_zstd_layers_are_refused_with_the_reason(tmp_path: Path, cache: Path) -> None:
    zstd = b"\x28\xb5\x2f\xfd" + b"\0" * 64
    files = {"manifest.json": json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode(),
             "c.json": json.dumps({"rootfs": {"diff_ids": [sha(zstd)]}}).encode(), "l.tar": zstd}
    with pytest.raises(BadImage, match="zstd"):
        image.build(image.Archive(str(write(tmp_path, "z.tar", _tar(files)))), cache)


def test_resolve_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                         "www-data:x:33:33::/var/www:/usr/sbin/nologin\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nwww-data:x:33:\nadm:x:4:\n")
    assert image.resolve_user(tmp_path, "www-data") == "33:33"
    assert image.resolve_user(tmp_path, "www-data:adm") == "33:4"
    assert image.resolve_user(tmp_path, "33") == "33:33"
    assert image.resolve_user(tmp_path, "1000") == "1000:0"  # no entry: gid 0, as Docker
    assert image.resolve_user(tmp_path, "1000:5") == "1000:5"
    with pytest.raises(UsageError, match="no user 'nobody'"):
        image.resolve_user(tmp_path, "nobody")
    with pytest.raises(UsageError, match="no group 'wheel'"):
        image.resolve_user(tmp_path, "root:wheel")


def test_list_rm_and_prune(tmp_path: Path, cache: Path) -> None:
    img = image.build(image.Archive(str(write(tmp_path, "d.tar", docker_save([BASE])))), cache)
    assert [p.name for p in image.listing(cache)] == [img.digest]
    assert image.load(img.digest[:10], cache).digest == img.digest
    assert image.remove(img.digest[:12], cache).digest == img.digest
    assert image.listing(cache) == []
    with pytest.raises(UsageError, match="no such image"):
        image.load(img.digest, cache)
    (cache / ".tmp" / "dead").mkdir(parents=True)
    gone = image.prune(cache, age=-1)
    assert "temp dir dead" in gone
    # the removed image's source key went with it: building again builds
    again = image.build(image.Archive(str(tmp_path / "d.tar")), cache)
    assert again.build_seconds is not None


def test_workload_takes_the_image_defaults(tmp_path: Path, cache: Path) -> None:
    from harness import scenario

    cfg = {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1", "B=2"],
           "WorkingDir": "/a", "User": "33"}
    passwd = layer(("bin", "d", {}), SH, ("etc", "d", {}),
                   ("etc/passwd", "f", {"data": b"root:x:0:0::/:/bin/sh\nw:x:33:34::/:/x\n"}))
    img = image.build(image.Archive(str(write(tmp_path, "d.tar", docker_save([passwd], cfg)))),
                      cache)

    def resolved(**workload: Any) -> Any:
        return scenario.parse({"name": "t", "workload": workload}, "t.toml").workload \
            .resolved(img)

    w = resolved()
    assert w.command == ("/bin/app", "--serve") and dict(w.env) == {"A": "1", "B": "2"}
    assert (w.workdir, w.user) == ("/a", "33:34")
    assert resolved(argv=["--check"]).command == ("/bin/app", "--check")  # replaces Cmd
    assert resolved(entrypoint=["/bin/sh"]).command == ("/bin/sh",)  # drops the image's Cmd
    w = resolved(env={"B": "x"}, workdir="/w", user="root")
    assert dict(w.env) == {"A": "1", "B": "x"} and (w.workdir, w.user) == ("/w", "0:0")
    bare = image.build(image.Archive(str(write(tmp_path, "bare.tar", docker_save([BASE])))),
                       cache)
    with pytest.raises(UsageError, match="no Entrypoint or Cmd"):
        scenario.parse({"name": "t"}, "t.toml").workload.resolved(bare)


def test_install_time_data_of_postgresql_and_ssl_cert_is_removed(tmp_path: Path) -> None:
    """What `apt-get install postgresql` leaves that differs per build (a cluster initdb
    made, the snakeoil key pair) goes; the cluster's empty directory and config stay."""
    data = tmp_path / "var/lib/postgresql/15/main"
    (data / "global").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "global/pg_control").write_bytes(b"random system identifier")
    data.chmod(0o700)
    conf = tmp_path / "etc/postgresql/15/main/postgresql.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("port = 5432\nssl = on\t\t# x\nssl_cert_file = 'x'\n")
    certs, private = tmp_path / "etc/ssl/certs", tmp_path / "etc/ssl/private"
    certs.mkdir(parents=True)
    private.mkdir()
    (certs / "ssl-cert-snakeoil.pem").write_text("cert")
    (certs / "62742064.0").symlink_to("ssl-cert-snakeoil.pem")
    (certs / "other.0").symlink_to("ca.pem")
    (private / "ssl-cert-snakeoil.key").write_text("key")
    debian.normalise(tmp_path)
    assert data.is_dir() and not any(data.iterdir())
    assert data.stat().st_mode & 0o777 == 0o700
    assert conf.read_text() == "port = 5432\nssl = off\t\t# x\nssl_cert_file = 'x'\n"
    assert sorted(p.name for p in certs.iterdir()) == ["other.0"]
    assert not any(private.iterdir())


def test_only_a_record_that_says_recipe_is_a_recipe(tmp_path: Path, cache: Path) -> None:
    """The host backend runs a recipe image's files unchrooted: a record of an unknown
    or missing source kind must never be taken for one."""
    assert image.source_from_dict({"kind": "recipe", "name": "x"}) == image.Recipe("x")
    for odd in ({"kind": "registry", "ref": "x"}, {"name": "base"}):
        with pytest.raises(UsageError, match="unknown kind"):
            image.source_from_dict(odd)
    img = image.build(image.Archive(str(write(tmp_path, "d.tar", docker_save([BASE])))), cache)
    record = json.loads((cache / img.digest / "image.json").read_text())
    record["source"] = {"kind": "registry", "ref": "x"}
    (cache / img.digest / "image.json").write_text(json.dumps(record))
    assert image.listing(cache) == []  # a newer cvbench's record is left alone
    with pytest.raises(UsageError, match="no such image"):
        image.load(img.digest, cache)


# --- names the archive's metadata gives: confined to the archive ---------------------------

def _save_dir(root: Path, files: dict[str, bytes]) -> Path:
    """A `docker save` / OCI layout unpacked into a directory."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _save_files(layers: list[bytes], config_name: str = "config.json",
                layer_names: list[str] | None = None) -> dict[str, bytes]:
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}})
    names = layer_names or [f"{i}/layer.tar" for i in range(len(layers))]
    return {"manifest.json": json.dumps([{"Config": config_name, "Layers": names}]).encode(),
            "config.json": cfg.encode(), **{f"{i}/layer.tar": x for i, x in enumerate(layers)}}


def _refused(cache: Path, path: Path, *parts: str) -> str:
    """The build of `path` is refused with one line naming the archive and `parts`."""
    with pytest.raises(BadImage) as exc:
        image.build(image.Archive(str(path)), cache)
    message = str(exc.value)
    assert message.startswith(f"archive {path}:") and "\n" not in message, message
    for p in parts:
        assert p in message, message
    _nothing_written(cache)
    return message


# A valid layer and config outside the archive: a name that escapes would build from them.
OUTSIDE_LAYER = layer(("bin", "d", {}), SH, ("stolen", "f", {"data": b"host file"}))


@pytest.mark.parametrize(("field", "evil"), [
    ("Config", "/etc/passwd"), ("Config", "../outside/config.json"),
    ("Layers", "/etc/passwd"), ("Layers", "../../x"), ("Layers", "../outside/layer.tar"),
])
@pytest.mark.parametrize("form", ["dir", "tar"])
def test_docker_save_names_leaving_the_archive_are_refused(
        tmp_path: Path, cache: Path, field: str, evil: str, form: str) -> None:
    outside = _save_dir(tmp_path / "outside", _save_files([OUTSIDE_LAYER]))
    (outside / "layer.tar").write_bytes(OUTSIDE_LAYER)
    files = _save_files([OUTSIDE_LAYER], **({"config_name": evil} if field == "Config" else
                                            {"layer_names": [evil]}))
    path = _save_dir(tmp_path / "save", files) if form == "dir" else \
        write(tmp_path, "save.tar", _tar(files))
    _refused(cache, path, f"manifest.json: {field}", repr(evil), "leaves the archive")


def test_symlinks_in_an_archive_directory_are_refused(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "outside.tar").write_bytes(OUTSIDE_LAYER)
    save = _save_dir(tmp_path / "save", _save_files([OUTSIDE_LAYER]))
    (save / "0/layer.tar").unlink()
    (save / "0/layer.tar").symlink_to(tmp_path / "outside.tar")  # the file: a symlink
    _refused(cache, save, "layer 1 (0/layer.tar)", "symlink")
    (save / "0/layer.tar").unlink()
    (save / "0").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/layer.tar").write_bytes(OUTSIDE_LAYER)
    (save / "0").symlink_to(tmp_path / "elsewhere")  # a directory on the way: a symlink
    _refused(cache, save, "layer 1 (0/layer.tar)", "symlink")
    # an OCI layout whose blob is a symlink to a file outside, with the right digest
    oci = tmp_path / "oci"
    with tarfile.open(fileobj=io.BytesIO(oci_layout([OUTSIDE_LAYER]))) as tf:
        tf.extractall(oci, filter="data")
    blob = next(p for p in (oci / "blobs/sha256").iterdir()
                if p.read_bytes()[:2] == b"\x1f\x8b")
    (tmp_path / "blob").write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(tmp_path / "blob")
    _refused(cache, oci, f"blobs/sha256/{blob.name}", "symlink")


@pytest.mark.parametrize("form", ["dir", "tar"])
@pytest.mark.parametrize(("index", "parts"), [
    ({"manifests": [{"digest": "sha256:../../x"}]},
     ["index.json: manifests[0].digest", "invalid blob digest"]),
    ({"manifests": [{"digest": "sha256:" + "0" * 62 + "/x"}]}, ["invalid blob digest"]),
    ({"manifests": [{"digest": 5}]}, ["index.json: manifests[0].digest", "not a string"]),
    ({"manifests": "all"}, ["index.json: manifests", "not a list"]),
    ({"manifests": [{"digest": "x", "platform": "amd64"}]},
     ["index.json: manifests[0].platform", "not an object"]),
    ([], ["index.json", "not an object"]),
])
def test_oci_layout_defects_are_one_line_naming_the_field(
        tmp_path: Path, cache: Path, form: str, index: Any, parts: list[str]) -> None:
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps(index).encode()}
    path = _save_dir(tmp_path / "oci", files) if form == "dir" else \
        write(tmp_path, "oci.tar", _tar(files))
    _refused(cache, path, *parts)


@pytest.mark.parametrize(("manifest", "parts"), [
    ([{"Layers": []}], ["manifest.json: Config", "is not a file name"]),
    ([{"Config": 5, "Layers": []}], ["manifest.json: Config", "is not a file name"]),
    ([{"Config": "config.json", "Layers": "0/layer.tar"}], ["manifest.json: Layers", "not a list"]),
    ([{"Config": "config.json", "Layers": [["x"]]}], ["manifest.json: Layers[0]", "not a string"]),
    (["x"], ["manifest.json: [0]", "not an object"]),
])
def test_docker_save_defects_are_one_line_naming_the_field(
        tmp_path: Path, cache: Path, manifest: Any, parts: list[str]) -> None:
    files = {**_save_files([BASE]), "manifest.json": json.dumps(manifest).encode()}
    _refused(cache, write(tmp_path, "save.tar", _tar(files)), *parts)


def test_a_tar_member_leaving_the_archive_is_named(tmp_path: Path, cache: Path) -> None:
    files = {**_save_files([BASE]), "../evil": b"x"}
    _refused(cache, write(tmp_path, "save.tar", _tar(files)), "archive member", "'../evil'",
             "leaves the archive")


def test_a_bad_archive_exits_2_with_one_line(tmp_path: Path, cache: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    monkeypatch.setenv("CVBENCH_CACHE", str(cache))
    save = _save_dir(tmp_path / "save", _save_files([BASE], config_name="../../etc/passwd"))
    (tmp_path / "s.toml").write_text('name = "s"\n[workload]\nimage = { archive = "save" }\n'
                                     'argv = ["true"]\n')
    with pytest.raises(SystemExit) as e:
        main(["image", "--scenario", str(tmp_path / "s.toml")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bench: error: archive {save}: manifest.json: Config") and \
        "\n" not in err, err


# --- the size cap --------------------------------------------------------------------------

def test_a_gzip_bomb_is_refused_as_it_expands(tmp_path: Path, cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """50 MiB of zeros gzip to ~50 KiB; with a 10 MiB cap the build stops at the cap,
    naming the layer and the cap, and leaves nothing in the cache's temp dir."""
    bomb = layer(("bin", "d", {}), SH, ("zeros", "f", {"data": bytes(50 << 20)}))
    archive = write(tmp_path, "bomb.tar", oci_layout([bomb]))
    assert archive.stat().st_size < 1 << 20
    monkeypatch.setenv("CVBENCH_IMAGE_MAX_BYTES", "10M")
    message = _refused(cache, archive, "layer 1 (blobs/sha256/", "image size cap of 10.0 MiB",
                       "CVBENCH_IMAGE_MAX_BYTES")
    assert "10485760 bytes" in message
    # the cap counts all layers together
    monkeypatch.setenv("CVBENCH_IMAGE_MAX_BYTES", str(len(BASE) + len(UPPER) - 1))
    _refused(cache, write(tmp_path, "two.tar", docker_save([BASE, UPPER])), "layer 2")
    monkeypatch.setenv("CVBENCH_IMAGE_MAX_BYTES", "12 apples")
    with pytest.raises(UsageError, match="CVBENCH_IMAGE_MAX_BYTES: not a size"):
        image.build(image.Archive(str(archive)), cache)
    monkeypatch.delenv("CVBENCH_IMAGE_MAX_BYTES")  # the default: from the free space, far above
    assert image.max_bytes(tmp_path) > 50 << 20
    assert image.build(image.Archive(str(archive)), cache).size > 50 << 20
