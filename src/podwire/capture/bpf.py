"""The kernel filter: only TCP control segments (and optionally DNS answers) reach Python.

The expression is built from named parts so that later features (TLS handshake records) add a
part instead of rewriting the filter.  Each part is written once and then repeated behind one
VLAN tag (libpcap's `vlan` shifts every later offset by 4), so tagged frames that the kernel did
not untag are judged the same way.

IPv4 uses libpcap's `tcp[tcpflags]`, which follows the IHL and skips non-first fragments.
libpcap cannot apply `tcp[...]` to IPv6, so IPv6 tests the fixed offsets of a packet *without
extension headers*: `ip6[6] == 6` (next header is TCP) and `ip6[53]` (40-byte IPv6 header + the
TCP flags byte at 13).  TCP behind IPv6 extension headers is rare and is not passed; the
decoder would handle it if it were.

The expression is compiled once, at construction, by libpcap through scapy's `compile_filter`
(Debian's libpcap0.8), in a short-lived child interpreter (`python -m podwire.capture.bpfc`, no
shell): scapy costs ~40 MB of resident memory that the agent would otherwise keep for its whole
life to use once.  The child prints the instructions; the result is cached per expression and
link type.  The accept value (how many bytes the kernel copies) is replaced by our
snap length: headers are all we read, and a GSO'd FIN can otherwise copy 64 KiB into the ring.

One accept length per kind of frame.  A classic program returns one number per verdict, and
libpcap compiles `a or b` into one program with one `ret #snaplen`; with TLS on, that would copy
every SYN/FIN/RST up to 24 KiB.  So the filter is a chain of *stages*, each compiled on its own
and each with its own accept length: TCP control (`SNAPLEN_CONTROL`), then DNS and the extra parts
(TLS handshake records) together (`SNAPLEN_DNS`, or `extra_snaplen` if larger).  A stage's reject (`ret #0`)
becomes `ja` to the next stage (BPF_JA has a 32-bit offset; a conditional jump reaches only 255
ahead); the last stage keeps its `ret #0`.  The stages run in this order because a load past the
end of the frame ends the whole program with 0: the TLS stage loads payload bytes, which a bare
SYN or FIN does not have, so it must come after the control stage has taken those.  The order is
also the one libpcap used for the single expression, so every verdict is the same as before; only
the length changes.  The chain stays one self-contained program (relative jumps only), so the
interface prelude (prelude.py) appends it whole as before.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import subprocess
import sys
from dataclasses import dataclass

_TCP4_CONTROL = "(ip and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)"
_TCP6_CONTROL = "(ip6 and ip6[6] == 6 and ip6[53] & 0x07 != 0)"  # FIN|SYN|RST = 0x07
_DNS_ANSWERS = "(udp src port 53)"
_DNS_QUERIES = "(udp dst port 53)"

BPF_RET_K = 0x06  # BPF_RET | BPF_K
BPF_JA = 0x05  # BPF_JMP | BPF_JA
_INSN = struct.Struct("=HBBI")  # struct sock_filter
_FPROG = struct.Struct("=HxxxxxxQ")  # struct sock_fprog on 64-bit: len, pad, filter pointer
SO_ATTACH_FILTER = 26  # asm-generic/socket.h (Python's socket module lacks it)

SNAPLEN_CONTROL = 512  # Ethernet + 2 VLAN tags + IPv6 + extension headers + 60-byte TCP header
SNAPLEN_DNS = 4096  # DNS answers over UDP (EDNS0 payloads up to 4 KiB)


class BpfError(RuntimeError):
    """The filter could not be compiled (libpcap missing or a bad expression)."""


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """What the kernel passes besides TCP control segments.  Chosen once, at start."""

    dns_answers: bool = False
    dns_queries: bool = False  # queries too, for DnsGuard to match answers against
    extra_parts: tuple[str, ...] = ()  # more pcap-filter clauses, ORed in (e.g. TLS handshake records)
    extra_snaplen: int = SNAPLEN_CONTROL  # bytes copied of a frame that only an extra part accepts


@dataclass(frozen=True, slots=True)
class Stage:
    """One link of the chain: its pcap-filter text, its accept length, its first instruction."""

    expression: str
    snaplen: int
    start: int


@dataclass(frozen=True, slots=True)
class BpfProgram:
    expression: str
    instructions: tuple[tuple[int, int, int, int], ...]  # (code, jt, jf, k)
    snaplen: int  # the largest accept length
    stages: tuple[Stage, ...] = ()

    def packed(self) -> bytes:
        """The `struct sock_filter` array for SO_ATTACH_FILTER."""
        return b"".join(_INSN.pack(*insn) for insn in self.instructions)

    def attach(self, sock_fd: int) -> None:
        """SO_ATTACH_FILTER on an open socket (the kernel copies the program; ours can go)."""
        import socket

        code = ctypes.create_string_buffer(self.packed())
        fprog = _FPROG.pack(len(self.instructions), ctypes.addressof(code))
        sock = socket.socket(fileno=sock_fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        finally:
            sock.detach()  # the fd belongs to the caller
        del code


LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 12  # DLT_RAW: interfaces without a link header (tun, WireGuard)


def stage_parts(options: FilterOptions) -> list[tuple[list[str], int]]:
    """The chain's stages as (pcap-filter clauses, accept length), in the order they run."""
    stages = [([_TCP4_CONTROL, _TCP6_CONTROL], SNAPLEN_CONTROL)]
    dns = ([_DNS_ANSWERS] if options.dns_answers else []) + ([_DNS_QUERIES] if options.dns_queries else [])
    extra = [f"({part})" for part in options.extra_parts]
    if dns or extra:
        # One stage for both: with a DNS stage of its own, a rejected TCP data segment (the bulk of
        # the traffic) ran 31 instructions, here 27 (one libpcap program for everything: 17).  The
        # copy is min(frame, snap length), so a DNS answer (<= 4 KiB) costs the same either way.
        snaplen = max(SNAPLEN_DNS if dns else 0, options.extra_snaplen if extra else 0)
        stages.append((dns + extra, snaplen))
    return stages


def _text(parts: list[str], vlan: bool) -> str:
    """The parts ORed, then (Ethernet) the same parts behind one VLAN tag."""
    core = " or ".join(parts)
    return f"{core} or (vlan and ({core}))" if vlan else core


def expression(options: FilterOptions, vlan: bool = True) -> str:
    """The whole filter as one pcap-filter text (what the chain of stages accepts, for humans)."""
    return _text([part for parts, _ in stage_parts(options) for part in parts], vlan)


def compile_program(options: FilterOptions, linktype: int = LINKTYPE_ETHERNET) -> BpfProgram:
    """Compile each stage with libpcap for `linktype` (EN10MB or RAW) and chain them (module doc)."""
    vlan = linktype == LINKTYPE_ETHERNET
    parts = stage_parts(options)
    insns: list[tuple[int, int, int, int]] = []
    stages: list[Stage] = []
    for n, (clauses, snaplen) in enumerate(parts):
        text = _text(clauses, vlan)
        compiled = _compiled(text, linktype)
        last = n == len(parts) - 1
        stages.append(Stage(text, snaplen, len(insns)))
        for i, (code, jt, jf, k) in enumerate(compiled):
            if code == BPF_RET_K and k != 0:
                insns.append((code, jt, jf, snaplen))
            elif code == BPF_RET_K and not last:
                insns.append((BPF_JA, 0, 0, len(compiled) - (i + 1)))  # reject: on to the next stage
            else:
                insns.append((code, jt, jf, k))
    return BpfProgram(expression(options, vlan), tuple(insns), max(s for _, s in parts), tuple(stages))


@functools.lru_cache(maxsize=16)
def _compiled(text: str, linktype: int) -> tuple[tuple[int, int, int, int], ...]:
    """libpcap's program for `text`, compiled in a child interpreter (see the module doc)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "podwire.capture.bpfc", str(linktype)],
            input=text,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BpfError(f"cannot compile the capture filter: {exc}") from None
    if out.returncode != 0:
        problem = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        raise BpfError(f"cannot compile the capture filter (is libpcap0.8 installed?): {problem}")
    try:
        insns = tuple(_instruction(line) for line in out.stdout.splitlines())
    except ValueError:
        raise BpfError("cannot compile the capture filter: the compiler's output is not a program") from None
    if not insns:
        raise BpfError("cannot compile the capture filter: an empty program")
    return insns


def _instruction(line: str) -> tuple[int, int, int, int]:
    code, jt, jf, k = (int(v) for v in line.split())
    return code, jt, jf, k
