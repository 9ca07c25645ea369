"""The TLS handshake kernel part (verdicts on crafted frames) and the decoder's handshake tap."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, raw

from podwire.capture.bpf import FilterOptions, compile_program
from podwire.capture.decode import Decoder
from podwire.capture.handshake import FILTER_PARTS, SNAPLEN_TLS
from tests.capture.bpfvm import run

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="10.0.0.1", dst="10.0.0.2")
V6 = IPv6(src="fd00::1", dst="fd00::2")
HELLO = b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c" + b"h" * 60  # record header + ClientHello header
SERVER_HELLO = b"\x16\x03\x03\x00\x40\x02" + b"s" * 63
CERTIFICATE = b"\x16\x03\x03\x04\x00\x0b" + b"c" * 100
APP_DATA = b"\x17\x03\x03\x05\x00" + b"a" * 1200
CCS = b"\x14\x03\x03\x00\x01\x01"
FINISHED_12 = b"\x16\x03\x03\x00\x28" + b"\x99" * 40  # encrypted handshake (type byte is ciphertext)


def data(payload: bytes, opts: bool = False) -> TCP:
    options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))] if opts else []
    return TCP(sport=40000, dport=443, flags="PA", options=options) / payload


VERDICTS: list[tuple[str, Packet, bool]] = [
    ("v4 client hello", ETH / V4 / data(HELLO), True),
    ("v4 client hello, tcp options", ETH / V4 / data(HELLO, opts=True), True),
    ("v4 server hello", ETH / V4 / data(SERVER_HELLO), True),
    ("v4 certificate", ETH / V4 / data(CERTIFICATE), True),
    ("v4 application data", ETH / V4 / data(APP_DATA), False),
    ("v4 change cipher spec", ETH / V4 / data(CCS), False),
    ("v4 encrypted handshake", ETH / V4 / data(FINISHED_12), False),
    ("v4 continuation", ETH / V4 / data(b"h" * 1400), False),
    ("v4 bare ack", ETH / V4 / TCP(sport=40000, dport=443, flags="A"), False),
    ("v6 client hello", ETH / V6 / data(HELLO, opts=True), True),
    ("v6 application data", ETH / V6 / data(APP_DATA), False),
    ("vlan v4 client hello", ETH / Dot1Q(vlan=7) / V4 / data(HELLO), True),
    ("vlan v4 application data", ETH / Dot1Q(vlan=7) / V4 / data(APP_DATA), False),
]


@pytest.mark.parametrize(("case", "pkt", "passes"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_kernel_part_passes_only_handshake_record_starts(case: str, pkt: Packet, passes: bool) -> None:
    prog = compile_program(FilterOptions(extra_parts=FILTER_PARTS, extra_snaplen=SNAPLEN_TLS))
    assert run(prog.instructions, raw(pkt)) == (SNAPLEN_TLS if passes else 0)


def test_tap_follows_the_records_a_passed_payload_began_and_nothing_else() -> None:
    dec = Decoder(tls=True)
    record = b"\x16\x03\x01\x07\xd0" + b"\x01" + b"m" * 1999  # a 2000-byte handshake record
    first, second, third = record[:1000], record[1000:2005], APP_DATA

    def seg(payload: bytes, seq: int, sport: int = 40000) -> None:
        frame = raw(ETH / V4 / TCP(sport=sport, dport=443, flags="PA", seq=seq) / payload)
        assert dec.ethernet(frame, 0, len(frame), 1.0, 3) is None  # not a control segment

    seg(first, 100)
    seg(second, 1100)  # inside the record: passed
    seg(third, 2105)  # application data after it: not passed, following ends
    seg(b"z" * 500, 2105 + len(third))
    seg(b"q" * 300, 5000, sport=40001)  # another connection's bulk data
    chunks = dec.take_tls()
    assert [(c.seq, c.payload) for c in chunks] == [(100, first), (1100, second)]
    assert dec.tls is not None and not dec.tls.follow
    assert dec.take_tls() == []


def test_tap_is_off_unless_asked() -> None:
    dec = Decoder()
    frame = raw(ETH / V4 / data(HELLO))
    dec.ethernet(frame, 0, len(frame), 1.0, 3)
    assert dec.take_tls() == [] and dec.stats.data == 1


def test_the_chain_of_stages_judges_every_frame_as_the_single_libpcap_program_did() -> None:
    # Splitting the filter into stages changes how much is copied, never whether a frame passes.
    from podwire.capture.bpf import _compiled
    from tests.capture.test_bpf import VERDICTS as CONTROL_VERDICTS

    opts = FilterOptions(
        dns_answers=True, dns_queries=True, extra_parts=FILTER_PARTS, extra_snaplen=SNAPLEN_TLS
    )
    chained = compile_program(opts)
    single = _compiled(chained.expression, 1)
    frames = [v[1] for v in VERDICTS] + [v[1] for v in CONTROL_VERDICTS]
    for pkt in frames:
        assert bool(run(chained.instructions, raw(pkt))) == bool(run(single, raw(pkt))), pkt.summary()


def test_a_rejected_data_segment_runs_a_few_more_instructions_and_a_control_segment_none() -> None:
    # The price of one accept length per stage (bpf.py): each stage checks the frame's type again.
    # Every frame on a pod veth runs the filter, so this is held to the figure in bpf.py.
    from podwire.capture.bpf import _compiled

    opts = FilterOptions(
        dns_answers=True, dns_queries=True, extra_parts=FILTER_PARTS, extra_snaplen=SNAPLEN_TLS
    )
    chained = compile_program(opts)
    single = _compiled(chained.expression, 1)
    for pkt, most in (
        (ETH / V4 / data(APP_DATA), 10),  # 17 -> 27
        (ETH / V4 / TCP(sport=40000, dport=443, flags="A"), 10),
        (ETH / V4 / TCP(sport=40000, dport=443, flags="S"), 0),
        (ETH / V4 / TCP(sport=40000, dport=443, flags="FA") / b"x", 0),
    ):
        old: list[int] = []
        new: list[int] = []
        run(single, raw(pkt), steps=old)
        run(chained.instructions, raw(pkt), steps=new)
        assert new[0] - old[0] <= most, (pkt.summary(), old, new)
