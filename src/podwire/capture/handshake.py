"""Which TCP payloads carry a clear-text TLS handshake: the kernel part and the decoder's tap.

Design (stateless kernel, a little state in user space):

- **Kernel.** cBPF has no memory between packets, so it cannot know a connection's initial
  sequence number or which segments follow a passed one.  What it can test on every segment is
  the payload's first bytes: `FILTER_PARTS` passes a segment whose payload *starts* a handshake
  record (type 22, version 0x03xx) holding a ClientHello (1), ServerHello (2) or Certificate (11).
  Application data (type 23), continuation segments and every non-TLS payload fail on the first
  byte or two, so bulk traffic costs the kernel a few loads per segment and user space nothing
  (tests/tls/test_tls_live.py measures the frames passed during a bulk HTTPS download).
  At a pod's veth the kernel hands AF_PACKET the skb before segmentation (TSO/GSO) or after
  coalescing (GRO), so a hello or a server flight written in one go usually arrives as one frame
  that holds it whole; `SNAPLEN_TLS` covers that.  A flight that reaches the veth really split
  (from off the node without GRO merging it, or written in several writes) loses its continuation
  segments in the kernel; the assembler parses what it has and counts the unfinished message
  (`TlsStats.incomplete`; tests/tls/test_split_live.py, README "Known limits").
- **Decoder tap.** Replay (no kernel filter) and GSO frames reach the decoder with whatever
  follows; the tap passes a payload if it starts a handshake record, or if it lies inside the
  handshake records begun by an earlier passed payload of the same direction (it walks the record
  headers to know where they end).  That follow table is bounded (`MAX_FOLLOW`, oldest dropped).
"""

from __future__ import annotations

import mmap
import struct
from typing import Final

from podwire.model import TlsChunk

_RECORD_START = "{p}] == 0x16 and {q}{o1}] == 3 and ({q}{o5}] == 1 or {q}{o5}] == 2 or {q}{o5}] == 11)"
_V4_OFF = "((tcp[12] & 0xf0) >> 2)"
_V6_OFF = "((ip6[52] & 0xf0) >> 2)"
# pcap-filter clauses for bpf.FilterOptions.extra_parts (IPv6: no extension headers, as the control part)
FILTER_PARTS: Final = (
    "ip and tcp and tcp["
    + _RECORD_START.format(p=_V4_OFF, q="tcp[", o1=f"{_V4_OFF} + 1", o5=f"{_V4_OFF} + 5"),
    "ip6 and ip6[6] == 6 and ip6["
    + _RECORD_START.format(p=f"40 + {_V6_OFF}", q="ip6[", o1=f"41 + {_V6_OFF}", o5=f"45 + {_V6_OFF}"),
)
# Copy length for those frames: a 16 KiB record and its headers, or a GSO frame holding a flight
# (ServerHello + a certificate chain of a few KiB).
SNAPLEN_TLS: Final = 24 * 1024

MAX_FOLLOW: Final = 4096  # directions whose handshake records continue in later payloads
MAX_RECORD: Final = 16_384 + 2_048
_SEQ_MOD: Final = 1 << 32
_PORTS_SEQ: Final = struct.Struct("!HHI")


class HandshakeTap:
    """Collects `TlsChunk`s for the decoder (`take` empties them, like DNS answers)."""

    __slots__ = ("_out", "dropped_follow", "follow", "passed")

    def __init__(self) -> None:
        self._out: list[TlsChunk] = []
        # (src, sport, dst, dport) -> sequence number where the handshake records begun so far end;
        # the decoder calls `tcp` only for a payload starting with 0x16 or while this is not empty
        self.follow: dict[tuple[bytes, int, bytes, int], int] = {}
        self.passed = 0
        self.dropped_follow = 0

    def take(self) -> list[TlsChunk]:
        out = self._out
        if out:
            self._out = []
        return out

    def tcp(
        self,
        buf: bytes | mmap.mmap,
        t: int,
        ip_end: int,
        end: int,
        ts: float,
        point: int,
        addr: int,
        alen: int,
    ) -> None:
        """A TCP segment without SYN/FIN/RST at `buf[t:]`; the addresses at `buf[addr:]`."""
        if end - t < 20:
            return
        p = t + ((buf[t + 12] >> 4) << 2)
        pend = min(ip_end, end)
        size = pend - p
        if size <= 0:
            return
        follow = self.follow
        if buf[p] != 0x16 and not follow:
            return  # the common case in replay: bulk data, nothing being followed
        sport, dport, seq = _PORTS_SEQ.unpack_from(buf, t)
        src = bytes(buf[addr : addr + alen])
        dst = bytes(buf[addr + alen : addr + 2 * alen])
        key = (src, sport, dst, dport)
        until = follow.get(key)
        start = 0
        if until is not None:
            ahead = (until - seq) % _SEQ_MOD
            if 0 < ahead < _SEQ_MOD // 2:
                start = ahead  # inside what we follow; records may begin again at `ahead`
            else:
                del follow[key]
                until = None
        if until is None and not (buf[p] == 0x16 and (size < 2 or buf[p + 1] == 3)):
            return
        # walk the handshake records that begin in this payload
        pos = start
        while pos + 5 <= size and buf[p + pos] == 0x16 and buf[p + pos + 1] == 3:
            pos += 5 + ((buf[p + pos + 3] << 8) | buf[p + pos + 4])
        if pos > size or (pos < size and pos + 5 > size and buf[p + pos] == 0x16):
            if pos < size:  # a header cut at the end: follow at least one more record
                pos += 5 + MAX_RECORD
            if key not in follow and len(follow) >= MAX_FOLLOW:
                del follow[next(iter(follow))]
                self.dropped_follow += 1
            follow[key] = (seq + max(pos, start)) % _SEQ_MOD
        elif until is not None and pos >= start:
            follow.pop(key, None)
        self.passed += 1
        self._out.append(TlsChunk(ts, point, src, dst, sport, dport, seq, bytes(buf[p:pend])))
