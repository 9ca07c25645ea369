"""Fuzz targets shared by the Hypothesis tests (CI, a few thousand inputs each) and the long run
(benchmarks/fuzz_parsers.py, >= 1,000,000 inputs per parser).

Each target feeds hostile input to one parser fed by traffic and checks what must hold whatever the
input: no exception escapes, every input is accounted for by exactly one counter (nothing rejected
silently), and the state the parser keeps stays under its bound.
"""

from __future__ import annotations

import socket
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from podwire.capture.decode import Decoder
from podwire.capture.dns import DnsGuard, DnsStats, parse_answers
from podwire.capture.pcap import PcapError, PcapSource
from podwire.model import ACK, FIN, RST, SYN, DnsAnswer, Segment
from podwire.tracker.tracker import Tracker, TrackerLimits

LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 276, 9999)

# --- seeds: real frames and messages the mutations start from -----------------------------------


def _ipv4_tcp(flags: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1000, 2000, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, A4, B4)
    return ETH_V4 + ip + tcp


def _ipv4_udp(sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, A4, B4)
    return ETH_V4 + ip + udp


A4, B4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.96.0.10")
ETH_V4 = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"

DNS_QUERY = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03api\x04shop\x00" + struct.pack("!HH", 1, 1)
DNS_ANSWER = (
    struct.pack("!HHHHHH", 7, 0x8180, 1, 2, 0, 0)
    + b"\x03api\x04shop\x00"
    + struct.pack("!HH", 1, 1)
    + b"\xc0\x0c"
    + struct.pack("!HHIH", 5, 1, 60, 2)
    + b"\xc0\x10"  # CNAME -> shop (a compressed pointer)
    + b"\xc0\x10"
    + struct.pack("!HHIH", 1, 1, 60, 4)
    + socket.inet_aton("203.0.113.9")
)

FRAME_SEEDS: tuple[bytes, ...] = (
    _ipv4_tcp(SYN),
    _ipv4_tcp(SYN | ACK),
    _ipv4_tcp(FIN | ACK, b"x" * 40),
    _ipv4_tcp(RST),
    _ipv4_tcp(ACK, b"y" * 100),
    _ipv4_udp(53, 40000, DNS_ANSWER),
    _ipv4_udp(40000, 53, DNS_QUERY),
)
DNS_SEEDS: tuple[bytes, ...] = (DNS_QUERY, DNS_ANSWER)


def mutate(seed: bytes, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Apply (op, position, bytes) edits: 0 overwrite a byte, 1 delete a run, 2 insert."""
    data = bytearray(seed)
    for op, pos, blob in edits:
        if not data:
            data = bytearray(b"\x00")
        pos %= len(data)
        if op == 0:
            data[pos] = blob[0] if blob else 0
        elif op == 1:
            del data[pos : pos + 1 + len(blob)]
        else:
            data[pos:pos] = blob
    return bytes(data)


# --- targets ---------------------------------------------------------------------------------


def decoder_outcomes(d: Decoder) -> int:
    s = d.stats
    return s.segments + s.data + s.not_tcp + s.fragment + s.truncated + s.malformed + s.unknown_link + s.dns


def fuzz_decoder(d: Decoder, frames: Sequence[tuple[int, bytes]]) -> None:
    """Every frame on any link type: decoded or counted once; DNS bounded by the guard."""
    before = decoder_outcomes(d)
    for linktype, buf in frames:
        d.for_linktype(linktype)(buf, 0, len(buf), 1.0, 1, None)
    assert decoder_outcomes(d) - before == len(frames)
    d.take_dns()
    d.take_tls()
    if d.dns_guard is not None:
        assert len(d.dns_guard) <= d.dns_guard.max_pending


def fuzz_dns(messages: Sequence[bytes], guard: DnsGuard | None, stats: DnsStats) -> list[DnsAnswer]:
    """Each message is an answer, a query, or counted as not used."""
    out: list[DnsAnswer] = []
    for i, msg in enumerate(messages):
        flow = (A4, 40000, B4, 53) if i % 2 == 0 else (B4, 53, A4, 40000)
        parse_answers(msg, 0, len(msg), float(i), out, stats, guard, flow)
    assert len(out) <= 64 * len(messages)  # at most _MAX_ANSWERS per message
    if guard is not None:
        assert len(guard) <= guard.max_pending
    return out


def pcap_file(records: list[bytes]) -> bytes:
    """A little-endian µs pcap of Ethernet records, one a second."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, rec in enumerate(records):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(rec), len(rec)) + rec
    return out


def pcapng_file(records: list[bytes]) -> bytes:
    """A pcapng with one section, one Ethernet interface and an enhanced packet block per record."""
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 65535) + struct.pack("<I", 20)
    out = shb + idb
    for rec in records:
        pad = rec + b"\x00" * (-len(rec) % 4)
        total = 32 + len(pad)
        out += (
            struct.pack("<IIIIIII", 6, total, 0, 0, 1000, len(rec), len(rec)) + pad + struct.pack("<I", total)
        )
    return out


def fuzz_pcap(data: bytes, directory: Path | None = None) -> int:
    """A file of any bytes: a one-line PcapError, or read to its end; returns records read."""
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".pcap") as f:
        f.write(data)
        f.flush()
        try:
            source = PcapSource(f.name, dns=True)
        except PcapError as exc:
            assert "\n" not in str(exc)
            return 0
        try:
            while (batch := source.poll()) is not None:
                assert all(isinstance(s, Segment) for s in batch.segments)
            stats = source.decoder.stats
            assert stats.frames == source.stats.packets  # every record reached the decoder, counted
            return source.stats.packets
        finally:
            source.close()


FUZZ_LIMITS = TrackerLimits(
    max_connections=64, max_half_open=16, syn_timeout_s=5.0, closing_timeout_s=10.0, time_wait_s=5.0,
    max_recently_closed=32,
)  # fmt: skip


def fuzz_tracker(tracker: Tracker, segments: Sequence[Segment], now: float) -> None:
    """Any segment order, flags and numbers: no exception, tables under their bounds."""
    tracker.feed_many(segments)
    tracker.expire(now)
    stats = tracker.stats
    limits = FUZZ_LIMITS
    assert stats.half_open <= limits.max_half_open
    assert stats.entries <= limits.max_connections + limits.max_half_open
    assert stats.recently_closed <= limits.max_recently_closed


def segment(
    ts: float, a: int, b: int, sport: int, dport: int, seq: int, ack: int, flags: int, n: int
) -> Segment:
    addrs = (A4, B4, socket.inet_aton("10.0.0.3"))
    return Segment(ts, 1, addrs[a % 3], addrs[b % 3], sport, dport, seq, ack, flags, n)


CONTROL_FLAGS = (SYN, SYN | ACK, FIN | ACK, RST, RST | ACK, FIN, SYN | FIN, FIN | RST, SYN | RST | ACK)
