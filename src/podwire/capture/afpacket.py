"""One AF_PACKET socket per network namespace, filtered in the kernel, read through a TPACKET_V3 ring.

The socket listens on every interface of its namespace (bound to ifindex 0); the kernel filter
(capture/prelude.py) keeps only frames of the pod interfaces.  Each frame's sockaddr_ll says which
interface it was seen on (sll_ifindex: the capture point), its link type (sll_hatype: which
decoder) and its direction (sll_pkttype).

The kernel fills blocks of the shared ring with many frames and wakes us once per block (or
after `retire_ms` when traffic is sparse); `drain()` walks every block handed to user space,
decodes the frames in place (no copy out of the ring) and gives each block back.

Layout (linux/if_packet.h):
  tpacket_block_desc: version u32, offset_to_priv u32, then tpacket_hdr_v1:
      block_status u32 @8, num_pkts u32 @12, offset_to_first_pkt u32 @16, blk_len u32 @20, ...
  tpacket3_hdr: tp_next_offset u32 @0, tp_sec @4, tp_nsec @8, tp_snaplen @12, tp_len @16,
      tp_status @20, tp_mac u16 @24, tp_net u16 @26, hv1 ... (48 bytes), then sockaddr_ll
      (TPACKET_ALIGN(48) = 48): sll_ifindex i32 @48+4, sll_hatype u16 @48+8, sll_pkttype u8 @48+10.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Final

from podwire.capture.bpf import BpfProgram
from podwire.capture.decode import DecodeStats
from podwire.model import CONTROL, Segment

SOL_PACKET: Final = 263
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
TPACKET_V3: Final = 2
ETH_P_ALL: Final = 0x0003
PACKET_OUTGOING: Final = 4
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
TP_STATUS_BLK_TMO: Final = 1 << 5
ARPHRD_ETHER: Final = 1

_REQ3 = struct.Struct("=7I")  # block_size, block_nr, frame_size, frame_nr, retire_blk_tov, priv, feature
_BLOCK_HDR = struct.Struct("=IIII")  # block_status, num_pkts, offset_to_first_pkt, blk_len (at +8)
# next_offset, sec, nsec, snaplen, len, status, mac (+ tp_net, hv1), then sockaddr_ll: ifindex @52,
# hatype @56, pkttype @58
_FRAME_HDR = struct.Struct("=IIIIIIH26xiHB")
# Untagged IPv4 + TCP, the frames the inline path takes: ethertype @12, version/IHL @14, total
# length @16, flags/fragment offset @20, protocol @23, addresses @26, TCP @34 (ports, seq, ack,
# data offset byte, flags byte): one unpack instead of a byte index per field.
_ETH_V4_TCP = struct.Struct("!12xHBxHxxHxB2x4s4sHHIIBB")
_U32 = struct.Struct("=I")
_STATS_V3 = struct.Struct("=III")  # tp_packets (incl. drops), tp_drops, tp_freeze_q_cnt
_FRAME_SIZE = 2048  # only constrains frame_nr in V3 (frames are packed variably)

# (buf, off, end, ts, point, from_local) -> Segment | None
Decode = Callable[[mmap.mmap, int, int, float, int, bool | None], "Segment | None"]
# Builds a Segment without NamedTuple.__new__'s Python-level call: _new(Segment, (fields...)).
_new: Callable[..., Segment] = tuple.__new__


class _SockaddrLL(ctypes.Structure):
    _fields_ = [
        ("sll_family", ctypes.c_ushort),
        ("sll_protocol", ctypes.c_ushort),
        ("sll_ifindex", ctypes.c_int),
        ("sll_hatype", ctypes.c_ushort),
        ("sll_pkttype", ctypes.c_ubyte),
        ("sll_halen", ctypes.c_ubyte),
        ("sll_addr", ctypes.c_ubyte * 8),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class RingSocket:
    """A filtered AF_PACKET socket with a mapped TPACKET_V3 RX ring: on every interface of its
    namespace (ifindex 0, the default) or on one."""

    __slots__ = (
        "_block",
        "_block_nr",
        "_block_size",
        "_ring",
        "drops",
        "kernel_packets",
        "ring_bytes",
        "sock",
        "unknown_link",
    )

    def __init__(
        self,
        program: BpfProgram,
        *,
        block_kib: int = 256,
        blocks: int = 16,
        retire_ms: int = 10,
        ifindex: int = 0,
    ) -> None:
        self.drops = 0
        self.kernel_packets = 0
        self.ring_bytes = 0
        self.unknown_link = 0  # frames of a link type with no decoder (counted as decode errors)
        self._block_size = block_kib * 1024
        self._block_nr = blocks
        self._block = 0
        # Protocol 0: nothing is queued until bind(), so no unfiltered frame slips in first.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            program.attach(self.sock.fileno())
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_nr = self._block_size * blocks // _FRAME_SIZE
            req = _REQ3.pack(self._block_size, blocks, _FRAME_SIZE, frame_nr, retire_ms, 0, 0)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._ring = mmap.mmap(
                self.sock.fileno(),
                self._block_size * blocks,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
            self._bind(ifindex)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def _bind(self, ifindex: int) -> None:
        # Python's AF_PACKET bind() takes a name (and refuses ""): bind by index, 0 = every interface.
        addr = _SockaddrLL()
        addr.sll_family = socket.AF_PACKET
        addr.sll_protocol = socket.htons(ETH_P_ALL)
        addr.sll_ifindex = ifindex
        if _libc.bind(self.sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bind AF_PACKET to ifindex {ifindex}: {os.strerror(err)}")

    def set_filter(self, program: BpfProgram) -> None:
        """Replace the kernel filter (SO_ATTACH_FILTER swaps it atomically; no frame goes unjudged)."""
        program.attach(self.sock.fileno())

    def pending(self) -> int:
        """Frames in the block the kernel is filling now (not yet handed to user space)."""
        status, num, _first, _len = _BLOCK_HDR.unpack_from(self._ring, self._block * self._block_size + 8)
        return 0 if status & TP_STATUS_USER else int(num)

    def ready(self) -> bool:
        """A block is handed to user space and waits for drain()."""
        return bool(_U32.unpack_from(self._ring, self._block * self._block_size + 8)[0] & TP_STATUS_USER)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(
        self,
        decoders: Mapping[int, Decode],
        out: list[Segment],
        max_blocks: int = 0,
        inline: DecodeStats | None = None,
    ) -> int:
        """Decode every frame of every block the kernel has handed over; return frames seen.

        `decoders`: sll_hatype (ARPHRD_*) -> the decoder for that link type; frames of any other
        type are counted in `unknown_link`.  Each block is given back (block_status =
        TP_STATUS_KERNEL) as soon as it is walked.  `max_blocks` > 0 bounds one call so a flood
        cannot starve the netlink events.  `inline`: the stats of the Ethernet decoder
        decoders[ARPHRD_ETHER] is; then untagged IPv4 TCP control segments on Ethernet (nearly
        every frame the filter passes) are decoded here, with Decoder.ethernet's checks and
        counters, without a call per frame; anything else still goes to its decoder.
        """
        ring = self._ring
        size = self._block_size
        nr = self._block_nr
        block = self._block
        frames = 0
        walked = 0
        fast = 0
        unknown = 0
        unpack_block = _BLOCK_HDR.unpack_from
        unpack_frame = _FRAME_HDR.unpack_from
        unpack_v4 = _ETH_V4_TCP.unpack_from
        decoder_for = decoders.get
        append = out.append
        seg_type = Segment
        new = _new
        while True:
            base = block * size
            status, num, first, used = unpack_block(ring, base + 8)
            if not status & TP_STATUS_USER:
                break
            self.ring_bytes += (
                used - first
            )  # the frames and their headers (what the filter's snap lengths cost)
            pos = base + first
            for _ in range(num):
                nxt, sec, nsec, snaplen, _len, _st, mac, point, hatype, pkttype = unpack_frame(ring, pos)
                start = pos + mac
                if hatype == ARPHRD_ETHER and inline is not None and snaplen >= 54:
                    etype, vihl, total, frag, proto, src, dst, sp, dp, seq, ack, doff, flags = unpack_v4(
                        ring, start
                    )
                    if (
                        etype == 0x0800
                        and vihl == 0x45
                        and proto == 6
                        and flags & CONTROL
                        and not frag & 0x1FFF
                    ):
                        doff = (doff >> 4) << 2
                        payload = total - 20 - doff  # < 0 also when total < 20: decode() counts it
                        if doff >= 20 and payload >= 0:
                            ts = sec + nsec * 1e-9
                            local = pkttype != PACKET_OUTGOING
                            append(
                                new(seg_type, (ts, point, src, dst, sp, dp, seq, ack, flags, payload, local))
                            )
                            fast += 1
                            pos += nxt
                            continue
                decode = decoder_for(hatype)
                if decode is None:
                    unknown += 1
                else:
                    seg = decode(
                        ring, start, start + snaplen, sec + nsec * 1e-9, point, pkttype != PACKET_OUTGOING
                    )
                    if seg is not None:
                        append(seg)
                pos += nxt
            frames += num
            _U32.pack_into(ring, base + 8, TP_STATUS_KERNEL)
            block = (block + 1) % nr
            walked += 1
            if walked == max_blocks:
                break
        self._block = block
        self.unknown_link += unknown
        if inline is not None:
            inline.frames += fast
            inline.segments += fast
        if walked == 0:
            # Woken with nothing to read: an error (ENETDOWN when the link went down) is pending
            # and would wake a level-triggered epoll forever; reading SO_ERROR clears it.
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return frames

    def read_stats(self) -> tuple[int, int]:
        """PACKET_STATISTICS (the kernel resets them on read): add to the totals, return (packets, drops)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
        packets, drops, _freeze = _STATS_V3.unpack(raw)
        self.kernel_packets += packets
        self.drops += drops
        return self.kernel_packets, self.drops

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.read_stats()
        # A Segment never holds a view into the ring, so nothing should pin it; never fail close.
        with contextlib.suppress(BufferError, ValueError):
            self._ring.close()
        self.sock.close()
