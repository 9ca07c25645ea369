"""The tracker's rules: ONE table, state x event -> rule (action, next state, anomaly, outcome).

Like h11's `_state.py`, this module holds no bookkeeping: `tracker.py` classifies each
segment into an `Event` relative to the entry it belongs to, looks the rule up here and runs
the named action.  Only SYN, FIN and RST segments ever arrive (the kernel filter drops data
and pure ACKs), so the states are the ones those packets can tell apart:

    NEW          no live entry for the 4-tuple (the segment may start one)
    HALF_OPEN    SYN seen, no SYN-ACK yet
    ESTABLISHED  SYN-ACK seen (or started from a SYN-ACK alone), no FIN yet
    CLOSING_C    the client's FIN seen, not the server's
    CLOSING_S    the server's FIN seen, not the client's

A connection ends (its record is emitted and the entry leaves the table) on the second FIN
(CLOSED), a RST (RESET, or REFUSED before any SYN-ACK), or by the timers in `expire()`.
Mid-stream connections (first seen at a FIN or RST) use the same CLOSING_* states with no ISNs.

Events are classified relative to the entry (client = SYN sender):

    SYN        SYN without ACK from the client with the entry's ISN (a retransmit); in NEW, any SYN
    SYN_OTHER  SYN without ACK with another ISN, or sent by the server side: a new connection
               on a reused 4-tuple (never merged with the old one)
    SYNACK     SYN+ACK from the server side; in NEW, any SYN+ACK
    SYNACK_C   SYN+ACK sent by the entry's client (nonsense: counted, ignored)
    FIN_C/FIN_S  FIN from the client / the server
    RST_C/RST_S  RST from the client / the server (RST wins over any other flag)
    SAMPLE     a socket-stats sample of the connection (sock_diag in the pod's namespace, fed with
               `feed_stats`, not a segment): the kernel's byte counters, RTT and retransmits

Guards that the table cannot express live in the action and are documented there: `open`
needs the SYN-ACK's ack to equal client ISN + 1, up to the SYN's payload for TCP Fast Open
(else anomaly "ack_mismatch", ignored); `refuse` needs the same of a RST that carries ACK
(else "ack_mismatch", ignored); in NEW, a finished connection kept on the tuple turns late
FIN/RST into "after_close", a same-ISN SYN into "late_syn" and a same-ISN SYN-ACK into
"late_synack" (all ignored); `fin_again` counts "fin_seq_changed" when the FIN's end
position moved; `dup_synack` counts "synack_new_isn" when the server ISN differs.
`new_from_sample` (a connection older than the agent, seen only by socket stats) starts an entry
only for an ESTABLISHED socket seen in two consecutive rounds (a young connection's SYN may still
be on its way through the capture ring), and never on a tuple that holds a finished connection
(its socket lingers in LAST_ACK/FIN_WAIT); the role comes from a listening socket on the port.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from podwire.model import Outcome


class State(enum.IntEnum):
    NEW = 0
    HALF_OPEN = 1
    ESTABLISHED = 2
    CLOSING_C = 3
    CLOSING_S = 4


class Event(enum.IntEnum):
    SYN = 0
    SYN_OTHER = 1
    SYNACK = 2
    SYNACK_C = 3
    FIN_C = 4
    FIN_S = 5
    RST_C = 6
    RST_S = 7
    SAMPLE = 8


class Rule(NamedTuple):
    """What a segment does to an entry.

    action: name of the tracker method `_do_<action>` that does the bookkeeping.
    next_state: the state the entry is in afterwards (NEW: the entry is gone).
    anomaly: counted (stats.anomalies[kind] += 1) whenever the rule fires.
    outcome: the outcome of the record the rule emits, if it emits one; for `replace`
             it is the outcome given to the OLD connection.
    """

    action: str
    next_state: State
    anomaly: str | None = None
    outcome: Outcome | None = None


S, E = State, Event

# The one table.  Every (state, event) pair is present; tests walk all of them.
TABLE: dict[tuple[State, Event], Rule] = {
    # --- no entry ------------------------------------------------------------------------
    (S.NEW, E.SYN): Rule("new_half_open", S.HALF_OPEN),
    (S.NEW, E.SYN_OTHER): Rule("new_half_open", S.HALF_OPEN),  # not produced: NEW has no "other"
    (S.NEW, E.SYNACK): Rule("new_from_synack", S.ESTABLISHED),  # SYN not seen: start here
    (S.NEW, E.SYNACK_C): Rule("new_from_synack", S.ESTABLISHED),  # not produced
    (S.NEW, E.FIN_C): Rule("new_midstream_fin", S.CLOSING_C),  # roles guessed from ports
    (S.NEW, E.FIN_S): Rule("new_midstream_fin", S.CLOSING_S),
    (S.NEW, E.RST_C): Rule("midstream_reset", S.NEW, outcome=Outcome.RESET),
    (S.NEW, E.RST_S): Rule("midstream_reset", S.NEW, outcome=Outcome.RESET),
    (S.NEW, E.SAMPLE): Rule("new_from_sample", S.ESTABLISHED),  # open before the agent started
    # --- SYN sent, no answer yet ------------------------------------------------------------
    (S.HALF_OPEN, E.SYN): Rule("syn_retransmit", S.HALF_OPEN),
    (S.HALF_OPEN, E.SYN_OTHER): Rule("replace", S.HALF_OPEN, outcome=Outcome.TIMEOUT),
    (S.HALF_OPEN, E.SYNACK): Rule("open", S.ESTABLISHED),
    (S.HALF_OPEN, E.SYNACK_C): Rule("ignore", S.HALF_OPEN, anomaly="synack_from_client"),
    # A FIN before any SYN-ACK means the SYN-ACK was missed (kernel drop): carry on without it.
    (S.HALF_OPEN, E.FIN_C): Rule("fin_first", S.CLOSING_C, anomaly="synack_missed"),
    (S.HALF_OPEN, E.FIN_S): Rule("fin_first", S.CLOSING_S, anomaly="synack_missed"),
    # Linux clients do not RST in SYN_SENT except to reject a bogus SYN-ACK.
    (S.HALF_OPEN, E.RST_C): Rule("ignore", S.HALF_OPEN, anomaly="rst_from_client_half_open"),
    (S.HALF_OPEN, E.RST_S): Rule("refuse", S.NEW, outcome=Outcome.REFUSED),
    # Established in the kernel, SYN-ACK not seen yet (still in the ring, or dropped): wait for it.
    (S.HALF_OPEN, E.SAMPLE): Rule("ignore", S.HALF_OPEN),
    # --- handshake done -----------------------------------------------------------------
    # The SYN-ACK reached the capture point but was lost after it: the client retries its SYN.
    (S.ESTABLISHED, E.SYN): Rule("ignore", S.ESTABLISHED),
    (S.ESTABLISHED, E.SYN_OTHER): Rule(
        "replace", S.HALF_OPEN, anomaly="syn_new_isn_on_live", outcome=Outcome.OPEN
    ),
    (S.ESTABLISHED, E.SYNACK): Rule("dup_synack", S.ESTABLISHED),
    (S.ESTABLISHED, E.SYNACK_C): Rule("ignore", S.ESTABLISHED, anomaly="synack_from_client"),
    (S.ESTABLISHED, E.FIN_C): Rule("fin_first", S.CLOSING_C),
    (S.ESTABLISHED, E.FIN_S): Rule("fin_first", S.CLOSING_S),
    (S.ESTABLISHED, E.RST_C): Rule("reset", S.NEW, outcome=Outcome.RESET),
    (S.ESTABLISHED, E.RST_S): Rule("reset", S.NEW, outcome=Outcome.RESET),
    (S.ESTABLISHED, E.SAMPLE): Rule("progress", S.ESTABLISHED),
    # --- client sent FIN ----------------------------------------------------------------
    (S.CLOSING_C, E.SYN): Rule("ignore", S.CLOSING_C, anomaly="syn_after_fin"),
    (S.CLOSING_C, E.SYN_OTHER): Rule("replace", S.HALF_OPEN, outcome=Outcome.CLOSED),
    (S.CLOSING_C, E.SYNACK): Rule("dup_synack", S.CLOSING_C),
    (S.CLOSING_C, E.SYNACK_C): Rule("ignore", S.CLOSING_C, anomaly="synack_from_client"),
    (S.CLOSING_C, E.FIN_C): Rule("fin_again", S.CLOSING_C),
    (S.CLOSING_C, E.FIN_S): Rule("fin_second", S.NEW, outcome=Outcome.CLOSED),
    (S.CLOSING_C, E.RST_C): Rule("reset", S.NEW, outcome=Outcome.RESET),
    (S.CLOSING_C, E.RST_S): Rule("reset", S.NEW, outcome=Outcome.RESET),
    (S.CLOSING_C, E.SAMPLE): Rule("progress", S.CLOSING_C),
    # --- server sent FIN ----------------------------------------------------------------
    (S.CLOSING_S, E.SYN): Rule("ignore", S.CLOSING_S, anomaly="syn_after_fin"),
    (S.CLOSING_S, E.SYN_OTHER): Rule("replace", S.HALF_OPEN, outcome=Outcome.CLOSED),
    (S.CLOSING_S, E.SYNACK): Rule("dup_synack", S.CLOSING_S),
    (S.CLOSING_S, E.SYNACK_C): Rule("ignore", S.CLOSING_S, anomaly="synack_from_client"),
    (S.CLOSING_S, E.FIN_C): Rule("fin_second", S.NEW, outcome=Outcome.CLOSED),
    (S.CLOSING_S, E.FIN_S): Rule("fin_again", S.CLOSING_S),
    (S.CLOSING_S, E.RST_C): Rule("reset", S.NEW, outcome=Outcome.RESET),
    (S.CLOSING_S, E.RST_S): Rule("reset", S.NEW, outcome=Outcome.RESET),
    (S.CLOSING_S, E.SAMPLE): Rule("progress", S.CLOSING_S),
}

N_EVENTS = len(Event)

# Flat copy for the hot path: RULES[state * N_EVENTS + event].
RULES: tuple[Rule, ...] = tuple(TABLE[(s, e)] for s in State for e in Event)

ACTIONS: frozenset[str] = frozenset(rule.action for rule in TABLE.values())


def rule_for(state: State, event: Event) -> Rule:
    return RULES[state * N_EVENTS + event]
