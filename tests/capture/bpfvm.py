"""A small classic-BPF interpreter (the subset libpcap emits), to judge crafted frames offline.

It follows the kernel's rules: a load past the end of the packet rejects the packet (returns 0).
The live test proves the same verdicts in the kernel.
"""

from __future__ import annotations

import struct

# instruction classes
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
# sizes
W, H, B = 0x00, 0x08, 0x10
# modes
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
# ops
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00,
    0x10,
    0x20,
    0x30,
    0x40,
    0x50,
    0x60,
    0x70,
    0x80,
    0x90,
    0xA0,
)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
SRC_X = 0x08
RVAL_A = 0x10
MASK = 0xFFFFFFFF


class _Reject(Exception):
    pass


def _load(pkt: bytes, off: int, size: int) -> int:
    n = {W: 4, H: 2, B: 1}[size]
    if off < 0 or off + n > len(pkt):
        raise _Reject
    if size == W:
        return int(struct.unpack_from("!I", pkt, off)[0])
    if size == H:
        return int(struct.unpack_from("!H", pkt, off)[0])
    return pkt[off]


SKF_AD_OFF = 0xFFFFF000  # ancillary loads (k = SKF_AD_OFF + n, unsigned)
SKF_AD_IFINDEX = 8


def run(
    prog: tuple[tuple[int, int, int, int], ...] | list[tuple[int, int, int, int]],
    pkt: bytes,
    ifindex: int = 0,
    steps: list[int] | None = None,
) -> int:
    """The filter's return value for `pkt` seen on `ifindex`: 0 rejects, else the bytes to keep.

    `steps`: if given, the number of instructions executed is appended to it."""
    a = x = 0
    executed = 0
    mem = [0] * 16
    pc = 0
    try:
        while True:
            code, jt, jf, k = prog[pc]
            pc += 1
            executed += 1
            cls = code & 0x07
            if cls == LD:
                mode, size = code & 0xE0, code & 0x18
                if mode == IMM:
                    a = k
                elif mode == ABS and k == SKF_AD_OFF + SKF_AD_IFINDEX:
                    a = ifindex
                elif mode == ABS:
                    a = _load(pkt, k, size)
                elif mode == IND:
                    a = _load(pkt, x + k, size)
                elif mode == MEM:
                    a = mem[k]
                elif mode == LEN:
                    a = len(pkt)
                else:
                    raise ValueError(f"unsupported ld {code:#x}")
            elif cls == LDX:
                mode = code & 0xE0
                if mode == IMM:
                    x = k
                elif mode == MEM:
                    x = mem[k]
                elif mode == LEN:
                    x = len(pkt)
                elif mode == MSH:
                    x = (_load(pkt, k, B) & 0x0F) << 2
                else:
                    raise ValueError(f"unsupported ldx {code:#x}")
            elif cls == ST:
                mem[k] = a
            elif cls == STX:
                mem[k] = x
            elif cls == ALU:
                op = code & 0xF0
                v = x if code & SRC_X else k
                if op == ADD:
                    a = (a + v) & MASK
                elif op == SUB:
                    a = (a - v) & MASK
                elif op == MUL:
                    a = (a * v) & MASK
                elif op == DIV:
                    if v == 0:
                        return 0
                    a = a // v
                elif op == MOD:
                    if v == 0:
                        return 0
                    a = a % v
                elif op == OR:
                    a |= v
                elif op == AND:
                    a &= v
                elif op == XOR:
                    a ^= v
                elif op == LSH:
                    a = (a << v) & MASK
                elif op == RSH:
                    a >>= v
                elif op == NEG:
                    a = (-a) & MASK
            elif cls == JMP:
                op = code & 0xF0
                v = x if code & SRC_X else k
                if op == JA:
                    pc += k
                    continue
                if op == JEQ:
                    cond = a == v
                elif op == JGT:
                    cond = a > v
                elif op == JGE:
                    cond = a >= v
                elif op == JSET:
                    cond = bool(a & v)
                else:
                    raise ValueError(f"unsupported jmp {code:#x}")
                pc += jt if cond else jf
            elif cls == RET:
                if steps is not None:
                    steps.append(executed)
                return a if code & RVAL_A else k
            else:  # MISC: TAX / TXA
                if code & 0xF8 == 0x00:
                    x = a
                else:
                    a = x
    except _Reject:
        if steps is not None:
            steps.append(executed)  # the load past the end was the last instruction run
        return 0
