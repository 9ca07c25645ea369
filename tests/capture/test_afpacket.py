"""RingSocket.drain over a TPACKET_V3 ring laid out in memory exactly as the kernel lays it out.

The live tests drive real rings; here the frames are chosen (every case of test_decode, with lying
IPv4 lengths) so the inline IPv4 path of drain() can be held to Decoder.ethernet frame by frame.
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from podwire.capture.afpacket import (
    ARPHRD_ETHER,
    PACKET_OUTGOING,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    RingSocket,
)
from podwire.capture.decode import Decoder
from podwire.model import Segment
from tests.capture.test_decode import A4, B4, CASES, ETH, frame

BLOCK = 64 * 1024
FIRST = 48  # offset_to_first_pkt: right after the block descriptor
ARPHRD_NONE = 65534  # tun: no link header
MAC = 82  # tp_mac the kernel uses for Ethernet: TPACKET_ALIGN(68 + 16) - 14
_FRAME = struct.Struct("=IIIIIIH")


def _frames() -> list[bytes]:
    out = [frame(pkt) for _, pkt, _, _ in CASES]
    syn = TCP(sport=40000, dport=80, flags="S", seq=1000)
    out += [
        frame(ETH / IP(src=A4, dst=B4, flags="DF") / syn),  # what Linux sends
        frame(ETH / IP(src=A4, dst=B4, flags="MF") / syn / (b"x" * 64)),  # first fragment: decoded
        frame(ETH / IP(src=A4, dst=B4, proto=17) / bytes(syn)),  # UDP whose bytes look like a SYN
        frame(ETH / IP(src=A4, dst=B4, proto=1) / bytes(syn)),  # ICMP, likewise
        frame(ETH / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="S", dataofs=4) / (b"x" * 8)),
        frame(Ether(type=0x0806) / IP(src=A4, dst=B4) / syn),  # not IPv4 by its ethertype
    ]
    for offset in (1, 100, 4096, 8191):  # later fragments: SYN bytes where no TCP header is
        out.append(frame(ETH / IP(src=A4, dst=B4, proto=6, frag=offset) / bytes(syn)))
    for version in (0x55, 0x65, 0x46):  # IPv4 ethertype, wrong version or IHL: never inline
        bad = bytearray(out[0])
        bad[14] = version
        out.append(bytes(bad))
    for buf in list(out):
        if buf[12:14] == b"\x08\x00":
            for total in (0, 19, 20, 39, 40, 41, 65535):  # IPv4 total length lies
                bad = bytearray(buf)
                bad[16:18] = total.to_bytes(2, "big")
                out.append(bytes(bad))
            out.append(buf[:53])  # captured shorter than the inline path's 54 bytes
    return out


def _ring(blocks: list[list[tuple[bytes, int]]], ifindex: int = 9, hatype: int = ARPHRD_ETHER) -> mmap.mmap:
    """Blocks of (frame, sll_pkttype) seen on `ifindex`, handed to user space as the kernel does."""
    ring = mmap.mmap(-1, BLOCK * len(blocks))
    for b, frames in enumerate(blocks):
        base = b * BLOCK
        used = FIRST  # blk_len: the block descriptor, then each frame with its header, aligned
        pos = base + FIRST
        for i, (buf, pkttype) in enumerate(frames):
            nxt = (MAC + len(buf) + 15) & ~15 if i < len(frames) - 1 else 0
            used += (MAC + len(buf) + 15) & ~15
            _FRAME.pack_into(ring, pos, nxt, 1_700_000_000 + i, 250_000_000, len(buf), len(buf), 1, MAC)
            struct.pack_into("=iHB", ring, pos + 48 + 4, ifindex, hatype, pkttype)
            ring[pos + MAC : pos + MAC + len(buf)] = buf
            pos += nxt
        struct.pack_into("=IIII", ring, base + 8, TP_STATUS_USER, len(frames), FIRST, used)
    return ring


def _socket_over(ring: mmap.mmap, blocks: int) -> RingSocket:
    # drain() only touches the mapping and its cursor; no socket needed while blocks are ready.
    rs = object.__new__(RingSocket)
    rs._ring, rs._block_size, rs._block_nr, rs._block, rs.unknown_link = ring, BLOCK, blocks, 0, 0
    rs.ring_bytes = 0
    return rs


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "decoder only"])
def test_drain_yields_what_decoder_ethernet_yields_for_every_frame(inline: bool) -> None:
    frames = _frames()
    tagged = [(buf, PACKET_OUTGOING if i % 3 == 0 else 0) for i, buf in enumerate(frames)]
    half = len(tagged) // 2
    blocks = [tagged[:half], tagged[half:]]
    ring = _ring(blocks)
    d = Decoder()
    out: list[Segment] = []
    rs = _socket_over(ring, 2)
    seen = rs.drain({ARPHRD_ETHER: d.ethernet}, out, 0, d.stats if inline else None)

    ref = Decoder()
    expected = []
    for block in blocks:
        for i, (buf, pkttype) in enumerate(block):
            s = ref.ethernet(buf, 0, len(buf), 1_700_000_000 + i + 0.25, 9, pkttype != PACKET_OUTGOING)
            if s is not None:
                expected.append(s)
    assert seen == len(frames)
    assert out == expected
    assert sum(1 for s in out if s.from_local is False) > 0 and sum(1 for s in out if s.from_local) > 0
    assert d.stats.as_dict() == ref.stats.as_dict()
    assert d.stats.segments == len(expected) >= 20
    rs_bytes = sum((MAC + len(buf) + 15) & ~15 for buf, _ in tagged)
    assert rs.ring_bytes == rs_bytes  # the blocks' blk_len, counted as they are drained
    for b in range(2):  # both blocks given back to the kernel
        assert struct.unpack_from("=I", ring, b * BLOCK + 8)[0] == TP_STATUS_KERNEL


def test_drain_stops_at_max_blocks_and_resumes_at_the_next_block_decoding_inline() -> None:
    # What Linux sends (DF set, TCP options): the inline path takes it; the decoder is never called.
    buf = frame(ETH / IP(src=A4, dst=B4, flags="DF") / TCP(flags="S", options=[("MSS", 1460)]))
    ring = _ring([[(buf, 0)], [(buf, 0), (buf, PACKET_OUTGOING)], [(buf, 0)]], ifindex=4)
    d = Decoder()
    called: list[int] = []

    def decode(*args: Any) -> Segment | None:
        called.append(1)
        return d.ethernet(*args)

    rs = _socket_over(ring, 3)
    out: list[Segment] = []
    assert rs.drain({ARPHRD_ETHER: decode}, out, 2, d.stats) == 3
    assert len(out) == 3
    assert rs.drain({ARPHRD_ETHER: decode}, out, 2, d.stats) == 1
    assert {s.point for s in out} == {4}
    assert [s.from_local for s in out] == [True, True, False, True]
    assert len(out) == 4 and d.stats.frames == d.stats.segments == 4
    assert not called


def test_each_frame_goes_to_the_decoder_of_its_link_type_with_its_own_interface() -> None:
    # One ring for the whole namespace: the capture point and the link type come from each
    # frame's sockaddr_ll, not from the socket.
    syn = TCP(sport=40000, dport=80, flags="S", seq=1000)
    eth = frame(ETH / IP(src=A4, dst=B4, flags="DF") / syn)
    raw_ip = bytes(IP(src=A4, dst=B4) / syn)
    blocks = [
        _ring([[(eth, 0)]], ifindex=7),
        _ring([[(raw_ip, PACKET_OUTGOING)]], ifindex=12, hatype=ARPHRD_NONE),
        _ring([[(eth, 0)]], ifindex=13, hatype=0xFFFF),  # a link type nobody decodes
    ]
    ring = mmap.mmap(-1, BLOCK * 3)
    for b, one in enumerate(blocks):
        ring[b * BLOCK : (b + 1) * BLOCK] = one[:]
    d = Decoder()
    rs = _socket_over(ring, 3)
    out: list[Segment] = []
    assert rs.drain({ARPHRD_ETHER: d.ethernet, ARPHRD_NONE: d.raw}, out, 0, d.stats) == 3
    assert [(s.point, s.from_local, s.sport) for s in out] == [(7, True, 40000), (12, False, 40000)]
    assert rs.unknown_link == 1
