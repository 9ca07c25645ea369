"""The kernel filter's interface check: one socket per namespace, frames only from pod interfaces.

The namespace's one AF_PACKET socket listens on every interface.  In front of the libpcap-compiled
programs goes a hand-assembled prelude that loads the frame's ifindex (the cBPF ancillary load
`SKF_AD_IFINDEX`) and looks it up among the pod interfaces of each link type:

    ld  [SKF_AD_OFF + SKF_AD_IFINDEX]
    Ethernet pod veths: a binary search over their sorted ifindexes (`jgt` halves), with leaves of
        up to LEAF `jeq`s; a leaf ends in `ja RAW search` (no match) or `ja ETHERNET program` (match)
    RAW interfaces (tun, WireGuard): the same, ending in `ja drop` or `ja RAW program`
    ret #0                                   every other interface: eth0, the bridge, lo...
    ETHERNET program (libpcap, DLT_EN10MB)
    RAW program (libpcap, DLT_RAW)

Why a search and not a chain of `jeq`s: every frame of the node (eth0 bulk included, not only pod
traffic) runs the prelude; with 250 pods a chain runs up to 251 instructions per frame, the search
about 20 (tests/capture/test_prelude.py counts them).  Conditional jumps reach only 255
instructions ahead, so every far jump is an unconditional `ja` (32-bit offset): a search node is
`jgt #k, 0, 1; ja right-half`.  The programs keep their own relative jumps: they are appended whole.
A link change builds the whole program again (microseconds, no libpcap) and SO_ATTACH_FILTER swaps
it atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

Insn = tuple[int, int, int, int]  # struct sock_filter: (code, jt, jf, k)

SKF_AD_OFF = -0x1000
SKF_AD_IFINDEX = 8
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K
JA = 0x05  # BPF_JMP | BPF_JA
RET_K = 0x06  # BPF_RET | BPF_K
BPF_MAXINSNS = 4096  # the kernel's limit on one classic program
LEAF = 8  # ifindexes compared one by one at the bottom of the search

LOAD_IFINDEX: Insn = (LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF)
DROP: Insn = (RET_K, 0, 0, 0)


class _Asm:
    """Instructions whose `ja` targets are labels until `resolve()`."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int, int, int | str]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def search(self, ifs: Sequence[int], match: str, miss: str, name: str) -> None:
        if len(ifs) <= LEAF:
            m = len(ifs)
            for i, ifindex in enumerate(ifs):
                self.code.append((JEQ_K, m - i, 0, ifindex))  # match: over the rest to `ja match`
            self.code.append((JA, 0, 0, miss))
            self.code.append((JA, 0, 0, match))
            return
        mid = len(ifs) // 2
        right = f"{name}r"
        self.code.append((JGT_K, 0, 1, ifs[mid - 1]))  # above the left half: to `ja right`
        self.code.append((JA, 0, 0, right))
        self.search(ifs[:mid], match, miss, f"{name}l")
        self.label(right)
        self.search(ifs[mid:], match, miss, right)

    def resolve(self) -> tuple[Insn, ...]:
        out: list[Insn] = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            out.append((code, jt, jf, self.labels[k] - (i + 1) if isinstance(k, str) else k))
        return tuple(out)


def per_interface(groups: Sequence[tuple[Sequence[int], Sequence[Insn]]]) -> tuple[Insn, ...]:
    """One program: frames on the ifindexes of group g run program g; all others are dropped.

    `groups`: (ifindexes, program) pairs, e.g. the Ethernet pod veths with the Ethernet program and
    the tun devices with the RAW one.  A group without interfaces leaves its program out.
    """
    used = [(sorted(set(ifs)), list(prog)) for ifs, prog in groups if ifs]
    if not used:
        return (DROP,)
    asm = _Asm()
    asm.code.append(LOAD_IFINDEX)
    for g, (ifs, _) in enumerate(used):
        asm.label(f"g{g}")
        asm.search(ifs, f"p{g}", f"g{g + 1}" if g + 1 < len(used) else "drop", f"s{g}")
    asm.label("drop")
    asm.code.append(DROP)
    for g, (_, prog) in enumerate(used):
        asm.label(f"p{g}")
        asm.code.extend(prog)
    if len(asm.code) > BPF_MAXINSNS:
        n = sum(len(i) for i, _ in used)
        raise ValueError(f"filter for {n} interfaces exceeds {BPF_MAXINSNS} instructions")
    return asm.resolve()
