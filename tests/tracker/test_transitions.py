"""Every rule of transitions.TABLE, driven through a real Tracker: state x segment -> events, next state."""

from __future__ import annotations

import socket

import pytest

from podwire.model import (
    ACK,
    FIN,
    RST,
    SYN,
    ConnectionEvent,
    ConnectionOpened,
    ConnectionProgress,
    ConnectionRecord,
    Outcome,
    Segment,
    SocketSample,
)
from podwire.tracker import transitions
from podwire.tracker.tracker import Tracker
from podwire.tracker.transitions import ACTIONS, RULES, TABLE, Event, Rule, State, rule_for

A = socket.inet_aton("10.0.0.1")
B = socket.inet_aton("10.0.0.2")
CPORT, SPORT = 40000, 80
CISN, SISN = 1000, 5000
UP, DOWN = 10, 20  # bytes each way before the FINs


def c(ts: float, seq: int, ack: int, flags: int, plen: int = 0) -> Segment:
    return Segment(ts, 0, A, B, CPORT, SPORT, seq, ack, flags, plen, True)


def s(ts: float, seq: int, ack: int, flags: int, plen: int = 0) -> Segment:
    return Segment(ts, 0, B, A, SPORT, CPORT, seq, ack, flags, plen, False)


SETUP: dict[State, list[Segment]] = {
    State.NEW: [],
    State.HALF_OPEN: [c(1.0, CISN, 0, SYN)],
    State.ESTABLISHED: [c(1.0, CISN, 0, SYN), s(1.1, SISN, CISN + 1, SYN | ACK)],
    State.CLOSING_C: [
        c(1.0, CISN, 0, SYN),
        s(1.1, SISN, CISN + 1, SYN | ACK),
        c(2.0, CISN + 1 + UP, SISN + 1, FIN | ACK),
    ],
    State.CLOSING_S: [
        c(1.0, CISN, 0, SYN),
        s(1.1, SISN, CISN + 1, SYN | ACK),
        s(2.0, SISN + 1 + DOWN, CISN + 1, FIN | ACK),
    ],
}

# One segment per event, relative to the roles the setup made (client A:40000, server B:80).
TRIGGER: dict[Event, Segment] = {
    Event.SYN: c(3.0, CISN, 0, SYN),
    Event.SYN_OTHER: c(3.0, 777_777, 0, SYN),
    Event.SYNACK: s(3.0, SISN, CISN + 1, SYN | ACK),
    Event.SYNACK_C: c(3.0, 9999, SISN + 1, SYN | ACK),
    # The client's FIN acknowledges the server's FIN when there is one (normal, not simultaneous).
    Event.FIN_C: c(3.0, CISN + 1 + UP, SISN + 1 + DOWN + 1, FIN | ACK),
    Event.FIN_S: s(3.0, SISN + 1 + DOWN, CISN + 1 + UP + 1, FIN | ACK),
    Event.RST_C: c(3.0, CISN + 1 + UP, SISN + 1, RST | ACK),
    Event.RST_S: s(3.0, SISN + 1 + DOWN, CISN + 1, RST | ACK),
}
# SAMPLE: the client's socket, in its pod's namespace (no listener on its port: it is the client);
# bytes_acked counts the SYN.
SAMPLE = SocketSample(0, A, B, CPORT, SPORT, False, True, UP + 1, DOWN, 250, 200, 0)


def trigger(tracker: Tracker, event: Event) -> tuple[ConnectionEvent, ...]:
    if event is Event.SAMPLE:
        # a connection seen only by socket stats needs two rounds (see new_from_sample); the
        # second sample differs (a new RTT): an unchanged one reports nothing
        tracker.feed_stats(2.5, [SAMPLE])
        return tuple(tracker.feed_stats(3.0, [SAMPLE._replace(rtt_us=260)]))
    return tracker.feed(TRIGGER[event])


# NEW has no entry to be "other" than, so these two are never produced; the table maps them
# to the same action as their produced twins.
UNREACHABLE = {(State.NEW, Event.SYN_OTHER), (State.NEW, Event.SYNACK_C)}


def test_table_is_total_and_every_action_is_implemented() -> None:
    assert set(TABLE) == {(st, ev) for st in State for ev in Event}
    assert len(RULES) == len(State) * len(Event)
    for (st, ev), rule in TABLE.items():
        assert rule_for(st, ev) is rule
    tracker = Tracker()
    for action in ACTIONS:
        assert callable(getattr(tracker, "_do_" + action)), action


def test_rules_that_emit_a_record_name_its_outcome() -> None:
    emitting = {"replace", "fin_second", "reset", "refuse", "midstream_reset"}
    for rule in TABLE.values():
        assert (rule.outcome is not None) == (rule.action in emitting), rule


def test_unreachable_pairs_alias_their_produced_twins() -> None:
    assert TABLE[(State.NEW, Event.SYN_OTHER)].action == TABLE[(State.NEW, Event.SYN)].action
    assert TABLE[(State.NEW, Event.SYNACK_C)].action == TABLE[(State.NEW, Event.SYNACK)].action


@pytest.mark.parametrize(
    ("state", "event"),
    [pair for pair in TABLE if pair not in UNREACHABLE],
    ids=[f"{st.name}-{ev.name}" for st, ev in TABLE if (st, ev) not in UNREACHABLE],
)
def test_rule(state: State, event: Event) -> None:
    rule: Rule = TABLE[(state, event)]
    tracker = Tracker()
    for seg in SETUP[state]:
        tracker.feed(seg)
    assert tracker.state_of(0, A, CPORT, B, SPORT) == state
    before = dict(tracker.stats.anomalies)

    events = trigger(tracker, event)

    # next state
    assert tracker.state_of(0, A, CPORT, B, SPORT) == rule.next_state
    # emitted events
    if rule.action in ("open", "new_from_synack"):
        assert len(events) == 1 and isinstance(events[0], ConnectionOpened)
    elif rule.action in ("progress", "new_from_sample"):
        assert len(events) == 1 and isinstance(events[0], ConnectionProgress)
        assert (events[0].bytes_client_to_server, events[0].bytes_server_to_client) == (
            (0, 0) if rule.action == "new_from_sample" else (UP, DOWN)  # older than the agent: from now
        )
    elif rule.outcome is not None:
        assert len(events) == 1 and isinstance(events[0], ConnectionRecord)
        assert events[0].outcome == rule.outcome
    else:
        assert events == ()
    # anomaly counted exactly once
    after = tracker.stats.anomalies
    if rule.anomaly is not None:
        assert after.get(rule.anomaly, 0) == before.get(rule.anomaly, 0) + 1
    else:
        assert dict(after) == before


def test_replace_starts_the_new_generation_with_the_new_isn() -> None:
    for state in (State.HALF_OPEN, State.ESTABLISHED, State.CLOSING_C, State.CLOSING_S):
        tracker = Tracker()
        for seg in SETUP[state]:
            tracker.feed(seg)
        (old,) = tracker.feed(TRIGGER[Event.SYN_OTHER])
        assert isinstance(old, ConnectionRecord) and old.client_isn == CISN
        assert old.outcome == TABLE[(state, Event.SYN_OTHER)].outcome
        (opened,) = tracker.feed(s(3.5, 4242, 777_778, SYN | ACK))
        assert isinstance(opened, ConnectionOpened)
        assert (opened.client_isn, opened.server_isn, opened.start_time) == (777_777, 4242, 3.0)


# --- guards inside actions (documented in transitions' docstring) -----------------------


def test_open_guard_synack_with_wrong_ack_is_ignored_and_counted() -> None:
    tracker = Tracker()
    tracker.feed(SETUP[State.HALF_OPEN][0])
    assert tracker.feed(s(1.1, SISN, CISN + 7, SYN | ACK)) == ()
    assert tracker.state_of(0, A, CPORT, B, SPORT) == State.HALF_OPEN
    assert tracker.stats.anomalies["ack_mismatch"] == 1


def test_refuse_guard_rst_with_wrong_ack_is_ignored_but_rst_without_ack_refuses() -> None:
    tracker = Tracker()
    tracker.feed(SETUP[State.HALF_OPEN][0])
    assert tracker.feed(s(1.1, 0, CISN + 7, RST | ACK)) == ()
    assert tracker.stats.anomalies["ack_mismatch"] == 1
    (rec,) = tracker.feed(s(1.2, 0, 0, RST))
    assert isinstance(rec, ConnectionRecord) and rec.outcome == Outcome.REFUSED


def test_fin_again_guard_moved_fin_counts_and_keeps_first() -> None:
    tracker = Tracker()
    for seg in SETUP[State.CLOSING_C]:
        tracker.feed(seg)
    tracker.feed(c(2.5, CISN + 1 + UP + 5, SISN + 1, FIN | ACK))
    assert tracker.stats.anomalies["fin_seq_changed"] == 1
    (rec,) = tracker.feed(TRIGGER[Event.FIN_S])
    assert isinstance(rec, ConnectionRecord) and rec.bytes_client_to_server == UP


def test_dup_synack_guard_new_server_isn_counts() -> None:
    tracker = Tracker()
    for seg in SETUP[State.ESTABLISHED]:
        tracker.feed(seg)
    tracker.feed(s(1.2, SISN + 99, CISN + 1, SYN | ACK))
    assert tracker.stats.anomalies["synack_new_isn"] == 1
    assert tracker.state_of(0, A, CPORT, B, SPORT) == State.ESTABLISHED


def test_state_names_are_the_documented_ones() -> None:
    assert [st.name for st in State] == ["NEW", "HALF_OPEN", "ESTABLISHED", "CLOSING_C", "CLOSING_S"]
    assert transitions.N_EVENTS == len(Event) == 9
