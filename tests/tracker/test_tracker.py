"""Whole connection lifecycles through Tracker.feed/expire/flush, with exact byte arithmetic."""

from __future__ import annotations

import random
import socket
import tracemalloc
from dataclasses import dataclass, field

import pytest

from podwire.config import Settings
from podwire.model import (
    ACK,
    FIN,
    RST,
    SYN,
    CloseInitiator,
    ConnectionEvent,
    ConnectionOpened,
    ConnectionRecord,
    Endpoint,
    Outcome,
    Segment,
    Side,
)
from podwire.tracker.tracker import Tracker, TrackerLimits, guess_client_is_src
from podwire.tracker.transitions import State

M = 2**32
A = socket.inet_aton("10.0.0.1")
B = socket.inet_aton("10.0.0.2")
A6 = socket.inet_pton(socket.AF_INET6, "fd00::1")
B6 = socket.inet_pton(socket.AF_INET6, "fd00::2")


@dataclass
class Script:
    """One connection as a real TCP stack sends its control segments.

    `up`/`down` are the payload bytes each side has sent so far (data segments are never fed:
    the kernel filter drops them); FINs and RSTs carry the matching sequence numbers.
    """

    cisn: int
    sisn: int
    client: tuple[bytes, int] = (A, 40000)
    server: tuple[bytes, int] = (B, 80)
    point: int = 0
    client_local: bool | None = True
    up: int = 0
    down: int = 0
    c_fin: bool = False
    s_fin: bool = False
    sent: list[Segment] = field(default_factory=list)

    def _seg(self, ts: float, from_client: bool, seq: int, ack: int, flags: int, plen: int = 0) -> Segment:
        local = None if self.client_local is None else (self.client_local == from_client)
        (src, sport), (dst, dport) = (self.client, self.server) if from_client else (self.server, self.client)
        seg = Segment(ts, self.point, src, dst, sport, dport, seq % M, ack % M, flags, plen, local)
        self.sent.append(seg)
        return seg

    def syn(self, ts: float) -> Segment:
        return self._seg(ts, True, self.cisn, 0, SYN)

    def synack(self, ts: float) -> Segment:
        return self._seg(ts, False, self.sisn, self.cisn + 1, SYN | ACK)

    def _ack_of(self, from_client: bool) -> int:
        if from_client:
            return self.sisn + 1 + self.down + (1 if self.s_fin else 0)
        return self.cisn + 1 + self.up + (1 if self.c_fin else 0)

    def fin(self, ts: float, from_client: bool, data: int = 0, ack: int | None = None) -> Segment:
        """FIN carrying `data` new payload bytes; acks everything the peer sent unless `ack` given."""
        if from_client:
            self.up += data
            seq = self.cisn + 1 + self.up - data
        else:
            self.down += data
            seq = self.sisn + 1 + self.down - data
        seg = self._seg(
            ts, from_client, seq, self._ack_of(from_client) if ack is None else ack, FIN | ACK, data
        )
        if from_client:
            self.c_fin = True
        else:
            self.s_fin = True
        return seg

    def rst(self, ts: float, from_client: bool, with_ack: bool = True) -> Segment:
        if from_client:
            seq = self.cisn + 1 + self.up + (1 if self.c_fin else 0)
        else:
            seq = self.sisn + 1 + self.down + (1 if self.s_fin else 0)
        ack = self._ack_of(from_client) if with_ack else 0
        return self._seg(ts, from_client, seq, ack, RST | (ACK if with_ack else 0))


def feed_all(tracker: Tracker, segments: list[Segment]) -> list[ConnectionEvent]:
    out: list[ConnectionEvent] = []
    for seg in segments:
        out.extend(tracker.feed(seg))
    return out


def records(events: list[ConnectionEvent]) -> list[ConnectionRecord]:
    return [e for e in events if isinstance(e, ConnectionRecord)]


def only_record(events: list[ConnectionEvent]) -> ConnectionRecord:
    recs = records(events)
    assert len(recs) == 1, events
    return recs[0]


# --- closes ----------------------------------------------------------------------------


def test_client_close_counts_exact_bytes_including_data_on_the_fin() -> None:
    t = Tracker()
    sc = Script(cisn=123_456, sisn=987_654)
    events = feed_all(t, [sc.syn(10.0), sc.synack(10.0004)])
    sc.up, sc.down = 1200, 56_000
    events += feed_all(t, [sc.fin(11.0, True, data=34), sc.fin(11.001, False, data=0)])
    opened = events[0]
    assert isinstance(opened, ConnectionOpened)
    assert opened.handshake_rtt_s == pytest.approx(0.0004)
    assert (opened.client, opened.server) == (Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 80))
    rec = only_record(events)
    assert rec.outcome == Outcome.CLOSED
    assert rec.close_initiator == CloseInitiator.CLIENT
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (1234, 56_000)
    assert (rec.start_time, rec.end_time) == (10.0, 11.001)
    assert rec.duration_s == pytest.approx(1.001)
    assert rec.network_type == "ipv4"
    assert (rec.client_isn, rec.server_isn) == (123_456, 987_654)
    assert rec.started_before_capture is False and rec.client_guessed is False
    assert rec.observed_side == Side.CLIENT
    assert len(t) == 0


def test_server_close_and_fin_data_on_the_server_side() -> None:
    t = Tracker()
    sc = Script(cisn=5, sisn=6)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 77, 1000
    rec = only_record(feed_all(t, [sc.fin(2.0, False, data=500), sc.fin(2.1, True)]))
    assert rec.close_initiator == CloseInitiator.SERVER
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (77, 1500)


def test_sequence_wrap_around_2_32_is_exact() -> None:
    t = Tracker()
    sc = Script(cisn=M - 10, sisn=M - 1)  # both directions wrap
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 100, 3 * 2**30  # 3 GiB downstream, still below the 4 GiB ambiguity
    rec = only_record(feed_all(t, [sc.fin(2.0, True), sc.fin(2.1, False)]))
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (100, 3 * 2**30)


def test_simultaneous_close_is_both() -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 10, 20
    first = sc.fin(2.0, True)
    # The server's FIN was sent before the client's FIN arrived: it acks the data, not the FIN.
    second = sc.fin(2.0001, False, ack=sc.cisn + 1 + sc.up)
    rec = only_record(feed_all(t, [first, second]))
    assert rec.close_initiator == CloseInitiator.BOTH
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (10, 20)


def test_half_close_server_keeps_sending_after_client_fin() -> None:
    t = Tracker()
    sc = Script(cisn=400, sisn=900)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up = 300
    assert feed_all(t, [sc.fin(2.0, True)]) == []
    assert t.state_of(0, A, 40000, B, 80) == State.CLOSING_C
    sc.down = 8_000_000  # server streams on the half-closed connection
    rec = only_record(feed_all(t, [sc.fin(9.0, False, data=1000)]))
    assert rec.close_initiator == CloseInitiator.CLIENT
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (300, 8_001_000)
    assert rec.end_time == 9.0


def test_retransmitted_fin_is_ignored() -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    fin = sc.fin(2.0, True, data=50)  # all 50 bytes ride on the FIN
    assert feed_all(t, [fin, fin._replace(ts=2.2), fin._replace(ts=2.6)]) == []
    rec = only_record(feed_all(t, [sc.fin(3.0, False)]))
    assert rec.bytes_client_to_server == 50
    assert t.stats.anomalies == {}


# --- resets ----------------------------------------------------------------------------


@pytest.mark.parametrize("from_client", [True, False], ids=["client_rst", "server_rst"])
def test_rst_with_ack_gives_both_positions(from_client: bool) -> None:
    t = Tracker()
    sc = Script(cisn=111, sisn=222)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 4096, 65_536
    rec = only_record(feed_all(t, [sc.rst(2.0, from_client, with_ack=True)]))
    assert rec.outcome == Outcome.RESET
    assert rec.close_initiator == (CloseInitiator.CLIENT if from_client else CloseInitiator.SERVER)
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (4096, 65_536)
    assert rec.end_time == 2.0


@pytest.mark.parametrize("from_client", [True, False], ids=["client_rst", "server_rst"])
def test_rst_without_ack_gives_only_the_senders_position(from_client: bool) -> None:
    t = Tracker()
    sc = Script(cisn=M - 3, sisn=7)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 4096, 65_536
    rec = only_record(feed_all(t, [sc.rst(2.0, from_client, with_ack=False)]))
    assert rec.outcome == Outcome.RESET
    if from_client:
        assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (4096, None)
    else:
        assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (None, 65_536)


def test_rst_after_fin_keeps_fin_count_and_first_closer_initiates() -> None:
    t = Tracker()
    sc = Script(cisn=10, sisn=20)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 5, 700
    feed_all(t, [sc.fin(2.0, True)])
    sc.down = 900  # server wrote more; the closed client answers with RST (it acks what it read)
    rst = sc._seg(2.5, True, sc.cisn + 1 + sc.up + 1, sc.sisn + 1 + 900, RST | ACK)
    rec = only_record(feed_all(t, [rst]))
    assert rec.outcome == Outcome.RESET
    assert rec.close_initiator == CloseInitiator.CLIENT
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (5, 900)


@pytest.mark.parametrize("with_ack", [True, False])
def test_refused_rst_answering_syn(with_ack: bool) -> None:
    t = Tracker()
    sc = Script(cisn=3_000_000_000, sisn=0)
    feed_all(t, [sc.syn(5.0)])
    rst = sc._seg(5.0002, False, 0, sc.cisn + 1 if with_ack else 0, RST | (ACK if with_ack else 0))
    rec = only_record(feed_all(t, [rst]))
    assert rec.outcome == Outcome.REFUSED
    assert rec.close_initiator is None
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (0, 0)
    assert (rec.start_time, rec.end_time) == (5.0, 5.0002)
    assert rec.handshake_rtt_s is None and rec.server_isn is None


# --- timers and flush ------------------------------------------------------------------


def test_timeout_via_expire_after_syn_retransmits() -> None:
    t = Tracker(TrackerLimits(syn_timeout_s=20.0))
    sc = Script(cisn=42, sisn=0)
    feed_all(t, [sc.syn(100.0), sc.syn(101.0), sc.syn(103.0)])
    assert t.expire(120.0) == []  # not older than 20 s yet
    rec = only_record(t.expire(120.5))
    assert rec.outcome == Outcome.TIMEOUT
    assert (rec.start_time, rec.end_time, rec.duration_s) == (100.0, 103.0, 3.0)
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client, rec.close_initiator) == (None, None, None)
    assert len(t) == 0
    # A late retransmit of the same SYN does not start a second attempt.
    assert feed_all(t, [sc.syn(121.0)]) == [] and len(t) == 0
    assert t.stats.anomalies["late_syn"] == 1


def test_closing_timeout_closes_with_what_is_known() -> None:
    t = Tracker(TrackerLimits(closing_timeout_s=30.0))
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    sc.up, sc.down = 10, 333
    feed_all(t, [sc.fin(2.0, True)])  # its ack says the client received 333 bytes
    assert t.expire(31.0) == []
    rec = only_record(t.expire(32.5))
    assert rec.outcome == Outcome.CLOSED and rec.close_initiator == CloseInitiator.CLIENT
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (10, 333)
    assert rec.end_time == 2.0


def test_idle_established_is_dropped_and_counted_without_record() -> None:
    t = Tracker(TrackerLimits(idle_timeout_s=50.0))
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    assert t.expire(51.0) == []
    assert len(t) == 1
    assert t.expire(51.2) == []
    assert len(t) == 0
    assert t.stats.anomalies["idle_expired"] == 1


def test_flush_outcomes_for_everything_left() -> None:
    t = Tracker()
    half = Script(cisn=1, sisn=0, client=(A, 40001))
    est = Script(cisn=2, sisn=3, client=(A, 40002))
    closing = Script(cisn=4, sisn=5, client=(A, 40003))
    feed_all(t, [half.syn(1.0), est.syn(1.0), est.synack(1.1), closing.syn(1.0), closing.synack(1.1)])
    closing.up, closing.down = 99, 1000
    feed_all(t, [closing.fin(2.0, True)])
    recs = {r.client.port: r for r in records(t.flush(3.0))}
    assert recs[40001].outcome == Outcome.TIMEOUT
    assert recs[40002].outcome == Outcome.OPEN
    assert (recs[40002].end_time, recs[40002].duration_s, recs[40002].close_initiator) == (None, None, None)
    assert (recs[40002].bytes_client_to_server, recs[40002].bytes_server_to_client) == (None, None)
    assert recs[40003].outcome == Outcome.OPEN
    assert (recs[40003].bytes_client_to_server, recs[40003].bytes_server_to_client) == (99, 1000)
    assert len(t) == 0 and t.stats.recently_closed == 0


# --- generations, retransmits, odd starts ------------------------------------------------


def test_reused_port_two_generations_on_one_4_tuple() -> None:
    t = Tracker()
    g1 = Script(cisn=1000, sisn=2000)
    g2 = Script(cisn=9_000_000, sisn=8_000_000)
    events = feed_all(t, [g1.syn(1.0), g1.synack(1.1)])
    g1.up, g1.down = 10, 20
    events += feed_all(t, [g1.fin(1.5, True), g1.fin(1.6, False)])
    events += feed_all(t, [g2.syn(1.7), g2.synack(1.8)])  # same 4-tuple, within TIME_WAIT
    g2.up, g2.down = 30, 40
    events += feed_all(t, [g2.fin(2.0, False), g2.fin(2.1, True)])
    recs = records(events)
    assert [(r.client_isn, r.bytes_client_to_server, r.bytes_server_to_client) for r in recs] == [
        (1000, 10, 20),
        (9_000_000, 30, 40),
    ]
    assert [r.close_initiator for r in recs] == [CloseInitiator.CLIENT, CloseInitiator.SERVER]
    assert t.stats.anomalies == {}


def test_new_syn_on_live_established_tuple_reports_old_as_open() -> None:
    t = Tracker()
    g1 = Script(cisn=1000, sisn=2000)
    g2 = Script(cisn=5555, sisn=6666)
    feed_all(t, [g1.syn(1.0), g1.synack(1.1)])
    old = only_record(feed_all(t, [g2.syn(5.0)]))
    assert old.outcome == Outcome.OPEN and old.client_isn == 1000 and old.end_time is None
    assert t.stats.anomalies["syn_new_isn_on_live"] == 1
    assert t.state_of(0, A, 40000, B, 80) == State.HALF_OPEN


def test_syn_retransmit_rtt_uses_last_syn_karn() -> None:
    t = Tracker()
    sc = Script(cisn=77, sisn=88)
    events = feed_all(t, [sc.syn(10.0), sc.syn(11.0), sc.syn(13.0), sc.synack(13.00025)])
    opened = events[0]
    assert isinstance(opened, ConnectionOpened)
    assert opened.start_time == 10.0
    assert opened.handshake_rtt_s == pytest.approx(0.00025)


def test_synack_without_syn_starts_the_connection_with_exact_bytes() -> None:
    t = Tracker()
    sc = Script(cisn=M - 1, sisn=31337, client_local=False)
    (opened,) = feed_all(t, [sc.synack(7.0)])
    assert isinstance(opened, ConnectionOpened)
    assert (opened.client_isn, opened.server_isn, opened.start_time) == (M - 1, 31337, 7.0)
    assert opened.handshake_rtt_s is None
    assert opened.client == Endpoint("10.0.0.1", 40000)
    assert opened.observed_side == Side.SERVER  # the SYN-ACK came from the local workload
    sc.up, sc.down = 12, 34
    rec = only_record(feed_all(t, [sc.fin(8.0, True), sc.fin(8.1, False)]))
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (12, 34)
    assert rec.started_before_capture is False and rec.start_time == 7.0


def test_mid_stream_connection_guesses_roles_and_reports_unknown_bytes() -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2, client=(A, 51000), server=(B, 8080))
    sc.up, sc.down = 5, 6
    # first seen: the server's FIN
    assert feed_all(t, [sc.fin(50.0, False)]) == []
    rec = only_record(feed_all(t, [sc.fin(50.5, True)]))
    assert rec.started_before_capture is True and rec.client_guessed is True
    assert rec.client == Endpoint("10.0.0.1", 51000) and rec.server == Endpoint("10.0.0.2", 8080)
    assert (rec.start_time, rec.end_time, rec.duration_s) == (None, 50.5, None)
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (None, None)
    assert rec.outcome == Outcome.CLOSED and rec.close_initiator == CloseInitiator.SERVER
    assert (rec.client_isn, rec.server_isn) == (None, None)


def test_mid_stream_rst_is_reported_at_once_and_later_rsts_are_absorbed() -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2, client=(A, 45000), server=(B, 443), client_local=None)
    rec = only_record(feed_all(t, [sc.rst(9.0, True)]))
    assert rec.outcome == Outcome.RESET and rec.close_initiator == CloseInitiator.CLIENT
    assert rec.started_before_capture and rec.client_guessed and rec.observed_side is None
    assert feed_all(t, [sc.rst(9.1, True), sc.rst(9.2, False)]) == []
    assert t.stats.anomalies["after_close"] == 2


def test_late_fin_retransmit_after_close_does_not_start_a_phantom_connection() -> None:
    t = Tracker(TrackerLimits(time_wait_s=60.0))
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    last = sc.fin(2.0, False)
    only_record(feed_all(t, [last, sc.fin(2.1, True)]))
    assert feed_all(t, [last._replace(ts=2.5)]) == []  # the last ACK was lost
    assert len(t) == 0 and t.stats.anomalies["after_close"] == 1
    t.expire(70.0)
    assert t.stats.recently_closed == 0


@pytest.mark.parametrize(
    ("sport", "dport", "src_is_client"),
    [
        (40000, 80, True),  # well-known server port
        (80, 40000, False),
        (8080, 51000, False),  # registered < ephemeral
        (51000, 8080, True),
        (3000, 5432, False),  # both registered: the lower port (the sender's) is the server
        (50000, 60000, False),  # both ephemeral: the lower is the server
        (60000, 50000, True),
        (443, 443, True),  # equal: the destination of the first segment is the server
    ],
)
def test_mid_stream_role_guess_rule(sport: int, dport: int, src_is_client: bool) -> None:
    assert guess_client_is_src(sport, dport) is src_is_client


def test_ipv6_connection() -> None:
    t = Tracker()
    sc = Script(cisn=10, sisn=20, client=(A6, 40000), server=(B6, 443))
    events = feed_all(t, [sc.syn(1.0), sc.synack(1.001)])
    sc.up, sc.down = 517, 4321
    events += feed_all(t, [sc.fin(2.0, True), sc.fin(2.001, False)])
    rec = only_record(events)
    assert rec.network_type == "ipv6"
    assert rec.client == Endpoint("fd00::1", 40000) and rec.server == Endpoint("fd00::2", 443)
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (517, 4321)


@pytest.mark.parametrize(
    ("client_local", "expected"), [(True, Side.CLIENT), (False, Side.SERVER), (None, None)]
)
def test_observed_side_from_the_syn(client_local: bool | None, expected: Side | None) -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2, client_local=client_local)
    (opened,) = feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    assert isinstance(opened, ConnectionOpened) and opened.observed_side == expected


def test_capture_points_are_separate_keys() -> None:
    t = Tracker()
    at_client = Script(cisn=1, sisn=2, point=3)
    at_server = Script(cisn=1, sisn=2, point=4, client_local=False)
    a, b = at_client, at_server  # one connection seen at both of its ends
    events = feed_all(t, [a.syn(1.0), b.syn(1.00001), b.synack(1.0001), a.synack(1.0002)])
    a.up = b.up = 10
    events += feed_all(t, [a.fin(2.0, True), b.fin(2.00001, True), b.fin(2.1, False), a.fin(2.1001, False)])
    recs = records(events)
    assert sorted((r.point, r.observed_side, r.bytes_client_to_server) for r in recs) == [
        (3, Side.CLIENT, 10),
        (4, Side.SERVER, 10),
    ]


# --- bounds -----------------------------------------------------------------------------


def test_syn_flood_of_one_million_syns_keeps_the_table_bounded_and_counts_exactly() -> None:
    limits = TrackerLimits(max_connections=2000, max_half_open=1000)
    t = Tracker(limits)
    feed = t.feed
    n = 1_000_000

    def flood(first: int, last: int) -> None:
        for i in range(first, last):
            src = bytes((10, 9, (i >> 16) & 255, (i >> 8) & 255))
            assert not feed(Segment(1.0 + i * 1e-6, 0, src, B, 1024 + (i & 255), 80, i, 0, SYN, 0))

    flood(0, n - 150_000)
    # Once the table is full, memory stays flat: each SYN evicts one entry and adds one.
    # (Measured between two points inside the trace: tracemalloc only sees new allocations.)
    tracemalloc.start()
    try:
        flood(n - 150_000, n - 100_000)
        before = tracemalloc.get_traced_memory()[0]
        flood(n - 100_000, n)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
    stats = t.stats
    assert stats.half_open == 1000 and stats.entries == 1000
    assert stats.evictions == {"half_open": n - 1000}
    assert len(t._endpoints) == 0 and len(t._recent) == 0  # nothing else grew
    # A real connection still gets through during the flood.
    sc = Script(cisn=5, sisn=6)
    events = feed_all(t, [sc.syn(3.0), sc.synack(3.001)])
    assert isinstance(events[0], ConnectionOpened)
    # and the flood ages out by the SYN timeout
    recs = records(t.expire(3.0 + limits.syn_timeout_s + 1))
    assert len(recs) == 999 and {r.outcome for r in recs} == {Outcome.TIMEOUT}


def test_full_table_evicts_oldest_established_first() -> None:
    t = Tracker(TrackerLimits(max_connections=3, max_half_open=3))
    scripts = [Script(cisn=i, sisn=100 + i, client=(A, 41000 + i)) for i in range(4)]
    for i, sc in enumerate(scripts[:3]):
        feed_all(t, [sc.syn(1.0 + i), sc.synack(1.1 + i)])
    feed_all(t, [scripts[3].syn(5.0)])
    assert t.stats.evictions == {"established": 1}
    assert t.state_of(0, A, 41000, B, 80) == State.NEW
    assert t.state_of(0, A, 41003, B, 80) == State.HALF_OPEN
    assert len(t) == 3


# --- randomized: thousands of well-formed scripts, every byte checked --------------------

ENDINGS = (
    "client_close",
    "server_close",
    "simultaneous",
    "half_close",
    "client_rst",
    "server_rst",
    "client_rst_noack",
    "server_rst_noack",
    "fin_then_rst",
    "refused",
)


def _random_connection(rng: random.Random, sc: Script, t0: float) -> tuple[list[Segment], dict[str, object]]:
    """Segments of one connection starting at t0, and the record expected for it."""
    ending = rng.choice(ENDINGS)
    segs = [sc.syn(t0)]
    if rng.random() < 0.2:
        segs.append(sc.syn(t0 + 1.0))  # retransmitted SYN
    t = segs[-1].ts + 0.0003
    if ending == "refused":
        segs.append(sc._seg(t, False, 0, sc.cisn + 1, RST | ACK))
        return segs, {"outcome": Outcome.REFUSED, "c2s": 0, "s2c": 0, "initiator": None}
    segs.append(sc.synack(t))
    big = rng.random() < 0.1
    sc.up = rng.randrange(0, 2**31 if big else 100_000)
    sc.down = rng.randrange(0, 2**31 if big else 1_000_000)
    t += 0.01
    data = rng.randrange(0, 1400) if rng.random() < 0.3 else 0
    if ending in ("client_close", "server_close", "half_close"):
        first = ending != "server_close"
        segs.append(sc.fin(t, first, data=data))
        if ending == "half_close":
            sc.down += rng.randrange(0, 50_000)
        if rng.random() < 0.2:
            segs.append(segs[-1]._replace(ts=t + 0.2))  # retransmitted FIN
        segs.append(sc.fin(t + 0.3, not first, data=rng.randrange(0, 100)))
        who = CloseInitiator.CLIENT if first else CloseInitiator.SERVER
        return segs, {"outcome": Outcome.CLOSED, "c2s": sc.up, "s2c": sc.down, "initiator": who}
    if ending == "simultaneous":
        segs.append(sc.fin(t, True, data=data))
        segs.append(sc.fin(t + 0.0001, False, ack=sc.cisn + 1 + sc.up))
        return segs, {
            "outcome": Outcome.CLOSED,
            "c2s": sc.up,
            "s2c": sc.down,
            "initiator": CloseInitiator.BOTH,
        }
    if ending == "fin_then_rst":
        segs.append(sc.fin(t, False, data=data))
        segs.append(sc.rst(t + 0.1, True))
        return segs, {
            "outcome": Outcome.RESET,
            "c2s": sc.up,
            "s2c": sc.down,
            "initiator": CloseInitiator.SERVER,
        }
    from_client = ending.startswith("client")
    with_ack = not ending.endswith("noack")
    segs.append(sc.rst(t, from_client, with_ack=with_ack))
    c2s = sc.up if from_client or with_ack else None
    s2c = sc.down if not from_client or with_ack else None
    who = CloseInitiator.CLIENT if from_client else CloseInitiator.SERVER
    return segs, {"outcome": Outcome.RESET, "c2s": c2s, "s2c": s2c, "initiator": who}


def test_randomized_scripts_every_record_exact() -> None:
    rng = random.Random(20261129)
    tracker = Tracker(TrackerLimits(syn_timeout_s=30.0))
    expected: dict[tuple[int, int, int], dict[str, object]] = {}
    timeline: list[Segment] = []
    n_tuples, generations = 1000, 10
    used_isns: set[int] = set()
    for tup in range(n_tuples):
        client = (bytes((10, 1, tup // 200, tup % 200 + 1)), 32768 + rng.randrange(28000))
        server = (bytes((10, 2, 0, 1 + tup % 5)), rng.choice((80, 443, 5432, 8080)))
        t0 = 1000.0 + rng.random() * 10
        for _ in range(generations):  # sequential generations on one 4-tuple: port reuse
            cisn = rng.getrandbits(32)
            while cisn in used_isns:
                cisn = rng.getrandbits(32)
            used_isns.add(cisn)
            sc = Script(cisn=cisn, sisn=rng.getrandbits(32), client=client, server=server)
            segs, exp = _random_connection(rng, sc, t0)
            expected[(client[1], tup, cisn)] = exp
            timeline.extend(segs)
            t0 = segs[-1].ts + rng.choice((0.001, 0.5, 3.0))
    timeline.sort(key=lambda s: s.ts)  # connections of different tuples interleave
    tuple_of = {}
    for tup in range(n_tuples):
        tuple_of[bytes((10, 1, tup // 200, tup % 200 + 1))] = tup
    got: dict[tuple[int, int, int], ConnectionRecord] = {}
    opened = 0
    for seg in timeline:
        for ev in tracker.feed(seg):
            if isinstance(ev, ConnectionOpened):
                opened += 1
                continue
            key = (ev.client.port, tuple_of[socket.inet_aton(ev.client.address)], ev.client_isn or -1)
            assert key not in got
            got[key] = ev
    assert set(got) == set(expected)
    assert opened == sum(1 for e in expected.values() if e["outcome"] != Outcome.REFUSED)
    for key, exp in expected.items():
        rec = got[key]
        assert rec.outcome == exp["outcome"], (key, rec)
        assert rec.bytes_client_to_server == exp["c2s"], (key, rec)
        assert rec.bytes_server_to_client == exp["s2c"], (key, rec)
        assert rec.close_initiator == exp["initiator"], (key, rec)
        assert rec.started_before_capture is False
    assert len(expected) == n_tuples * generations
    assert len(tracker) == 0
    assert tracker.stats.anomalies == {}


# --- hostile input ------------------------------------------------------------------------


def test_random_garbage_segments_never_raise_and_stay_bounded() -> None:
    rng = random.Random(7)
    limits = TrackerLimits(max_connections=64, max_half_open=16, max_recently_closed=32)
    t = Tracker(limits)
    addrs = [A, B, A6, b"\x01\x02", b""]  # includes lengths no decoder would produce
    ports = [0, 80, 1023, 40000, 65535]
    flags_pool = [SYN, SYN | ACK, FIN, FIN | ACK, RST, RST | ACK, SYN | FIN, SYN | RST, ACK, 0, 0xFF]
    for i in range(50_000):
        seg = Segment(
            rng.choice([1.0, 2.0, float(i), -5.0]),
            rng.choice([0, 1]),
            rng.choice(addrs),
            rng.choice(addrs),
            rng.choice(ports),
            rng.choice(ports),
            rng.choice([0, 1, M - 1, rng.getrandbits(32)]),
            rng.choice([0, 1, M - 1, rng.getrandbits(32)]),
            rng.choice(flags_pool),
            rng.choice([0, 1, 1460, -1]),
            rng.choice([True, False, None]),
        )
        t.feed(seg)
        if i % 997 == 0:
            t.expire(float(i))
        st = t.stats
        assert st.entries <= 64 and st.half_open <= 16 and st.recently_closed <= 32
    assert t.stats.anomalies["bad_flags"] > 0 and t.stats.anomalies["no_control_flag"] > 0
    t.flush(1e9)
    assert len(t) == 0


def test_feed_many_in_batches_matches_feed_one_by_one_event_for_event() -> None:
    # The agent feeds a ring block per call; the books and the events must not depend on that.
    rng = random.Random(11)
    limits = TrackerLimits(max_connections=256, max_half_open=64, max_recently_closed=128)
    addrs = [A, B, A6, b"\x01\x02"]
    flags_pool = [SYN, SYN, SYN | ACK, SYN | ACK, FIN | ACK, FIN | ACK, RST, RST | ACK, SYN | FIN, ACK]
    segs = [
        Segment(
            1.0 + i * 0.01,
            rng.choice([0, 1]),
            rng.choice(addrs),
            rng.choice(addrs),
            rng.choice([80, 40000, 40001]),
            rng.choice([80, 40000, 40001]),
            rng.choice([0, 1, 2, 1000]),
            rng.choice([0, 1, 2, 1001]),
            rng.choice(flags_pool),
            rng.choice([0, 5]),
            rng.choice([True, False, None]),
        )
        for i in range(30_000)
    ]
    one, many = Tracker(limits), Tracker(limits)
    one_events: list[ConnectionEvent] = []
    many_events: list[ConnectionEvent] = []
    start = 0
    while start < len(segs):
        batch = segs[start : start + rng.choice([1, 7, 400])]
        start += len(batch)
        for seg in batch:
            one_events.extend(one.feed(seg))
        many_events.extend(many.feed_many(batch))
        now = batch[-1].ts
        one_events.extend(one.expire(now))
        many_events.extend(many.expire(now))
    assert len(records(many_events)) > 1000
    assert many_events == one_events
    assert many.stats == one.stats
    assert len(many.stats.anomalies) >= 4
    assert many.flush(1e9) == one.flush(1e9)


# --- construction ---------------------------------------------------------------------------


def test_limits_from_settings_and_validation() -> None:
    settings = Settings(
        max_connections=10, max_half_open=5, syn_timeout_s=1.5, closing_timeout_s=2.5, idle_timeout_s=3.5
    )
    limits = TrackerLimits.from_settings(settings)
    assert (limits.max_connections, limits.max_half_open) == (10, 5)
    assert (limits.syn_timeout_s, limits.closing_timeout_s, limits.idle_timeout_s) == (1.5, 2.5, 3.5)
    with pytest.raises(ValueError, match="max_half_open"):
        TrackerLimits(max_half_open=0)


def test_events_are_frozen_values_equal_to_directly_built_ones() -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2)
    (opened,) = feed_all(t, [sc.syn(1.0), sc.synack(1.5)])
    assert isinstance(opened, ConnectionOpened)
    assert opened == ConnectionOpened(
        0, Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 80), 1.0, 0.5, 1, 2, Side.CLIENT
    )
    rec = only_record(feed_all(t, [sc.fin(2.0, True), sc.fin(2.5, False)]))
    expected = ConnectionRecord(
        point=0,
        client=Endpoint("10.0.0.1", 40000),
        server=Endpoint("10.0.0.2", 80),
        network_type="ipv4",
        start_time=1.0,
        end_time=2.5,
        duration_s=1.5,
        outcome=Outcome.CLOSED,
        close_initiator=CloseInitiator.CLIENT,
        bytes_client_to_server=0,
        bytes_server_to_client=0,
        handshake_rtt_s=0.5,
        started_before_capture=False,
        client_guessed=False,
        client_isn=1,
        server_isn=2,
        observed_side=Side.CLIENT,
    )
    assert rec == expected and hash(rec) == hash(expected)
    with pytest.raises(AttributeError):
        rec.outcome = Outcome.RESET  # type: ignore[misc]  # still frozen


# --- more edges ----------------------------------------------------------------------------


def test_tcp_fast_open_synack_may_ack_the_syn_data() -> None:
    t = Tracker()
    sc = Script(cisn=500, sisn=600)
    syn = sc._seg(1.0, True, sc.cisn, 0, SYN, plen=120)  # SYN carrying 120 bytes (TFO)
    synack = sc._seg(1.001, False, sc.sisn, sc.cisn + 1 + 120, SYN | ACK)
    (opened,) = feed_all(t, [syn, synack])
    assert isinstance(opened, ConnectionOpened)
    sc.up, sc.down = 120 + 80, 10
    rec = only_record(feed_all(t, [sc.fin(2.0, True), sc.fin(2.1, False)]))
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (200, 10)


def test_synack_after_the_syn_timed_out_starts_a_synack_connection() -> None:
    t = Tracker(TrackerLimits(syn_timeout_s=5.0))
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0)])
    (timeout,) = records(t.expire(7.0))
    assert timeout.outcome == Outcome.TIMEOUT
    (opened,) = feed_all(t, [sc.synack(7.5)])  # the server finally answered
    assert isinstance(opened, ConnectionOpened)
    assert (opened.client_isn, opened.start_time, opened.handshake_rtt_s) == (1, 7.5, None)
    assert feed_all(t, [sc.synack(7.6)]) == []  # its retransmit is a duplicate


def test_syn_from_the_server_side_on_a_live_tuple_starts_a_reversed_connection() -> None:
    t = Tracker()
    sc = Script(cisn=1, sisn=2)
    feed_all(t, [sc.syn(1.0), sc.synack(1.1)])
    back = Script(cisn=77, sisn=88, client=sc.server, server=sc.client)
    (old,) = feed_all(t, [back.syn(2.0)])
    assert isinstance(old, ConnectionRecord) and old.outcome == Outcome.OPEN
    (opened,) = feed_all(t, [back.synack(2.1)])
    assert isinstance(opened, ConnectionOpened)
    assert opened.client == Endpoint("10.0.0.2", 80) and opened.server == Endpoint("10.0.0.1", 40000)


def test_recently_closed_memory_is_bounded() -> None:
    t = Tracker(TrackerLimits(max_recently_closed=10))
    for i in range(100):
        sc = Script(cisn=i, sisn=i, client=(A, 30000 + i))
        feed_all(t, [sc.syn(1.0 + i), sc.synack(1.0 + i), sc.fin(1.5 + i, True), sc.fin(1.6 + i, False)])
    assert t.stats.recently_closed == 10
    assert len(t._entries) == 10 and len(t) == 0


def test_expire_leaves_young_entries_of_every_phase_alone() -> None:
    t = Tracker(TrackerLimits(syn_timeout_s=10, closing_timeout_s=10, idle_timeout_s=10, time_wait_s=10))
    old = [Script(cisn=i, sisn=i, client=(A, 30000 + i)) for i in range(3)]
    young = [Script(cisn=i, sisn=i, client=(A, 31000 + i)) for i in range(3)]
    for base, group in ((0.0, old), (100.0, young)):
        feed_all(t, [group[0].syn(base)])
        feed_all(t, [group[1].syn(base), group[1].synack(base)])
        feed_all(t, [group[2].syn(base), group[2].synack(base), group[2].fin(base, True)])
    events = t.expire(105.0)
    assert sorted(r.outcome for r in records(events)) == [Outcome.CLOSED, Outcome.TIMEOUT]
    assert t.stats.anomalies["idle_expired"] == 1
    assert (t.stats.half_open, t.stats.established, t.stats.closing) == (1, 1, 1)


def test_anomaly_kinds_lists_every_kind_the_tracker_counts() -> None:
    """The self-metrics export each kind at 0 from the start: a kind missing here would appear only
    at its first event (no rate() start, "No data" panels)."""
    import re
    from pathlib import Path

    from podwire.tracker import tracker as tracker_module
    from podwire.tracker.transitions import RULES

    source = Path(tracker_module.__file__).read_text()
    counted = set(re.findall(r'(?:_anomaly\(|count\(anomalies, |_count\(self\._anomalies, )"(\w+)"', source))
    counted |= {rule.anomaly for rule in RULES if rule.anomaly is not None}
    assert len(counted) > 10
    assert counted == set(tracker_module.ANOMALY_KINDS)


def test_opened_false_builds_no_opened_events_and_the_same_records() -> None:
    """Replay's tracker: no ConnectionOpened (from SYN-ACK after SYN, or a SYN-ACK alone), and
    records field for field as with them."""

    def run(t: Tracker) -> list[ConnectionEvent]:
        a = Script(cisn=1000, sisn=2000)
        b = Script(cisn=M - 1, sisn=31337, client=(A, 40001), client_local=False)
        events = feed_all(t, [a.syn(1.0), a.synack(1.1), b.synack(1.2)])
        a.up, a.down, b.up, b.down = 10, 20, 30, 40
        closes = [a.fin(2.0, True), a.fin(2.1, False), b.fin(2.2, False), b.fin(2.3, True)]
        return events + feed_all(t, closes)

    with_opened = run(Tracker())
    without = run(Tracker(opened=False))
    assert sum(isinstance(e, ConnectionOpened) for e in with_opened) == 2
    assert not any(isinstance(e, ConnectionOpened) for e in without)
    assert without == records(with_opened) and len(without) == 2
