"""syscall: what a system call costs inside each backend, in ns per call.

One sample = one fresh instance that runs a static probe (cvbench-syscall, built here
from SOURCE with the host's gcc -static and added to the recipe image as a binary, so
every backend runs the same bytes). The probe runs each operation `warmup` times, then
`count` times between two readings of CLOCK_MONOTONIC, and prints one line per operation;
the instance is removed. The figure, `syscall.<op>.ns`, is the loop's time over `count`:

  getpid          syscall(SYS_getpid): the cheapest entry and exit
  openat_close    openat("/dev/null") + close: path walk and a file descriptor (2 calls)
  stat            newfstatat("/"): a path lookup
  mmap_munmap     an anonymous page mapped and unmapped (2 calls)
  clock_gettime   syscall(SYS_clock_gettime), not the vDSO: the kernel entry itself
  write           write(2) of one byte to /dev/null

Every call goes through syscall(2) or the plain wrapper (no libc caching, no vDSO), so
the cost of the entry is what differs: a seccomp filter (docker, ns against ns:bare),
gVisor's interception (docker:runsc), a VM's own kernel (libvirt; under TCG, emulated).
The loop is timed by the instance's own clock, start to end inside the instance (as fio
times its I/O); no guest time is compared with the host's. The probe's output is kept as
an artifact (kind "syscall").

On a 2-core host: the probe runs on CPU 1 (`limits.cpuset`), single-threaded, so the
runner's own work stays on CPU 0; a VM here runs under TCG, where every call is emulated
and orders of magnitude off (the log axis of its chart shows it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from harness.core.errors import InstanceError, UsageError
from harness.core.image import Recipe, Source, cache_dir
from harness.sampling import Cell, Context, Measurement
from harness.scenario import Scenario
from harness.studies import Base, Study
from harness.studies import _lifecycle as life

# Its name in the image (a recipe puts its binaries in /usr/bin), found on PATH: the host
# backend runs a recipe's binaries from the unpacked rootfs, its /usr/bin on PATH.
PROBE = "cvbench-syscall"
MARK = "CVBENCH-SYSCALL"
OPS = ("getpid", "openat_close", "stat", "mmap_munmap", "clock_gettime", "write")
# How many system calls one iteration of each operation makes (what strace counts).
CALLS = {"getpid": 1, "openat_close": 2, "stat": 1, "mmap_munmap": 2, "clock_gettime": 1,
         "write": 1}

SOURCE = r"""
/* cvbench-syscall COUNT WARMUP: per operation, WARMUP untimed iterations, then COUNT
 * iterations between two CLOCK_MONOTONIC readings; prints
 * "CVBENCH-SYSCALL <op> <count> <elapsed ns>" per operation, exit 0, or exits 1 with
 * the failing call's errno on stderr. Built static by harness/studies/syscall.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int null_fd;

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

static void op_getpid(void) { syscall(SYS_getpid); }

static void op_openat_close(void) {
    int fd = openat(AT_FDCWD, "/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("openat /dev/null");
    close(fd);
}

static void op_stat(void) {
    struct stat st;
    if (syscall(SYS_newfstatat, AT_FDCWD, "/", &st, 0) != 0) die("newfstatat /");
}

static void op_mmap_munmap(void) {
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    munmap(p, 4096);
}

static void op_clock_gettime(void) {
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
}

static void op_write(void) {
    if (write(null_fd, "x", 1) != 1) die("write /dev/null");
}

static const struct { const char *name; void (*fn)(void); } OPS[] = {
    {"getpid", op_getpid}, {"openat_close", op_openat_close}, {"stat", op_stat},
    {"mmap_munmap", op_mmap_munmap}, {"clock_gettime", op_clock_gettime},
    {"write", op_write},
};

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s COUNT WARMUP\n", argv[0]);
        return 2;
    }
    long count = atol(argv[1]), warmup = atol(argv[2]);
    null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd < 0) die("open /dev/null");
    for (size_t k = 0; k < sizeof OPS / sizeof OPS[0]; k++) {
        for (long i = 0; i < warmup; i++) OPS[k].fn();
        long long t0 = now_ns();
        for (long i = 0; i < count; i++) OPS[k].fn();
        long long t1 = now_ns();
        printf("CVBENCH-SYSCALL %s %ld %lld\n", OPS[k].name, count, t1 - t0);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
"""


def build_probe() -> Path:
    """The probe built from SOURCE (cached by the source's hash): a static binary, so it
    runs in any image and on every backend as the same bytes."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    out = cache_dir().parent / "probes" / f"syscall-{digest}" / PROBE
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "syscall.c"
        src.write_text(SOURCE)
        built = Path(tmp) / PROBE
        res = subprocess.run(["gcc", "-static", "-O2", "-o", str(built), str(src)],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise UsageError(f"study syscall: gcc -static could not build its probe "
                             f"(libc6-dev installed?): {res.stderr.strip()[-300:]}")
        os.replace(built, out)  # atomic: a concurrent run sees the whole file or none
    return out


def parse(output: str) -> dict[str, tuple[int, int]]:
    """op -> (count, elapsed ns) from the probe's lines."""
    found: dict[str, tuple[int, int]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == MARK and parts[1] in OPS and \
                parts[2].isdigit() and parts[3].isdigit():
            found[parts[1]] = (int(parts[2]), int(parts[3]))
    return found


class Syscall(Base):
    name = "syscall"
    metrics: ClassVar[dict[str, str]] = {"syscall.": "ns"}
    params: ClassVar[dict[str, Any]] = {"count": 200000, "warmup": 10000}
    tools: ClassVar[dict[str, str]] = {"gcc": "gcc"}

    def check_params(self, s: Scenario) -> list[tuple[str, str]]:
        p = dict(s.params)
        out = []
        if int(p.get("count", 1)) < 1:
            out.append(("params.count", "must be at least 1"))
        if int(p.get("warmup", 0)) < 0:
            out.append(("params.warmup", "must not be negative"))
        if not isinstance(s.workload.image, Recipe):
            out.append(("workload.image", "the syscall study adds its probe to a recipe "
                                          "image: use image = { recipe = \"...\" }"))
        return out

    def image(self, s: Scenario) -> Source:
        src = s.workload.image
        assert isinstance(src, Recipe)  # check_params refused any other kind
        return replace(src, binaries=(*src.binaries, str(build_probe())))

    def sample(self, ctx: Context, cell: Cell) -> list[Measurement]:
        p = life.params(ctx, self.params)
        count = int(p["count"])
        spec = ctx.spec(cell, readiness="exit", capture=True,
                        argv=(PROBE, str(count), str(int(p["warmup"]))))
        inst, ex = life.run(ctx, cell, spec)
        life.finish(ctx, cell, inst)
        output = life.text(ex.stdout)
        ctx.artifact("syscall", output, rc=ex.code)
        found = parse(output)
        if ex.code != 0 or set(found) != set(OPS):
            raise InstanceError(f"syscall: the probe exited {ex.code} with "
                                f"{len(found)}/{len(OPS)} figures: "
                                f"{(life.text(ex.stderr) or output)[-300:]!r}")
        return [Measurement(f"syscall.{op}.ns", elapsed / n, extra={"count": n})
                for op, (n, elapsed) in found.items()]


STUDY: Study = Syscall()
