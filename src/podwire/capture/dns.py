"""DNS answers -> `DnsAnswer` (queried name -> address), for naming external peers.

Hand-written because it runs on sniffed traffic: every read is bounds-checked, compression
pointers may only jump backwards and at most `_MAX_JUMPS` times, record counts are capped,
and a broken message is counted and dropped, never raised.
"""

from __future__ import annotations

import mmap
import socket
import struct

from podwire.model import DnsAnswer

Buffer = bytes | mmap.mmap

_HEADER = struct.Struct("!HHHHHH")  # id, flags, qd, an, ns, ar
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_TYPE_A = 1
_TYPE_CNAME = 5
_TYPE_AAAA = 28
_CLASS_IN = 1
_MAX_JUMPS = 16  # compression pointers followed per name
_MAX_NAME = 255  # RFC 1035 limit on a name's wire length
_MAX_ANSWERS = 64  # records read per message
_MAX_CHAIN = 16  # CNAME hops followed from the queried name


class DnsStats:
    """Counters for DNS messages that were seen but not used."""

    __slots__ = ("answers", "malformed", "not_answer")

    def __init__(self) -> None:
        self.answers = 0  # DnsAnswer values produced
        self.malformed = 0  # truncated, loops, bad labels
        self.not_answer = 0  # a query, an error rcode or no question


class _Bad(Exception):
    """Internal: the message is malformed (never leaves this module)."""


def _read_name(buf: Buffer, pos: int, end: int, start: int) -> tuple[str, int]:
    """Read a possibly compressed name at `pos`; return (lowercase dotted name, position after it).

    `start` is where the DNS message begins (pointers are relative to it).  Pointers must point
    strictly backwards, which alone rules out loops; the jump limit bounds the work anyway.
    """
    labels: list[str] = []
    after = -1
    jumps = 0
    total = 0
    while True:
        if pos >= end:
            raise _Bad
        length = buf[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= end:
                raise _Bad
            target = start + (((length & 0x3F) << 8) | buf[pos + 1])
            if after < 0:
                after = pos + 2
            jumps += 1
            if jumps > _MAX_JUMPS or target >= pos:
                raise _Bad
            pos = target
            continue
        if length & 0xC0:
            raise _Bad  # 0x40/0x80 label types are obsolete
        pos += 1
        if pos + length > end:
            raise _Bad
        total += length + 1
        if total > _MAX_NAME:
            raise _Bad
        labels.append(bytes(buf[pos : pos + length]).decode("ascii", "replace").lower())
        pos += length
    return ".".join(labels), (after if after >= 0 else pos)


def parse_answers(
    buf: Buffer, start: int, end: int, ts: float, out: list[DnsAnswer], stats: DnsStats
) -> None:
    """Append the A/AAAA answers for the queried name (following CNAMEs) found in buf[start:end]."""
    try:
        _parse(buf, start, end, ts, out, stats)
    except (_Bad, IndexError, struct.error, ValueError):
        stats.malformed += 1


def _parse(buf: Buffer, start: int, end: int, ts: float, out: list[DnsAnswer], stats: DnsStats) -> None:
    if end - start < 12:
        raise _Bad
    _id, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(buf, start)
    # A response (QR set) with rcode NOERROR, one question and at least one answer.
    if not flags & 0x8000 or flags & 0x000F or qdcount != 1 or ancount == 0:
        stats.not_answer += 1
        return
    qname, pos = _read_name(buf, start + 12, end, start)
    pos += 4  # qtype, qclass
    if pos > end:
        raise _Bad
    cnames: dict[str, str] = {}
    addresses: list[tuple[str, str, int]] = []
    try:
        _read_records(buf, pos, end, start, min(ancount, _MAX_ANSWERS), cnames, addresses)
    except (_Bad, IndexError, struct.error, ValueError):
        # Records read before the break are whole and still true (e.g. a message cut short).
        stats.malformed += 1
    # Names the queried name resolves through: qname -> cname -> cname ... (bounded, loop-safe).
    reachable = {qname}
    name = qname
    for _ in range(_MAX_CHAIN):
        nxt = cnames.get(name)
        if nxt is None or nxt in reachable:
            break
        reachable.add(nxt)
        name = nxt
    for owner, address, ttl in addresses:
        if owner in reachable:
            out.append(DnsAnswer(ts, qname, address, ttl))
            stats.answers += 1


def _read_records(
    buf: Buffer,
    pos: int,
    end: int,
    start: int,
    count: int,
    cnames: dict[str, str],
    addresses: list[tuple[str, str, int]],
) -> None:
    for _ in range(count):
        owner, pos = _read_name(buf, pos, end, start)
        if pos + 10 > end:
            raise _Bad
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, pos)
        pos += 10
        if pos + rdlen > end:
            raise _Bad
        if rclass == _CLASS_IN:
            if rtype == _TYPE_A and rdlen == 4:
                addresses.append((owner, socket.inet_ntop(socket.AF_INET, bytes(buf[pos : pos + 4])), ttl))
            elif rtype == _TYPE_AAAA and rdlen == 16:
                addresses.append((owner, socket.inet_ntop(socket.AF_INET6, bytes(buf[pos : pos + 16])), ttl))
            elif rtype == _TYPE_CNAME:
                target, _after = _read_name(buf, pos, pos + rdlen, start)
                cnames[owner] = target
        pos += rdlen
