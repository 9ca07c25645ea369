from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from podwire.model import ConnectionRecord, Endpoint, Outcome, TlsChunk
from podwire.tls.assembler import TlsAssembler, TlsLimits
from tests.tls.handshakes import NOT_AFTER, Flight, handshake, make_cert

CLIENT = socket.inet_aton("10.0.0.1")
SERVER = socket.inet_aton("10.0.0.2")
CPORT, SPORT = 40000, 443
CISN, SISN = 1000, 5_000_000


def record(cport: int = CPORT, point: int = 7) -> ConnectionRecord:
    return ConnectionRecord(
        point=point,
        client=Endpoint("10.0.0.1", cport),
        server=Endpoint("10.0.0.2", SPORT),
        network_type="ipv4",
        start_time=1.0,
        end_time=2.0,
        duration_s=1.0,
        outcome=Outcome.CLOSED,
        close_initiator=None,
        bytes_client_to_server=None,
        bytes_server_to_client=None,
        handshake_rtt_s=None,
        started_before_capture=False,
        client_guessed=False,
        client_isn=CISN,
        server_isn=SISN,
        observed_side=None,
    )


def chunks(flight: Flight, cport: int = CPORT, point: int = 7, split: int | None = None) -> list[TlsChunk]:
    """Each write as one TCP payload (the first client write split at `split` if given)."""
    out: list[TlsChunk] = []
    cseq, sseq = CISN + 1, SISN + 1
    for i in range(max(len(flight.client), len(flight.server))):
        if i < len(flight.client):
            data = flight.client[i]
            parts = [data[:split], data[split:]] if split is not None and i == 0 else [data]
            for part in parts:
                out.append(TlsChunk(1.0, point, CLIENT, SERVER, cport, SPORT, cseq, part))
                cseq += len(part)
        if i < len(flight.server):
            data = flight.server[i]
            out.append(TlsChunk(1.0, point, SERVER, CLIENT, SPORT, cport, sseq, data))
            sseq += len(data)
    return out


@pytest.fixture(scope="module")
def cert():  # type: ignore[no-untyped-def]
    return make_cert()


def run(chunks_: list[TlsChunk], limits: TlsLimits | None = None):  # type: ignore[no-untyped-def]
    asm = TlsAssembler(limits)
    asm.feed(chunks_)
    return asm, asm.take(record())


def test_tls13_with_sni_and_alpn(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path, alpn=("h2", "http/1.1"))
    asm, info = run(chunks(flight))
    assert info is not None
    assert info.server_name == "web.podwire.test"
    assert info.version == "TLS 1.3"
    assert info.cipher == "TLS_AES_256_GCM_SHA384"
    assert info.alpn is None  # encrypted in TLS 1.3
    assert info.client_alpn == ("h2", "http/1.1")
    assert info.client_versions[0] == "TLS 1.3"
    assert info.certificate_not_after is None  # encrypted in TLS 1.3
    assert info.ja4 is not None and info.ja4.startswith("t13d") and "h2_" in info.ja4
    assert len(info.ja3 or "") == 32 and len(info.ja3s or "") == 32
    assert not info.deprecated
    assert asm.stats.errors == 0 and len(asm) == 0  # taken means forgotten


def test_tls12_certificate_alpn_and_cipher(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2, alpn=("http/1.1",))
    asm, info = run(chunks(flight))
    assert info is not None
    assert info.version == "TLS 1.2"
    assert info.cipher == "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
    assert info.alpn == "http/1.1"
    assert info.certificate_not_after == NOT_AFTER.timestamp()
    assert info.certificate_subject == "CN=web.podwire.test"
    assert info.certificate_issuer == "O=podwire test CA"
    assert info.certificate_sans == ("web.podwire.test", "alt.podwire.test", "10.1.2.3")
    assert info.ja4 is not None and info.ja4.startswith("t12d") and info.ja4[8:10] == "h1"
    assert asm.stats.certificates == 1 and asm.stats.errors == 0


def test_the_client_offer_in_iana_names_in_order(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    offer = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"  # OpenSSL's names
    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2, ciphers=offer)
    _, info = run(chunks(flight))
    assert info is not None
    assert info.client_ciphers == (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",  # OpenSSL appends it to every TLS <= 1.2 offer
    )
    assert info.cipher in info.client_ciphers[:2]  # the server chose from the offer


def test_grease_is_left_out_of_the_offer_and_unknown_codes_are_hex() -> None:
    from podwire.tls.assembler import info as make_info
    from podwire.tls.handshake import ClientHello

    hello = ClientHello(0x0303, (0x0A0A, 0x1301, 0xFEFE, 0xC02B), (), None, (), (), (), (), ())
    got = make_info(hello, None, None).client_ciphers
    assert got == ("TLS_AES_128_GCM_SHA256", "0xfefe", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")


def test_without_sni(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path, sni=None)
    _, info = run(chunks(flight))
    assert info is not None and info.server_name is None
    assert info.ja4 is not None and info.ja4[3] == "i" and info.ja4[8:10] == "00"


def test_ja3_is_md5_of_the_wire_fields(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from podwire.tls import fingerprints
    from podwire.tls.handshake import parse_client_hello

    flight = handshake(cert, tmp_path)
    body = flight.client[0][9:]  # record header (5) + handshake header (4)
    hello = parse_client_hello(body)
    text = fingerprints.ja3_string(hello)
    assert text.startswith("771,4866-4867-4865-")  # legacy version 0x0303, TLS 1.3 suites first
    _, info = run(chunks(flight))
    assert info is not None and info.ja3 == hashlib.md5(text.encode()).hexdigest()


def test_client_hello_split_anywhere_gives_the_same_facts(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2, alpn=("h2",))
    _, whole = run(chunks(flight))
    size = len(flight.client[0])
    for split in range(1, size, 7):
        asm, info = run(chunks(flight, split=split))
        assert info == whole, split
        assert asm.stats.errors == 0


def test_retransmission_is_trimmed_and_a_gap_without_record_start_is_dropped(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path)
    first = chunks(flight, split=100)
    hello_a, hello_b = first[0], first[1]
    # retransmitted first part, then overlapping second part
    overlap = TlsChunk(
        1.0, 7, CLIENT, SERVER, CPORT, SPORT, hello_b.seq - 10, hello_a.payload[-10:] + hello_b.payload
    )
    asm, info = run([hello_a, hello_a, overlap, *first[2:]])
    assert info is not None and info.server_name == "web.podwire.test"
    # the second part alone, before the first: a gap, dropped and counted
    asm, info = run([hello_b])
    assert asm.stats.not_handshake == 1 and info is None
    asm, info = run(
        [
            hello_a,
            first[2],
            TlsChunk(1.0, 7, CLIENT, SERVER, CPORT, SPORT, hello_b.seq + 5, hello_b.payload[5:]),
        ]
    )
    assert asm.stats.gap == 1


def test_a_hello_whose_continuation_never_came_is_counted_incomplete(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # What the live capture sees when a ClientHello spans two segments: the kernel passes only the
    # first (it starts a record); the ServerHello still arrives.
    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2)
    first, _lost, *rest = chunks(flight, split=100)
    passed = [c for c in rest if c.payload[0] == 0x16 and c.payload[5] in (1, 2, 11)]  # FILTER_PARTS
    assert passed and all(c.src == SERVER for c in passed)
    asm, info = run([first, *passed])
    assert asm.stats.incomplete == 1 and asm.stats.client_hellos == 0
    assert info is not None and info.version == "TLS 1.2" and info.ja3 is None and info.ja4 is None
    assert info.server_name is None  # the first 100 bytes end before the server_name extension
    assert info.client_ciphers == () and info.client_alpn == ()
    assert asm.stats.failures()["incomplete"] == 1
    # and one that expires without a record is counted the same way
    asm = TlsAssembler(TlsLimits(ttl_s=1.0))
    asm.feed([first])
    asm.expire(now=first.ts + 2.0)
    assert (asm.stats.expired, asm.stats.incomplete, len(asm)) == (1, 1, 0)
    # a complete handshake is never incomplete
    asm, _ = run(chunks(flight, split=100))
    assert asm.stats.incomplete == 0


def test_byte_bound_gives_up_and_counts(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2)
    assert len(flight.client[0]) < 300 < sum(map(len, flight.server))
    asm, info = run(chunks(flight), TlsLimits(max_handshake_bytes=300))
    assert asm.stats.oversize == 1  # the server's flight, given up
    assert info is not None and info.server_name == "web.podwire.test"
    assert info.version is None and info.certificate_not_after is None
    asm, info = run(chunks(flight), TlsLimits(max_handshake_bytes=100))
    assert asm.stats.oversize == 2 and info is None


def test_connection_bound_and_expiry(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path)
    asm = TlsAssembler(TlsLimits(max_connections=2, ttl_s=10.0))
    for cport in (1, 2, 3):
        asm.feed(chunks(flight, cport=cport))
    assert len(asm) == 2 and asm.stats.evicted == 1
    assert asm.take(record(cport=1)) is None  # the oldest went
    assert asm.take(record(cport=2)) is not None
    asm.expire(5.0)
    assert len(asm) == 1
    asm.expire(100.0)
    assert len(asm) == 0 and asm.stats.expired == 1


def test_other_point_or_port_does_not_join(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path)
    asm = TlsAssembler()
    asm.feed(chunks(flight))
    assert asm.take(record(point=8)) is None
    assert asm.take(record(cport=CPORT + 1)) is None
    assert asm.take(record()) is not None


def test_cryptography_loads_at_the_first_certificate_not_with_tls_insight() -> None:
    # TLS insight is on by default; cryptography is ~8 MB resident in the idle agent (issue 13)
    code = (
        "import sys\n"
        "import podwire.agent, podwire.tls.assembler\n"
        "assert 'cryptography' not in sys.modules, 'cryptography imported'\n"
        "from podwire.tls.certificate import parse_der\n"
        "try:\n"
        "    parse_der(b'not a certificate')\n"
        "except ValueError:\n"
        "    pass\n"
        "assert 'cryptography' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_repeated_offer_reuses_its_fingerprints_but_never_the_sni(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from podwire.tls import assembler as asm_mod

    asm = TlsAssembler()
    got = []
    for port, sni in ((40001, "a.podwire.test"), (40002, "b.podwire.test"), (40003, None)):
        asm.feed(chunks(handshake(cert, tmp_path, sni=sni, alpn=("h2",)), cport=port))
        got.append(asm.take(record(cport=port)))
    assert [i.server_name for i in got if i is not None] == ["a.podwire.test", "b.podwire.test", None]
    a, b, c = got
    assert a is not None and b is not None and c is not None
    assert (a.ja3, a.ja4, a.client_ciphers) == (b.ja3, b.ja4, b.client_ciphers)  # one offer, one entry
    assert c.ja3 != a.ja3 and c.ja4 is not None and c.ja4[3] == "i"  # no server_name extension: another
    assert len(asm._offers) == 2
    for i in range(asm_mod._OFFER_CACHE + 5):
        asm._offer(asm_mod.ClientHello(0x0303, (i,), (), None, (), (), (), (), ()))
    assert len(asm._offers) <= asm_mod._OFFER_CACHE


def test_a_hello_deep_in_its_stream_is_not_the_handshake(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The kernel passes any segment that starts like a handshake record; the record's ISNs say
    # where each stream began, so a lookalike far into a long connection is left out (counted).
    import msgspec

    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2)
    for client_offset, server_offset, kept in (
        (0, 0, "both"),
        (300, 120, "both"),  # after a STARTTLS preamble
        (5_000_000, 0, "server"),
        (0, 70_000, "client"),
    ):
        moved = [
            c._replace(seq=c.seq + (client_offset if c.src == CLIENT else server_offset))
            for c in chunks(flight)
        ]
        asm, info = run(moved)
        assert info is not None, (client_offset, server_offset)
        assert (info.server_name is not None) == (kept in ("both", "client"))
        assert (info.version is not None, info.certificate_subject is not None) == (
            kept in ("both", "server"),
        ) * 2
        assert asm.stats.late == (0 if kept == "both" else 1)
    # a connection seen from its middle has no ISN to measure from: kept
    asm = TlsAssembler()
    asm.feed([c._replace(seq=c.seq + 9_000_000) for c in chunks(flight)])
    info = asm.take(msgspec.structs.replace(record(), started_before_capture=True))
    assert info is not None and info.server_name is not None and asm.stats.late == 0


def test_a_cut_client_hello_still_names_its_server_when_the_sni_arrived_whole(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from podwire.tls.handshake import partial_server_name

    flight = handshake(cert, tmp_path, alpn=("h2", "http/1.1"))
    hello = flight.client[0]
    body = hello[9:]  # after the record header and the handshake header
    sni_end = hello.index(b"web.podwire.test") + len(b"web.podwire.test")
    for cut in range(1, len(hello), 3):
        first, _lost, *rest = chunks(flight, split=cut)
        passed = [c for c in rest if c.src == SERVER and c.payload[0] == 0x16 and c.payload[5] in (1, 2, 11)]
        asm, info = run([first, *passed])
        assert info is not None, cut
        # the SNI once its extension is whole, never a piece of it; never a fingerprint of a cut offer
        assert info.server_name == ("web.podwire.test" if cut >= sni_end else None), cut
        assert info.ja3 is None and info.ja4 is None and asm.stats.incomplete == 1
        assert partial_server_name(body[: max(0, cut - 9)]) == info.server_name
    assert partial_server_name(b"") is None and partial_server_name(b"\xff" * 300) is None


def test_hello_lookalikes_deep_in_a_stream_name_nothing_even_cut_or_after_a_gap(cert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flight = handshake(cert, tmp_path)
    hello = flight.client[0]
    sni_end = hello.index(b"web.podwire.test") + len(b"web.podwire.test")
    first, *_ = chunks(flight, split=sni_end)  # a ClientHello cut just after its SNI
    assert first.src == CLIENT and len(first.payload) == sni_end
    # inside a plain upload, 1 MB into the stream: its SNI is not the connection's name
    asm, info = run([first._replace(seq=first.seq + 1_000_000)])
    assert info is None and asm.stats.late == 1
    # the real hello cut at the start, then a whole lookalike 1 MB on: the resync measures from it
    whole = [c for c in chunks(flight) if c.src == CLIENT][:1]
    asm, info = run([first, *(c._replace(seq=c.seq + 1_000_000) for c in whole)])
    assert asm.stats.gap == 1 and asm.stats.late == 1
    assert info is None  # neither its SNI nor its fingerprints
