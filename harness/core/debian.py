"""Debian root filesystems: debootstrap (minbase) plus named packages, made reproducible.

A build runs in two stages, both as root (debootstrap chroots and makes device nodes):
1. the base: `debootstrap --variant=minbase SUITE` from the mirror, cached per (the
   debootstrap command: suite, architecture, mirror; archive index): every request for
   that suite shares it;
2. the request: a copy of the base, `apt-get install --no-install-recommends PACKAGES`
   chrooted into it (in a private mount namespace, with /proc; services are kept from
   starting by a policy-rc.d that is removed afterwards), then normalised.

The archive index pins every package version: the suite's InRelease file lists the
sha256 of every package index, so (suite, packages, the InRelease's sha256) resolves to
one set of versions. A request is cached by that key and the identity of this module's
code (code_identity: the source of its functions, so a changed rule is a new key, whatever
NORMALISED says), so asking again builds nothing (one HTTP request for InRelease, ~150
KB); the versions installed (dpkg-query) are recorded in the image's identity.

debootstrap's output differs run to run in things that are not the software: logs, apt's
caches and lists, debconf and dpkg backups, ldconfig's aux-cache (it stores inode
numbers), the host's hostname and resolv.conf, the days since 1970 in /etc/shadow, the
device nodes it makes in /dev. NORMALISED describes what is removed or rewritten. Files the
build writes get the index's date as mtime (files from packages keep theirs).

Some packages make data at install time that differs on every build: PostgreSQL's
postinst runs initdb for a cluster (`/var/lib/postgresql/VERSION/main`: pg_control holds
a system identifier made from the time and the pid), ssl-cert makes a random "snakeoil"
key pair that the cluster's configuration names. The cluster's data directory is emptied
(kept, owned by postgres, mode 0700) and its configuration kept with `ssl = off`, the
key pair removed: as in the official postgres image, the server's start makes its own
cluster (initdb) in the empty directory, as the postgres user (see
harness.core.probes.pgbench.SERVER).
"""

from __future__ import annotations

import email.utils
import hashlib
import inspect
import json
import marshal
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.core import rootpath
from harness.core.errors import BadImage, ImageError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
ARCH = "amd64"
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")  # Debian policy 5.6.1
SUITE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")

# (what, why): recorded in the image's identity.
NORMALISED = (
    "var/log/*: emptied (install logs)",
    "var/lib/apt/lists/*, var/cache/apt/*: removed (apt's index copies and caches)",
    "var/cache/debconf/*-old, var/lib/dpkg/*-old: removed (backups)",
    "var/cache/ldconfig/aux-cache: removed (holds inode numbers)",
    "etc/hostname, etc/hosts, etc/resolv.conf: fixed content (debootstrap copies the host's)",
    "etc/shadow, etc/shadow-: password-change days emptied (the build date)",
    "etc/machine-id, var/lib/dbus/machine-id: removed; etc/ssh/ssh_host_*: removed",
    "dev/*, run/*, tmp/*, var/tmp/*: emptied",
    "var/lib/postgresql/*/*/*: removed (a cluster initdb made at install time; its "
    "directory is kept empty for the server's start to initdb)",
    "etc/ssl/private/ssl-cert-snakeoil.key, etc/ssl/certs/ssl-cert-snakeoil.pem and its hash "
    "link: removed (a random key pair); etc/postgresql/*/*/postgresql.conf: ssl = off",
    "mtimes later than the archive index's date: set to it",
)
FIXED_FILES = {
    "etc/hostname": "cvbench\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/resolv.conf": "",
}
Progress = Callable[[str], None]


def check_names(suite: str, packages: tuple[str, ...]) -> str | None:
    """What is wrong with a request's names, or None."""
    if not SUITE_NAME.match(suite):
        return f"{suite!r} is not a Debian suite name"
    for p in packages:
        if not PACKAGE_NAME.match(p):
            return f"{p!r} is not a Debian package name"
    return None


def fetch_index(suite: str, mirror: str, origin: str) -> tuple[str, int]:
    """The suite's archive index as (sha256 of its InRelease, its Date as a Unix time)."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise BadImage(f"{origin}: the mirror has no suite {suite!r} ({url}: 404)") from None
        raise ImageError(f"{origin}: cannot fetch {url}: {e}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ImageError(f"{origin}: cannot reach the Debian mirror ({url}): "
                         f"{getattr(e, 'reason', e)}") from None
    return hashlib.sha256(data).hexdigest(), release_date(data, origin)


def release_date(inrelease: bytes, origin: str) -> int:
    m = re.search(rb"^Date: (.+)$", inrelease, re.M)
    if m is None:
        raise ImageError(f"{origin}: the suite's InRelease has no Date")
    return int(email.utils.parsedate_to_datetime(m.group(1).decode()).timestamp())


def _run(argv: list[str], origin: str, progress: Progress, what: str,
         env: dict[str, str] | None = None) -> str:
    """Run a build step, passing its lines to `progress`; its output, or ImageError."""
    lines: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.strip():
                progress(f"{what}: {line.strip()[:100]}")
    if proc.returncode != 0:
        raise ImageError(f"{origin}: {what} failed (exit {proc.returncode}): "
                         + " | ".join(lines[-6:]))
    return "\n".join(lines)


def base(suite: str, mirror: str, index: str, cache: Path, tmp: Path, origin: str,
         progress: Progress) -> Path:
    """The cached minbase tree of (suite, mirror, index); built if missing (in `tmp`,
    moved into the cache when complete)."""
    target = tmp / "base"
    argv = ["debootstrap", "--variant=minbase", f"--arch={ARCH}", suite, str(target), mirror]
    # keyed by the command itself (its target aside): a changed option makes a new stage
    key = hashlib.sha256("\0".join([*argv[:4], mirror, index]).encode()).hexdigest()[:16]
    done = cache / f"{suite}-{ARCH}-{key}"
    if done.is_dir():
        return done
    if not shutil.which("debootstrap"):
        raise ImageError(f"{origin}: debootstrap is not installed (scripts/provision "
                         "installs it: apt-get install debootstrap)")
    progress(f"debootstrap --variant=minbase {suite} (about a minute; cached afterwards)")
    _run(argv, origin, progress, "debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(target, done)
    except OSError:  # another build cached it first
        if not done.is_dir():
            raise
    return done


def _chroot(root: Path, argv: list[str]) -> list[str]:
    """`argv` chrooted into `root` in a private mount namespace holding its /proc (gone
    with the namespace, so nothing stays mounted on the host), mounted where the root's
    own `proc` resolves inside it (rootpath), never through a symlink on the host.
    (What apt-get runs in there, maintainer scripts as root, is trusted as apt on the
    host trusts Debian's archive: a chroot does not confine root.)"""
    proc = rootpath.host_path(root, "proc", make_dir=True)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t proc proc "$1" && shift && exec chroot "$0" "$@"', str(root), str(proc),
            *argv]


def inside(root: Path, path: str) -> Path:
    """`root`/`path` with the root's symlinks resolved inside it (what is missing kept)."""
    fd = rootpath.open_root(root)
    try:
        return root / rootpath.resolve(fd, path)
    finally:
        os.close(fd)


APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def install(root: Path, packages: tuple[str, ...], origin: str, progress: Progress) -> None:
    if not packages:
        return
    policy = inside(root, "usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\n# cvbench build: no service starts while installing\n"
                      "exit 101\n")
    policy.chmod(0o755)
    try:
        _run(_chroot(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            "-o", "Dpkg::Options::=--force-unsafe-io", *packages]),
             origin, progress, "apt-get install", env=APT_ENV)
    except ImageError as e:
        m = re.search(r"E: (?:Unable to locate package|Package '?)(\S+?)'? "
                      r"(?:has no installation candidate)?", str(e)) or \
            re.search(r"E: Unable to locate package (\S+)", str(e))
        if m:
            raise BadImage(f"{origin}: package {m.group(1).strip(chr(39))!r}: not in the "
                           "Debian archive for this suite (or not installable)") from None
        raise
    finally:
        policy.unlink(missing_ok=True)


def versions(root: Path, origin: str) -> dict[str, str]:
    out = _run(_chroot(root, ["dpkg-query", "-W", "-f", "${binary:Package}\t${Version}\n"]),
               origin, lambda s: None, "dpkg-query", env=APT_ENV)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def _empty(d: Path, keep_dirs: bool = False) -> None:
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            if keep_dirs:
                _empty(p, keep_dirs)
            else:
                shutil.rmtree(p)
        elif keep_dirs and p.is_file() and not p.is_symlink():
            with open(p, "r+b") as f:
                f.truncate(0)
        else:
            p.unlink()


def normalise(root: Path) -> None:
    """Remove or rewrite what differs from build to build but is not the software."""
    # Every path resolved inside the root first: a package's absolute symlink (Debian's
    # own /var/run -> /run) must not lead these removals onto the host.
    _empty(inside(root, "var/log"), keep_dirs=True)
    _empty(inside(root, "var/lib/apt/lists"))
    for p in inside(root, "var/cache/apt").glob("*.bin"):
        p.unlink()
    _empty(inside(root, "var/cache/apt/archives"))
    for pattern in ("var/cache/debconf/*-old", "var/lib/dpkg/*-old",
                    "var/cache/ldconfig/aux-cache", "etc/ssh/ssh_host_*",
                    "var/lib/dbus/machine-id", "etc/machine-id"):
        parent, _, name = pattern.rpartition("/")
        for p in inside(root, parent).glob(name):
            p.unlink()
    for name, text in FIXED_FILES.items():
        p = inside(root, name)
        p.unlink(missing_ok=True)
        p.write_text(text)
        p.chmod(0o644)
    for name in ("etc/shadow", "etc/shadow-"):
        p = inside(root, name)
        if p.is_file():
            lines = [re.sub(r"^([^:]*:[^:]*:)\d*:", r"\1:", ln)
                     for ln in p.read_text().splitlines()]
            mode = p.stat().st_mode
            p.write_text("\n".join(lines) + "\n")
            p.chmod(mode & 0o7777)
    for d in ("dev", "run", "tmp", "var/tmp"):
        _empty(inside(root, d))
    _install_time_data(root)


def _install_time_data(root: Path) -> None:
    """Remove the random data packages make at install time (see the module's doc)."""
    for data in inside(root, "var/lib/postgresql").glob("*/*"):
        if (data / "PG_VERSION").is_file():
            _empty(data)
    snakeoil = inside(root, "etc/ssl/certs") / "ssl-cert-snakeoil.pem"
    for link in snakeoil.parent.glob("*.0"):
        if link.is_symlink() and os.readlink(link) == snakeoil.name:
            link.unlink()
    snakeoil.unlink(missing_ok=True)
    (inside(root, "etc/ssl/private") / "ssl-cert-snakeoil.key").unlink(missing_ok=True)
    for conf in inside(root, "etc/postgresql").glob("*/*/postgresql.conf"):
        text = conf.read_text()
        off = re.sub(r"^ssl = on\b", "ssl = off", text, flags=re.M)
        if off != text:
            conf.write_text(off)  # the same inode: owner and mode kept


def build(suite: str, packages: tuple[str, ...], mirror: str, index: tuple[str, int],
          cache: Path, tmp: Path, origin: str, progress: Progress) -> tuple[Path, dict[str, Any]]:
    """Build the request in `tmp`: the root directory and the identity to record."""
    if os.geteuid() != 0:
        raise ImageError(f"{origin}: building a Debian image needs root (debootstrap)")
    base_dir = base(suite, mirror, index[0], cache, tmp, origin, progress)
    root = tmp / "root"
    progress(f"copying the {suite} base")
    _run(["cp", "-a", "--reflink=auto", str(base_dir), str(root)], origin, progress, "cp")
    if packages:
        progress(f"apt-get install {' '.join(packages)}")
    install(root, packages, origin, progress)
    installed = versions(root, origin)
    normalise(root)
    return root, {"suite": suite, "mirror": mirror, "architecture": ARCH,
                  "index": f"sha256:{index[0]}",
                  "index_date": datetime.fromtimestamp(index[1], UTC).isoformat(),
                  "requested": list(packages), "packages": installed,
                  "recommends": False, "normalised": list(NORMALISED),
                  "code": f"sha256:{code_identity()}"}


def code_identity() -> str:
    """The identity of the code that makes a request's tree: the source of every
    function in this module and its constants (NORMALISED, the rules' description, left
    out), hashed. A request's cache key holds it, so a build made before the code
    changed is not reused; a function replaced at run time counts with its own source."""
    h = hashlib.sha256()
    for name, value in sorted(vars(sys.modules[__name__]).items()):
        if inspect.isfunction(value):
            try:
                text = inspect.getsource(value)
            except (OSError, TypeError):  # no source file: its compiled code
                text = marshal.dumps(value.__code__).hex()
        elif name.isupper() and name != "NORMALISED" and isinstance(value, str | tuple | dict):
            text = json.dumps(value, sort_keys=True)
        else:
            continue
        h.update(f"{name}\0{text}\0".encode())
    return h.hexdigest()
