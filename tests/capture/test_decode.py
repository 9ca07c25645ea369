"""Decoder: scapy-crafted frames in, exact Segments (or a counted drop) out; hostile input never raises."""

from __future__ import annotations

import random
import socket
import struct

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, raw

from podwire.capture.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_DLT12,
    LINKTYPE_RAW_DLT14,
    Decoder,
)
from podwire.capture.dns import DnsStats, parse_answers
from podwire.model import ACK, FIN, PSH, RST, SYN, DnsAnswer, Segment

A4, B4 = "10.1.2.3", "10.4.5.6"
A6, B6 = "fd00::1", "fd00:1::2"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def v4(tcp: Packet, **ip: object) -> Packet:
    return IP(src=A4, dst=B4, **ip) / tcp


def v6(*layers: Packet) -> Packet:
    pkt: Packet = IPv6(src=A6, dst=B6)
    for layer in layers:
        pkt = pkt / layer
    return pkt


def seg(family: str, flags: int, payload: int, seq: int = 1000, ack: int = 0, sport: int = 40000) -> Segment:
    af, src, dst = (socket.AF_INET, A4, B4) if family == "4" else (socket.AF_INET6, A6, B6)
    return Segment(
        1.5,
        7,
        socket.inet_pton(af, src),
        socket.inet_pton(af, dst),
        sport,
        80,
        seq,
        ack,
        flags,
        payload,
        True,
    )


def syn(**kw: object) -> Packet:
    return TCP(sport=40000, dport=80, flags="S", seq=1000, **kw)


# (case id, frame, expected Segment or None, the DecodeStats counter that must move)
CASES: list[tuple[str, Packet, Segment | None, str]] = [
    ("ipv4 syn", ETH / v4(syn()), seg("4", SYN, 0), "segments"),
    (
        "ipv4 syn-ack with options",
        ETH
        / v4(
            TCP(
                sport=40000,
                dport=80,
                flags="SA",
                seq=1000,
                ack=77,
                options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)],
            )
        ),
        seg("4", SYN | ACK, 0, ack=77),
        "segments",
    ),
    (
        "ipv4 fin with data",
        ETH / v4(TCP(sport=40000, dport=80, flags="FPA", seq=1000)) / (b"d" * 123),
        seg("4", FIN | PSH | ACK, 123),
        "segments",
    ),
    ("ipv4 rst", ETH / v4(TCP(sport=40000, dport=80, flags="R", seq=1000)), seg("4", RST, 0), "segments"),
    (
        "ipv4 ip options (ihl 6+)",
        ETH / v4(syn(), options=[IPOption_RR(routers=["1.1.1.1", "2.2.2.2"])]),
        seg("4", SYN, 0),
        "segments",
    ),
    (
        "ipv4 tcp data offset 15",
        ETH / v4(TCP(sport=40000, dport=80, flags="F", seq=1000, options=[("NOP", None)] * 40)) / b"abc",
        seg("4", FIN, 3),
        "segments",
    ),
    ("ipv4 ack data skipped", ETH / v4(TCP(sport=40000, dport=80, flags="A")) / (b"x" * 1000), None, "data"),
    ("ipv4 psh-ack skipped", ETH / v4(TCP(sport=40000, dport=80, flags="PA")) / b"x", None, "data"),
    ("802.1q", ETH / Dot1Q(vlan=42) / v4(syn()), seg("4", SYN, 0), "segments"),
    ("802.1ad qinq", ETH / Dot1AD(vlan=7) / Dot1Q(vlan=42) / v4(syn()), seg("4", SYN, 0), "segments"),
    (
        "three tags refused",
        ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / v4(syn()),
        None,
        "malformed",
    ),
    ("ipv6 syn", ETH / v6(syn()), seg("6", SYN, 0), "segments"),
    ("ipv6 ack data skipped", ETH / v6(TCP(sport=40000, dport=80, flags="A"), b"x" * 10), None, "data"),
    ("ipv6 hop-by-hop", ETH / v6(IPv6ExtHdrHopByHop(), syn()), seg("6", SYN, 0), "segments"),
    ("ipv6 routing", ETH / v6(IPv6ExtHdrRouting(addresses=["fd00::9"]), syn()), seg("6", SYN, 0), "segments"),
    (
        "ipv6 dest opts",
        ETH / v6(IPv6ExtHdrDestOpt(), TCP(sport=40000, dport=80, flags="F", seq=1000), b"12345"),
        seg("6", FIN, 5),
        "segments",
    ),
    (
        "ipv6 chain hbh+rt+dst+frag",
        ETH
        / v6(
            IPv6ExtHdrHopByHop(),
            IPv6ExtHdrRouting(),
            IPv6ExtHdrDestOpt(),
            IPv6ExtHdrFragment(offset=0, m=0),
            syn(),
        ),
        seg("6", SYN, 0),
        "segments",
    ),
    (
        "ipv6 auth header",
        ETH / v6(AH(nh=6, payloadlen=4, spi=1, icv=b"\x00" * 12), syn()),
        seg("6", SYN, 0),
        "segments",
    ),
    (
        "ipv6 non-first fragment",
        ETH / v6(IPv6ExtHdrFragment(offset=10, nh=6), b"\x00" * 40),
        None,
        "fragment",
    ),
    (
        "ipv4 non-first fragment",
        ETH / IP(src=A4, dst=B4, proto=6, frag=100) / (b"\x00" * 40),
        None,
        "fragment",
    ),
    ("arp", ETH / ARP(), None, "not_tcp"),
    ("icmp", ETH / IP(src=A4, dst=B4) / ICMP(), None, "not_tcp"),
    ("udp not dns", ETH / IP(src=A4, dst=B4) / UDP(sport=1234, dport=53) / b"q", None, "not_tcp"),
    ("ipv6 icmp", ETH / IPv6(src=A6, dst=B6, nh=58) / b"\x80\x00\x00\x00", None, "not_tcp"),
]


def frame(pkt: Packet) -> bytes:
    return raw(pkt)


@pytest.mark.parametrize(("name", "pkt", "expected", "counter"), CASES, ids=[c[0] for c in CASES])
def test_ethernet_frames_decode_to_the_exact_segment_or_a_counted_drop(
    name: str, pkt: Packet, expected: Segment | None, counter: str
) -> None:
    d = Decoder()
    buf = frame(pkt)
    assert d.ethernet(buf, 0, len(buf), 1.5, 7, True) == expected
    assert getattr(d.stats, counter) == 1
    assert d.stats.frames == 1


@pytest.mark.parametrize(("name", "pkt", "expected", "counter"), CASES, ids=[c[0] for c in CASES])
def test_frames_decode_the_same_at_an_offset_inside_a_larger_buffer(
    name: str, pkt: Packet, expected: Segment | None, counter: str
) -> None:
    # pcap and ring buffers hand the decoder (buf, off, end): bytes around the frame must not matter.
    d = Decoder()
    buf = frame(pkt)
    big = b"\xff" * 33 + buf + b"\xee" * 50
    assert d.ethernet(big, 33, 33 + len(buf), 1.5, 7, True) == expected


def test_ethernet_padding_does_not_count_as_payload() -> None:
    buf = frame(ETH / v4(syn()))
    padded = buf + b"\x00" * (60 - len(buf))  # a 54-byte frame padded to the 60-byte minimum
    got = Decoder().ethernet(padded, 0, len(padded), 1.5, 7, True)
    assert got is not None and got.payload_len == 0


def test_first_ipv4_fragment_still_yields_the_tcp_header() -> None:
    pkt = IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, flags="S", seq=1000) / (b"z" * 3000)
    first, *rest = fragment(pkt, fragsize=1480)
    d = Decoder()
    buf = frame(ETH / first)
    got = d.ethernet(buf, 0, len(buf), 1.5, 7, True)
    assert got is not None and got.flags == SYN and got.seq == 1000
    for piece in rest:
        b = frame(ETH / piece)
        assert d.ethernet(b, 0, len(b), 1.5, 7, True) is None
    assert d.stats.fragment == len(rest) >= 1


def _outcomes(d: Decoder) -> int:
    s = d.stats
    return s.segments + s.data + s.not_tcp + s.fragment + s.truncated + s.malformed + s.unknown_link + s.dns


@pytest.mark.parametrize(("name", "pkt", "expected", "counter"), CASES, ids=[c[0] for c in CASES])
def test_truncation_at_every_byte_never_raises_and_every_frame_is_counted_once(
    name: str, pkt: Packet, expected: Segment | None, counter: str
) -> None:
    buf = frame(pkt)
    d = Decoder(dns=True)
    for cut in range(len(buf)):
        got = d.ethernet(buf[:cut], 0, cut, 1.5, 7, True)
        if got is not None:
            # Only a cut inside the payload may still decode, and then to the very same segment.
            assert got == expected
    assert d.stats.frames == len(buf)
    assert _outcomes(d) == len(buf)
    assert d.stats.truncated > 0


def test_random_garbage_on_every_link_type_never_raises() -> None:
    rng = random.Random(1234)
    d = Decoder(dns=True)
    decoders = [d.for_linktype(lt) for lt in (0, 1, 12, 14, 101, 108, 113, 276, 9999)]
    n = 0
    for _ in range(3000):
        size = rng.randrange(0, 120)
        buf = bytes(rng.randrange(256) for _ in range(size))
        for dec in decoders:
            dec(buf, 0, len(buf), 0.0, 0, None)
            n += 1
    # Garbage shaped like a real header: valid Ethernet + IPv4/IPv6 prefixes, random rest.
    for etype, ver in ((b"\x08\x00", 0x45), (b"\x86\xdd", 0x60)):
        for _ in range(3000):
            tail = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 100)))
            buf = b"\x00" * 12 + etype + bytes([ver]) + tail
            d.ethernet(buf, 0, len(buf), 0.0, 0, None)
            n += 1
    assert d.stats.frames == n
    assert _outcomes(d) == n


# ---- link types ---------------------------------------------------------------------------

IP4_SYN = frame(v4(syn()))
IP6_SYN = frame(v6(syn()))
SLL2_HDR = struct.Struct("!HHIHBB8s")


def sll2(proto: int, payload: bytes) -> bytes:
    return SLL2_HDR.pack(proto, 0, 3, 1, 4, 6, b"\x02" * 6 + b"\x00\x00") + payload


LINK_CASES: list[tuple[str, int, bytes, str]] = [
    ("raw101 v4", LINKTYPE_RAW, IP4_SYN, "4"),
    ("raw101 v6", LINKTYPE_RAW, IP6_SYN, "6"),
    ("raw12 v4", LINKTYPE_RAW_DLT12, IP4_SYN, "4"),
    ("raw14 v6", LINKTYPE_RAW_DLT14, IP6_SYN, "6"),
    ("sll v4", LINKTYPE_LINUX_SLL, frame(CookedLinux(pkttype=4, proto=0x0800) / v4(syn())), "4"),
    ("sll v6", LINKTYPE_LINUX_SLL, frame(CookedLinux(pkttype=0, proto=0x86DD) / v6(syn())), "6"),
    ("sll vlan v4", LINKTYPE_LINUX_SLL, frame(CookedLinux(proto=0x8100) / Dot1Q(vlan=5) / v4(syn())), "4"),
    ("sll2 v4", LINKTYPE_LINUX_SLL2, sll2(0x0800, IP4_SYN), "4"),
    ("sll2 v6", LINKTYPE_LINUX_SLL2, sll2(0x86DD, IP6_SYN), "6"),
    ("null le v4", LINKTYPE_NULL, struct.pack("<I", 2) + IP4_SYN, "4"),
    ("null be v4", LINKTYPE_NULL, struct.pack(">I", 2) + IP4_SYN, "4"),
    ("null le v6 linux", LINKTYPE_NULL, struct.pack("<I", 10) + IP6_SYN, "6"),
    ("null le v6 bsd", LINKTYPE_NULL, struct.pack("<I", 24) + IP6_SYN, "6"),
    ("null be v6 darwin", LINKTYPE_NULL, struct.pack(">I", 30) + IP6_SYN, "6"),
    ("loop v4", LINKTYPE_LOOP, struct.pack(">I", 2) + IP4_SYN, "4"),
    ("ethernet v6", LINKTYPE_ETHERNET, frame(ETH / v6(syn())), "6"),
]


@pytest.mark.parametrize(("name", "linktype", "buf", "family"), LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_every_pcap_link_type_yields_the_same_segment(
    name: str, linktype: int, buf: bytes, family: str
) -> None:
    d = Decoder()
    assert d.for_linktype(linktype)(buf, 0, len(buf), 1.5, 7, True) == seg(family, SYN, 0)
    for cut in range(len(buf)):  # and never raises when cut short
        d.for_linktype(linktype)(buf[:cut], 0, cut, 1.5, 7, True)


def test_unknown_link_type_and_bad_ip_version_are_counted() -> None:
    d = Decoder()
    assert d.for_linktype(147)(IP4_SYN, 0, len(IP4_SYN), 0.0, 0, None) is None
    assert d.stats.unknown_link == 1
    bad = bytes([0x55]) + IP4_SYN[1:]
    assert d.raw(bad, 0, len(bad), 0.0, 0, None) is None
    assert d.stats.malformed == 1
    assert d.stats.errors == 2


def test_bogus_ipv4_header_lengths_are_malformed_not_raised() -> None:
    d = Decoder()
    for vihl, total in ((0x44, 40), (0x45, 10), (0x4F, 40)):
        buf = bytearray(frame(ETH / v4(syn())))
        buf[14] = vihl
        buf[16:18] = total.to_bytes(2, "big")
        assert d.ethernet(bytes(buf), 0, len(buf), 0.0, 0, None) is None
    assert d.stats.malformed == 3


def test_tcp_data_offset_below_five_words_is_malformed() -> None:
    buf = bytearray(frame(ETH / v4(syn())))
    buf[14 + 20 + 12] = 0x40  # data offset 4 words
    d = Decoder()
    assert d.ethernet(bytes(buf), 0, len(buf), 0.0, 0, None) is None
    assert d.stats.malformed == 1


# ---- DNS ------------------------------------------------------------------------------------


def dns_frame(msg: bytes, sport: int = 53, family: str = "4") -> bytes:
    udp = UDP(sport=sport, dport=33333) / msg
    ip = IP(src="10.0.0.53", dst=A4) / udp if family == "4" else IPv6(src="fd00::53", dst=A6) / udp
    return frame(ETH / ip)


def name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\x00"


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def header(an: int, flags: int = 0x8180, qd: int = 1) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, 0, 0)


def compressed_answer() -> bytes:
    """www.shop.example -> CNAME edge.cdn.example -> A 192.0.2.10 / AAAA 2001:db8::10, all compressed."""
    q = name("www.shop.example")  # at offset 12
    msg = header(3) + q + struct.pack("!HH", 1, 1)
    cname_rdata = b"\x04edge\x03cdn" + ptr(12 + 1 + 3 + 1 + 4)  # -> "example" inside the question
    target_at = len(msg) + 2 + 10  # where the CNAME rdata starts (after a 2-byte owner pointer)
    msg += rr(ptr(12), 5, cname_rdata, ttl=300)
    msg += rr(ptr(target_at), 1, socket.inet_pton(socket.AF_INET, "192.0.2.10"), ttl=30)
    msg += rr(ptr(target_at), 28, socket.inet_pton(socket.AF_INET6, "2001:db8::10"), ttl=31)
    return msg


def test_dns_answers_follow_compressed_cname_chains_to_the_queried_name() -> None:
    d = Decoder(dns=True)
    buf = dns_frame(compressed_answer())
    assert d.ethernet(buf, 0, len(buf), 9.0, 1, None) is None
    assert d.take_dns() == [
        DnsAnswer(9.0, "www.shop.example", "192.0.2.10", 30),
        DnsAnswer(9.0, "www.shop.example", "2001:db8::10", 31),
    ]
    assert d.take_dns() == []
    assert d.stats.dns == 1


def test_dns_over_ipv6_and_scapy_built_answers() -> None:
    msg = raw(
        DNS(
            id=1,
            qr=1,
            qd=[DNSQR(qname="a.example.com")],
            an=[
                DNSRR(rrname="a.example.com", type="CNAME", rdata="b.example.com"),
                DNSRR(rrname="b.example.com", type="CNAME", rdata="c.example.com"),
                DNSRR(rrname="c.example.com", rdata="1.2.3.4", ttl=30),
                DNSRR(rrname="unrelated.example.com", rdata="6.6.6.6", ttl=30),
            ],
        )
    )
    d = Decoder(dns=True)
    buf = dns_frame(msg, family="6")
    d.ethernet(buf, 0, len(buf), 2.0, 1, None)
    assert d.take_dns() == [DnsAnswer(2.0, "a.example.com", "1.2.3.4", 30)]


def test_dns_is_ignored_when_off_and_for_queries_and_errors() -> None:
    off = Decoder(dns=False)
    buf = dns_frame(compressed_answer())
    off.ethernet(buf, 0, len(buf), 0.0, 0, None)
    assert off.take_dns() == [] and off.stats.not_tcp == 1
    on = Decoder(dns=True)
    for flags in (0x0100, 0x8183):  # a query; NXDOMAIN
        msg = bytearray(compressed_answer())
        msg[2:4] = flags.to_bytes(2, "big")
        b = dns_frame(bytes(msg))
        on.ethernet(b, 0, len(b), 0.0, 0, None)
    assert on.take_dns() == [] and on.dns_stats.not_answer == 2


HOSTILE: list[tuple[str, bytes]] = [
    ("pointer to itself", header(1) + ptr(12) + struct.pack("!HH", 1, 1)),
    ("forward pointer", header(1) + ptr(20) + struct.pack("!HH", 1, 1) + b"\x00" * 10),
    (
        "two pointers in a loop",
        header(1)
        + name("a.b")
        + struct.pack("!HH", 1, 1)
        + ptr(len(header(1)) + 5 + 4 + 2)
        + ptr(len(header(1)) + 5 + 4),
    ),
    ("label runs past the end", header(1) + b"\x3fabc"),
    ("reserved label type", header(1) + b"\x80abc\x00" + struct.pack("!HH", 1, 1)),
    (
        "rdlength past the end",
        header(1) + name("x.y") + struct.pack("!HH", 1, 1) + rr(ptr(12), 1, b"")[:-2] + b"\xff\xff",
    ),
    (
        "cname loop",
        header(3)
        + name("x.y")
        + struct.pack("!HH", 1, 1)
        + rr(ptr(12), 5, name("z.y"))
        + rr(name("z.y"), 5, ptr(12))
        + rr(ptr(12), 1, b"\x01\x02\x03\x04"),
    ),
    (
        "name longer than 255",
        header(1)
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x00",
    ),
    (
        "65535 answers claimed",
        header(65535) + name("x.y") + struct.pack("!HH", 1, 1) + rr(ptr(12), 1, b"\x01\x02\x03\x04") * 3,
    ),
]


@pytest.mark.parametrize(("case", "msg"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_dns_never_raises_and_is_bounded(case: str, msg: bytes) -> None:
    out: list[DnsAnswer] = []
    stats = DnsStats()
    parse_answers(msg, 0, len(msg), 0.0, out, stats)
    for cut in range(len(msg)):
        parse_answers(msg[:cut], 0, cut, 0.0, out, stats)
    if case == "cname loop":
        assert out[0] == DnsAnswer(0.0, "x.y", "1.2.3.4", 60)
    elif case == "65535 answers claimed":
        assert out[:3] == [DnsAnswer(0.0, "x.y", "1.2.3.4", 60)] * 3
    else:
        assert out == []
    assert stats.malformed >= 1


def test_every_truncation_of_a_real_answer_never_raises() -> None:
    msg = compressed_answer()
    stats = DnsStats()
    out: list[DnsAnswer] = []
    for cut in range(len(msg)):
        parse_answers(msg, 0, cut, 0.0, out, stats)
    # Cut inside a record: the whole records before the cut still count, nothing is invented.
    assert set(out) == {
        DnsAnswer(0.0, "www.shop.example", "192.0.2.10", 30),
    }
    assert stats.malformed == len(msg)


@pytest.mark.parametrize(("name", "pkt", "expected", "counter"), CASES, ids=[c[0] for c in CASES])
def test_inlined_ethernet_fast_path_agrees_with_the_general_path(
    name: str, pkt: Packet, expected: Segment | None, counter: str
) -> None:
    # Ethernet frames take an inlined IPv4/IPv6 path; Linux SLL frames always take the general one.
    buf = frame(pkt)
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x00" * 8, (buf[12] << 8) | buf[13]) + buf[14:]
    fast, general = Decoder(), Decoder()
    assert fast.ethernet(buf, 0, len(buf), 1.5, 7, True) == general.linux_sll(sll, 0, len(sll), 1.5, 7, True)
    assert fast.stats.as_dict() == general.stats.as_dict()
    for bad_total in (0, 19, 20, 39, 40, 41, 65535):  # IPv4 total length lies: same verdict both ways
        if buf[12:14] == b"\x08\x00":
            b2 = bytearray(buf)
            b2[16:18] = bad_total.to_bytes(2, "big")
            s2 = bytearray(sll)
            s2[16 + 2 : 16 + 4] = bad_total.to_bytes(2, "big")
            assert fast.ethernet(bytes(b2), 0, len(b2), 0.0, 0, None) == general.linux_sll(
                bytes(s2), 0, len(s2), 0.0, 0, None
            )
    assert fast.stats.as_dict() == general.stats.as_dict()


# --- DnsGuard: answers only to queries seen, from trusted resolvers (issue 14) ----------------

_C, _R = socket.inet_aton("10.1.0.5"), socket.inet_aton("10.96.0.10")


def _query(msg_id: int, name: bytes = b"\x03api\x04shop\x00") -> bytes:
    return struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


def _answer(msg_id: int) -> bytes:
    return (
        struct.pack("!HHHHHH", msg_id, 0x8180, 1, 1, 0, 0)
        + b"\x03api\x04shop\x00"
        + struct.pack("!HH", 1, 1)
        + b"\xc0\x0c"
        + struct.pack("!HHIH", 1, 1, 60, 4)
        + socket.inet_aton("203.0.113.9")
    )


def test_dns_guard_takes_only_the_answer_to_a_query_seen_once() -> None:
    from podwire.capture.dns import DnsGuard

    guard = DnsGuard(frozenset({_R}), max_pending=2, window_s=5.0)
    stats, out = DnsStats(), []
    q = (_C, 40000, _R, 53)
    a = (_R, 53, _C, 40000)
    parse_answers(_query(1), 0, len(_query(1)), 0.0, out, stats, guard, q)
    assert stats.queries == 1 and len(guard) == 1
    for msg, flow in [
        (_answer(2), a),  # another id
        (_answer(1), (_R, 53, _C, 40001)),  # another client port
    ]:
        parse_answers(msg, 0, len(msg), 1.0, out, stats, guard, flow)
    parse_answers(_answer(1), 0, len(_answer(1)), 1.0, out, stats, guard, (_C, 53, _C, 40000))  # untrusted
    assert out == [] and (stats.rejected_unsolicited, stats.rejected_untrusted) == (2, 1)
    parse_answers(_answer(1), 0, len(_answer(1)), 1.0, out, stats, guard, a)
    assert [x.address for x in out] == ["203.0.113.9"]
    parse_answers(_answer(1), 0, len(_answer(1)), 1.5, out, stats, guard, a)  # used once
    assert len(out) == 1 and stats.rejected_unsolicited == 3
    # late answers are unsolicited, and the table stays at max_pending (oldest forgotten)
    for i in range(10):
        parse_answers(_query(100 + i), 0, len(_query(1)), 2.0, out, stats, guard, q)
    assert len(guard) == 2 and guard.evicted == 8
    parse_answers(_answer(109), 0, len(_answer(1)), 8.0, out, stats, guard, a)
    assert len(out) == 1 and stats.rejected_unsolicited == 4
