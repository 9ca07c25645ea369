"""Per-connection reassembly of clear-text handshakes -> `TlsInfo` joined to connection records.

Sans-I/O like the tracker: `feed` takes the `TlsChunk`s of a batch, `take` hands the facts of one
connection over (when its record is made) and forgets them, `expire` drops state of connections
that never got a record.  Bounded everywhere:

- at most `max_connections` connections hold state (the oldest goes first, counted `evicted`);
- per direction at most `max_handshake_bytes` are buffered; beyond that the direction is given
  up (counted `oversize`) and its buffers are freed;
- a direction stops at its first non-handshake record (ChangeCipherSpec, alert, application
  data): everything after it is encrypted, so nothing after it is kept.

Chunks of one direction are appended in TCP sequence order from the first chunk on (which must
start a handshake record).  A retransmission is trimmed; a gap is bridged only by a chunk that
itself starts a record (the filter passes those), otherwise the chunk is dropped (`gap`).
Every way a handshake fails to parse is a counter in `TlsStats`; nothing here raises on traffic.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from podwire.model import ConnectionRecord, TlsChunk, TlsInfo
from podwire.tls import fingerprints
from podwire.tls.certificate import CertificateFacts, parse_der
from podwire.tls.handshake import (
    CONTENT_HANDSHAKE,
    HS_CERTIFICATE,
    HS_CLIENT_HELLO,
    HS_SERVER_HELLO,
    ClientHello,
    ServerHello,
    TlsError,
    is_grease,
    leaf_certificate,
    parse_client_hello,
    parse_server_hello,
    partial_server_name,
)
from podwire.tls.names import DEPRECATED_VERSIONS, cipher_name, version_name

HS_SERVER_HELLO_DONE: Final = 14
MAX_RECORD: Final = 16_384 + 2_048  # TLSCiphertext.length upper bound (RFC 8446 5.2)
TLS13: Final = 0x0304
_SEQ_MOD: Final = 1 << 32
# A hello must begin within this many bytes of its stream's start (the ISN in the record): at 0
# normally, a little later after a STARTTLS preamble.  The kernel filter cannot know the offset
# and passes any segment that starts like a handshake record; this keeps a lookalike deep in a
# long connection's data from being taken for its handshake.
MAX_STREAM_OFFSET: Final = 65_536
_CERT_CACHE: Final = 256  # parsed leaf certificates kept by DER (servers repeat theirs)
# a client's fingerprints and offer names, kept by its hello's fields (clients repeat theirs)
_OFFER_CACHE: Final = 256

Key = tuple[int, bytes, int, bytes, int]  # point, lower (addr, port), higher (addr, port)


@dataclass(frozen=True, slots=True)
class TlsLimits:
    max_connections: int = 4096
    max_handshake_bytes: int = 32_768  # per direction
    ttl_s: float = 300.0  # handshake state of a connection that never got a record


class TlsStats:
    """Plain int counters (one attribute add each)."""

    __slots__ = (
        "certificate_errors",
        "certificates",
        "chunks",
        "client_hellos",
        "evicted",
        "expired",
        "gap",
        "incomplete",
        "joined",
        "late",
        "malformed",
        "not_handshake",
        "oversize",
        "server_hellos",
        "truncated",
    )

    def __init__(self) -> None:
        self.chunks = 0  # payloads fed
        self.client_hellos = 0
        self.server_hellos = 0
        self.certificates = 0
        self.joined = 0  # TLS facts attached to a connection record
        self.late = 0  # a hello that began past MAX_STREAM_OFFSET of its stream: not the handshake
        self.not_handshake = 0  # first payload of a direction did not start a handshake record
        self.gap = 0  # a payload after missing bytes that does not start a record
        # a direction whose handshake message began but never completed before the connection's
        # record (live: its continuation segments did not pass the stateless kernel filter)
        self.incomplete = 0
        self.malformed = 0  # a record or message field that cannot be right
        self.truncated = 0  # a hello that ended before its declared length
        self.oversize = 0  # a direction over max_handshake_bytes (given up)
        self.certificate_errors = 0  # leaf DER that cryptography rejected
        self.evicted = 0  # state dropped to stay under max_connections
        self.expired = 0  # state of connections that never got a record, dropped after ttl_s

    @property
    def errors(self) -> int:
        return self.malformed + self.truncated + self.oversize + self.certificate_errors

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def failures(self) -> dict[str, int]:
        """Handshakes not parsed or given up, by reason (the agent's tls.errors self-metric)."""
        return {
            "malformed": self.malformed,
            "truncated": self.truncated,
            "oversize": self.oversize,
            "certificate": self.certificate_errors,
            "gap": self.gap,
            "incomplete": self.incomplete,
            "late": self.late,
            "not_handshake": self.not_handshake,
            "evicted": self.evicted,
        }


class _Direction:
    __slots__ = ("done", "messages", "next_seq", "records", "start")

    def __init__(self, seq: int) -> None:
        self.start = seq  # where its first handshake record began
        self.next_seq = seq
        self.records = bytearray()  # record bytes not parsed yet
        self.messages = bytearray()  # handshake bytes taken out of records, not parsed yet
        self.done = False

    def finish(self) -> None:
        self.done = True
        self.records = bytearray()
        self.messages = bytearray()


class _Conn:
    __slots__ = ("cert", "client_hello", "dirs", "server_hello", "ts")

    def __init__(self, ts: float) -> None:
        self.ts = ts
        self.dirs: dict[tuple[bytes, int], _Direction] = {}
        self.client_hello: ClientHello | None = None
        self.server_hello: ServerHello | None = None
        self.cert: CertificateFacts | None = None


def starts_record(payload: bytes) -> bool:
    """A handshake record header: type 22, version 3.x (SSL 3.0 .. TLS 1.3 all say 0x03xx).

    A payload shorter than the header only has to agree as far as it goes (a sender may split
    anywhere); the record parser checks the rest once it has arrived."""
    return bool(payload) and payload[0] == CONTENT_HANDSHAKE and (len(payload) < 2 or payload[1] == 3)


def _key(point: int, a: bytes, ap: int, b: bytes, bp: int) -> Key:
    return (point, a, ap, b, bp) if (a, ap) <= (b, bp) else (point, b, bp, a, ap)


def _packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


class TlsAssembler:
    def __init__(self, limits: TlsLimits | None = None) -> None:
        self.limits = limits or TlsLimits()
        self.stats = TlsStats()
        self._conns: dict[Key, _Conn] = {}
        self._certs: dict[bytes, CertificateFacts] = {}
        self._offers: dict[tuple[object, ...], ClientFacts] = {}

    def __len__(self) -> int:
        return len(self._conns)

    # ---- input ---------------------------------------------------------------------------------

    def feed(self, chunks: Sequence[TlsChunk]) -> None:
        for chunk in chunks:
            self.feed_one(chunk)

    def feed_one(self, chunk: TlsChunk) -> None:
        stats = self.stats
        stats.chunks += 1
        payload = chunk.payload
        if not payload:
            return
        key = _key(chunk.point, chunk.src, chunk.sport, chunk.dst, chunk.dport)
        conn = self._conns.get(key)
        if conn is None:
            if not starts_record(payload):
                stats.not_handshake += 1
                return
            if len(self._conns) >= self.limits.max_connections:
                del self._conns[next(iter(self._conns))]
                stats.evicted += 1
            conn = self._conns[key] = _Conn(chunk.ts)
        side = (chunk.src, chunk.sport)
        d = conn.dirs.get(side)
        if d is None:
            if not starts_record(payload):
                stats.not_handshake += 1
                return
            d = conn.dirs[side] = _Direction(chunk.seq)
        if d.done:
            return
        ahead = (chunk.seq - d.next_seq) % _SEQ_MOD
        if ahead == 0:
            data = payload
        elif ahead >= _SEQ_MOD // 2:  # starts before what we have: a retransmission, keep the new tail
            behind = _SEQ_MOD - ahead
            if behind >= len(payload):
                return
            data = payload[behind:]
        elif starts_record(payload):  # bytes are missing, but this starts a record: resynchronise
            stats.gap += 1
            d.records.clear()
            d.messages.clear()
            d.start = chunk.seq  # what is parsed now begins here (the 64 KiB check measures from it)
            data = payload
        else:
            stats.gap += 1
            return
        if len(d.records) + len(d.messages) + len(data) > self.limits.max_handshake_bytes:
            stats.oversize += 1
            d.finish()
            return
        d.records += data
        d.next_seq = (chunk.seq + len(payload)) % _SEQ_MOD
        self._parse(conn, d)

    def _parse(self, conn: _Conn, d: _Direction) -> None:
        buf, pos, end, stop = d.records, 0, len(d.records), False
        while end - pos >= 5:
            length = (buf[pos + 3] << 8) | buf[pos + 4]
            if buf[pos + 1] != 3 or length > MAX_RECORD:
                self.stats.malformed += 1
                d.finish()
                return
            if end - pos - 5 < length:
                break
            if buf[pos] != CONTENT_HANDSHAKE:
                stop = True  # ChangeCipherSpec, alert or application data: the clear text is over
                break
            d.messages += buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
        del buf[:pos]
        msgs = d.messages
        while len(msgs) >= 4 and not d.done:
            length = (msgs[1] << 16) | (msgs[2] << 8) | msgs[3]
            if length > self.limits.max_handshake_bytes:
                self.stats.oversize += 1
                d.finish()
                return
            if len(msgs) - 4 < length:
                break
            kind, body = msgs[0], bytes(msgs[4 : 4 + length])
            del msgs[: 4 + length]
            self._message(conn, d, kind, body)
        if stop and not d.done:
            d.finish()

    def _message(self, conn: _Conn, d: _Direction, kind: int, body: bytes) -> None:
        stats = self.stats
        try:
            if kind == HS_CLIENT_HELLO:
                if conn.client_hello is None:  # a second one (after HelloRetryRequest) keeps the first
                    conn.client_hello = parse_client_hello(body)
                    stats.client_hellos += 1
                d.finish()
            elif kind == HS_SERVER_HELLO:
                hello = parse_server_hello(body)
                if hello.retry_request:
                    return
                conn.server_hello = hello
                stats.server_hellos += 1
                if hello.version >= TLS13:  # the certificate is encrypted from here on
                    d.finish()
            elif kind == HS_CERTIFICATE:
                if conn.server_hello is not None and conn.cert is None:
                    der = leaf_certificate(body, self.limits.max_handshake_bytes)
                    if der is not None:
                        conn.cert = self._certificate(der)
                d.finish()
            elif kind == HS_SERVER_HELLO_DONE:
                d.finish()
        except TlsError as exc:
            if exc.reason == "truncated":
                stats.truncated += 1
            elif exc.reason == "oversize":
                stats.oversize += 1
            else:
                stats.malformed += 1
            d.finish()

    def _certificate(self, der: bytes) -> CertificateFacts | None:
        facts = self._certs.get(der)
        if facts is not None:
            return facts
        try:
            facts = parse_der(der)
        except Exception:  # cryptography's errors on hostile DER are not one type: count, go on
            self.stats.certificate_errors += 1
            return None
        self.stats.certificates += 1
        if len(self._certs) >= _CERT_CACHE:
            self._certs.clear()
        self._certs[der] = facts
        return facts

    # ---- output --------------------------------------------------------------------------------

    def take(self, record: ConnectionRecord) -> TlsInfo | None:
        """The TLS facts of `record`'s connection (and forget them); None if it showed no hello."""
        if not self._conns:
            return None
        try:
            client, server = _packed(record.client.address), _packed(record.server.address)
        except OSError:
            return None
        conn = self._conns.pop(
            _key(record.point, client, record.client.port, server, record.server.port), None
        )
        if conn is None:
            return None
        self._count_incomplete(conn)
        ch, sh, cert = conn.client_hello, conn.server_hello, conn.cert
        cut_sni = None
        if ch is None:  # a ClientHello cut short: its SNI may be whole
            cut_sni = self._cut_server_name(conn.dirs.get((client, record.client.port)))
        if not record.started_before_capture:
            hello = ch is not None or cut_sni is not None
            if hello and self._late(conn, client, record.client.port, record.client_isn):
                ch = cut_sni = None  # hello-like bytes deep in the stream, e.g. inside an upload
            if sh is not None and self._late(conn, server, record.server.port, record.server_isn):
                sh = cert = None
        if ch is None and sh is None and cut_sni is None:
            return None
        self.stats.joined += 1
        facts = info(ch, sh, cert, self._offer(ch))
        return facts if cut_sni is None else dataclasses.replace(facts, server_name=cut_sni)

    @staticmethod
    def _cut_server_name(d: _Direction | None) -> str | None:
        if d is None or d.done:
            return None
        data = bytes(d.messages) + bytes(d.records[5:])  # whole records' bytes, then the cut one's
        if len(data) < 4 or data[0] != HS_CLIENT_HELLO:
            return None
        return partial_server_name(data[4:])

    def _late(self, conn: _Conn, addr: bytes, port: int, isn: int | None) -> bool:
        d = conn.dirs.get((addr, port))
        if d is None or isn is None or (d.start - isn - 1) % _SEQ_MOD < MAX_STREAM_OFFSET:
            return False
        self.stats.late += 1
        return True

    def _offer(self, ch: ClientHello | None) -> ClientFacts | None:
        """The hello's JA3/JA4 and names, computed once per distinct offer (benchmarks/tls_decode.py:
        they were ~2/3 of a handshake's cost, and a client sends the same offer every time)."""
        if ch is None:
            return None
        key = (
            ch.legacy_version, ch.ciphers, ch.extensions, ch.groups, ch.point_formats,
            ch.supported_versions, ch.alpn, ch.signature_algorithms,
        )  # fmt: skip
        facts = self._offers.get(key)
        if facts is None:
            if len(self._offers) >= _OFFER_CACHE:
                self._offers.clear()
            facts = self._offers[key] = client_facts(ch)
        return facts

    def expire(self, now: float) -> None:
        """Drop the state of connections first seen more than ttl_s ago (they never got a record)."""
        cutoff = now - self.limits.ttl_s
        conns = self._conns
        while conns:
            key = next(iter(conns))
            if conns[key].ts >= cutoff:
                break
            self._count_incomplete(conns.pop(key))
            self.stats.expired += 1

    def _count_incomplete(self, conn: _Conn) -> None:
        for d in conn.dirs.values():
            if not d.done and (d.records or d.messages):
                self.stats.incomplete += 1


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What a ClientHello's offer gives a record, apart from the SNI."""

    ja3: str
    ja4: str
    alpn: tuple[str, ...]
    versions: tuple[str, ...]
    ciphers: tuple[str, ...]


def client_facts(ch: ClientHello) -> ClientFacts:
    return ClientFacts(
        ja3=fingerprints.ja3(ch),
        ja4=fingerprints.ja4(ch),
        alpn=tuple(p.decode("ascii", "replace") for p in ch.alpn),
        versions=tuple(version_name(v) for v in ch.supported_versions if not is_grease(v)),
        ciphers=tuple(cipher_name(c) for c in ch.ciphers if not is_grease(c)),
    )


def info(
    ch: ClientHello | None,
    sh: ServerHello | None,
    cert: CertificateFacts | None,
    offer: ClientFacts | None = None,
) -> TlsInfo:
    """The record's view of a handshake (`offer`: client_facts(ch), if already known)."""
    alpn = sh.alpn.decode("ascii", "replace") if sh is not None and sh.alpn else None
    if ch is not None and offer is None:
        offer = client_facts(ch)
    return TlsInfo(
        server_name=ch.server_name if ch is not None else None,
        version=version_name(sh.version) if sh is not None else None,
        cipher=cipher_name(sh.cipher) if sh is not None else None,
        alpn=alpn,
        client_alpn=offer.alpn if offer is not None else (),
        client_versions=offer.versions if offer is not None else (),
        client_ciphers=offer.ciphers if offer is not None else (),
        ja3=offer.ja3 if offer is not None else None,
        ja3s=fingerprints.ja3s(sh) if sh is not None else None,
        ja4=offer.ja4 if offer is not None else None,
        certificate_not_before=cert.not_before if cert is not None else None,
        certificate_not_after=cert.not_after if cert is not None else None,
        certificate_subject=cert.subject if cert is not None else None,
        certificate_issuer=cert.issuer if cert is not None else None,
        certificate_sans=cert.sans if cert is not None else (),
        deprecated=sh is not None and sh.version in DEPRECATED_VERSIONS,
    )
