"""Hypothesis: hostile handshakes never raise out of the parsers or the assembler; memory stays bounded."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podwire.model import ConnectionRecord, Endpoint, Outcome, TlsChunk
from podwire.tls.assembler import TlsAssembler, TlsLimits
from podwire.tls.handshake import (
    TlsError,
    leaf_certificate,
    parse_client_hello,
    parse_server_hello,
    partial_server_name,
)
from tests.tls.handshakes import handshake, make_cert

A, B = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
LIMITS = TlsLimits(max_connections=8, max_handshake_bytes=4096)


def _real_flights() -> list[bytes]:
    import tempfile

    cert = make_cert()
    out: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            flight = handshake(cert, Path(tmp), version=version, alpn=("h2",))
            out.extend([flight.client[0], flight.server[0]])
    return out


SEEDS = _real_flights()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real handshake flight with a few bytes changed, cut, or inserted (lengths go wrong)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(max_size=64))
        if not data:
            data = bytearray(b"\x16")
    return bytes(data[: draw(st.integers(1, len(data)))])


payloads = st.one_of(mutated(), st.binary(min_size=1, max_size=600).map(lambda b: b"\x16\x03" + b))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 9), st.booleans(), st.integers(0, 2**32 - 1), payloads), max_size=30)
)
def test_assembler_never_raises_and_stays_bounded(feeds: list[tuple[int, bool, int, bytes]]) -> None:
    asm = TlsAssembler(LIMITS)
    for port, forward, seq, payload in feeds:
        src, dst = (A, B) if forward else (B, A)
        sport, dport = (40000 + port, 443) if forward else (443, 40000 + port)
        asm.feed_one(TlsChunk(0.0, 1, src, dst, sport, dport, seq, payload))
        assert len(asm) <= LIMITS.max_connections
        for conn in asm._conns.values():
            for d in conn.dirs.values():
                assert len(d.records) + len(d.messages) <= LIMITS.max_handshake_bytes
    # joining a record (cut hellos salvaged, lookalikes checked against the ISNs) never raises either
    for port in {p for p, _, _, _ in feeds[::2]}:
        rec = ConnectionRecord(
            point=1, client=Endpoint("10.0.0.1", 40000 + port), server=Endpoint("10.0.0.2", 443),
            network_type="ipv4", start_time=0.0, end_time=1.0, duration_s=1.0, outcome=Outcome.CLOSED,
            close_initiator=None, bytes_client_to_server=None, bytes_server_to_client=None,
            handshake_rtt_s=None, started_before_capture=False, client_guessed=False,
            client_isn=port * 977, server_isn=port * 1313, observed_side=None,
        )  # fmt: skip
        asm.take(rec)
    asm.expire(1e9)
    assert len(asm) == 0


@settings(max_examples=600, deadline=None)
@given(st.one_of(mutated().map(lambda b: b[9:]), st.binary(max_size=400)))
def test_message_parsers_raise_only_tls_error(body: bytes) -> None:
    for parse in (parse_client_hello, parse_server_hello, lambda b: leaf_certificate(b, 4096)):
        with contextlib.suppress(TlsError):
            parse(body)
    name = partial_server_name(body)  # never raises at all
    assert name is None or len(name) <= 255
