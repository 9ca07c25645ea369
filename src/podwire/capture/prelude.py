"""The kernel filter's interface check: one socket per namespace, frames only from pod interfaces.

The namespace's one AF_PACKET socket listens on every interface.  In front of the libpcap-compiled
programs goes a hand-assembled prelude that loads the frame's ifindex (the cBPF ancillary load
`SKF_AD_IFINDEX`) and compares it with every pod interface of each link type:

    ld  [SKF_AD_OFF + SKF_AD_IFINDEX]
    jeq #ifindex_1, -> ja ETHERNET          (up to 250 compares, then the `ja`)
    ...
    jeq #ifindex_n, -> ja RAW
    ret #0                                   every other interface: eth0, the bridge, lo...
    ETHERNET program (libpcap, DLT_EN10MB)
    RAW program (libpcap, DLT_RAW: tun, WireGuard)

A conditional jump reaches at most 255 instructions ahead, so the compares come in chunks of 250,
each ending in an unconditional `ja` (32-bit offset) to its program.  The programs keep their own
relative jumps unchanged: they are appended whole.  A link change builds the whole program again
(microseconds) and SO_ATTACH_FILTER swaps it atomically; libpcap runs only once, at start.

A linear chain costs one compare per pod interface for a frame on an interface that is not
captured, in the kernel's JIT; at 250 pods that is well under a microsecond per frame.
"""

from __future__ import annotations

from collections.abc import Sequence

Insn = tuple[int, int, int, int]  # struct sock_filter: (code, jt, jf, k)

SKF_AD_OFF = -0x1000
SKF_AD_IFINDEX = 8
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JA = 0x05  # BPF_JMP | BPF_JA
RET_K = 0x06  # BPF_RET | BPF_K
BPF_MAXINSNS = 4096  # the kernel's limit on one classic program
CHUNK = 250  # compares before a `ja`: jt must stay <= 255

LOAD_IFINDEX: Insn = (LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF)
DROP: Insn = (RET_K, 0, 0, 0)


def per_interface(groups: Sequence[tuple[Sequence[int], Sequence[Insn]]]) -> tuple[Insn, ...]:
    """One program: frames on the ifindexes of group g run program g; all others are dropped.

    `groups`: (ifindexes, program) pairs, e.g. the Ethernet pod veths with the Ethernet program and
    the tun devices with the RAW one.  A group without interfaces leaves its program out.
    """
    used = [(sorted(set(ifs)), list(prog)) for ifs, prog in groups if ifs]
    if not used:
        return (DROP,)
    prelude_len = 1 + sum(len(ifs) + -(-len(ifs) // CHUNK) for ifs, _ in used) + 1
    out: list[Insn] = [LOAD_IFINDEX]
    start = prelude_len  # where the next group's program begins
    for ifs, prog in used:
        for c in range(0, len(ifs), CHUNK):
            chunk = ifs[c : c + CHUNK]
            m = len(chunk)
            for t, ifindex in enumerate(chunk):
                # match: jump to this chunk's `ja`; no match: the next compare, or past the `ja`
                out.append((JEQ_K, m - t - 1, 1 if t == m - 1 else 0, ifindex))
            out.append((JA, 0, 0, start - (len(out) + 1)))
        start += len(prog)
    out.append(DROP)
    for _, prog in used:
        out.extend(prog)
    if len(out) > BPF_MAXINSNS:
        raise ValueError(f"filter for {sum(len(i) for i, _ in used)} interfaces exceeds {BPF_MAXINSNS}")
    return tuple(out)
