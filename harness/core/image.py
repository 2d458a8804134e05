"""The workload image: recipe -> deterministic rootfs tar -> sha256 digest.

One recipe builds one rootfs: busybox-static (or, where it is not installed, the host's
own shell and tools) + the recipe's extra host binaries with the shared libraries the
dynamic loader resolves for them + /bench/init. The tar is deterministic (sorted names,
mtime 0, uid/gid 0, fixed modes), so its sha256 is the image's identity: every backend
runs that digest, and every result records it.

Built images are cached by digest under ~/.cache/cvbench/images/<digest>/ as
`image.tar` and an unpacked `rootfs/` (the read-only lower layer `ns` shares between
instances, and what `mkfs.ext4 -d` turns into a VM disk).
"""

from __future__ import annotations

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.core.errors import ImageError

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# Tools the image needs when busybox-static is not installed (copied from the host).
FALLBACK_TOOLS = ("sh", "true", "false", "sleep", "cat", "echo", "ls", "id", "hostname",
                  "head", "dd", "sync", "mkdir", "rm", "env", "uname", "mount", "umount")
LOADERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# /bench/init: announce readiness first thing, then become the workload (exec keeps the
# process tree identical across backends: the workload is the instance's main process).
# In a VM guest (CVBENCH_VM set on the kernel command line, see runtimes/libvirt.py) the
# script is the guest's PID 1 and cannot exec away: it sets up what a container engine
# would (mounts, drivers, argv and env, which arrive base64-wrapped on the command line),
# runs the workload as a child, reports its exit status and the guest's OOM kills on the
# console as `CVBENCH-EXIT <code> <oom kills>`, and powers the guest off. With CVBENCH_ROOT
# (a disk device, libvirt:disk) the initramfs copy only loads the drivers, mounts that
# disk (the same image as an ext4 filesystem) and switches root to it; the disk's own
# /bench/init then runs as PID 1 and announces readiness, so the ready line still marks
# the workload's init starting from the root it runs on.
INIT_SCRIPT = """\
#!/bin/sh
# cvbench workload init. The ready line comes first; the host timestamps its arrival.
case "$CVBENCH_ROOT" in /dev/*) ;; *) echo "CVBENCH-READY ${CVBENCH_NONCE:-none}" ;; esac
[ -n "$CVBENCH_VM" ] || exec "$@"
vm_decode() { v=$(echo "$1" | base64 -d); v=${v#x}; v=${v%x}; }
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
[ "$CVBENCH_ROOT" = switched ] || for m in $(echo "$CVBENCH_MODULES" | tr , ' '); do
  insmod "/lib/modules/cvbench/$m.ko" 2>/dev/null
done
case "$CVBENCH_ROOT" in /dev/*)
  mkdir -p /.root && mount -t ext4 "$CVBENCH_ROOT" /.root || {
    echo "cvbench: cannot mount the root disk $CVBENCH_ROOT" >&2; poweroff -f; }
  umount /proc /sys /dev
  : > /init  # busybox's switch_root checks that it leaves an initramfs by this file
  CVBENCH_ROOT=switched exec switch_root /.root /bench/init ;;
esac
ip link set lo up 2>/dev/null
for w in $(echo "$CVBENCH_MOUNTS" | tr , ' '); do
  vm_decode "$w"; echo "$v" | { read -r fs src opts dst; mkdir -p "$dst"
    mount -t "$fs" -o "$opts" "$src" "$dst" || echo "cvbench: cannot mount $dst" >&2; }
done
for w in $(echo "$CVBENCH_ENV" | tr , ' '); do vm_decode "$w"; export "$v"; done
if [ -n "$CVBENCH_NET" ]; then
  cat >/tmp/.cvbench-dhcp <<'EOF'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
[ -z "$router" ] || ip route add default via "${router%% *}"
EOF
  chmod 755 /tmp/.cvbench-dhcp; ip link set "$CVBENCH_NET" up
  udhcpc -q -n -t 5 -i "$CVBENCH_NET" -s /tmp/.cvbench-dhcp >/dev/null 2>&1 ||
    echo "cvbench: no DHCP lease on $CVBENCH_NET" >&2
fi
set --
for w in $(echo "$CVBENCH_ARGV" | tr , ' '); do vm_decode "$w"; set -- "$@" "$v"; done
unset v w m CVBENCH_VM CVBENCH_MODULES CVBENCH_MOUNTS CVBENCH_ENV CVBENCH_ARGV CVBENCH_NET \\
  CVBENCH_ROOT
hostname "${CVBENCH_HOSTNAME:-cvbench}"
cd "${CVBENCH_WORKDIR:-/}" && "$@"
code=$?
sync
echo "CVBENCH-EXIT $code $(sed -n 's/^oom_kill //p' /proc/vmstat)"
poweroff -f
"""

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/hostname": "cvbench\n",
    "etc/resolv.conf": "",
}
DIRS = {"bench": 0o755, "bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555,
        "root": 0o700, "run": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755,
        "usr/bin": 0o755, "sbin": 0o755, "mnt": 0o755, "data": 0o755, "var": 0o755,
        "var/tmp": 0o1777}


@dataclass(frozen=True)
class Recipe:
    """What goes into an image: a name (for tags) and extra host binaries."""

    name: str = "base"
    binaries: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "binaries": list(self.binaries)}


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class Image:
    """A built image. `digest` is the hex sha256 of `tar`."""

    recipe: Recipe
    digest: str
    tar: Path
    rootfs: Path
    size: int
    contents: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def tag(self) -> str:
        """The name engines store it under: cvbench/<recipe>:<digest[:12]>."""
        return f"cvbench/{self.recipe.name}:{self.digest[:12]}"

    def as_dict(self) -> dict[str, object]:
        return {"digest": self.digest, "recipe": self.recipe.as_dict(), "size": self.size,
                "tag": self.tag, "contents": self.contents}


def cache_dir() -> Path:
    base = os.environ.get("CVBENCH_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get("CVBENCH_CACHE") else root / "cvbench") / "images"


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


def _add_tree(entries: dict[str, Entry], path: str, kind: str, mode: int, data: bytes = b"",
              target: str = "") -> None:
    rel = str(PurePosixPath(path.lstrip("/")))
    parts = PurePosixPath(rel).parts
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent not in entries:
            entries[parent] = Entry(parent, "dir", DIRS.get(parent, 0o755))
    entries[rel] = Entry(rel, kind, mode, data, target)


def _busybox() -> str | None:
    for cand in BUSYBOX_CANDIDATES:
        if os.path.exists(cand) and not shared_libraries(os.path.realpath(cand)):
            return cand
    return None


def collect(recipe: Recipe) -> tuple[list[Entry], dict[str, str]]:
    """The image's entries (sorted) and a summary of where its binaries came from."""
    entries: dict[str, Entry] = {}
    contents: dict[str, str] = {}
    for d, mode in DIRS.items():
        _add_tree(entries, d, "dir", mode)
    for name, text in ETC_FILES.items():
        _add_tree(entries, name, "file", 0o644, text.encode())
    _add_tree(entries, "bench/init", "file", 0o755, INIT_SCRIPT.encode())

    # (host path, path in the image): recipe binaries go to /usr/bin, fallback tools to /bin.
    extra = [(which(b), f"usr/bin/{Path(b).name}") for b in recipe.binaries]
    busybox = _busybox()
    if busybox:
        real = os.path.realpath(busybox)
        _add_tree(entries, "bin/busybox", "file", 0o755, _read(real))
        contents["busybox"] = real
        listing = subprocess.run([real, "--list"], capture_output=True, text=True, check=True)
        for applet in sorted(set(listing.stdout.split())):
            if applet != "busybox" and "/" not in applet:
                _add_tree(entries, f"bin/{applet}", "symlink", 0o777, target="busybox")
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
        _add_tree(entries, dest, "file", 0o755, _read(real))
        contents[Path(dest).name] = real
        for lib in shared_libraries(real):
            _add_tree(entries, lib, "file", 0o755, _read(os.path.realpath(lib)))
    return [entries[k] for k in sorted(entries)], contents


def write_tar(entries: Iterable[Entry]) -> bytes:
    """A deterministic tar: the same entries always give the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def _materialize(entries: Sequence[Entry], root: Path) -> None:
    root.mkdir(mode=0o755)
    for e in entries:
        p = root / e.path
        if e.kind == "dir":
            p.mkdir(exist_ok=True)
        elif e.kind == "symlink":
            p.symlink_to(e.target)
            continue
        else:
            p.write_bytes(e.data)
        os.chmod(p, e.mode)
        if os.geteuid() == 0:
            os.lchown(p, 0, 0)


def build(recipe: Recipe, cache: Path | None = None) -> Image:
    """Build (or reuse from the cache) the image of `recipe`."""
    entries, contents = collect(recipe)
    data = write_tar(entries)
    digest = hashlib.sha256(data).hexdigest()
    root = (cache or cache_dir()) / digest
    if not (root / "image.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root.parent))
        try:
            (tmp / "image.tar").write_bytes(data)
            _materialize(entries, tmp / "rootfs")
            (tmp / "image.json").write_text(json.dumps(
                {"digest": digest, "recipe": recipe.as_dict(), "contents": contents}, indent=1))
            try:
                os.rename(tmp, root)
            except OSError:  # another process cached the same digest first
                if not (root / "image.json").exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Image(recipe=recipe, digest=digest, tar=root / "image.tar", rootfs=root / "rootfs",
                 size=len(data), contents=contents)


def verify(image: Image) -> None:
    """Check the cached tar still hashes to the digest (catches a tampered cache)."""
    h = hashlib.sha256()
    with open(image.tar, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != image.digest:
        raise ImageError(f"cached image {image.tar} does not match its digest; delete "
                         f"{image.tar.parent} and run again")

