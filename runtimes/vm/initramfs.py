"""The guest's initramfs: cvbench's VM init (the guest's PID 1) and, unless the root is a
disk, the image's rootfs under /root.

Written as one uncompressed newc cpio: the kernel unpacks it into its rootfs before
running init, and an uncompressed archive costs the guest no decompression (under TCG
every instruction of a decompressor is emulated). The image's rootfs is taken from the
image's tar itself, entry by entry with its owners, modes and mtimes, so the guest runs
the same bytes (same digest) as every container backend.

What the VM layer holds, apart from the image (which it never changes):
  init                          VM_INIT, run by the kernel as PID 1 (rdinit=/init)
  bin/busybox, bin/<applet>     the host's busybox-static (VM_INIT's tools, linked by
                                applet name), bin/cvbench-dhcp, the udhcpc script
                                that configures the lease, and bin/cvbench-reseed
                                (RESEED: a restored clone's new randomness)
  dev/console                   the kernel opens it for init's stdin/stdout/stderr
  lib/modules/cvbench/<m>.ko    the modules, flat, loaded by name
  root/                         the image (libvirt, libvirt:microvm), or the mount point
                                of its root disk (libvirt:disk)
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from harness.core.errors import BackendUnavailable

MODULE_DIR = "lib/modules/cvbench"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# The guest's PID 1. It does around the workload what a container engine does around a
# container, inside the guest: load the drivers, mount the root disk (CVBENCH_ROOT) and
# Docker's set of filesystems inside the image's root (/proc, /sys, /dev with pts and
# shm; nothing over a directory of the image), the volumes and tmpfs mounts, take a DHCP
# lease, then run the workload chrooted into the image through the image's own
# /bench/init (which prints the ready line and execs it) as its child; then it reports
# the exit status and the guest's OOM kills on the console as
# `CVBENCH-EXIT <code> <oom kills>` and powers the guest off. argv, env and mounts arrive
# base64-wrapped on the kernel command line (see runtimes/libvirt.py).
VM_INIT = """\
#!/bin/busybox sh
export PATH=/bin
vm_decode() { v=$(echo "$1" | base64 -d); v=${v#x}; v=${v%x}; }
# inroot PATH: /root + PATH with the image's symlinks resolved inside /root, as the
# workload will see them (an absolute link starts again at the image's root, ".." stops
# there), so that no mount or mkdir made here for the image lands in this initramfs.
inroot() {
  todo=$1 got= hops=0
  while [ -n "$todo" ]; do
    c=${todo%%/*}
    if [ "$c" = "$todo" ]; then todo=; else todo=${todo#*/}; fi
    case $c in ''|.) continue ;; ..) got=${got%/*}; continue ;; esac
    if [ -L "/root$got/$c" ]; then
      hops=$((hops + 1)); [ $hops -le 40 ] || { echo "/root/.cvbench-loop"; return; }
      t=$(readlink "/root$got/$c")
      case $t in /*) got= ;; esac
      todo=$t/$todo
    else
      got=$got/$c
    fi
  done
  echo "/root$got"
}
# The guest agent: `docker exec` for a VM. One request a line on the virtio-serial port
# org.cvbench.agent: "<id> <detach> <uid> <gid> <timeout> <workdir> <env,...> <argv,...>"
# (words base64-wrapped as on the command line; "-" for none); it runs argv in the
# image's root as uid:gid with only that environment and answers "<id> <exit status>
# <base64 of the last 4 KiB of its output>". A detached command is started in the
# background, its output on the console, and answered at once with status 0.
agent_port() {
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = org.cvbench.agent ] && echo "/dev/${d##*/}"
  done
}
cvbench_agent() {
  port=$(agent_port)
  [ -n "$port" ] || { echo "cvbench: no agent port" >&2; return; }
  exec 3<>"$port"
  while read -r id detach uid gid secs wd envs argv <&3; do
    vm_decode "$wd"; dir=$v
    set -- env -i
    for w in $(echo "$envs" | tr , ' '); do
      [ "$w" = - ] || { vm_decode "$w"; set -- "$@" "$v"; }
    done
    set -- "$@" nsenter -r/root -w/root -S "$uid" -G "$gid" /bin/sh -c 'cd "$0" && exec "$@"' "$dir"
    for w in $(echo "$argv" | tr , ' '); do vm_decode "$w"; set -- "$@" "$v"; done
    if [ "$detach" = 1 ]; then
      setsid "$@" </dev/null >/dev/console 2>&1 &
      echo "$id 0 -" >&3
    else
      out=$(timeout -s KILL "$secs" "$@" </dev/null 2>&1); code=$?
      echo "$id $code $(printf %s "$out" | tail -c 4096 | base64 | tr -d '\\n')-" >&3
    fi
  done
}
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in $(echo "$CVBENCH_MODULES" | tr , ' '); do
  insmod "/lib/modules/cvbench/$m.ko" 2>/dev/null
done
if [ -n "$CVBENCH_ROOT" ]; then
  mount -t ext4 "$CVBENCH_ROOT" /root || {
    echo "cvbench: cannot mount the root disk $CVBENCH_ROOT" >&2; poweroff -f; }
fi
for d in proc sys dev; do mkdir -p "$(inroot /$d)"; done
mount -t proc proc "$(inroot /proc)"; mount -t sysfs sysfs "$(inroot /sys)"
mount -t devtmpfs devtmpfs "$(inroot /dev)"
for d in pts shm; do mkdir -p "$(inroot /dev/$d)"; done
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$(inroot /dev/pts)"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$(inroot /dev/shm)"
ip link set lo up 2>/dev/null
for w in $(echo "$CVBENCH_MOUNTS" | tr , ' '); do
  vm_decode "$w"; echo "$v" | { read -r fs src opts dst; at=$(inroot "$dst"); mkdir -p "$at"
    mount -t "$fs" -o "$opts" "$src" "$at" || echo "cvbench: cannot mount $dst" >&2; }
done
if [ -n "$CVBENCH_TEMPLATE" ]; then
  # A template (libvirt:restore): the host saves the guest's memory once this line is
  # out, and every clone restored from it resumes in the read below, sharing this
  # guest's RNG state, clock, MAC and everything else. The host's hand-over gives it
  # what must differ (as Firecracker advises for snapshot clones) before the workload's
  # own variables: "<rand_pool_info, base64> <epoch s> <machine-id> <MAC|-> <script,
  # base64>". Every process from here to the workload is on the clone's start path
  # (each a fork, under TCG an emulated one), so what can be is done before the save:
  # the machine-id's bind mount (the clone only writes the file); and the variables
  # come as one script (one decoding, not two processes a word).
  at=$(inroot /etc/machine-id); mkdir -p "${at%/*}"
  [ -e "$at" ] || : > "$at"; : > /tmp/machine-id; mount --bind /tmp/machine-id "$at"
  exec 3<>"$(agent_port)"
  echo "CVBENCH-TEMPLATE $CVBENCH_NONCE"
  until read -r seed secs mid mac script <&3; do usleep 10000; done
  exec 3<&-
  # Mixed into the input pool and credited (RNDADDENTROPY), then the CRNG rekeyed from
  # it at once (RNDRESEEDCRNG): without the reseed every clone's /dev/urandom would go
  # on from the template's key until the kernel's next scheduled reseed.
  base64 -d <<EOF | cvbench-reseed >/dev/urandom || {
$seed
EOF
    echo "cvbench: cannot reseed the random number generator" >&2; poweroff -f; }
  date -u -s "@$secs" >/dev/null
  echo "$mid" > /tmp/machine-id
  eval "$(base64 -d <<EOF
$script
EOF
)"
  # The link is still down (the template took no lease): its own MAC first, then DHCP
  [ -z "$CVBENCH_NET" ] || ip link set "$CVBENCH_NET" address "$mac"
fi
# (split on commas by the shell itself: $(echo | tr) would cost two processes a loop)
IFS=,; for w in $CVBENCH_ENV; do unset IFS; vm_decode "$w"; export "$v"; done; unset IFS
if [ -n "$CVBENCH_NET" ]; then
  ip link set "$CVBENCH_NET" up
  udhcpc -q -n -t 5 -i "$CVBENCH_NET" -x "hostname:${CVBENCH_HOSTNAME:-cvbench}" \\
    -s /bin/cvbench-dhcp >/dev/null 2>&1 || echo "cvbench: no DHCP lease on $CVBENCH_NET" >&2
fi
if [ -n "$CVBENCH_NAMES" ] && [ -s /tmp/lease ]; then
  # A private network: its DNS (the lease's server) and this guest's names, mounted over
  # the image's files as an engine mounts its own
  read -r ip dns < /tmp/lease
  { cat "$(inroot /etc/hosts)" 2>/dev/null; echo "$ip $(echo "$CVBENCH_NAMES" | tr , ' ')"; } \\
    > /tmp/hosts
  echo "nameserver $dns" > /tmp/resolv.conf
  for f in hosts resolv.conf; do
    at=$(inroot "/etc/$f"); mkdir -p "${at%/*}"
    [ -e "$at" ] || : > "$at"; mount --bind "/tmp/$f" "$at"
  done
fi
[ -n "$CVBENCH_AGENT" ] && cvbench_agent &
set --
IFS=,; for w in $CVBENCH_ARGV; do unset IFS; vm_decode "$w"; set -- "$@" "$v"; done; unset IFS
# (a clone's argv comes in its hand-over's script, already quoted for the shell)
[ -z "$CVBENCH_ARGS" ] || eval "set -- $CVBENCH_ARGS"
user=$CVBENCH_USER
unset v w m seed secs mid mac script at CVBENCH_VM CVBENCH_MODULES CVBENCH_MOUNTS \\
  CVBENCH_ENV CVBENCH_ARGV CVBENCH_ARGS CVBENCH_NET CVBENCH_ROOT CVBENCH_NAMES \\
  CVBENCH_AGENT CVBENCH_USER CVBENCH_TEMPLATE
# (sethostname through /proc, as `hostname` does it, without a process)
echo "${CVBENCH_HOSTNAME:-cvbench}" > /proc/sys/kernel/hostname
# A missing workdir is made as root first, inside the image's root (as Docker makes a
# missing WORKDIR), so that a user who may not write its parent can still start there
case $CVBENCH_WORKDIR in ''|/) ;; *) mkdir -p "$(inroot "$CVBENCH_WORKDIR")" 2>/dev/null ;; esac
if [ -n "$user" ]; then
  nsenter -r/root -w/root -S "${user%:*}" -G "${user#*:}" /bench/init "$@"
else
  chroot /root /bench/init "$@"
fi
code=$?
sync
echo "CVBENCH-EXIT $code $(sed -n 's/^oom_kill //p' /proc/vmstat)"
poweroff -f
"""
DHCP_SCRIPT = """\
#!/bin/busybox sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
[ -z "$router" ] || ip route add default via "${router%% *}"
echo "$ip ${dns%% *}" > /tmp/lease
"""


def _reseed_elf() -> bytes:
    """bin/cvbench-reseed: a static x86-64 ELF of 20 instructions, as no busybox
    applet makes an ioctl. It reads a `struct rand_pool_info` (entropy bits, byte count,
    bytes) from stdin, gives it to the kernel with ioctl(1, RNDADDENTROPY) and then
    rekeys the CRNG with ioctl(1, RNDRESEEDCRNG): stdout must be /dev/urandom (or
    /dev/random). It exits 0, or with the errno of the ioctl that failed (ENOTTY when
    stdout is no random device, EPERM without CAP_SYS_ADMIN). Written out here rather
    than compiled so that building a guest needs no C toolchain; the assembly:

        sub rsp, 4096; xor eax, eax; xor edi, edi; mov rsi, rsp; mov edx, 4096
        syscall                                   ; read(0, rsp, 4096)
        mov eax, 16; mov edi, 1; mov esi, 0x40085203; mov rdx, rsp
        syscall                                   ; ioctl(1, RNDADDENTROPY, rsp)
        test eax, eax; jnz done
        mov eax, 16; mov esi, 0x5207
        syscall                                   ; ioctl(1, RNDRESEEDCRNG)
    done:
        mov edi, eax; neg edi; mov eax, 60
        syscall                                   ; exit(-result)
    """
    code = bytes.fromhex(
        "4881ec00100000" "31c0" "31ff" "4889e6" "ba00100000" "0f05"
        "b810000000" "bf01000000" "be03520840" "4889e2" "0f05"
        "85c0" "750c"
        "b810000000" "be07520000" "0f05"
        "89c7" "f7df" "b83c000000" "0f05")
    base, ehsize, phsize = 0x400000, 64, 56
    size = ehsize + phsize + len(code)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)  # 64-bit, little-endian, ELF version 1
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 0x3E, 1, base + ehsize + phsize,
                         ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0)  # ET_EXEC, x86-64
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)  # PT_LOAD r-x
    return header + load + code


RESEED = _reseed_elf()
# What the cached initramfs files are keyed by, besides the image and the kernel.
VERSION = hashlib.sha256((VM_INIT + DHCP_SCRIPT).encode() + RESEED).hexdigest()[:12]


class CpioWriter:
    """A minimal newc ("070701") writer: what the kernel's initramfs unpacker reads."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.ino = 0
        self.dirs: set[str] = set()

    def _pad(self, n: int) -> None:
        self.f.write(b"\0" * (-n % 4))

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
            nlink: int = 1, uid: int = 0, gid: int = 0, mtime: int = 0) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, uid, gid, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.f.write(header + encoded)
        self._pad(len(header) + len(encoded))
        self.f.write(data)
        self._pad(len(data))
        if stat.S_ISDIR(mode):
            self.dirs.add(name)

    def mkdirs(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.add(d, stat.S_IFDIR | 0o755, nlink=2)

    def trailer(self) -> None:
        self.add("TRAILER!!!", 0)
        self.f.write(b"\0" * (-self.f.tell() % 512))


def busybox() -> Path:
    """The host's busybox-static: VM_INIT's shell and tools."""
    for cand in BUSYBOX_CANDIDATES:
        if os.path.exists(cand):
            with open(cand, "rb") as f:
                head = f.read(4096)
            if head[:4] == b"\x7fELF" and b"ld-linux" not in head:
                return Path(cand)
    raise BackendUnavailable("libvirt", "busybox-static is not installed (the guest's init "
                             "runs on it)", "apt-get install busybox-static")


def _add_image(w: CpioWriter, tf: tarfile.TarFile) -> None:
    """The image's entries under root/, with their owners, modes and mtimes (a hard link
    becomes a copy: the kernel's unpacker links only entries of one cpio stream with the
    same inode, which this writer does not track)."""
    for m in tf:
        name = "root/" + m.name.rstrip("/")
        if m.isdir():
            mode, data = stat.S_IFDIR | m.mode, b""
        elif m.issym():
            mode, data = stat.S_IFLNK | 0o777, m.linkname.encode()
        elif m.isfile() or m.islnk():
            src = tf.extractfile(m)
            assert src is not None
            mode, data = stat.S_IFREG | m.mode, src.read()
        else:
            continue
        w.add(name, mode, data, nlink=2 if m.isdir() else 1, uid=m.uid, gid=m.gid,
              mtime=int(m.mtime))


def build(tar: Path | None, modules: Iterable[tuple[str, Path]], target: Path) -> None:
    """Write the initramfs to `target` (atomically): the VM layer with `modules`, and
    the image of `tar` under root/ (None: a root disk is mounted there instead)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".initramfs-")
    try:
        with os.fdopen(fd, "wb") as f:
            w = CpioWriter(f)
            for d in ("bin", "dev", "proc", "sys", "tmp", "root", MODULE_DIR):
                w.mkdirs(d)
            w.add("init", stat.S_IFREG | 0o755, VM_INIT.encode())
            bb = busybox()
            w.add("bin/busybox", stat.S_IFREG | 0o755, bb.read_bytes())
            listing = subprocess.run([str(bb), "--list"], capture_output=True, text=True,
                                     check=True).stdout.split()
            for applet in sorted(set(listing) - {"busybox"}):
                w.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
            w.add("bin/cvbench-dhcp", stat.S_IFREG | 0o755, DHCP_SCRIPT.encode())
            w.add("bin/cvbench-reseed", stat.S_IFREG | 0o755, RESEED)
            w.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
            for name, path in modules:
                w.add(f"{MODULE_DIR}/{name}.ko", stat.S_IFREG | 0o644, path.read_bytes())
            if tar is not None:
                with tarfile.open(tar) as tf:
                    _add_image(w, tf)
            w.trailer()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
