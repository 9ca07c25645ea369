"""Tracker + socket-stats samples (feed_stats): progress while open, exact totals at any size,
connections older than the agent, no double count after a restart.  Sans-I/O: samples are built
here as the sampler builds them from sock_diag (bytes_acked counts the client's SYN)."""

from __future__ import annotations

import socket

from podwire.model import (
    ACK,
    FIN,
    RST,
    SYN,
    ConnectionProgress,
    ConnectionRecord,
    Outcome,
    Segment,
    Side,
    SocketSample,
)
from podwire.tracker.tracker import Tracker
from podwire.tracker.transitions import State

A = socket.inet_aton("10.0.0.1")  # client pod, behind point 1
B = socket.inet_aton("10.0.0.2")  # server
CP, SP = 40000, 80
CISN, SISN = 4_000_000_000, 123  # the client's sequence space wraps early
GIB = 1 << 30


def seg(ts: float, from_client: bool, seq: int, ack: int, flags: int) -> Segment:
    if from_client:
        return Segment(ts, 1, A, B, CP, SP, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0, True)
    return Segment(ts, 1, B, A, SP, CP, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0, False)


def client_sample(up: int, down: int, retrans: int = 0, established: bool = True) -> SocketSample:
    """The client's socket (in A's namespace): bytes_acked = payload sent + the SYN."""
    return SocketSample(1, A, B, CP, SP, False, established, up + 1, down, 2_000, 1_500, retrans)


def server_sample(up: int, down: int) -> SocketSample:
    """The server's socket (in B's namespace; a listener holds port 80): bytes_acked = payload."""
    return SocketSample(1, B, A, SP, CP, True, True, down, up, 2_000, 1_500, 0)


def opened(t: Tracker) -> None:
    t.feed(seg(1.0, True, CISN, 0, SYN))
    t.feed(seg(1.001, False, SISN, CISN + 1, SYN | ACK))


def close(t: Tracker, up: int, down: int) -> ConnectionRecord:
    t.feed(seg(9.0, True, CISN + 1 + up, SISN + 1 + down, FIN | ACK))
    (rec,) = t.feed(seg(9.001, False, SISN + 1 + down, CISN + 2 + up, FIN | ACK))
    assert isinstance(rec, ConnectionRecord)
    return rec


def progress(events: list[object]) -> ConnectionProgress:
    (p,) = events
    assert isinstance(p, ConnectionProgress)
    return p


def test_progress_from_the_syn_then_exact_totals_at_close() -> None:
    t = Tracker()
    opened(t)
    p = progress(t.feed_stats(2.0, [client_sample(1000, 50, retrans=2)]))
    assert (p.bytes_client_to_server, p.bytes_server_to_client) == (1000, 50)
    assert (p.rtt_s, p.min_rtt_s, p.retransmits) == (0.002, 0.0015, 2)
    assert (p.client.port, p.server.port, p.observed_side) == (CP, SP, Side.CLIENT)
    p = progress(t.feed_stats(3.0, [client_sample(5000, 80, retrans=3)]))
    assert (p.bytes_client_to_server, p.bytes_server_to_client, p.retransmits) == (5000, 80, 3)
    rec = close(t, 7000, 90)
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (7000, 90)
    assert (rec.rtt_s, rec.min_rtt_s, rec.retransmits) == (0.002, 0.0015, 3)
    assert not rec.started_before_capture and not rec.client_guessed


def test_the_server_end_matches_the_reversed_tuple() -> None:
    t = Tracker()
    opened(t)
    p = progress(t.feed_stats(2.0, [server_sample(300, 7)]))
    assert (p.bytes_client_to_server, p.bytes_server_to_client) == (300, 7)


def test_never_sampled_connections_keep_null_socket_fields() -> None:
    t = Tracker()
    opened(t)
    rec = close(t, 10, 20)
    assert (rec.rtt_s, rec.min_rtt_s, rec.retransmits) == (None, None, None)


def test_past_4_gib_the_sample_tells_how_often_the_sequence_space_wrapped() -> None:
    t = Tracker()
    opened(t)
    up = 9 * GIB + 12_345  # wrapped twice, and CISN makes it wrap almost at once
    progress(t.feed_stats(2.0, [client_sample(up - 1_000_000, 5 * GIB - 1_000)]))
    rec = close(t, up, 5 * GIB + 7)  # 1 MB after the last sample each way is still exact
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (up, 5 * GIB + 7)
    # without the sample the same close wraps
    t2 = Tracker()
    opened(t2)
    assert close(t2, up, 5 * GIB + 7).bytes_client_to_server == up % (1 << 32)


def test_samples_past_a_fin_update_rtt_but_not_bytes() -> None:
    t = Tracker()
    opened(t)
    t.feed_stats(2.0, [client_sample(100, 0)])
    t.feed(seg(3.0, True, CISN + 1 + 100, SISN + 1, FIN | ACK))  # client FIN: CLOSING_C
    # FIN_WAIT2: bytes_acked now counts the FIN too; ignored
    p = progress(t.feed_stats(4.0, [client_sample(101, 0, retrans=1, established=False)]))
    assert (p.bytes_client_to_server, p.retransmits) == (100, 1)


def test_a_connection_older_than_the_agent_counts_from_its_first_sample_with_its_true_role() -> None:
    t = Tracker()
    # the server's socket: a listener holds port 80 in its namespace, so B is the server
    before = SocketSample(1, B, A, SP, CP, True, True, 70_000, 5_000_000, 900, 800, 4)
    assert t.feed_stats(10.0, [before]) == []  # first sight: wait a round (the SYN may be queued)
    assert t.state_of(1, A, CP, B, SP) == State.NEW
    p = progress(t.feed_stats(20.0, [before._replace(bytes_acked=70_500, bytes_received=5_000_100)]))
    assert (p.client.address, p.server.port) == ("10.0.0.1", SP)  # roles from the listener, not ports
    assert (p.bytes_client_to_server, p.bytes_server_to_client, p.retransmits) == (100, 500, 0)
    assert p.start_time is None and p.observed_side is Side.SERVER
    assert t.state_of(1, A, CP, B, SP) == State.ESTABLISHED
    progress(
        t.feed_stats(30.0, [before._replace(bytes_acked=71_000, bytes_received=5_000_300, total_retrans=6)])
    )
    # its close: no ISNs, bytes from the first sample to the last one
    t.feed(seg(31.0, True, 77, 88, FIN | ACK))
    (rec,) = t.feed(seg(31.001, False, 88, 78, FIN | ACK))
    assert isinstance(rec, ConnectionRecord)
    assert (rec.bytes_client_to_server, rec.bytes_server_to_client, rec.retransmits) == (300, 1000, 2)
    assert rec.started_before_capture and not rec.client_guessed and rec.start_time is None


def test_an_agent_restart_counts_nothing_twice() -> None:
    first, second = Tracker(), Tracker()  # the same connection, seen by two agent lifetimes
    opened(first)
    seen_by_first = progress(first.feed_stats(2.0, [client_sample(1000, 10)])).bytes_client_to_server
    # the agent restarts: the new one sees the socket with the kernel's totals so far
    second.feed_stats(5.0, [client_sample(1200, 10)])
    p = progress(second.feed_stats(6.0, [client_sample(1500, 10)]))
    assert seen_by_first + p.bytes_client_to_server == 1000 + 300  # 200 moved while no agent ran
    assert p.bytes_client_to_server == 300


def test_a_young_connection_sampled_before_its_syn_is_processed_is_not_a_phantom() -> None:
    t = Tracker()
    assert t.feed_stats(1.5, [client_sample(0, 0)]) == []  # the ring still holds the SYN
    opened(t)
    p = progress(t.feed_stats(2.5, [client_sample(10, 0)]))
    assert p.client_isn == CISN and p.start_time == 1.0 and p.bytes_client_to_server == 10
    assert t.stats.anomalies == {}


def test_a_finished_connection_whose_socket_lingers_is_not_restarted() -> None:
    t = Tracker()
    opened(t)
    (rec,) = t.feed(seg(3.0, False, SISN + 1, CISN + 1, RST | ACK))
    assert isinstance(rec, ConnectionRecord) and rec.outcome is Outcome.RESET
    for ts in (4.0, 5.0, 6.0):
        assert t.feed_stats(ts, [client_sample(0, 0)]) == []
    assert len(t) == 0


def test_a_sample_restarts_the_idle_timer() -> None:
    from podwire.tracker.tracker import TrackerLimits

    t = Tracker(TrackerLimits(idle_timeout_s=10.0))
    opened(t)
    t.feed_stats(9.0, [client_sample(1, 0)])
    t.expire(15.0)  # 14 s after the handshake, 6 s after the sample
    assert t.state_of(1, A, CP, B, SP) == State.ESTABLISHED
    t.expire(20.0)
    assert t.state_of(1, A, CP, B, SP) == State.NEW


def test_an_unchanged_sample_emits_nothing_but_keeps_the_connection_alive() -> None:
    from podwire.tracker.tracker import TrackerLimits

    t = Tracker(TrackerLimits(idle_timeout_s=10.0))
    opened(t)
    assert progress(t.feed_stats(2.0, [client_sample(100, 5)])).bytes_client_to_server == 100
    for ts in (8.0, 14.0, 20.0):  # idle: the same counters and RTTs every round
        assert t.feed_stats(ts, [client_sample(100, 5)]) == []
        t.expire(ts + 5.0)  # more than 10 s after the last change, 5 s after the last sample
        assert t.state_of(1, A, CP, B, SP) == State.ESTABLISHED
    p = progress(t.feed_stats(21.0, [client_sample(100, 5, retrans=1)]))  # any change reports again
    assert (p.bytes_client_to_server, p.retransmits) == (100, 1)
    rec = close(t, 300, 5)
    assert (rec.bytes_client_to_server, rec.retransmits) == (300, 1)


def test_a_socket_past_its_fin_does_not_keep_a_connection_alive_changed_or_not() -> None:
    # capture missed the FIN; the socket lingers in CLOSE_WAIT with frozen counters
    from podwire.tracker.tracker import TrackerLimits

    t = Tracker(TrackerLimits(idle_timeout_s=10.0))
    opened(t)
    for ts in range(2, 31):
        t.feed_stats(float(ts), [client_sample(10, 5, established=False)])
        t.expire(float(ts))
    assert t.state_of(1, A, CP, B, SP) == State.NEW  # idle-expired 10 s after the handshake
    assert t.stats.anomalies == {"idle_expired": 1}


def test_both_ends_of_one_connection_at_one_point_are_told_apart() -> None:
    # a pod talking to itself through two of its addresses: both sockets are dumped at its point,
    # and the server end's counters are not mistaken for an unchanged client sample
    t = Tracker()
    opened(t)
    p = progress(t.feed_stats(2.0, [client_sample(1000, 50)]))
    assert (p.bytes_client_to_server, p.bytes_server_to_client) == (1000, 50)
    same = SocketSample(1, B, A, SP, CP, True, True, 1001, 50, 2_000, 1_500, 0)  # its numbers, other end
    p = progress(t.feed_stats(3.0, [same]))
    assert (p.bytes_client_to_server, p.bytes_server_to_client) == (1000, 1001)
    assert p.observed_side is Side.CLIENT


def test_a_flush_leaves_nothing_queued() -> None:
    t = Tracker()
    for port in range(40000, 40100):
        t.feed(Segment(1.0, 1, A, B, port, SP, CISN, 0, SYN, 0, True))
        t.feed(Segment(1.001, 1, B, A, SP, port, SISN, CISN + 1, SYN | ACK, 0, False))
    assert t.stats.established == 100
    assert len(t.flush(2.0)) == 100
    assert t.stats.established == 0 and list(t._established) == [] and not t._established._entries
