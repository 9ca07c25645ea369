"""Sans-I/O TCP connection tracker: control segments in, connection events out.

    tracker = Tracker(TrackerLimits.from_settings(settings))
    events = tracker.feed(segment)     # per SYN / FIN / RST segment
    events = tracker.feed_many(batch)  # the same for a batch (a ring block): one call, events in order
    events = tracker.feed_stats(ts, samples)  # a socket-stats round -> ConnectionProgress events
    events = tracker.expire(now)       # timers; call about once a second
    events = tracker.flush(now)        # end of capture: everything left
    tracker.stats                      # TrackerStats snapshot

No sockets, files, clocks or logging: time only comes from segment timestamps and the `now`
the caller passes, so live capture, pcap replay and tests drive the same code.  The rules
(state x event -> action, next state) are the one table in `transitions.py`; this module
classifies segments and keeps the books.

Semantics (the contract other rooms rely on):

* Key: (capture point, client address, server address, client port, server port); a segment
  is looked up forward, then reversed.  The client is the SYN sender.  A SYN-ACK with no SYN
  seen starts the connection too: server = SYN-ACK sender, client ISN = ack - 1,
  start_time = the SYN-ACK's time, handshake_rtt_s None (bytes are still exact).
* SYN with the entry's ISN = retransmit (handshake RTT runs from the LAST SYN before the
  SYN-ACK, Karn).  A SYN with another ISN on a live tuple starts a NEW connection; the old
  one is finished first: half-open -> TIMEOUT, established -> OPEN (anomaly
  "syn_new_isn_on_live"), one FIN seen -> CLOSED with what is known.
* SYN-ACK -> `ConnectionOpened` (start_time = first SYN, handshake_rtt_s = SYN-ACK - last SYN).
* Bytes each way = (FIN.seq + FIN.payload_len - (ISN + 1)) mod 2**32.  A RST gives its
  sender's position from seq: (seq - (ISN + 1)) mod 2**32.  A direction closed by a FIN
  keeps its FIN count.  Otherwise the latest ack the other side sent on a FIN or RST is used
  (a RST's ack is the peer's position; as a lower bound for a closing/open connection).  The
  handshake's own ack (always ISN + 1) is no evidence of payload, so an established
  connection with no FIN or RST reports None, not 0.
* Both FINs -> CLOSED at once.  close_initiator = first FIN's sender, or BOTH when the second
  FIN does not acknowledge the first (it was sent before the first arrived).  A FIN whose
  end position (seq + payload) was already seen is a retransmit and ignored.
* RST after the handshake -> RESET, initiator = first FIN-or-RST sender.  RST from the server
  side before any SYN-ACK -> REFUSED (bytes 0/0, initiator None); if it carries ACK, the
  ack must be client ISN + 1 (else "ack_mismatch", ignored).  The SYN-ACK's ack must be
  client ISN + 1 too (up to the SYN's own payload, for TCP Fast Open).
* Mid-stream (FIN or RST on an unknown tuple): started_before_capture, start_time None,
  bytes None, client_guessed; emitted at the second FIN or a RST, duration None.  Role guess:
  each port gets a class (well-known < 1024 < registered < 32768 <= ephemeral); the server
  is the port in the lower class, within a class the lower port, on equal ports the
  destination of the first segment seen.
* Timers (`expire`): half-open older than syn_timeout_s (from the first SYN) -> TIMEOUT
  (end_time = last SYN, bytes None); one FIN seen for longer than closing_timeout_s ->
  CLOSED with what is known (end_time = the first FIN); established for longer than
  idle_timeout_s with no FIN/RST -> dropped without a record, anomaly "idle_expired" (only
  control packets are seen, so "idle" means no control packet since the handshake).
* `flush`: runs `expire(now)`, then half-open -> TIMEOUT, established or one FIN seen ->
  OPEN (end_time/duration None, close_initiator None, bytes from FINs/RSTs/acks or None).
* After a connection ends its entry is kept for time_wait_s (bounded by
  max_recently_closed) so that late retransmitted FINs/RSTs/SYN-ACKs are counted
  ("after_close", "late_syn", "late_synack") instead of starting phantom mid-stream
  connections.  A SYN with a new ISN, or a SYN-ACK with a new server ISN, on such a tuple
  starts a new connection at once (a SYN-ACK arriving after its SYN timed out is reported
  as a SYN-ACK-started connection).
* Bounded: half-open table full -> its oldest entry is evicted; whole table full -> the
  oldest established entry (then closing, then half-open).  Evicted entries produce no
  record; every eviction is counted by the phase it was evicted from.
* observed_side comes from the `from_local` of the segment that fixed the roles: the
  capture point sits at the CLIENT when the client's SYN came from the local workload.
* Several capture points never share entries: the point is part of the key.
* Hostile input never raises: odd segments are counted in stats.anomalies by kind.
* Socket stats (`feed_stats`): a sample matches the live entry at its point by 4-tuple, either
  way round; which way tells the sampled end's role.  The kernel's 64-bit counters give the
  payload so far (bytes_acked counts the client's SYN: minus 1 on the client's end; counters of
  a socket past a FIN also count the FIN, so only ESTABLISHED samples update bytes), the smoothed
  and minimum RTT and the retransmitted segments.  Each matched sample that differs from the
  connection's last one emits a `ConnectionProgress` (an idle connection costs a lookup and a
  compare per round; the kernel re-measures no RTT without new data either) with totals since
  counting began (the SYN; or, for a connection older than the agent, its first sample: so an
  agent restart never counts bytes twice).  At the end
  the record's 32-bit sequence count is unwrapped against the last sample, so byte counts are
  exact at any size while less than 2 GiB flows one way between the last sample and the close.
  A connection seen only by socket stats (open before the agent started) is entered as
  ESTABLISHED, started_before_capture, with its role from a listening socket on its port
  (client_guessed False); its bytes count from its first sample.  A sample of an established
  entry restarts its idle timer.

Hot-path notes: `feed` returns the shared empty tuple when nothing is emitted; phases are
OrderedDicts (insertion order = time order, O(1) pops from the front, where a plain dict's
`next(iter(d))` degrades to O(n) after many front deletions), except the established phase,
which holds most open connections: a queue with lazy deletion (`_Established`, ~16 bytes per
entry instead of ~105); records are frozen msgspec Structs (model.py), built in ~0.2 us.
Memory per open connection (benchmarks/run --only memory): ~350 bytes, of which the entry ~112,
its 5-tuple key ~80, the client port and ISN ints 32 each, the RTT float 32, its slot in
`_entries` ~27-52 and in the established queue 16.
"""

from __future__ import annotations

import dataclasses
import socket
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import msgspec

from podwire.model import (
    ACK,
    FIN,
    RST,
    SYN,
    CloseInitiator,
    ConnectionEvent,
    ConnectionOpened,
    ConnectionProgress,
    ConnectionRecord,
    Endpoint,
    Outcome,
    Segment,
    Side,
    SocketSample,
)
from podwire.tracker.transitions import N_EVENTS, RULES, Event, Rule, State

if TYPE_CHECKING:
    from podwire.config import Settings

__all__ = ["Events", "Tracker", "TrackerLimits", "TrackerStats"]

Events = tuple[ConnectionEvent, ...]
Key = tuple[int, bytes, bytes, int, int]  # (point, client addr, server addr, client port, server port)

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_NONE: Events = ()
# Every anomaly kind the tracker can count: the table's and the classifier's own (the self-metrics
# export each at 0 from the start; a test keeps the list whole).
ANOMALY_KINDS: tuple[str, ...] = tuple(
    sorted(
        {rule.anomaly for rule in RULES if rule.anomaly is not None}
        | {
            "bad_flags", "no_control_flag", "after_close", "idle_expired", "late_syn", "ack_mismatch",
            "late_synack", "synack_new_isn", "fin_seq_changed", "fin_without_ack",
        }
    )
)  # fmt: skip
_ENDPOINT_CACHE = 65_536
_COMPACT_MIN = 16_384  # compact only after a peak this large (a small table costs little)

# Plain ints for the hot path (IntEnum arithmetic is slower).
_NEW = int(State.NEW)
_HALF_OPEN = int(State.HALF_OPEN)
_ESTABLISHED = int(State.ESTABLISHED)
_CLOSING_C = int(State.CLOSING_C)
_CLOSING_S = int(State.CLOSING_S)
_EV_SYN, _EV_SYN_OTHER = int(Event.SYN), int(Event.SYN_OTHER)
_EV_SYNACK, _EV_SYNACK_C = int(Event.SYNACK), int(Event.SYNACK_C)
_EV_FIN_C, _EV_FIN_S = int(Event.FIN_C), int(Event.FIN_S)
_EV_RST_C, _EV_RST_S = int(Event.RST_C), int(Event.RST_S)
_EV_SAMPLE = int(Event.SAMPLE)

_CLIENT, _SERVER, _BOTH = CloseInitiator.CLIENT, CloseInitiator.SERVER, CloseInitiator.BOTH
_CLOSED, _RESET, _REFUSED = Outcome.CLOSED, Outcome.RESET, Outcome.REFUSED
_TIMEOUT, _OPEN = Outcome.TIMEOUT, Outcome.OPEN


@dataclass(frozen=True, slots=True)
class TrackerLimits:
    """Table bounds and timers.  time_wait_s / max_recently_closed bound the memory of
    finished connections that absorbs late retransmits (Linux keeps TIME_WAIT for 60 s)."""

    max_connections: int = 262_144
    max_half_open: int = 65_536
    syn_timeout_s: float = 20.0
    closing_timeout_s: float = 300.0
    idle_timeout_s: float = 86_400.0
    time_wait_s: float = 60.0
    max_recently_closed: int = 65_536

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"TrackerLimits.{f.name} must be positive, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> TrackerLimits:
        return cls(
            max_connections=settings.max_connections,
            max_half_open=settings.max_half_open,
            syn_timeout_s=settings.syn_timeout_s,
            closing_timeout_s=settings.closing_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class TrackerStats:
    """A snapshot: table sizes now, evictions and anomalies as counters since start."""

    entries: int
    half_open: int
    established: int
    closing: int
    recently_closed: int
    evictions: Mapping[str, int]  # by the phase the entry was evicted from
    anomalies: Mapping[str, int]  # by kind

    @property
    def evictions_total(self) -> int:
        return sum(self.evictions.values())


def address_text(addr: bytes) -> str:
    """Packed 4- or 16-byte address -> text; anything else -> hex (never raises)."""
    try:
        if len(addr) == 4:
            return socket.inet_ntop(socket.AF_INET, addr)
        if len(addr) == 16:
            return socket.inet_ntop(socket.AF_INET6, addr)
        return bytes(addr).hex()
    except (TypeError, ValueError, OSError):
        return repr(addr)


def _port_rank(port: int) -> tuple[int, int]:
    return (0 if port < 1024 else 1 if port < 32768 else 2, port)


def guess_client_is_src(sport: int, dport: int) -> bool:
    """Mid-stream role guess: True if the sender (sport) looks like the client."""
    return _port_rank(sport) >= _port_rank(dport)


class _Ends(msgspec.Struct, gc=False):
    """What the FINs and RSTs of one connection told, from its first FIN or RST on.  Positions are
    raw 32-bit sequence numbers; byte counts are derived only when the record is built."""

    first: CloseInitiator | None = None  # the first FIN-or-RST sender
    c_fin: int | None = None  # client FIN end position: seq + payload_len
    s_fin: int | None = None
    c_rst: int | None = None  # client RST seq
    s_rst: int | None = None
    c_ack: int | None = None  # latest ack the client sent on a FIN/RST (server's position)
    s_ack: int | None = None


class _Entry(msgspec.Struct, gc=False, eq=False):
    """One tracked connection: only what an open connection needs (memory per open connection is
    one of issue 13's figures); what its close tells goes in `ends`, made at the first FIN/RST.
    eq=False: entries hash and compare by identity (they are the phases' keys).  gc=False: an
    entry refers to values and its own `_Ends`/`_Live`, never back to a container."""

    key: Key
    state: int
    start: float | None  # first SYN; None: mid-stream (no SYN/SYN-ACK seen, roles guessed)
    syn_ts: float  # last SYN (Karn)
    since: float  # time the entry entered its phase (timers); after the end: time it ended
    cisn: int | None
    sisn: int | None
    side: Side | None
    rtt: float | None = None
    syn_len: int = 0  # payload on the SYN (TCP Fast Open): the SYN-ACK may ack it
    ends: _Ends | None = None
    live: _Live | None = None  # once socket stats sampled the connection


def _entry(key: Key, state: int, ts: float, cisn: int | None, sisn: int | None, side: Side | None) -> _Entry:
    return _Entry(key, state, ts, ts, ts, cisn, sisn, side)


def _midstream(key: Key, state: int, ts: float, side: Side | None) -> _Entry:
    return _Entry(key, state, None, ts, ts, None, None, side)


class _Established:
    """The established phase in timer order, as a queue with lazy deletion: an ordered set costs
    ~105 bytes per entry, these two deques ~16 (issue 13's memory per open connection; most open
    connections are established).  A ref (entry, its `since` when queued) is current while the
    entry is still established and `since` still is that object: leaving the phase (the caller
    changes the entry's state) or restarting the timer (`refresh` queues it again) leaves a stale
    ref behind, dropped when it reaches the front, or all at once when stale refs outnumber the
    current ones (so the dead entries they hold stay bounded)."""

    __slots__ = ("_entries", "_sinces", "live")

    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        self._sinces: deque[float] = deque()
        self.live = 0  # current members

    def add(self, entry: _Entry) -> None:
        """A new member (its state is already ESTABLISHED)."""
        self.live += 1
        self._queue(entry)

    def refresh(self, entry: _Entry, since: float) -> None:
        """Restart a member's timer: to the back of the queue.  The timer gets an object of its own
        (`+ 0.0` makes one), so the refs queued before go stale even within one sampling round."""
        entry.since = since + 0.0
        self._queue(entry)

    def remove(self) -> None:
        """A member leaves (the caller changes its state: its refs go stale)."""
        self.live -= 1

    def front(self) -> _Entry | None:
        """The member queued longest ago (stale refs before it are dropped)."""
        entries, sinces = self._entries, self._sinces
        while entries:
            entry = entries[0]
            if entry.state == _ESTABLISHED and entry.since is sinces[0]:
                return entry
            entries.popleft()
            sinces.popleft()
        return None

    def __iter__(self) -> Iterator[_Entry]:
        """The members in queue order."""
        refs = zip(self._entries, self._sinces, strict=True)
        return (e for e, t in refs if e.state == _ESTABLISHED and e.since is t)

    def tidy(self) -> None:
        """Drop every stale ref."""
        members = list(self)
        self._entries = deque(members)
        self._sinces = deque(e.since for e in members)

    def _queue(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._sinces.append(entry.since)
        if len(self._entries) > 2 * self.live + 1024:
            self.tidy()


class _Live:
    """What socket stats told about one connection: payload totals each way (64-bit, from the
    connection's start) at the last ESTABLISHED sample, and the values counting began from."""

    __slots__ = (
        "base_c2s",
        "base_retrans",
        "base_s2c",
        "c2s",
        "last",  # the last sample's (established, counters, RTTs): an unchanged sample emits nothing
        "min_rtt",
        "retrans",
        "role_known",  # the role came from a listening socket (entries made from samples)
        "rtt",
        "s2c",
    )

    def __init__(self, c2s: int, s2c: int, retrans: int, role_known: bool) -> None:
        self.c2s = self.base_c2s = c2s
        self.s2c = self.base_s2c = s2c
        self.retrans = self.base_retrans = retrans
        self.rtt = 0.0
        self.min_rtt = 0.0
        self.role_known = role_known
        self.last: tuple[object, ...] = ()


def _payload(smp: SocketSample, local_is_client: bool) -> tuple[int, int]:
    """(client->server, server->client) payload from one ESTABLISHED socket's counters."""
    if local_is_client:
        return max(smp.bytes_acked - 1, 0), smp.bytes_received  # the SYN is acked too
    return smp.bytes_received, smp.bytes_acked


def _unwrap(count: int | None, sampled: int) -> int:
    """A 32-bit sequence count (None: unknown) against the exact 64-bit total at the last sample:
    the smallest total at or after the sample that agrees with it modulo 2**32."""
    if count is None:
        return sampled
    ahead = (count - sampled) & _MASK
    return sampled if ahead >= _HALF else sampled + ahead  # behind: a stale ack, keep the sample


def _side(from_local: bool | None, sender_is_client: bool) -> Side | None:
    """Where the capture point sits: next to the sender if it is the local workload."""
    if from_local is None:
        return None
    return Side.CLIENT if from_local == sender_is_client else Side.SERVER


# from_local of a segment sent by the client -> observed side (hot path: a dict, not a call)
_SIDE_OF_CLIENT_SEGMENT: dict[bool | None, Side | None] = {True: Side.CLIENT, False: Side.SERVER, None: None}


class Tracker:
    """See the module docstring for the semantics; `transitions.TABLE` for the rules.

    Books: `_entries` maps the canonical key to the entry, live or recently finished (state
    NEW: kept for time_wait_s to absorb late segments).  Each phase (half-open, established,
    closing, recently finished) is an ordered set of entries (an OrderedDict entry -> None;
    entries hash by identity; the established phase is a queue, `_Established`), in the order
    they entered it, which is time order: timers pop from the front in O(expired), and a phase
    change hashes no 5-tuple.
    """

    def __init__(self, limits: TrackerLimits | None = None, opened: bool = True) -> None:
        """`opened=False`: no `ConnectionOpened` events (replay prints finished connections only,
        and building one costs about 1 us a connection)."""
        self.limits = limits = limits or TrackerLimits()
        self._opened = opened
        self._max_connections = limits.max_connections
        self._max_half_open = limits.max_half_open
        self._max_recent = limits.max_recently_closed
        self._entries: dict[Key, _Entry] = {}
        self._half_open: OrderedDict[_Entry, None] = OrderedDict()
        self._established = _Established()
        self._closing: OrderedDict[_Entry, None] = OrderedDict()
        self._recent: OrderedDict[_Entry, None] = OrderedDict()
        # state -> the ordered set holding entries in that state (NEW: recently finished;
        # ESTABLISHED: None, see _Established)
        self._phase: tuple[OrderedDict[_Entry, None] | None, ...] = (
            self._recent,
            self._half_open,
            None,
            self._closing,
            self._closing,
        )
        self._evictions: dict[str, int] = {}
        self._anomalies: dict[str, int] = {}
        self._endpoints: dict[tuple[bytes, int], Endpoint] = {}  # bounded caches (cleared when full)
        self._texts: dict[bytes, str] = {}
        self._addrs: dict[bytes, bytes] = {}  # one bytes object per address for the keys kept
        # Decide at construction: per (state, event) slot of the table, its bound handler, its
        # rule and the anomaly it counts (one tuple fetched per segment).
        self._steps: tuple[
            tuple[Callable[[_Entry | None, Segment, bool, Rule], Events], Rule, str | None], ...
        ]
        self._steps = tuple((getattr(self, "_do_" + rule.action), rule, rule.anomaly) for rule in RULES)
        # socket stats: the SAMPLE column of the table, per state
        self._sample_steps: tuple[
            tuple[Callable[[_Entry | None, SocketSample, bool, Rule], Events], Rule], ...
        ]
        self._sample_steps = tuple(
            (getattr(self, "_do_" + (rule := RULES[st * N_EVENTS + _EV_SAMPLE]).action), rule) for st in State
        )
        self._sample_ts = 0.0
        # sockets with no entry seen in the last round (key -> that sample): bounded by a round's size
        self._unmatched: dict[Key, SocketSample] = {}
        self._unmatched_next: dict[Key, SocketSample] = {}
        self._high = 0  # most entries seen by expire() since the last compaction
        self.compactions = 0  # times the tables were rebuilt to give memory back (see _compact)

    # --- public API ----------------------------------------------------------------------

    def feed(self, seg: Segment) -> Events:
        """One SYN/FIN/RST segment -> the events it completes (usually none: shared `()`)."""
        events = self.feed_many((seg,))
        return tuple(events) if events else _NONE

    def feed_many(self, segments: Iterable[Segment]) -> list[ConnectionEvent]:
        """feed() for each segment in order (a ring block's worth): the events they complete, in
        order.  One call per batch, with the tables looked up once, instead of one per segment."""
        out: list[ConnectionEvent] = []
        entries = self._entries
        steps = self._steps
        anomalies = self._anomalies
        count = self._count
        for seg in segments:
            key: Key = seg[1:6]  # (point, src, dst, sport, dport): the forward key
            entry = entries.get(key)
            if entry is not None and entry.state:
                from_client = True
            else:
                from_client = False
                point, src, dst, sport, dport = key
                found = entries.get((point, dst, src, dport, sport))
                if found is not None and (found.state or entry is None):
                    entry = found
            # Here entry is live, or a finished one on this tuple (state NEW), or None.
            flags = seg.flags
            if flags & RST:
                event = _EV_RST_C if from_client else _EV_RST_S
            elif flags & SYN:
                if flags & FIN:
                    count(anomalies, "bad_flags")
                    continue
                if flags & ACK:
                    event = _EV_SYNACK_C if from_client else _EV_SYNACK
                elif entry is None or not entry.state or (from_client and seg.seq == entry.cisn):
                    event = _EV_SYN  # a new SYN, or a retransmit of the live one
                else:
                    event = _EV_SYN_OTHER
            elif flags & FIN:
                event = _EV_FIN_C if from_client else _EV_FIN_S
            else:
                count(anomalies, "no_control_flag")
                continue
            state = _NEW if entry is None else entry.state
            if state == _NEW and event >= _EV_FIN_C:  # FIN or RST on a tuple with no live entry
                if entry is not None:
                    count(anomalies, "after_close")  # e.g. a FIN retransmitted for a lost last ACK
                    continue
                if guess_client_is_src(seg.sport, seg.dport):
                    from_client = True
                    event = _EV_FIN_C if event == _EV_FIN_S else _EV_RST_C if event == _EV_RST_S else event
            handler, rule, anomaly = steps[state * N_EVENTS + event]
            if anomaly is not None:
                count(anomalies, anomaly)
            events = handler(entry, seg, from_client, rule)
            if events:
                out.extend(events)
        return out

    def feed_stats(self, ts: float, samples: Iterable[SocketSample]) -> list[ConnectionEvent]:
        """One socket-stats round (taken at `ts`): a `ConnectionProgress` per matched connection."""
        out: list[ConnectionEvent] = []
        entries = self._entries
        steps = self._sample_steps
        self._sample_ts = ts
        self._unmatched_next = {}
        for smp in samples:
            key: Key = smp[:5]  # (point, local, remote, lport, rport): local end as the client
            entry = entries.get(key)
            local_is_client = True
            if entry is None or not entry.state:
                point, local, remote, lport, rport = key
                found = entries.get((point, remote, local, rport, lport))
                if found is not None and (found.state or entry is None):
                    entry = found
                    local_is_client = False
            handler, rule = steps[entry.state if entry is not None else _NEW]
            events = handler(entry, smp, local_is_client, rule)
            if events:
                out.extend(events)
        self._unmatched = self._unmatched_next
        self._unmatched_next = {}
        return out

    def expire(self, now: float) -> list[ConnectionEvent]:
        """Run the timers.  Costs O(expired): each phase is in time order.  Afterwards, if the
        table shrank to a quarter of its peak (a SYN flood timed out), it is compacted."""
        out: list[ConnectionEvent] = []
        self._high = max(self._high, len(self._entries))
        half_open = self._half_open
        limit = self.limits.syn_timeout_s
        while half_open:
            entry = next(iter(half_open))
            if now - entry.since <= limit:
                break
            out.append(self._finish(entry, _TIMEOUT, entry.syn_ts, None, now))
        closing = self._closing
        limit = self.limits.closing_timeout_s
        while closing:
            entry = next(iter(closing))
            if now - entry.since <= limit:
                break
            ends = entry.ends
            initiator = ends.first if ends is not None else None
            out.append(self._finish(entry, _CLOSED, entry.since, initiator, now))
        established = self._established
        limit = self.limits.idle_timeout_s
        while (oldest := established.front()) is not None:
            if now - oldest.since <= limit:
                break
            self._drop(oldest)
            self._count(self._anomalies, "idle_expired")
        recent = self._recent
        limit = self.limits.time_wait_s
        while recent:
            entry = next(iter(recent))
            if now - entry.since <= limit:
                break
            self._forget(entry)
        if self._high >= _COMPACT_MIN and len(self._entries) * 4 <= self._high:
            self._compact()
        return out

    def flush(self, now: float) -> list[ConnectionEvent]:
        """End of capture: `expire(now)`, then a record for every entry left (see module doc)."""
        out = self.expire(now)
        for entry in list(self._half_open):
            out.append(self._finish(entry, _TIMEOUT, entry.syn_ts, None, now))
        for entry in [*self._established, *self._closing]:
            out.append(self._finish(entry, _OPEN, None, None, now))
        self._established = _Established()  # (its stale refs held finished entries)
        self._recent.clear()
        self._entries.clear()
        self._unmatched.clear()
        self._endpoints.clear()
        self._texts.clear()
        self._addrs.clear()
        return out

    @property
    def stats(self) -> TrackerStats:
        half_open, established, closing = len(self._half_open), self._established.live, len(self._closing)
        return TrackerStats(
            entries=half_open + established + closing,
            half_open=half_open,
            established=established,
            closing=closing,
            recently_closed=len(self._recent),
            evictions=MappingProxyType(dict(self._evictions)),
            anomalies=MappingProxyType(dict(self._anomalies)),
        )

    def __len__(self) -> int:
        """Live connections."""
        return len(self._half_open) + self._established.live + len(self._closing)

    def state_of(self, point: int, a: bytes, a_port: int, b: bytes, b_port: int) -> State:
        """The state of the live connection between a:a_port and b:b_port (either way round)."""
        for key in ((point, a, b, a_port, b_port), (point, b, a, b_port, a_port)):
            entry = self._entries.get(key)
            if entry is not None and entry.state:
                return State(entry.state)
        return State.NEW

    # --- bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def _count(counter: dict[str, int], kind: str) -> None:
        counter[kind] = counter.get(kind, 0) + 1

    def _anomaly(self, kind: str) -> Events:
        self._count(self._anomalies, kind)
        return _NONE

    def _admit(self, entry: _Entry) -> None:
        """Insert a new live entry into its state's phase, evicting first if a bound is reached
        (counted, no record)."""
        half_open = self._half_open
        state = entry.state
        if state == _HALF_OPEN and len(half_open) >= self._max_half_open:
            self._evict(half_open, "half_open")
        # _entries also holds finished entries, so it is never shorter than the live count.
        if (
            len(self._entries) >= self._max_connections
            and len(half_open) + self._established.live + len(self._closing) >= self._max_connections
        ):
            oldest = self._established.front()
            if oldest is not None:
                self._drop(oldest)
                self._count(self._evictions, "established")
            elif self._closing:
                self._evict(self._closing, "closing")
            elif half_open:
                self._evict(half_open, "half_open")
        # The decoder makes new address objects for every segment; a node's addresses repeat, so
        # the key kept holds shared ones (48 bytes less per IPv4 connection, 64 per IPv6 one).
        point, a, b, pa, pb = entry.key
        addrs = self._addrs
        shared_a = addrs.get(a)
        shared_b = addrs.get(b)
        if shared_a is None or shared_b is None:
            if len(addrs) >= _ENDPOINT_CACHE:
                addrs.clear()
            shared_a = addrs.setdefault(a, a)
            shared_b = addrs.setdefault(b, b)
        key = entry.key = (point, shared_a, shared_b, pa, pb)
        self._entries[key] = entry  # replaces a finished entry on the same tuple, if any
        if state == _ESTABLISHED:
            self._established.add(entry)
        else:
            phase = self._phase[state]
            assert phase is not None
            phase[entry] = None

    def _drop(self, entry: _Entry) -> None:
        """An established entry leaves without a record (idle expiry, eviction)."""
        self._established.remove()
        entry.state = _NEW  # its queued refs go stale
        del self._entries[entry.key]

    def _compact(self) -> None:
        """Give a flood's memory back.  Python dicts never shrink when emptied, and the address
        caches filled during a flood pin the allocator's arenas that the flood's entries were
        spread over (an arena is returned to the OS only once wholly empty).  So: rebuild the
        tables at their present size (order kept) and drop the caches (rebuilt as traffic needs)."""
        self._entries = dict(self._entries)
        self._half_open = OrderedDict(self._half_open)
        self._established.tidy()
        self._closing = OrderedDict(self._closing)
        self._recent = OrderedDict(self._recent)
        self._phase = (self._recent, self._half_open, None, self._closing, self._closing)
        self._endpoints = {}
        self._texts = {}
        self._addrs = {}
        self._high = len(self._entries)
        self.compactions += 1

    def _evict(self, phase: OrderedDict[_Entry, None], kind: str) -> None:
        victim, _ = phase.popitem(last=False)
        del self._entries[victim.key]
        self._count(self._evictions, kind)

    def _leave(self, entry: _Entry) -> None:
        """A live entry leaves its phase (the caller sets its next state)."""
        phase = self._phase[entry.state]
        if phase is None:
            self._established.remove()
        else:
            del phase[entry]

    def _forget(self, entry: _Entry) -> None:
        """Drop a finished entry for good (its key may already hold a newer connection)."""
        del self._recent[entry]
        key = entry.key
        if self._entries.get(key) is entry:
            del self._entries[key]

    def _bury(self, entry: _Entry, ts: float) -> None:
        """Keep a finished entry for time_wait_s (late FIN/RST/SYN-ACK), bounded."""
        recent = self._recent
        if len(recent) >= self._max_recent:
            self._forget(next(iter(recent)))
        entry.since = ts
        entry.state = _NEW
        recent[entry] = None

    def _text(self, addr: bytes) -> str:
        """Address text, cached: a node's pods and servers repeat (bounded: cleared when full)."""
        texts = self._texts
        text = texts.get(addr)
        if text is None:
            if len(texts) >= _ENDPOINT_CACHE:
                texts.clear()
            text = texts[addr] = address_text(addr)
        return text

    def _endpoint(self, addr: bytes, port: int) -> Endpoint:
        """Server endpoints repeat: cache them (bounded: cleared when full)."""
        cache = self._endpoints
        k = (addr, port)
        ep = cache.get(k)
        if ep is None:
            if len(cache) >= _ENDPOINT_CACHE:
                cache.clear()
            ep = cache[k] = Endpoint(self._text(addr), port)
        return ep

    def _endpoints_of(self, entry: _Entry) -> tuple[Endpoint, Endpoint]:
        """Built for each event, not kept on the entry (memory per open connection): a client's
        ephemeral port rarely repeats within the cache's reach, so only its text is cached."""
        _, caddr, saddr, cport, sport = entry.key
        client = Endpoint(self._texts.get(caddr) or self._text(caddr), cport)
        return client, self._endpoints.get((saddr, sport)) or self._endpoint(saddr, sport)

    def _record(
        self, entry: _Entry, outcome: Outcome, end: float | None, initiator: CloseInitiator | None
    ) -> ConnectionRecord:
        client, server = self._endpoints_of(entry)
        c2s: int | None
        s2c: int | None
        if outcome is _REFUSED:
            c2s = s2c = 0
        elif outcome is _TIMEOUT:
            c2s = s2c = None
        elif (ends := entry.ends) is None:
            c2s = s2c = None  # no FIN or RST: the handshake's ack is no evidence of payload
        else:
            # Best evidence first: own FIN, own RST's seq, then the peer's latest ack.
            isn = entry.cisn
            pos = ends.c_fin
            if pos is None:
                pos = ends.c_rst
                if pos is None:
                    pos = ends.s_ack
            c2s = None if isn is None or pos is None else (pos - isn - 1) & _MASK
            isn = entry.sisn
            pos = ends.s_fin
            if pos is None:
                pos = ends.s_rst
                if pos is None:
                    pos = ends.c_ack
            s2c = None if isn is None or pos is None else (pos - isn - 1) & _MASK
        live = entry.live
        rtt = min_rtt = None
        retrans = None
        if live is not None:
            rtt, min_rtt, retrans = live.rtt, live.min_rtt, live.retrans - live.base_retrans
            if outcome is not _REFUSED and outcome is not _TIMEOUT:
                c2s = _unwrap(c2s, live.c2s) - live.base_c2s
                s2c = _unwrap(s2c, live.s2c) - live.base_s2c
        start = entry.start
        midstream = start is None
        key = entry.key
        return ConnectionRecord(
            key[0],
            client,
            server,
            "ipv4" if len(key[1]) == 4 else "ipv6",
            start,
            end,
            end - start if end is not None and start is not None else None,
            outcome,
            initiator,
            c2s,
            s2c,
            entry.rtt,
            midstream,
            midstream and (live is None or not live.role_known),
            entry.cisn,
            entry.sisn,
            entry.side,
            rtt,
            min_rtt,
            retrans,
        )

    def _finish(
        self,
        entry: _Entry,
        outcome: Outcome,
        end: float | None,
        initiator: CloseInitiator | None,
        now: float,
    ) -> ConnectionRecord:
        """End a live entry: build its record, keep it as recently finished (see _bury)."""
        self._leave(entry)
        record = self._record(entry, outcome, end, initiator)
        recent = self._recent
        if len(recent) >= self._max_recent:
            self._forget(next(iter(recent)))
        entry.since = now
        entry.state = _NEW
        recent[entry] = None
        return record

    @staticmethod
    def _new_key(seg: Segment, sender_is_client: bool) -> Key:
        if sender_is_client:
            return seg[1:6]
        return (seg.point, seg.dst, seg.src, seg.dport, seg.sport)

    # --- actions (named by the table) ------------------------------------------------------
    # `entry` is the live entry; in state NEW it is the finished entry on the tuple, or None.

    def _do_ignore(self, entry: _Entry | None, seg: object, from_client: bool, rule: Rule) -> Events:
        return _NONE

    def _do_new_from_sample(
        self, entry: _Entry | None, smp: SocketSample, local_is_client: bool, rule: Rule
    ) -> Events:
        if entry is not None or not smp.established:
            return _NONE  # a finished connection's socket lingering; or nothing to count
        key: Key = smp[:5]
        first = self._unmatched.get(key)
        if first is None:  # first sight: its SYN may still be on its way; wait one round
            self._unmatched_next[key] = smp
            return _NONE
        local_is_client = not smp.local_listens
        if not local_is_client:
            key = (smp.point, smp.remote, smp.local, smp.rport, smp.lport)
        ts = self._sample_ts
        new = _midstream(key, _ESTABLISHED, ts, Side.CLIENT if local_is_client else Side.SERVER)
        c2s, s2c = _payload(first, local_is_client)
        new.live = _Live(c2s, s2c, first.total_retrans, True)
        self._admit(new)
        return self._do_progress(new, smp, local_is_client, rule)

    def _do_progress(
        self, entry: _Entry | None, smp: SocketSample, local_is_client: bool, rule: Rule
    ) -> Events:
        assert entry is not None
        live = entry.live
        established = smp.established
        if live is None:
            # From the SYN: count from zero.  Seen mid-stream (by a FIN): count from this sample.
            if entry.start is None:  # mid-stream
                if not established:
                    return _NONE
                c2s, s2c = _payload(smp, local_is_client)
                live = entry.live = _Live(c2s, s2c, smp.total_retrans, False)
            else:
                live = entry.live = _Live(0, 0, 0, False)
        if established and entry.state == _ESTABLISHED:  # the socket is alive: restart the idle timer
            self._established.refresh(entry, self._sample_ts)
        sampled = (local_is_client, smp[6:])  # (two ends of one connection may share a point)
        if sampled == live.last:  # nothing moved since the last sample (an idle connection)
            return _NONE
        live.last = sampled
        if established:
            c2s, s2c = _payload(smp, local_is_client)
            if c2s > live.c2s:
                live.c2s = c2s
            if s2c > live.s2c:
                live.s2c = s2c
        live.rtt = smp.rtt_us / 1e6
        live.min_rtt = smp.min_rtt_us / 1e6
        if smp.total_retrans > live.retrans:
            live.retrans = smp.total_retrans
        client, server = self._endpoints_of(entry)
        return (
            ConnectionProgress(
                entry.key[0],
                client,
                server,
                entry.start,
                entry.cisn,
                entry.sisn,
                entry.side,
                self._sample_ts,
                live.c2s - live.base_c2s,
                live.s2c - live.base_s2c,
                live.rtt,
                live.min_rtt,
                live.retrans - live.base_retrans,
            ),
        )

    def _do_new_half_open(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        if entry is not None and not entry.state and entry.cisn == seg.seq and entry.key == seg[1:6]:
            return self._anomaly("late_syn")  # a retransmit of a connection already reported
        new = _entry(seg[1:6], _HALF_OPEN, seg.ts, seg.seq, None, _SIDE_OF_CLIENT_SEGMENT.get(seg.from_local))
        new.syn_len = seg.payload_len
        self._admit(new)
        return _NONE

    def _do_syn_retransmit(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None
        entry.syn_ts = seg.ts  # Karn: the RTT runs from the last SYN
        return _NONE

    def _do_replace(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        """New SYN on a live tuple: finish the old connection, then start the new one."""
        assert entry is not None and rule.outcome is not None
        outcome = rule.outcome
        if outcome is _TIMEOUT:
            end: float | None = entry.syn_ts
        elif outcome is _CLOSED:
            end = entry.since  # the first FIN
        else:
            end = None
        ends = entry.ends
        initiator = ends.first if outcome is _CLOSED and ends is not None else None
        old = self._finish(entry, outcome, end, initiator, seg.ts)
        self._do_new_half_open(None, seg, True, rule)
        return (old,)

    def _do_open(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None and entry.cisn is not None and entry.start is not None  # half-open
        if ((seg.ack - entry.cisn - 1) & _MASK) > entry.syn_len:  # TFO: may ack the SYN's data
            return self._anomaly("ack_mismatch")  # answers some other SYN
        ts = seg.ts
        entry.sisn = seg.seq
        entry.rtt = ts - entry.syn_ts
        del self._half_open[entry]
        entry.state = _ESTABLISHED
        entry.since = ts
        self._established.add(entry)
        if not self._opened:
            return _NONE
        client, server = self._endpoints_of(entry)
        return (
            ConnectionOpened(
                entry.key[0], client, server, entry.start, entry.rtt, entry.cisn, seg.seq, entry.side
            ),
        )

    def _do_new_from_synack(
        self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule
    ) -> Events:
        key = self._new_key(seg, False)  # the SYN-ACK's sender is the server
        if entry is not None and entry.sisn == seg.seq and entry.key == key:
            return self._anomaly("late_synack")
        cisn = (seg.ack - 1) & _MASK
        new = _entry(key, _ESTABLISHED, seg.ts, cisn, seg.seq, _side(seg.from_local, False))
        self._admit(new)
        if not self._opened:
            return _NONE
        client, server = self._endpoints_of(new)
        return (ConnectionOpened(key[0], client, server, seg.ts, None, cisn, seg.seq, new.side),)

    def _do_dup_synack(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None
        if entry.sisn is not None and seg.seq != entry.sisn:
            return self._anomaly("synack_new_isn")
        return _NONE

    def _do_fin_first(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None and entry.ends is None  # half-open or established
        end = (seg.seq + seg.payload_len) & _MASK
        ack = seg.ack if seg.flags & ACK else None
        if from_client:
            entry.ends = _Ends(_CLIENT, end, None, None, None, ack, None)
        else:
            entry.ends = _Ends(_SERVER, None, end, None, None, None, ack)
        self._leave(entry)  # half-open or established, never closing
        self._closing[entry] = None
        entry.state = rule.next_state
        entry.since = seg.ts
        return _NONE

    def _do_new_midstream_fin(
        self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule
    ) -> Events:
        new = _midstream(
            self._new_key(seg, from_client), rule.next_state, seg.ts, _side(seg.from_local, from_client)
        )
        self._note_fin(new, seg, from_client)
        self._admit(new)
        return _NONE

    def _do_fin_again(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None and entry.ends is not None  # closing
        end = (seg.seq + seg.payload_len) & _MASK
        if end != (entry.ends.c_fin if from_client else entry.ends.s_fin):
            return self._anomaly("fin_seq_changed")  # keep the first FIN's count
        return _NONE

    def _do_fin_second(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None and entry.ends is not None  # closing
        ends = entry.ends
        flags = seg.flags
        end = (seg.seq + seg.payload_len) & _MASK
        if from_client:
            ends.c_fin = end
            first_end = ends.s_fin
            if flags & ACK:
                ends.c_ack = seg.ack
        else:
            ends.s_fin = end
            first_end = ends.c_fin
            if flags & ACK:
                ends.s_ack = seg.ack
        initiator = ends.first
        if not flags & ACK:
            self._count(self._anomalies, "fin_without_ack")
        elif first_end is not None and ((seg.ack - first_end - 1) & _MASK) >= _HALF:
            initiator = _BOTH  # sent before the first FIN arrived: simultaneous close
        return (self._finish(entry, _CLOSED, seg.ts, initiator, seg.ts),)

    def _do_reset(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None
        ends = entry.ends
        if ends is None:
            ends = entry.ends = _Ends()
        flags = seg.flags
        if from_client:
            if ends.c_fin is None:
                ends.c_rst = seg.seq
            if flags & ACK:
                ends.c_ack = seg.ack
        else:
            if ends.s_fin is None:
                ends.s_rst = seg.seq
            if flags & ACK:
                ends.s_ack = seg.ack
        initiator = ends.first or (_CLIENT if from_client else _SERVER)
        return (self._finish(entry, _RESET, seg.ts, initiator, seg.ts),)

    def _do_refuse(self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule) -> Events:
        assert entry is not None and entry.cisn is not None
        if seg.flags & ACK and ((seg.ack - entry.cisn - 1) & _MASK) > entry.syn_len:
            return self._anomaly("ack_mismatch")  # the client would drop it too
        return (self._finish(entry, _REFUSED, seg.ts, None, seg.ts),)

    def _do_midstream_reset(
        self, entry: _Entry | None, seg: Segment, from_client: bool, rule: Rule
    ) -> Events:
        new = _midstream(self._new_key(seg, from_client), _NEW, seg.ts, _side(seg.from_local, from_client))
        record = self._record(new, _RESET, seg.ts, _CLIENT if from_client else _SERVER)
        self._entries[new.key] = new  # finished at once: absorbs the RSTs that often follow
        self._bury(new, seg.ts)
        return (record,)

    @staticmethod
    def _note_fin(entry: _Entry, seg: Segment, from_client: bool) -> None:
        """A first FIN (live or mid-stream entry): its end position, its sender as the initiator."""
        ends = entry.ends
        if ends is None:
            ends = entry.ends = _Ends()
        end = (seg.seq + seg.payload_len) & _MASK
        if from_client:
            ends.c_fin = end
            ends.first = ends.first or _CLIENT
            if seg.flags & ACK:
                ends.c_ack = seg.ack
        else:
            ends.s_fin = end
            ends.first = ends.first or _SERVER
            if seg.flags & ACK:
                ends.s_ack = seg.ack
