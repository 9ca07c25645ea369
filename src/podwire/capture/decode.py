"""Frames -> `Segment`: Ethernet (802.1Q/802.1ad), IPv4, IPv6 (extension headers), TCP.

This is the hot path for live capture and pcap replay, so it is hand-written: precompiled
`struct.Struct`s, byte indexing, and no object built until a frame is known to be a TCP
control segment.  Every decoder takes `(buf, off, end, ts, point, from_local)` where
`buf[off:end]` is the captured frame: `buf` may be a bytes object, a pcap file's mmap or a
PACKET_MMAP ring, so frames are never copied.

A TCP segment without SYN, FIN or RST returns None as soon as its flags byte is read (replay
skips bulk data this way).  A truncated or malformed frame is counted in `DecodeStats` and
returns None; nothing here raises on traffic.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from typing import Final

from podwire.capture.dns import DnsGuard, DnsStats, parse_answers
from podwire.capture.handshake import HandshakeTap
from podwire.model import CONTROL, DnsAnswer, Segment, TlsChunk

# Where frames live: a bytes object, a pcap file's mmap or a PACKET_MMAP ring.
Buffer = bytes | mmap.mmap
# A decoder for one link type: (buf, off, end, ts, point, from_local) -> Segment | None.
FrameDecoder = Callable[[Buffer, int, int, float, int, "bool | None"], "Segment | None"]

# pcap link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW_DLT12: Final = 12  # DLT_RAW on most systems
LINKTYPE_RAW_DLT14: Final = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108  # OpenBSD loopback: NULL with the family in network order
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_LINUX_SLL2: Final = 276

ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
_VLAN_TPIDS: Final = frozenset((0x8100, 0x88A8, 0x9100))
_MAX_VLAN_TAGS: Final = 2  # 802.1ad QinQ: outer + inner

# IPv6 extension headers walked to find TCP/UDP.
_IP6_HOPOPTS: Final = 0
_IP6_ROUTING: Final = 43
_IP6_FRAGMENT: Final = 44
_IP6_AH: Final = 51
_IP6_DSTOPTS: Final = 60
_MAX_IP6_EXT: Final = 8

_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17

_TCP: Final = struct.Struct("!HHIIB")  # sport, dport, seq, ack, data offset byte
# Fast paths: addresses and TCP header in one unpack when they are contiguous (no options/ext headers).
_V4_TCP: Final = struct.Struct("!4s4sHHIIB")  # at IPv4 +12 when IHL is 5
_V6_TCP: Final = struct.Struct("!16s16sHHIIB")  # at IPv6 +8 when the next header is TCP
# Builds a Segment without NamedTuple.__new__'s Python-level call: _new(Segment, (fields...)).
_new: Callable[..., Segment] = tuple.__new__
_U16: Final = struct.Struct("!H")
_U16_LE: Final = struct.Struct("<H")
_U32_BE: Final = struct.Struct(">I")
_U32_LE: Final = struct.Struct("<I")

# Address families that BSD-style NULL/loopback headers use for IPv6 (Linux, BSDs, FreeBSD, Darwin).
_NULL_AF_INET6: Final = frozenset((10, 24, 28, 30))


class DecodeStats:
    """Why frames were dropped; plain ints so counting costs one attribute add."""

    __slots__ = (
        "data",
        "dns",
        "fragment",
        "frames",
        "malformed",
        "not_tcp",
        "segments",
        "truncated",
        "unknown_link",
    )

    def __init__(self) -> None:
        self.frames = 0  # frames handed to the decoder
        self.segments = 0  # TCP control segments produced
        self.data = 0  # TCP without SYN/FIN/RST, skipped early (not an error)
        self.not_tcp = 0  # ARP, ICMP, other UDP... (not an error)
        self.fragment = 0  # non-first IP fragments, skipped
        self.truncated = 0  # frame ends before a header it needs
        self.malformed = 0  # a header field that cannot be right
        self.unknown_link = 0  # frames on a link type we cannot decode
        self.dns = 0  # UDP port 53 answers passed to the DNS parser

    @property
    def errors(self) -> int:
        """Frames that were broken (what an operator should look at)."""
        return self.truncated + self.malformed + self.unknown_link

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Decoder:
    """Decodes frames into Segments; collects sniffed DNS answers on the side when `dns` is on."""

    __slots__ = ("_dns_out", "dns_enabled", "dns_guard", "dns_stats", "stats", "tls")

    def __init__(self, *, dns: bool = False, tls: bool = False, dns_guard: DnsGuard | None = None) -> None:
        self.stats = DecodeStats()
        self.dns_stats = DnsStats()
        self.dns_enabled = dns
        # live capture: answers only to queries seen, from trusted resolvers (replay: None)
        self.dns_guard = dns_guard
        self._dns_out: list[DnsAnswer] = []
        # TLS handshake payloads of data segments (None: data segments are skipped unread)
        self.tls = HandshakeTap() if tls else None

    def take_tls(self) -> list[TlsChunk]:
        """The TLS handshake payloads decoded since the last call."""
        return self.tls.take() if self.tls is not None else []

    def take_dns(self) -> list[DnsAnswer]:
        """The DNS answers decoded since the last call (the caller owns the list)."""
        out = self._dns_out
        if out:
            self._dns_out = []
        return out

    def for_linktype(self, linktype: int) -> FrameDecoder:
        """The decoder for a pcap link type (chosen once per file or interface, not per packet)."""
        table: dict[int, FrameDecoder] = {
            LINKTYPE_ETHERNET: self.ethernet,
            LINKTYPE_RAW: self.raw,
            LINKTYPE_RAW_DLT12: self.raw,
            LINKTYPE_RAW_DLT14: self.raw,
            LINKTYPE_LINUX_SLL: self.linux_sll,
            LINKTYPE_LINUX_SLL2: self.linux_sll2,
            LINKTYPE_NULL: self.null,
            LINKTYPE_LOOP: self.loop,
        }
        return table.get(linktype, self.unknown)

    # ---- link layers -------------------------------------------------------------------------

    def ethernet(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        stats = self.stats
        stats.frames += 1
        size = end - off
        if size >= 54 and buf[off + 12] == 0x08 and buf[off + 13] == 0x00 and buf[off + 14] == 0x45:
            # Untagged IPv4 without options: most frames.  Same checks as _ipv4/_tcp, inlined.
            total = (buf[off + 16] << 8) | buf[off + 17]
            if buf[off + 23] == _PROTO_TCP and total >= 20 and not ((buf[off + 20] & 0x1F) | buf[off + 21]):
                flags = buf[off + 47]
                if not flags & CONTROL:
                    stats.data += 1
                    tls = self.tls
                    if tls is not None:
                        # Most payloads start no handshake record and nothing is followed: no call.
                        p = off + 34 + ((buf[off + 46] >> 4) << 2)
                        if p < off + 14 + total and p < end and (buf[p] == 0x16 or tls.follow):
                            tls.tcp(buf, off + 34, off + 14 + total, end, ts, point, off + 26, 4)
                    return None
                src, dst, sport, dport, seq, ack, doff = _V4_TCP.unpack_from(buf, off + 26)
                doff = (doff >> 4) << 2
                payload = total - 20 - doff
                if doff < 20 or payload < 0:
                    stats.malformed += 1
                    return None
                stats.segments += 1
                return _new(
                    Segment, (ts, point, src, dst, sport, dport, seq, ack, flags, payload, from_local)
                )
        elif (
            size >= 74
            and buf[off + 12] == 0x86
            and buf[off + 13] == 0xDD
            and buf[off + 20] == _PROTO_TCP
            and buf[off + 14] >> 4 == 6
        ):
            flags = buf[off + 67]
            if not flags & CONTROL:
                stats.data += 1
                tls = self.tls
                if tls is not None:
                    plen = (buf[off + 18] << 8) | buf[off + 19]
                    ip_end = off + 54 + plen if plen else end
                    p = off + 54 + ((buf[off + 66] >> 4) << 2)
                    if p < ip_end and p < end and (buf[p] == 0x16 or tls.follow):
                        tls.tcp(buf, off + 54, ip_end, end, ts, point, off + 22, 16)
                return None
            src, dst, sport, dport, seq, ack, doff = _V6_TCP.unpack_from(buf, off + 22)
            doff = (doff >> 4) << 2
            plen = (buf[off + 18] << 8) | buf[off + 19]
            payload = (plen if plen else end - off - 54) - doff
            if doff < 20 or payload < 0:
                stats.malformed += 1
                return None
            stats.segments += 1
            return _new(Segment, (ts, point, src, dst, sport, dport, seq, ack, flags, payload, from_local))
        if size < 14:
            stats.truncated += 1
            return None
        etype = (buf[off + 12] << 8) | buf[off + 13]
        return self._l3(buf, off + 14, end, etype, ts, point, from_local)

    def linux_sll(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        # pkttype(2) hatype(2) halen(2) addr(8) protocol(2)
        self.stats.frames += 1
        if end - off < 16:
            self.stats.truncated += 1
            return None
        etype = (buf[off + 14] << 8) | buf[off + 15]
        return self._l3(buf, off + 16, end, etype, ts, point, from_local)

    def linux_sll2(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        # protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
        self.stats.frames += 1
        if end - off < 20:
            self.stats.truncated += 1
            return None
        etype = (buf[off] << 8) | buf[off + 1]
        return self._l3(buf, off + 20, end, etype, ts, point, from_local)

    def raw(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        self.stats.frames += 1
        if end - off < 1:
            self.stats.truncated += 1
            return None
        version = buf[off] >> 4
        if version == 4:
            return self._ipv4(buf, off, end, ts, point, from_local)
        if version == 6:
            return self._ipv6(buf, off, end, ts, point, from_local)
        self.stats.malformed += 1
        return None

    def null(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        # A 4-byte address family in the *capturing* host's byte order: accept either.
        self.stats.frames += 1
        if end - off < 4:
            self.stats.truncated += 1
            return None
        family = _U32_LE.unpack_from(buf, off)[0]
        if family > 0xFFFF:
            family = _U32_BE.unpack_from(buf, off)[0]
        return self._family(buf, off + 4, end, family, ts, point, from_local)

    def loop(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        self.stats.frames += 1
        if end - off < 4:
            self.stats.truncated += 1
            return None
        family = _U32_BE.unpack_from(buf, off)[0]
        return self._family(buf, off + 4, end, family, ts, point, from_local)

    def unknown(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None = None
    ) -> Segment | None:
        self.stats.frames += 1
        self.stats.unknown_link += 1
        return None

    def _family(
        self, buf: Buffer, off: int, end: int, family: int, ts: float, point: int, from_local: bool | None
    ) -> Segment | None:
        if family == 2:
            return self._ipv4(buf, off, end, ts, point, from_local)
        if family in _NULL_AF_INET6:
            return self._ipv6(buf, off, end, ts, point, from_local)
        self.stats.not_tcp += 1
        return None

    def _l3(
        self, buf: Buffer, off: int, end: int, etype: int, ts: float, point: int, from_local: bool | None
    ) -> Segment | None:
        tags = 0
        while etype in _VLAN_TPIDS:
            tags += 1
            if tags > _MAX_VLAN_TAGS:
                self.stats.malformed += 1
                return None
            if end - off < 4:
                self.stats.truncated += 1
                return None
            etype = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
        if etype == ETH_P_IP:
            return self._ipv4(buf, off, end, ts, point, from_local)
        if etype == ETH_P_IPV6:
            return self._ipv6(buf, off, end, ts, point, from_local)
        self.stats.not_tcp += 1
        return None

    # ---- IP ----------------------------------------------------------------------------------

    def _ipv4(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None
    ) -> Segment | None:
        if end - off < 20:
            self.stats.truncated += 1
            return None
        vihl = buf[off]
        ihl = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or ihl < 20:
            self.stats.malformed += 1
            return None
        total = (buf[off + 2] << 8) | buf[off + 3]
        if total < ihl:
            self.stats.malformed += 1
            return None
        if (buf[off + 6] & 0x1F) | buf[off + 7]:  # fragment offset != 0: no L4 header here
            self.stats.fragment += 1
            return None
        proto = buf[off + 9]
        l4 = off + ihl
        # The IP length, not the capture length, bounds the payload (Ethernet pads short frames).
        ip_end = off + total
        if proto == _PROTO_TCP:
            return self._tcp(buf, l4, ip_end, end, ts, point, from_local, off + 12, 4)
        if proto == _PROTO_UDP and self.dns_enabled:
            self._udp(buf, l4, ip_end, end, ts, off + 12, 4)
            return None
        self.stats.not_tcp += 1
        return None

    def _ipv6(
        self, buf: Buffer, off: int, end: int, ts: float, point: int, from_local: bool | None
    ) -> Segment | None:
        if end - off < 40:
            self.stats.truncated += 1
            return None
        if buf[off] >> 4 != 6:
            self.stats.malformed += 1
            return None
        plen = (buf[off + 4] << 8) | buf[off + 5]
        nxt = buf[off + 6]
        l4 = off + 40
        # Payload length 0 means a jumbogram (hop-by-hop option): fall back to the capture length.
        ip_end = l4 + plen if plen else end
        for _ in range(_MAX_IP6_EXT):
            if nxt == _PROTO_TCP:
                return self._tcp(buf, l4, ip_end, end, ts, point, from_local, off + 8, 16)
            if nxt == _PROTO_UDP:
                if self.dns_enabled:
                    self._udp(buf, l4, ip_end, end, ts, off + 8, 16)
                    return None
                break
            if nxt in (_IP6_HOPOPTS, _IP6_ROUTING, _IP6_DSTOPTS):
                if end - l4 < 2:
                    self.stats.truncated += 1
                    return None
                nxt, hlen = buf[l4], (buf[l4 + 1] + 1) << 3
            elif nxt == _IP6_FRAGMENT:
                if end - l4 < 8:
                    self.stats.truncated += 1
                    return None
                if _U16.unpack_from(buf, l4 + 2)[0] & 0xFFF8:
                    self.stats.fragment += 1
                    return None
                nxt, hlen = buf[l4], 8
            elif nxt == _IP6_AH:
                if end - l4 < 2:
                    self.stats.truncated += 1
                    return None
                nxt, hlen = buf[l4], (buf[l4 + 1] + 2) << 2
            else:
                break  # ICMPv6, no-next-header, ESP...
            l4 += hlen
        else:
            self.stats.malformed += 1  # more extension headers than any sane packet carries
            return None
        self.stats.not_tcp += 1
        return None

    # ---- L4 ----------------------------------------------------------------------------------

    def _tcp(
        self,
        buf: Buffer,
        t: int,
        ip_end: int,
        end: int,
        ts: float,
        point: int,
        from_local: bool | None,
        addr: int,
        alen: int,
    ) -> Segment | None:
        if end - t < 14:
            self.stats.truncated += 1
            return None
        flags = buf[t + 13]
        if not flags & CONTROL:
            self.stats.data += 1  # the cheap exit replay depends on
            if self.tls is not None:
                self.tls.tcp(buf, t, ip_end, end, ts, point, addr, alen)
            return None
        if end - t < 20:
            self.stats.truncated += 1
            return None
        sport, dport, seq, ack, doff = _TCP.unpack_from(buf, t)
        doff = (doff >> 4) << 2
        payload = ip_end - t - doff
        if doff < 20 or payload < 0:
            self.stats.malformed += 1
            return None
        self.stats.segments += 1
        src = bytes(buf[addr : addr + alen])
        dst = bytes(buf[addr + alen : addr + 2 * alen])
        return _new(Segment, (ts, point, src, dst, sport, dport, seq, ack, flags, payload, from_local))

    def _udp(self, buf: Buffer, u: int, ip_end: int, end: int, ts: float, addr: int, alen: int) -> None:
        if end - u < 8:
            self.stats.truncated += 1
            return
        sport = (buf[u] << 8) | buf[u + 1]
        dport = (buf[u + 2] << 8) | buf[u + 3]
        guard = self.dns_guard
        if sport != 53 and (guard is None or dport != 53):  # queries matter only to the guard
            self.stats.not_tcp += 1
            return
        self.stats.dns += 1
        flow = (bytes(buf[addr : addr + alen]), sport, bytes(buf[addr + alen : addr + 2 * alen]), dport)
        parse_answers(buf, u + 8, min(ip_end, end), ts, self._dns_out, self.dns_stats, guard, flow)
