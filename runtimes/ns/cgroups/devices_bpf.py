"""The device allow-list on cgroup v2: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE
attached to the instance's cgroup, as runc (libcontainer/cgroups/devices/devicefilter.go)
and crun (src/libcrun/ebpf.c) make it. cgroup v2 has no devices.allow: the kernel asks
the device programs of the process's cgroup and of every cgroup above it (attached with
BPF_F_ALLOW_MULTI: all must say yes) at each mknod and each open of a device node.

The program is generated here from the very rules the v1 manager writes into
devices.allow ("c 1:3 rwm", "c 136:* rwm", "b *:* m"), assembled by hand (a few
instructions of one shape each: no compiler at run time) and loaded with bpf(2) through
ctypes. Its input is struct bpf_cgroup_dev_ctx {u32 access_type (the device type in the
low 16 bits, the access asked for above them); u32 major; u32 minor}; it returns 1 to
allow, 0 to refuse (the process gets EPERM). Layout, runc's:

    r2 = type, r3 = access, r4 = major, r5 = minor
    per rule, a block: if r2 != type goto next; [if r3 & access != r3 goto next;]
                       [if r4 != major goto next;] [if r5 != minor goto next;] return 1
    after the last block: return 0              (the "deny a" the list starts from)

The access check is left out for "rwm", the major or minor check for "*". Rules are
emitted in the order runc's device emulator leaves them (by type, major, minor; a
wildcard first), so that for the same list the program is runc's, instruction for
instruction (tests/unit/test_devices_bpf.py compares it with runc's own test).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path
from typing import NamedTuple

# include/uapi/linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # the attach type
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2

# Opcodes (include/uapi/linux/bpf_common.h, bpf.h): class | operation | source.
LDX_MEM_W = 0x01 | 0x60 | 0x00  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
AND32_K = 0x04 | 0x50 | 0x00  # BPF_ALU | BPF_AND | BPF_K: dst &= imm (32 bits)
RSH32_K = 0x04 | 0x70 | 0x00  # BPF_ALU | BPF_RSH | BPF_K
MOV32_K = 0x04 | 0xB0 | 0x00  # BPF_ALU | BPF_MOV | BPF_K
MOV32_X = 0x04 | 0xB0 | 0x08  # BPF_ALU | BPF_MOV | BPF_X: dst = src
JNE_K = 0x05 | 0x50 | 0x00  # BPF_JMP | BPF_JNE | BPF_K: if dst != imm: pc += off
JNE_X = 0x05 | 0x50 | 0x08  # BPF_JMP | BPF_JNE | BPF_X: if dst != src: pc += off
EXIT = 0x05 | 0x90  # BPF_JMP | BPF_EXIT: return r0

_ACCESS = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}
_ALL = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD
_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
NAME = b"cvbench_devices"  # the program's name, as bpftool shows it (15 chars at most)
LICENSE = b"Apache-2.0"  # (only GPL-only helpers care; the program calls none)


class DeviceRule(NamedTuple):
    """One allow rule; -1 is the wildcard "*" (sorts first, as in runc's emulator)."""

    type: str  # "b" or "c"
    major: int
    minor: int
    access: int  # BPF_DEVCG_ACC_* bits


def parse(rule: str) -> DeviceRule:
    """"c 1:3 rwm" (the devices.allow syntax) -> DeviceRule. "a" (every device) is refused: an
    allow-list that allows everything is no list."""
    try:
        kind, numbers, access = rule.split()
        major, minor = numbers.split(":")
        if kind not in _TYPES or not access or set(access) - set(_ACCESS):
            raise ValueError
        return DeviceRule(kind, -1 if major == "*" else int(major),
                          -1 if minor == "*" else int(minor),
                          sum(_ACCESS[a] for a in set(access)))
    except ValueError:
        raise ValueError(f"device rule {rule!r}: expected '<b|c> <major|*>:<minor|*> "
                         "<r|w|m...>'") from None


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm} (little
    endian, as x86_64 and aarch64 are: dst in the low nibble)."""
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def _block(r: DeviceRule) -> list[tuple[int, int, int, bool, int]]:
    """One rule's instructions as (code, dst, src, jumps to the next block, imm)."""
    out = [(JNE_K, 2, 0, True, _TYPES[r.type])]
    if r.access != _ALL:  # the access asked for must be within the rule's: r1 is scratch
        out += [(MOV32_X, 1, 3, False, 0), (AND32_K, 1, 0, False, r.access),
                (JNE_X, 1, 3, True, 0)]
    if r.major >= 0:
        out.append((JNE_K, 4, 0, True, r.major))
    if r.minor >= 0:
        out.append((JNE_K, 5, 0, True, r.minor))
    return [*out, (MOV32_K, 0, 0, False, 1), (EXIT, 0, 0, False, 0)]


def program(rules: tuple[str, ...] | list[str]) -> bytes:
    """The program (struct bpf_insn[]) allowing exactly `rules`, refusing the rest."""
    code = [insn(LDX_MEM_W, 2, 1, 0), insn(AND32_K, 2, imm=0xFFFF),  # r2 = type
            insn(LDX_MEM_W, 3, 1, 0), insn(RSH32_K, 3, imm=16),  # r3 = access
            insn(LDX_MEM_W, 4, 1, 4),  # r4 = major
            insn(LDX_MEM_W, 5, 1, 8)]  # r5 = minor
    for rule in sorted({parse(r) for r in rules}):
        block = _block(rule)
        for i, (op, dst, src, jump, imm) in enumerate(block):
            # a jump's offset counts from the next instruction: to the end of the block
            code.append(insn(op, dst, src, len(block) - i - 1 if jump else 0, imm))
    code += [insn(MOV32_K, 0, imm=0), insn(EXIT)]
    return b"".join(code)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = int(_libc.syscall(ctypes.c_long(_SYS_BPF[os.uname().machine]), ctypes.c_int(cmd),
                            attr, ctypes.c_uint(len(attr))))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def load(code: bytes) -> int:
    """bpf(BPF_PROG_LOAD) of `code` as a cgroup device program: its descriptor
    (close-on-exec). Needs CAP_BPF (or CAP_SYS_ADMIN). A program the verifier refuses
    raises OSError with the verifier's log."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(LICENSE)

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        # log_size, log_buf, kern_version, prog_flags, prog_name[16]
        attr = ctypes.create_string_buffer(struct.pack(
            "<IIQQIIQII16s", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
            ctypes.addressof(insns), ctypes.addressof(lic), 1 if log else 0,
            len(log) if log else 0, ctypes.addressof(log) if log else 0, 0, 0, NAME), 72)
        return _bpf(BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD, cgroup device program)")

    try:
        return attempt(None)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES):  # (not refused for privilege)
            log = ctypes.create_string_buffer(1 << 16)
            try:
                attempt(log)
            except OSError:
                raise OSError(e.errno, f"{e.strerror}: verifier: "
                              f"{log.value.decode(errors='replace').strip()[-500:]}") from None
        raise


def attach(prog_fd: int, cgroup: Path) -> None:
    """bpf(BPF_PROG_ATTACH) of the device program `prog_fd` to the cgroup v2 directory
    `cgroup`: from now on every process in it (and below) is held to it. The cgroup
    keeps the program loaded until it is removed; nothing to detach."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags
        attr = ctypes.create_string_buffer(struct.pack(
            "<IIII", fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI), 16)
        _bpf(BPF_PROG_ATTACH, attr, f"bpf(BPF_PROG_ATTACH, {cgroup})")
    finally:
        os.close(fd)


_LOADED: dict[bytes, int] = {}


def loaded(rules: tuple[str, ...]) -> int:
    """The program for `rules`, loaded once per process and kept open (one program can
    be attached to any number of cgroups): an instance's create costs one attach."""
    code = program(rules)
    if code not in _LOADED:
        _LOADED[code] = load(code)
    return _LOADED[code]
