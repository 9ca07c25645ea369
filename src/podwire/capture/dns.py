"""DNS answers -> `DnsAnswer` (queried name -> address), for naming external peers.

Hand-written because it runs on sniffed traffic: every read is bounds-checked, compression
pointers may only jump backwards and at most `_MAX_JUMPS` times, record counts are capped,
and a broken message is counted and dropped, never raised.
"""

from __future__ import annotations

import ipaddress
import mmap
import socket
import struct
from collections.abc import Iterable
from typing import Any

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

    __slots__ = (
        "answers",
        "malformed",
        "not_answer",
        "queries",
        "rejected_unsolicited",
        "rejected_untrusted",
    )

    def __init__(self) -> None:
        self.answers = 0  # DnsAnswer values produced
        self.malformed = 0  # truncated, loops, bad labels
        self.not_answer = 0  # a query, an error rcode, no question, or no address for the question
        self.queries = 0  # queries to a trusted resolver, remembered for their answer (DnsGuard)
        self.rejected_untrusted = 0  # answers from an address that is not a trusted resolver
        self.rejected_unsolicited = 0  # answers matching no query seen (id, 4-tuple, question)

    @property
    def rejected(self) -> int:
        return self.rejected_untrusted + self.rejected_unsolicited


REJECT_UNTRUSTED = "untrusted"  # reasons an answer was not used (podwire.agent.dns.rejected)
REJECT_UNSOLICITED = "unsolicited"

# (client address, client port, resolver address, message id, question name)
_QueryKey = tuple[bytes, int, bytes, int, str]


class DnsGuard:
    """Answers name addresses only if they answer a query that was seen, from a trusted resolver.

    Without it any pod could send an unsolicited answer from port 53 ("api.github.com A
    10.232.77.77") and rename an address for every pod on the node.  A query to a trusted
    resolver is remembered for `window_s` (bounded: the oldest are forgotten first); its answer
    must come from that resolver to that client port, with the same id and question, and is
    used once.  `trusted` holds packed addresses (4 or 16 bytes); None trusts any resolver
    (the query must still match).  Sans-I/O: time is the packets' own.
    """

    __slots__ = ("_pending", "evicted", "max_pending", "trusted", "window_s")

    def __init__(
        self, trusted: frozenset[bytes] | None, *, max_pending: int = 65_536, window_s: float = 10.0
    ) -> None:
        self.trusted = trusted
        self.max_pending = max(1, max_pending)
        self.window_s = window_s
        self._pending: dict[_QueryKey, float] = {}  # insertion order = time order
        self.evicted = 0  # queries forgotten to stay under max_pending

    @classmethod
    def from_addresses(cls, addresses: Iterable[str] | None, **kw: Any) -> DnsGuard:
        if addresses is None:
            return cls(None, **kw)
        return cls(frozenset(ipaddress.ip_address(a).packed for a in addresses), **kw)

    def __len__(self) -> int:
        return len(self._pending)

    def query(self, key: _QueryKey, ts: float) -> bool:
        if self.trusted is not None and key[2] not in self.trusted:
            return False
        self.expire(ts)
        pending = self._pending
        pending.pop(key, None)  # a retransmission: keep the newest time, at the end
        pending[key] = ts + self.window_s
        while len(pending) > self.max_pending:
            del pending[next(iter(pending))]
            self.evicted += 1
        return True

    def answer(self, key: _QueryKey, ts: float, stats: DnsStats) -> bool:
        if self.trusted is not None and key[2] not in self.trusted:
            stats.rejected_untrusted += 1
            return False
        expires = self._pending.pop(key, None)
        if expires is None or ts > expires:
            stats.rejected_unsolicited += 1
            return False
        return True

    def expire(self, now: float) -> None:
        """Forget queries whose answer never came (oldest first: they are in time order)."""
        pending = self._pending
        while pending:
            key = next(iter(pending))
            if pending[key] >= now:
                break
            del pending[key]


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf (none if it cannot be read)."""
    out: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
            except ValueError:
                continue
    return tuple(dict.fromkeys(out))


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
    buf: Buffer,
    start: int,
    end: int,
    ts: float,
    out: list[DnsAnswer],
    stats: DnsStats,
    guard: DnsGuard | None = None,
    flow: tuple[bytes, int, bytes, int] = (b"", 0, b"", 0),
) -> None:
    """Append the A/AAAA answers for the queried name (following CNAMEs) found in buf[start:end].

    With a `guard`, `flow` is the packet's (source address, source port, destination address,
    destination port): queries are remembered, and only answers to them are read."""
    try:
        _parse(buf, start, end, ts, out, stats, guard, flow)
    except (_Bad, IndexError, struct.error, ValueError):
        stats.malformed += 1


def _parse(
    buf: Buffer,
    start: int,
    end: int,
    ts: float,
    out: list[DnsAnswer],
    stats: DnsStats,
    guard: DnsGuard | None,
    flow: tuple[bytes, int, bytes, int],
) -> None:
    if end - start < 12:
        raise _Bad
    msg_id, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(buf, start)
    if guard is not None and not flags & 0x8000:  # a query: remember it for its answer
        if qdcount == 1 and flow[3] == 53:
            qname, _pos = _read_name(buf, start + 12, end, start)
            if guard.query((flow[0], flow[1], flow[2], msg_id, qname), ts):
                stats.queries += 1
                return
        stats.not_answer += 1
        return
    # A response (QR set) with rcode NOERROR, one question and at least one answer.
    if not flags & 0x8000 or flags & 0x000F or qdcount != 1 or ancount == 0:
        stats.not_answer += 1
        return
    qname, pos = _read_name(buf, start + 12, end, start)
    if guard is not None and not guard.answer((flow[2], flow[3], flow[0], msg_id, qname), ts, stats):
        return
    pos += 4  # qtype, qclass
    if pos > end:
        raise _Bad
    cnames: dict[str, str] = {}
    addresses: list[tuple[str, str, int]] = []
    broken = False
    try:
        _read_records(buf, pos, end, start, min(ancount, _MAX_ANSWERS), cnames, addresses)
    except (_Bad, IndexError, struct.error, ValueError):
        # Records read before the break are whole and still true (e.g. a message cut short).
        stats.malformed += 1
        broken = True
    # Names the queried name resolves through: qname -> cname -> cname ... (bounded, loop-safe).
    reachable = {qname}
    name = qname
    for _ in range(_MAX_CHAIN):
        nxt = cnames.get(name)
        if nxt is None or nxt in reachable:
            break
        reachable.add(nxt)
        name = nxt
    found = 0
    for owner, address, ttl in addresses:
        if owner in reachable:
            out.append(DnsAnswer(ts, qname, address, ttl))
            found += 1
    stats.answers += found
    if not found and not broken:
        stats.not_answer += 1  # a whole response whose records give no address for its question


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
