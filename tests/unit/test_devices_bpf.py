"""The cgroup v2 device program (runtimes/ns/cgroups/devices_bpf.py) against runc's.

runc's libcontainer/cgroups/devices/devicefilter_test.go lists, instruction by
instruction, the program runc generates for its built-in allow list; the listings below
are transcribed from it (runc's own format), and ns's list (runc's without tuntap) worked
out by hand the same way. Our bytes are decoded here with the opcodes as the kernel
numbers them (what `bpftool prog dump xlated` prints in parentheses), not with the
module's constants. tests/integration/test_cgroup2_devices.py has the kernel run it.
"""

from __future__ import annotations

import re
import struct

import pytest

from runtimes.ns.cgroups import devices_bpf
from runtimes.ns.config import DEVICE_RULES

# opcode -> the name runc's listing (cilium/ebpf's asm) gives it
OPCODES = {0x61: "LdXMemW", 0x54: "AndImm32", 0x74: "RShImm32", 0xBC: "MovReg32",
           0xB4: "MovImm32", 0x55: "JNEImm", 0x5D: "JNEReg", 0x95: "Exit"}

PROLOGUE = """
        0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
        1: AndImm32 dst: r2 imm: 65535
        2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
        3: RShImm32 dst: r3 imm: 16
        4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
        5: LdXMemW dst: r5 src: r1 off: 8 imm: 0
"""

# TestDeviceFilter_BuiltInAllowList (runc's specconv.AllowedDevices), in runc's order
RUNC_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm",
              "c 1:5 rwm", "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm")


def _dev(block: int, major: int, minor: int, nxt: int, first: int) -> str:
    """A "c major:minor rwm" block as runc lists it."""
    return f"""block-{block}:
        {first}: JNEImm dst: r2 off: -1 imm: 2 <block-{nxt}>
        {first + 1}: JNEImm dst: r4 off: -1 imm: {major} <block-{nxt}>
        {first + 2}: JNEImm dst: r5 off: -1 imm: {minor} <block-{nxt}>
        {first + 3}: MovImm32 dst: r0 imm: 1
        {first + 4}: Exit
"""


WILDCARD_MKNOD = """block-0:
        6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
        7: MovReg32 dst: r1 src: r3
        8: AndImm32 dst: r1 imm: 1
        9: JNEReg dst: r1 off: -1 src: r3 <block-1>
        10: MovImm32 dst: r0 imm: 1
        11: Exit
block-1:
        12: JNEImm dst: r2 off: -1 imm: 2 <block-2>
        13: MovReg32 dst: r1 src: r3
        14: AndImm32 dst: r1 imm: 1
        15: JNEReg dst: r1 off: -1 src: r3 <block-2>
        16: MovImm32 dst: r0 imm: 1
        17: Exit
"""

RUNC_EXPECTED = PROLOGUE + WILDCARD_MKNOD + "".join(
    _dev(b, mj, mn, b + 1, 18 + 5 * (b - 2)) for b, (mj, mn) in enumerate(
        [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (10, 200)], start=2)) + """
block-10:
        58: JNEImm dst: r2 off: -1 imm: 2 <block-11>
        59: JNEImm dst: r4 off: -1 imm: 136 <block-11>
        60: MovImm32 dst: r0 imm: 1
        61: Exit
block-11:
        62: MovImm32 dst: r0 imm: 0
        63: Exit
"""

# ns's list: runc's without tuntap (c 10:200), so one block fewer
NS_EXPECTED = PROLOGUE + WILDCARD_MKNOD + "".join(
    _dev(b, mj, mn, b + 1, 18 + 5 * (b - 2)) for b, (mj, mn) in enumerate(
        [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)], start=2)) + """
block-9:
        53: JNEImm dst: r2 off: -1 imm: 2 <block-10>
        54: JNEImm dst: r4 off: -1 imm: 136 <block-10>
        55: MovImm32 dst: r0 imm: 1
        56: Exit
block-10:
        57: MovImm32 dst: r0 imm: 0
        58: Exit
"""

_LINE = re.compile(r"(\d+): (\w+)(?: dst: r(\d))?(?: src: r(\d))?(?: off: (-?\d+))?"
                   r"(?: src: r(\d))?(?: imm: (-?\d+))?(?: <(block-\d+)>)?$")


def expected(listing: str) -> list[tuple[str, int, int, int, int]]:
    """runc's listing -> (name, dst, src, a jump's target index or the offset, imm) per
    instruction."""
    labels: dict[str, int] = {}
    rows = []
    for line in (x.strip() for x in listing.strip().splitlines()):
        if not line:
            continue
        if line.endswith(":"):
            labels[line[:-1]] = len(rows)
            continue
        m = _LINE.match(line)
        assert m, line
        idx, name, dst, src1, off, src2, imm, target = m.groups()
        assert int(idx) == len(rows), line
        rows.append((name, int(dst or 0), int(src1 or src2 or 0), target or int(off or 0),
                     int(imm or 0)))
    return [(n, d, s, labels[t] if isinstance(t, str) else t, i) for n, d, s, t, i in rows]


def decoded(code: bytes) -> list[tuple[str, int, int, int, int]]:
    """Our bytes -> the same tuples; a jump's target is pc + 1 + off."""
    out = []
    for pc in range(len(code) // 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, pc * 8)
        jump = op in (0x55, 0x5D)
        out.append((OPCODES[op], regs & 0xF, regs >> 4, pc + 1 + off if jump else off, imm))
    return out


def test_runc_builtin_allow_list_gives_runcs_program() -> None:
    assert decoded(devices_bpf.program(RUNC_RULES)) == expected(RUNC_EXPECTED)


def test_ns_allow_list_program() -> None:
    assert decoded(devices_bpf.program(DEVICE_RULES)) == expected(NS_EXPECTED)


def test_empty_list_refuses_everything() -> None:  # runc's TestDeviceFilter_Nil
    assert decoded(devices_bpf.program(())) == expected(PROLOGUE + """
block-0:
        6: MovImm32 dst: r0 imm: 0
        7: Exit""")


def test_partial_access_is_checked() -> None:
    # "rw" (not rwm): the access asked for must be within READ|WRITE (2|4)
    rows = decoded(devices_bpf.program(("b 8:0 rw",)))[6:]
    assert rows == [("JNEImm", 2, 0, 14, 1), ("MovReg32", 1, 3, 0, 0),
                    ("AndImm32", 1, 0, 0, 6), ("JNEReg", 1, 3, 14, 0),
                    ("JNEImm", 4, 0, 14, 8), ("JNEImm", 5, 0, 14, 0),
                    ("MovImm32", 0, 0, 0, 1), ("Exit", 0, 0, 0, 0),
                    ("MovImm32", 0, 0, 0, 0), ("Exit", 0, 0, 0, 0)]


def test_order_and_duplicates_do_not_matter() -> None:
    assert devices_bpf.program(DEVICE_RULES) == devices_bpf.program(
        (*reversed(DEVICE_RULES), DEVICE_RULES[0]))


def test_instruction_encoding() -> None:
    # struct bpf_insn, little endian: dst in the low nibble of byte 1, src in the high
    assert devices_bpf.insn(0x61, 4, 1, 4) == bytes.fromhex("6114040000000000")
    assert devices_bpf.insn(0x55, 2, 0, -3, 0x1234) == bytes.fromhex("5502fdff34120000")


@pytest.mark.parametrize("rule", ["a *:* rwm", "c 1:3", "c 1:3 rwx", "c 1 rwm", "c x:3 r",
                                  "c 1:3 "])
def test_malformed_rules_are_refused(rule: str) -> None:
    with pytest.raises(ValueError, match="device rule"):
        devices_bpf.program((rule,))
