"""Progress from socket stats in the edge metrics, through the real SDK into a real OTLP receiver:
bytes rise while open and the close adds only the rest; RTT, min RTT, retransmits by sender."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from podwire.config import Settings
from podwire.model import ConnectionProgress, ConnectionRecord, Outcome, Side
from podwire.telemetry import names as n
from podwire.telemetry.export import Telemetry
from tests.otlp_receiver import OtlpReceiver, Point
from tests.telemetry.factory import named, opened_for, pod, record


@pytest.fixture
def tel(receiver: OtlpReceiver) -> Iterator[Telemetry]:
    t = Telemetry(Settings(otlp="on", node_name="node-a", spans=False), receiver.env("grpc", 600_000))
    try:
        yield t
    finally:
        t.shutdown(3)


def progress_of(
    rec: ConnectionRecord, c2s: int, s2c: int, retrans: int = 0, rtt: float = 0.02
) -> ConnectionProgress:
    return ConnectionProgress(
        rec.point,
        rec.client,
        rec.server,
        rec.start_time,
        rec.client_isn,
        rec.server_isn,
        rec.observed_side,
        (rec.start_time or 0.0) + 1,
        c2s,
        s2c,
        rtt,
        rtt / 2,
        retrans,
    )


def flushed(rx: OtlpReceiver, t: Telemetry, name: str) -> list[Point]:
    assert t.force_flush(5)
    return rx.latest_points(name)


def bytes_by_direction(rx: OtlpReceiver, t: Telemetry) -> dict[object, float]:
    return {p.attributes[n.DIRECTION]: p.value for p in flushed(rx, t, n.TCP_BYTES)}


WEB, DB = pod("web"), pod("db", kind="StatefulSet")


def test_bytes_rise_with_progress_and_the_close_adds_only_the_rest(
    receiver: OtlpReceiver, tel: Telemetry
) -> None:
    rec = msgspec.structs.replace(record(Outcome.CLOSED, Side.CLIENT, c2s=10_000, s2c=700), retransmits=3)
    tel.metrics.on_opened(opened_for(rec), WEB, DB)
    tel.metrics.on_progress(progress_of(rec, 4_000, 100, retrans=1), WEB, DB)
    assert bytes_by_direction(receiver, tel) == {n.CLIENT_TO_SERVER: 4_000, n.SERVER_TO_CLIENT: 100}
    tel.metrics.on_progress(progress_of(rec, 9_000, 600, retrans=2, rtt=0.01), WEB, DB)
    assert bytes_by_direction(receiver, tel) == {n.CLIENT_TO_SERVER: 9_000, n.SERVER_TO_CLIENT: 600}
    tel.metrics.on_connection(named(rec, WEB, DB))
    assert bytes_by_direction(receiver, tel) == {n.CLIENT_TO_SERVER: 10_000, n.SERVER_TO_CLIENT: 700}
    (rtt,) = receiver.latest_points(n.TCP_RTT)
    assert rtt.count == 2  # one observation per sample
    (min_rtt,) = receiver.latest_points(n.TCP_MIN_RTT)
    assert min_rtt.value == pytest.approx(0.005)
    retrans = {p.attributes[n.SENDER]: p.value for p in receiver.latest_points(n.TCP_RETRANSMITS)}
    assert retrans == {"client": 3, "server": 0}
    conns = {
        p.attributes[n.SENDER]: p.value for p in receiver.latest_points(n.TCP_CONNECTIONS_RETRANSMITTING)
    }
    assert conns == {"client": 1, "server": 0}


def test_the_uncounted_end_adds_only_its_own_retransmits(receiver: OtlpReceiver, tel: Telemetry) -> None:
    # the same connection at the server's veth of the same node: the client's veth counts it
    rec_c = record(Outcome.CLOSED, Side.CLIENT, point=3, c2s=50, s2c=60)
    rec_s = msgspec.structs.replace(rec_c, point=4, observed_side=Side.SERVER, retransmits=5)
    tel.metrics.on_opened(opened_for(rec_c), WEB, DB)
    tel.metrics.on_progress(progress_of(rec_c, 50, 60), WEB, DB)
    tel.metrics.on_progress(progress_of(rec_s, 50, 60, retrans=4), WEB, DB)
    tel.metrics.on_connection(named(rec_c, WEB, DB))
    tel.metrics.on_connection(named(rec_s, WEB, DB))
    assert bytes_by_direction(receiver, tel) == {n.CLIENT_TO_SERVER: 50, n.SERVER_TO_CLIENT: 60}
    retrans = {p.attributes[n.SENDER]: p.value for p in receiver.latest_points(n.TCP_RETRANSMITS)}
    assert retrans == {"client": 0, "server": 5}
    (rtt,) = receiver.latest_points(n.TCP_RTT)
    assert rtt.count == 1  # only the counted end's sample


def test_a_connection_older_than_the_agent_counts_its_progress_once(
    receiver: OtlpReceiver, tel: Telemetry
) -> None:
    rec = record(Outcome.CLOSED, Side.CLIENT, c2s=300, s2c=40)
    rec = msgspec.structs.replace(
        rec, client_isn=None, server_isn=None, start_time=None, started_before_capture=True
    )
    tel.metrics.on_progress(progress_of(rec, 200, 40), WEB, DB)
    tel.metrics.on_progress(progress_of(rec, 300, 40), WEB, DB)
    tel.metrics.on_connection(named(rec, WEB, DB))  # the record carries the same since-first-sample bytes
    assert bytes_by_direction(receiver, tel) == {n.CLIENT_TO_SERVER: 300, n.SERVER_TO_CLIENT: 40}


def test_both_ends_on_one_sink_with_the_same_point_number_count_once(
    receiver: OtlpReceiver, tel: Telemetry
) -> None:
    """Two captures feeding one sink (the demo's two nodes) can give both ends the same point number;
    the server's record arriving first must not take the client's progress with it (a 120 s demo
    counted its long-lived connection's bytes twice)."""
    rec_c = msgspec.structs.replace(
        record(Outcome.CLOSED, Side.CLIENT, point=5, c2s=9_000, s2c=70), retransmits=2
    )
    rec_s = msgspec.structs.replace(rec_c, observed_side=Side.SERVER, retransmits=1)
    tel.metrics.on_opened(opened_for(rec_c), WEB, DB)
    tel.metrics.on_progress(progress_of(rec_c, 8_000, 60, retrans=2), WEB, DB)
    tel.metrics.on_progress(progress_of(rec_s, 8_000, 60, retrans=1), WEB, DB)
    tel.metrics.on_connection(named(rec_s, WEB, DB))  # the server's end closes first
    tel.metrics.on_connection(named(rec_c, WEB, DB))
    assert bytes_by_direction(receiver, tel) == {n.CLIENT_TO_SERVER: 9_000, n.SERVER_TO_CLIENT: 70}
    retrans = {p.attributes[n.SENDER]: p.value for p in receiver.latest_points(n.TCP_RETRANSMITS)}
    assert retrans == {"client": 2, "server": 1}
