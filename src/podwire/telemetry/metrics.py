"""Edge metrics, Tempo's service-graph series and the agent's self-metrics.

Why edge metrics are aggregated here and not by SDK instruments: on this machine one
synchronous `Counter.add` with the eight edge attributes costs ~25 us in opentelemetry-sdk 1.45
(attribute cleaning in `Measurement`, then hashing per reader), and a connection needs ten
measurements: ~250 us against a budget of 20 us.  So `MetricsSink` keeps one `_Edge` per
distinct label set (plain ints and bucket arrays, a few us per connection) and hands the SDK
ready cumulative points (`opentelemetry.sdk.metrics.export.Metric`) at collection time, through
`merge_into` (used by the readers in export.py).  The SDK still does everything else: the OTLP
encoding, the Prometheus translation (same names both ways), the resource, and the self-metrics,
which are real observable instruments whose callbacks read the agent's counters.

Exactly once (`counts_here`): cluster-wide each connection is counted by one agent, see there.

Tempo's service-graph contract, as read in Tempo's source (grafana/tempo,
modules/generator/processor/servicegraphs/servicegraphs.go, store/edge.go, config.go) and docs
(https://grafana.com/docs/tempo/latest/metrics-from-traces/service_graphs/):
- counters traces_service_graph_request_total and ..._failed_total, histograms
  traces_service_graph_request_server_seconds and ..._client_seconds (plus _messaging_system_seconds,
  not applicable to TCP);
- labels client, server (the two spans' service.name), connection_type ("" for a plain
  client/server pair, "virtual_node" when one end sent no span, "database", "messaging_system"),
  then each dimension twice with client_/server_ prefixes: the `service.namespace` dimension gives
  client_service_namespace / server_service_namespace;
- an edge is failed when either span has status ERROR; Tempo's default buckets
  ExponentialBuckets(0.1, 2, 8) = 0.1 .. 12.8 s put every millisecond connection in the first
  bucket, so podwire's are ExponentialBuckets(0.0001, 2, 28) = 100 us .. 3.7 h (names.py).
podwire counts one TCP connection as one request, refused/timeout/reset as failed, names pods by
workload (their spans' service.name), and names an external peer by its external name (Tempo would
use peer.service, or "user" for a client without a span).  One deliberate difference: both seconds
histograms get the wire duration measured here, also for virtual nodes, where Tempo records 0 for
the side without a span.  Do not also enable Tempo's own service-graph generator on podwire's spans:
the series would be counted twice.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.metrics import Meter, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from podwire.config import Settings
from podwire.model import (
    CloseInitiator,
    ConnectionOpened,
    ConnectionProgress,
    ConnectionRecord,
    Endpoint,
    Identity,
    IdentityKind,
    NamedConnection,
    Outcome,
    Side,
)
from podwire.telemetry import names as n
from podwire.tracker.tracker import ANOMALY_KINDS

AttrValue = str | int
Attrs = dict[str, AttrValue]


# --- exactly once --------------------------------------------------------------------------


def is_watched_pod(ident: Identity) -> bool:
    """A pod whose traffic an agent sees on its veth (hostNetwork pods have no veth)."""
    return ident.kind is IdentityKind.POD and not ident.host_network


def counts_here(observed_side: Side | None, client: Identity) -> bool:
    """Should this agent count this record in the metrics?  (The cluster-wide exactly-once rule.)

    - seen at the client's veth (CLIENT): yes.  The client's node is the one that counts.
    - seen at the server's veth (SERVER): only if the client is no agent-watched pod (external,
      node, a hostNetwork pod, an unresolved address): then no client-side record exists anywhere.
    - no side (pcap replay, one capture of the whole conversation): yes.
    A same-node pod-to-pod connection is seen on two veths: the client veth counts, the server
    veth does not.  A cross-node one: the client's node counts, the server's node does not.
    Limit: a pod client on a node with no agent is counted nowhere.
    """
    if observed_side is None or observed_side is Side.CLIENT:
        return True
    return not is_watched_pod(client)


def sends_spans(ident: Identity) -> bool:
    """Tempo draws an end without spans of its own as a virtual node.  A Service's backend pods
    send the server spans (joined through DNAT by the ISN ids), so a Service is not virtual."""
    return is_watched_pod(ident) or ident.kind is IdentityKind.SERVICE


# --- label sets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelConfig:
    pod_names: bool = False
    client_port: bool = False
    max_series: int = 20_000
    duration_buckets: tuple[float, ...] = n.DURATION_BUCKETS

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelConfig:
        return cls(
            settings.label_pod_names,
            settings.label_client_port,
            settings.max_series,
            settings.duration_buckets or n.DURATION_BUCKETS,
        )


def _kind(ident: Identity) -> str:
    return ident.workload_kind or ident.kind.value


_OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
_OUTCOME_INDEX = {o: i for i, o in enumerate(_OUTCOMES)}
_SENDERS: tuple[str, ...] = (*(c.value for c in CloseInitiator), n.UNKNOWN)
_SENDER_INDEX: dict[CloseInitiator | None, int] = {c: i for i, c in enumerate(CloseInitiator)}
_SENDER_INDEX[None] = len(_SENDERS) - 1
_FAILED = frozenset((Outcome.REFUSED, Outcome.TIMEOUT, Outcome.RESET))


class _Hist:
    """Explicit-bucket histogram, OTel semantics: bucket i counts (bounds[i-1], bounds[i]]."""

    __slots__ = ("bounds", "count", "counts", "max", "min", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def copy(self) -> _Hist:
        h = _Hist.__new__(_Hist)
        h.bounds, h.counts, h.count, h.sum, h.min, h.max = (
            self.bounds,
            self.counts.copy(),
            self.count,
            self.sum,
            self.min,
            self.max,
        )
        return h

    def record(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value


class _Edge:
    """Cumulative state of one edge label set.  Attribute dicts are built once, here."""

    __slots__ = (
        "active",
        "active_seen",
        "attrs",
        "bytes",
        "dur",
        "failures",
        "hs",
        "min_rtt",
        "outcomes",
        "resets",
        "retrans",
        "retrans_conns",
        "rtt",
        "sg_attrs",
        "sg_failed",
        "sg_seconds",
        "sg_total",
        "start_ns",
    )

    def __init__(self, attrs: Attrs, sg_attrs: Attrs, start_ns: int, buckets: tuple[float, ...]) -> None:
        self.attrs = attrs
        self.sg_attrs = sg_attrs
        self.start_ns = start_ns
        self.outcomes = [0] * len(_OUTCOMES)
        self.bytes = [0, 0]
        self.failures = [0, 0]  # refused, timeout
        self.resets = [0] * len(_SENDERS)
        self.active = 0
        self.active_seen = False
        self.dur = _Hist(buckets)
        self.hs = _Hist(n.HANDSHAKE_DURATION_BUCKETS)
        self.sg_total = 0
        self.sg_failed = 0
        # both seconds histograms (server and client) get the same wire duration: kept once
        self.sg_seconds = _Hist(buckets)
        # socket stats
        self.rtt = _Hist(n.RTT_BUCKETS)
        self.min_rtt = float("inf")
        self.retrans = [0, 0]  # by sender: client, server (each end's own socket)
        self.retrans_conns = [0, 0]

    def copy(self) -> _Edge:
        e = _Edge.__new__(_Edge)
        e.attrs, e.sg_attrs, e.start_ns = self.attrs, self.sg_attrs, self.start_ns
        e.outcomes, e.bytes, e.failures = self.outcomes.copy(), self.bytes.copy(), self.failures.copy()
        e.resets, e.active, e.active_seen = self.resets.copy(), self.active, self.active_seen
        e.dur, e.hs = self.dur.copy(), self.hs.copy()
        e.sg_total, e.sg_failed = self.sg_total, self.sg_failed
        e.sg_seconds = self.sg_seconds.copy()
        e.rtt, e.min_rtt = self.rtt.copy(), self.min_rtt
        e.retrans, e.retrans_conns = self.retrans.copy(), self.retrans_conns.copy()
        return e


def _overflow_edge(cfg: LabelConfig, start_ns: int) -> _Edge:
    o = n.OVERFLOW
    attrs: Attrs = {
        n.CLIENT_WORKLOAD: o,
        n.CLIENT_WORKLOAD_KIND: o,
        n.CLIENT_NAMESPACE: o,
        n.SERVER_WORKLOAD: o,
        n.SERVER_WORKLOAD_KIND: o,
        n.SERVER_NAMESPACE: o,
        n.SERVER_PORT: 0,
    }
    if cfg.pod_names:
        attrs[n.CLIENT_POD] = o
        attrs[n.SERVER_POD] = o
    if cfg.client_port:
        attrs[n.CLIENT_PORT] = 0
    sg: Attrs = {
        n.SG_CLIENT: o,
        n.SG_SERVER: o,
        n.SG_CONNECTION_TYPE: "",
        n.SG_CLIENT_NAMESPACE: o,
        n.SG_SERVER_NAMESPACE: o,
    }
    return _Edge(attrs, sg, start_ns, cfg.duration_buckets)


# --- agent self-metrics -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """Counters the agent reads from capture, tracker and identity; cumulative since start."""

    packets: int = 0
    kernel_drops: int = 0
    decode_errors: int = 0
    interfaces: int = 0
    interface_removals: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    tracker_entries: int = 0
    tracker_evictions: int = 0
    tracker_anomalies: Mapping[str, int] = field(default_factory=dict)  # kind -> count
    identity_misses: int = 0
    dns_rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> answers not used
    sockstats_dumps: int = 0
    sockstats_dump_seconds: float = 0.0
    sockstats_sockets: int = 0  # seen in the last round
    sockstats_skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> pods
    sockstats_dropped: int = 0
    views_connections: int = 0  # held by the views' store
    views_evictions: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    http_closed: Mapping[str, int] = field(
        default_factory=dict
    )  # reason -> connections closed by the listener
    service_backends: Mapping[str, int] = field(default_factory=dict)  # result -> Service lookups
    tls_errors: Mapping[str, int] = field(default_factory=dict)  # reason -> handshakes (tls/ assembler)
    tls_probe_failures: Mapping[str, int] = field(default_factory=dict)  # reason -> probes


class ExportCounters:
    """Export failures and drops, bumped by export.py's threads, read by observable counters."""

    __slots__ = ("dropped", "failures")

    def __init__(self) -> None:
        # (signal, reason) -> items dropped; signal -> failed export calls.  Every series known at
        # start exists from the first collection with 0: rate() and "No data" panels need a start.
        self.dropped: dict[tuple[str, str], int] = {
            (n.SIGNAL_TRACES, n.DROP_QUEUE_FULL): 0,
            (n.SIGNAL_TRACES, n.DROP_EXPORT_FAILED): 0,
        }
        self.failures: dict[str, int] = {n.SIGNAL_METRICS: 0, n.SIGNAL_TRACES: 0}

    def drop(self, signal: str, reason: str, count: int) -> None:
        key = (signal, reason)
        self.dropped[key] = self.dropped.get(key, 0) + count

    def fail(self, signal: str) -> None:
        self.failures[signal] = self.failures.get(signal, 0) + 1


class Bounded(Protocol):
    """A sink whose label sets are capped at max_series."""

    @property
    def series(self) -> int: ...

    @property
    def series_dropped(self) -> int: ...


class SelfMetrics:
    """Observable instruments over the agent's counters; `add_source` registers a snapshot callback.

    Several sources are summed field by field (capture, tracker and identity may each fill a part).
    Callbacks run on the reader's thread at collection, never on the capture thread.
    """

    def __init__(
        self,
        meter: Meter,
        export: ExportCounters,
        sink: MetricsSink | None = None,
        span_metrics: Bounded | None = None,
    ) -> None:
        self._sources: list[Callable[[], AgentSnapshot]] = []
        self._export = export
        self._sink = sink

        def counter(name: str, unit: str, desc: str, read: Callable[[], Iterable[Observation]]) -> None:
            meter.create_observable_counter(name, callbacks=[lambda _o: read()], unit=unit, description=desc)

        def gauge(name: str, unit: str, desc: str, read: Callable[[], Iterable[Observation]]) -> None:
            meter.create_observable_up_down_counter(
                name, callbacks=[lambda _o: read()], unit=unit, description=desc
            )

        def one(pick: Callable[[AgentSnapshot], int]) -> Callable[[], Iterable[Observation]]:
            return lambda: [Observation(sum(pick(s()) for s in self._sources))] if self._sources else []

        counter(n.AGENT_PACKETS, n.UNIT_PACKETS, "Control segments read", one(lambda s: s.packets))
        counter(
            n.AGENT_KERNEL_DROPS, n.UNIT_PACKETS, "Packets the kernel dropped", one(lambda s: s.kernel_drops)
        )
        counter(
            n.AGENT_DECODE_ERRORS, n.UNIT_ERRORS, "Frames that did not decode", one(lambda s: s.decode_errors)
        )
        gauge(n.AGENT_INTERFACES, n.UNIT_INTERFACES, "Interfaces captured", one(lambda s: s.interfaces))
        counter(
            n.AGENT_INTERFACE_REMOVALS,
            n.UNIT_INTERFACES,
            "Interfaces no longer captured, by reason",
            self._by(lambda s: s.interface_removals, n.REASON),
        )
        gauge(
            n.AGENT_TRACKER_ENTRIES,
            n.UNIT_ENTRIES,
            "Connections in the tracker table",
            one(lambda s: s.tracker_entries),
        )
        counter(
            n.AGENT_TRACKER_EVICTIONS,
            n.UNIT_ENTRIES,
            "Tracker entries evicted (table full)",
            one(lambda s: s.tracker_evictions),
        )
        counter(
            n.AGENT_TRACKER_ANOMALIES,
            n.UNIT_EVENTS,
            "Segments the tracker found odd",
            self._by(lambda s: s.tracker_anomalies, n.KIND, ANOMALY_KINDS),
        )
        counter(
            n.AGENT_IDENTITY_MISSES,
            n.UNIT_EVENTS,
            "Addresses no identity source knew",
            one(lambda s: s.identity_misses),
        )
        counter(
            n.AGENT_SOCKSTATS_DUMPS, n.UNIT_DUMPS, "Pod namespaces dumped", one(lambda s: s.sockstats_dumps)
        )
        counter(
            n.AGENT_SOCKSTATS_DUMP_DURATION,
            n.UNIT_SECONDS,
            "Time spent entering pod namespaces and dumping their sockets",
            lambda: (
                [Observation(sum(s().sockstats_dump_seconds for s in self._sources))] if self._sources else []
            ),
        )
        gauge(
            n.AGENT_SOCKSTATS_SOCKETS,
            n.UNIT_SOCKETS,
            "Sockets seen in the last socket-stats round",
            one(lambda s: s.sockstats_sockets),
        )
        counter(
            n.AGENT_SOCKSTATS_SKIPPED,
            n.UNIT_PODS,
            "Pods not dumped, by reason",
            self._by(lambda s: s.sockstats_skipped, n.REASON),
        )
        counter(
            n.AGENT_SOCKSTATS_DROPPED,
            n.UNIT_SOCKETS,
            "Socket samples not used (over the bound, or the capture thread fell behind)",
            one(lambda s: s.sockstats_dropped),
        )
        gauge(
            n.AGENT_VIEWS_CONNECTIONS,
            n.UNIT_CONNECTIONS,
            "Connections held for the views (Node Graph and TLS APIs, the page)",
            one(lambda s: s.views_connections),
        )
        counter(
            n.AGENT_VIEWS_EVICTIONS,
            n.UNIT_ENTRIES,
            "View entries evicted, by reason",
            self._by(lambda s: s.views_evictions, n.REASON, n.VIEWS_EVICTION_REASONS),
        )
        counter(
            n.AGENT_DNS_REJECTED,
            n.UNIT_EVENTS,
            "DNS answers not used for naming: not from a trusted resolver, or answering no query seen",
            self._by(lambda s: s.dns_rejected, n.REASON, n.DNS_REJECT_REASONS),
        )
        counter(
            n.AGENT_HTTP_CLOSED,
            n.UNIT_CONNECTIONS,
            "HTTP connections the listener closed or refused, by reason",
            self._by(lambda s: s.http_closed, n.REASON, n.HTTP_CLOSE_REASONS),
        )
        counter(
            n.AGENT_SERVICE_BACKENDS,
            n.UNIT_CONNECTIONS,
            "Connections to a Service address, by whether conntrack named its backend",
            self._by(lambda s: s.service_backends, n.RESULT),
        )
        counter(
            n.AGENT_TLS_ERRORS,
            n.UNIT_ERRORS,
            "TLS handshakes not parsed or given up, by reason",
            self._by(lambda s: s.tls_errors, n.REASON, n.TLS_ERROR_REASONS),
        )
        counter(
            n.AGENT_TLS_PROBE_FAILURES,
            n.UNIT_ERRORS,
            "TLS 1.3 certificate probes that failed, by reason",
            self._by(lambda s: s.tls_probe_failures, n.REASON),
        )
        counter(n.AGENT_EXPORT_FAILURES, n.UNIT_EVENTS, "Failed export calls", self._failures)
        counter(n.AGENT_EXPORT_DROPPED, n.UNIT_ITEMS, "Spans not delivered", self._dropped)
        bounded: list[Bounded] = [b for b in (sink, span_metrics) if b is not None]
        if bounded:
            counter(
                n.AGENT_SERIES_DROPPED,
                n.UNIT_CONNECTIONS,
                "Connections folded into an overflow series (max_series reached)",
                lambda: [Observation(sum(b.series_dropped for b in bounded))],
            )
            gauge(
                n.AGENT_SERIES,
                n.UNIT_SERIES,
                "Distinct label sets held (edges and span-metrics series)",
                lambda: [Observation(sum(b.series for b in bounded))],
            )

    def add_source(self, source: Callable[[], AgentSnapshot]) -> None:
        self._sources.append(source)

    def _by(
        self, pick: Callable[[AgentSnapshot], Mapping[str, int]], label: str, known: Sequence[str] = ()
    ) -> Callable[[], list[Observation]]:
        """One observation per key of a labelled snapshot field, summed over the sources; every
        `known` key at 0 until it happens (a rate over a missing series is no rate)."""

        def read() -> list[Observation]:
            total = dict.fromkeys(known, 0)
            for source in self._sources:
                for key, count in pick(source()).items():
                    total[key] = total.get(key, 0) + count
            return [Observation(v, {label: k}) for k, v in sorted(total.items())]

        return read

    def _failures(self) -> list[Observation]:
        return [Observation(v, {n.SIGNAL: k}) for k, v in sorted(self._export.failures.items())]

    def _dropped(self) -> list[Observation]:
        return [
            Observation(v, {n.SIGNAL: s, n.REASON: r}) for (s, r), v in sorted(self._export.dropped.items())
        ]


# --- the sink -------------------------------------------------------------------------------


_OpenKey = tuple[int, Endpoint, Endpoint, int | None, int | None]
# Progress is per end: with several captures on one sink (simulated nodes), both ends of one
# connection can share a point number, and only the side tells them apart.
_ProgressKey = tuple[Side | None, int, Endpoint, Endpoint, int | None, int | None]


class _Reported:
    """What the sink already counted of an open connection from its progress events."""

    __slots__ = ("c2s", "edge", "retrans", "s2c")

    def __init__(self, edge: _Edge) -> None:
        self.edge = edge
        self.c2s = self.s2c = self.retrans = 0


class MetricsSink:
    """`podwire.model.Sink` aggregating edge metrics and the service-graph series.

    Thread model: `on_opened`/`on_connection` run on the capture thread; `produce` runs on a
    reader thread (periodic export or a /metrics scrape).  One lock guards both; it is never held
    across I/O.
    """

    def __init__(
        self,
        labels: LabelConfig,
        max_open: int = 262_144,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._cfg = labels
        self._clock_ns = clock_ns
        self._edges: dict[tuple[object, ...], _Edge] = {}
        # (client, server, server port[, client port]) -> its edge: the label key built once per
        # pair of identities, not per event; bounded like the edges, then it starts over
        self._by_ends: dict[tuple[object, ...], _Edge] = {}
        self._overflow: _Edge | None = None
        # opened connections awaiting their record (active gauge); bounded like the tracker's table
        self._open: OrderedDict[_OpenKey, _Edge] = OrderedDict()
        self._max_open = max_open
        # connections with progress from socket stats: what was counted so far (same bound)
        self._progress: OrderedDict[_ProgressKey, _Reported] = OrderedDict()
        self._lock = threading.Lock()
        self.series_dropped = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsSink:
        return cls(LabelConfig.from_settings(settings), settings.max_connections)

    @property
    def series(self) -> int:
        return len(self._edges) + (self._overflow is not None)

    # -- hot path --

    def _edge(self, client: Identity, server: Identity, server_port: int, client_port: int) -> _Edge:
        cfg = self._cfg
        ends = (
            (client, server, server_port, client_port) if cfg.client_port else (client, server, server_port)
        )
        edge = self._by_ends.get(ends)
        if edge is not None:
            return edge
        key: tuple[object, ...] = (
            client.workload_name,
            _kind(client),
            client.namespace or "",
            server.workload_name,
            _kind(server),
            server.namespace or "",
            server_port,
            server.service or "",
        )
        if cfg.pod_names:
            key += (
                client.name if client.kind is IdentityKind.POD else "",
                server.name if server.kind is IdentityKind.POD else "",
            )
        if cfg.client_port:
            key += (client_port,)
        edge = self._edges.get(key)
        if edge is None:
            if len(self._edges) >= cfg.max_series:
                self.series_dropped += 1  # per connection past the bound: never cached
                if self._overflow is None:
                    self._overflow = _overflow_edge(cfg, self._clock_ns())
                return self._overflow
            edge = self._edges[key] = self._new_edge(key, client, server)
        if len(self._by_ends) >= cfg.max_series:
            self._by_ends.clear()
        self._by_ends[ends] = edge
        return edge

    def _new_edge(self, key: tuple[object, ...], client: Identity, server: Identity) -> _Edge:
        attrs: Attrs = {
            n.CLIENT_WORKLOAD: key[0],  # type: ignore[dict-item]
            n.CLIENT_WORKLOAD_KIND: key[1],  # type: ignore[dict-item]
            n.CLIENT_NAMESPACE: key[2],  # type: ignore[dict-item]
            n.SERVER_WORKLOAD: key[3],  # type: ignore[dict-item]
            n.SERVER_WORKLOAD_KIND: key[4],  # type: ignore[dict-item]
            n.SERVER_NAMESPACE: key[5],  # type: ignore[dict-item]
            n.SERVER_PORT: key[6],  # type: ignore[dict-item]
        }
        if key[7]:  # only on edges to a backend reached through a Service
            attrs[n.SERVER_SERVICE] = key[7]  # type: ignore[assignment]
        extra = 8
        if self._cfg.pod_names:
            attrs[n.CLIENT_POD] = key[8]  # type: ignore[assignment]
            attrs[n.SERVER_POD] = key[9]  # type: ignore[assignment]
            extra = 10
        if self._cfg.client_port:
            attrs[n.CLIENT_PORT] = key[extra]  # type: ignore[assignment]
        virtual = not (sends_spans(client) and sends_spans(server))
        sg: Attrs = {
            n.SG_CLIENT: client.workload_name,
            n.SG_SERVER: server.workload_name,
            n.SG_CONNECTION_TYPE: n.VIRTUAL_NODE if virtual else "",
            n.SG_CLIENT_NAMESPACE: client.namespace or "",
            n.SG_SERVER_NAMESPACE: server.namespace or "",
        }
        return _Edge(attrs, sg, self._clock_ns(), self._cfg.duration_buckets)

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        if not counts_here(event.observed_side, client):
            return
        with self._lock:
            edge = self._edge(client, server, event.server.port, event.client.port)
            key = (event.point, event.client, event.server, event.client_isn, event.server_isn)
            if key in self._open:
                return  # a duplicate opened event: count the connection once
            edge.active += 1
            edge.active_seen = True
            if event.handshake_rtt_s is not None:
                edge.hs.record(event.handshake_rtt_s)
            self._open[key] = edge
            if len(self._open) > self._max_open:
                _, oldest = self._open.popitem(last=False)
                oldest.active -= 1  # the tracker evicted it too (same bound)

    def on_progress(self, event: ConnectionProgress, client: Identity, server: Identity) -> None:
        """Bytes and retransmits not counted yet, an RTT observation (socket stats, per sample).

        The sample is of the end behind the capture point (observed_side).  Retransmits are that
        end's own, counted by its own node under `sender`, so each retransmitted segment counts
        once cluster-wide; bytes and RTT only where the connection counts (`counts_here`)."""
        counted = counts_here(event.observed_side, client)
        sender = 1 if event.observed_side is Side.SERVER else 0
        key = (event.point, event.client, event.server, event.client_isn, event.server_isn)
        pkey = (event.observed_side, *key)
        with self._lock:
            done = self._progress.get(pkey)
            if done is None:
                edge = self._open.get(key) or self._edge(client, server, event.server.port, event.client.port)
                done = self._progress[pkey] = _Reported(edge)
                if len(self._progress) > self._max_open:
                    self._progress.popitem(last=False)
            edge = done.edge
            if event.retransmits > done.retrans:
                if not done.retrans:
                    edge.retrans_conns[sender] += 1
                edge.retrans[sender] += event.retransmits - done.retrans
                done.retrans = event.retransmits
            if not counted:
                return
            if event.bytes_client_to_server > done.c2s:
                edge.bytes[0] += event.bytes_client_to_server - done.c2s
                done.c2s = event.bytes_client_to_server
            if event.bytes_server_to_client > done.s2c:
                edge.bytes[1] += event.bytes_server_to_client - done.s2c
                done.s2c = event.bytes_server_to_client
            if event.rtt_s > 0:
                edge.rtt.record(event.rtt_s)
            if 0 < event.min_rtt_s < edge.min_rtt:
                edge.min_rtt = event.min_rtt_s

    def _uncounted_end(self, rec: ConnectionRecord) -> None:
        """A record this node does not count: only its own end's last retransmits (see on_progress)."""
        with self._lock:
            key = (rec.observed_side, rec.point, rec.client, rec.server, rec.client_isn, rec.server_isn)
            done = self._progress.get(key) if rec.outcome is Outcome.OPEN else self._progress.pop(key, None)
            if done is not None and rec.retransmits is not None and rec.retransmits > done.retrans:
                sender = 1 if rec.observed_side is Side.SERVER else 0
                if not done.retrans:
                    done.edge.retrans_conns[sender] += 1
                done.edge.retrans[sender] += rec.retransmits - done.retrans
                done.retrans = rec.retransmits

    def on_connection(self, conn: NamedConnection) -> None:
        rec = conn.record
        if not counts_here(rec.observed_side, conn.client):
            if self._progress:
                self._uncounted_end(rec)
            return
        outcome = rec.outcome
        key: _OpenKey | None = None
        if rec.client_isn is not None and rec.server_isn is not None:
            key = (rec.point, rec.client, rec.server, rec.client_isn, rec.server_isn)
        with self._lock:
            done: _Reported | None = None
            if self._progress:
                pkey = (rec.observed_side, rec.point, rec.client, rec.server, rec.client_isn, rec.server_isn)
                done = self._progress.get(pkey) if outcome is Outcome.OPEN else self._progress.pop(pkey, None)
            opened: _Edge | None = None
            if key is not None:
                if outcome is Outcome.OPEN:
                    opened = self._open.get(key)  # still open at capture end: stays active
                else:
                    opened = self._open.pop(key, None)
                    if opened is not None:
                        opened.active -= 1
            edge = self._edge(conn.client, conn.server, rec.server.port, rec.client.port)
            edge.outcomes[_OUTCOME_INDEX[outcome]] += 1
            # only what progress events did not count already: the total stays exact
            if rec.bytes_client_to_server is not None:
                edge.bytes[0] += max(0, rec.bytes_client_to_server - (done.c2s if done else 0))
            if rec.bytes_server_to_client is not None:
                edge.bytes[1] += max(0, rec.bytes_server_to_client - (done.s2c if done else 0))
            if rec.retransmits:
                counted = done.retrans if done else 0
                if rec.retransmits > counted:
                    sender = 1 if rec.observed_side is Side.SERVER else 0
                    if not counted:
                        edge.retrans_conns[sender] += 1
                    edge.retrans[sender] += rec.retransmits - counted
            if done is not None and outcome is Outcome.OPEN:  # still open: later events count on
                done.c2s = max(done.c2s, rec.bytes_client_to_server or 0)
                done.s2c = max(done.s2c, rec.bytes_server_to_client or 0)
            if opened is None and rec.handshake_rtt_s is not None:
                edge.hs.record(rec.handshake_rtt_s)
            if outcome is Outcome.REFUSED:
                edge.failures[0] += 1
            elif outcome is Outcome.TIMEOUT:
                edge.failures[1] += 1
            elif outcome is Outcome.RESET:
                edge.resets[_SENDER_INDEX[rec.close_initiator]] += 1
            duration = rec.duration_s
            if duration is not None and outcome in (Outcome.CLOSED, Outcome.RESET):
                edge.dur.record(duration)
            if outcome is not Outcome.OPEN:
                # One connection = one request.  Both seconds histograms get the wire duration
                # measured here (Tempo would record 0 for the missing side of a virtual node).
                seconds = duration if duration is not None else 0.0
                edge.sg_total += 1
                if outcome in _FAILED:
                    edge.sg_failed += 1
                edge.sg_seconds.record(seconds)

    # -- collection --

    def produce(self) -> list[Metric]:
        """Cumulative points for every edge series, as SDK export types (collection thread)."""
        now = self._clock_ns()
        c2s = {n.DIRECTION: n.CLIENT_TO_SERVER}
        s2c = {n.DIRECTION: n.SERVER_TO_CLIENT}
        conns: list[NumberDataPoint] = []
        bytes_: list[NumberDataPoint] = []
        fails: list[NumberDataPoint] = []
        resets: list[NumberDataPoint] = []
        active: list[NumberDataPoint] = []
        dur: list[HistogramDataPoint] = []
        hs: list[HistogramDataPoint] = []
        sg_total: list[NumberDataPoint] = []
        sg_failed: list[NumberDataPoint] = []
        sg_server: list[HistogramDataPoint] = []
        sg_client: list[HistogramDataPoint] = []
        rtt: list[HistogramDataPoint] = []
        min_rtt: list[NumberDataPoint] = []
        retrans: list[NumberDataPoint] = []
        retrans_conns: list[NumberDataPoint] = []
        with self._lock:
            live = list(self._edges.values())
            if self._overflow is not None:
                live.append(self._overflow)
        # Copy in chunks under the lock (each edge consistent, e.g. a histogram's count and buckets),
        # build the points outside it: the capture thread never waits for more than one chunk.
        edges: list[_Edge] = []
        for i in range(0, len(live), _CHUNK):
            with self._lock:
                edges.extend(e.copy() for e in live[i : i + _CHUNK])
        for e in edges:
            a, t0 = e.attrs, e.start_ns
            for i, count in enumerate(e.outcomes):
                if count:
                    conns.append(NumberDataPoint({**a, n.OUTCOME: _OUTCOMES[i].value}, t0, now, count))
            if e.bytes[0]:
                bytes_.append(NumberDataPoint({**a, **c2s}, t0, now, e.bytes[0]))
            if e.bytes[1]:
                bytes_.append(NumberDataPoint({**a, **s2c}, t0, now, e.bytes[1]))
            if e.failures[0]:
                fails.append(NumberDataPoint({**a, n.REASON: Outcome.REFUSED.value}, t0, now, e.failures[0]))
            if e.failures[1]:
                fails.append(NumberDataPoint({**a, n.REASON: Outcome.TIMEOUT.value}, t0, now, e.failures[1]))
            for i, count in enumerate(e.resets):
                if count:
                    resets.append(NumberDataPoint({**a, n.SENDER: _SENDERS[i]}, t0, now, count))
            if e.active_seen:
                active.append(NumberDataPoint(a, t0, now, e.active))
            if e.dur.count:
                dur.append(_hist_point(e.dur, a, t0, now))
            if e.hs.count:
                hs.append(_hist_point(e.hs, a, t0, now))
            if e.sg_total:
                sg_total.append(NumberDataPoint(e.sg_attrs, t0, now, e.sg_total))
                sg_server.append(_hist_point(e.sg_seconds, e.sg_attrs, t0, now))
                sg_client.append(_hist_point(e.sg_seconds, e.sg_attrs, t0, now))
            if e.sg_failed:
                sg_failed.append(NumberDataPoint(e.sg_attrs, t0, now, e.sg_failed))
            if e.rtt.count:
                rtt.append(_hist_point(e.rtt, a, t0, now))
                min_rtt.append(NumberDataPoint(a, t0, now, e.min_rtt))
            for i, sender in enumerate((n.CLIENT_SENDER, n.SERVER_SENDER)):
                if e.rtt.count or e.retrans[i]:  # sampled: 0 retransmits is a fact worth a point
                    retrans.append(NumberDataPoint({**a, n.SENDER: sender}, t0, now, e.retrans[i]))
                    retrans_conns.append(
                        NumberDataPoint({**a, n.SENDER: sender}, t0, now, e.retrans_conns[i])
                    )
        # Tempo's series share label sets per edge, so several podwire edges (ports, kinds) can fold
        # into one service-graph edge: merge them.
        sg_total, sg_failed = _merge_sums(sg_total), _merge_sums(sg_failed)
        sg_server, sg_client = _merge_hists(sg_server), _merge_hists(sg_client)
        out: list[Metric] = []

        def add_sum(
            name: str, unit: str, desc: str, pts: list[NumberDataPoint], monotonic: bool = True
        ) -> None:
            if pts:
                out.append(Metric(name, desc, unit, Sum(pts, _CUMULATIVE, monotonic)))

        def add_hist(name: str, unit: str, desc: str, pts: list[HistogramDataPoint]) -> None:
            if pts:
                out.append(Metric(name, desc, unit, Histogram(pts, _CUMULATIVE)))

        add_sum(n.TCP_CONNECTIONS, n.UNIT_CONNECTIONS, "TCP connections by outcome", conns)
        add_sum(n.TCP_BYTES, n.UNIT_BYTES, "Payload bytes by direction (when known)", bytes_)
        add_hist(n.TCP_CONNECTION_DURATION, n.UNIT_SECONDS, "SYN to close", dur)
        add_hist(n.TCP_HANDSHAKE_DURATION, n.UNIT_SECONDS, "SYN to the handshake's last ACK", hs)
        add_sum(n.TCP_FAILURES, n.UNIT_CONNECTIONS, "Connections refused or timed out", fails)
        add_sum(n.TCP_RESETS, n.UNIT_CONNECTIONS, "Connections ended by a RST, by sender", resets)
        add_sum(n.TCP_CONNECTIONS_ACTIVE, n.UNIT_CONNECTIONS, "Open connections", active, monotonic=False)
        add_hist(n.TCP_RTT, n.UNIT_SECONDS, "Smoothed RTT (socket stats, one per connection per sample)", rtt)
        if min_rtt:
            out.append(
                Metric(
                    n.TCP_MIN_RTT,
                    "Lowest RTT seen on the edge (socket stats)",
                    n.UNIT_SECONDS,
                    Gauge(min_rtt),
                )
            )
        add_sum(n.TCP_RETRANSMITS, n.UNIT_SEGMENTS, "Segments retransmitted (socket stats)", retrans)
        add_sum(
            n.TCP_CONNECTIONS_RETRANSMITTING,
            n.UNIT_CONNECTIONS,
            "Connections that retransmitted (socket stats)",
            retrans_conns,
        )
        add_sum(n.SG_REQUEST, n.UNIT_REQUESTS, "Service graph: requests (connections)", sg_total)
        add_sum(n.SG_REQUEST_FAILED, n.UNIT_REQUESTS, "Service graph: failed requests", sg_failed)
        add_hist(
            n.SG_REQUEST_SERVER_SECONDS, n.UNIT_SECONDS, "Service graph: server-side duration", sg_server
        )
        add_hist(
            n.SG_REQUEST_CLIENT_SECONDS, n.UNIT_SECONDS, "Service graph: client-side duration", sg_client
        )
        return out


_CUMULATIVE = AggregationTemporality.CUMULATIVE
_CHUNK = 512  # edges copied per lock hold in produce()


def _hist_point(h: _Hist, attrs: Attrs, t0: int, now: int) -> HistogramDataPoint:
    return HistogramDataPoint(attrs, t0, now, h.count, h.sum, list(h.counts), h.bounds, h.min, h.max)


def _attr_key(attrs: Mapping[str, object]) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(attrs.items()))


def _merge_sums(points: list[NumberDataPoint]) -> list[NumberDataPoint]:
    by: dict[tuple[tuple[str, object], ...], NumberDataPoint] = {}
    for p in points:
        k = _attr_key(p.attributes or {})
        q = by.get(k)
        if q is None:
            by[k] = p
        else:
            by[k] = NumberDataPoint(
                p.attributes,
                min(p.start_time_unix_nano, q.start_time_unix_nano),
                p.time_unix_nano,
                p.value + q.value,
            )
    return list(by.values())


def _merge_hists(points: list[HistogramDataPoint]) -> list[HistogramDataPoint]:
    by: dict[tuple[tuple[str, object], ...], HistogramDataPoint] = {}
    for p in points:
        k = _attr_key(p.attributes or {})
        q = by.get(k)
        if q is None:
            by[k] = p
        else:
            by[k] = HistogramDataPoint(
                p.attributes,
                min(p.start_time_unix_nano, q.start_time_unix_nano),
                p.time_unix_nano,
                p.count + q.count,
                p.sum + q.sum,
                [x + y for x, y in zip(p.bucket_counts, q.bucket_counts, strict=True)],
                p.explicit_bounds,
                min(p.min, q.min),
                max(p.max, q.max),
            )
    return list(by.values())


# --- handing the points to the SDK readers ------------------------------------------------------


class PointSource(Protocol):
    """A sink that hands ready cumulative points to the readers (MetricsSink, SpanMetricsSink,
    tlsmetrics.TlsMetricsSink)."""

    def produce(self) -> list[Metric]: ...


class MetricsProducer:
    """What the readers in export.py call at each collection; several sinks can be merged."""

    def __init__(self, scope: InstrumentationScope, sinks: Sequence[PointSource]) -> None:
        self._scope = scope
        self._sinks = tuple(sinks)

    def merge_into(self, data: MetricsData) -> MetricsData:
        extra: list[Metric] = []
        for sink in self._sinks:
            extra.extend(sink.produce())
        if not extra:
            return data
        resource_metrics = list(data.resource_metrics)
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        for i, sm in enumerate(scopes):
            if sm.scope.name == self._scope.name:
                scopes[i] = ScopeMetrics(sm.scope, [*sm.metrics, *extra], sm.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self._scope, extra, self._scope.schema_url or ""))
        resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resource_metrics)
