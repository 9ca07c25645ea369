"""One span per connection end, with trace and span ids derived from the two ISNs.

Ids.  Both ends of a connection see the same client ISN (SYN) and server ISN (SYN-ACK): 64
random bits that kube-proxy's DNAT and SNAT never rewrite (they change addresses and ports, which
are therefore kept out of the hash).  So, with no coordination between agents:
    trace_id       = blake2b(client_isn, server_isn; 16 bytes)
    client span id = blake2b(client_isn, server_isn, "client"; 8 bytes)
    server span id = blake2b(client_isn, server_isn, "server"; 8 bytes), parent = client span id
and the CLIENT span from the client's node and the SERVER span from the server's node (or from the
backend behind a ClusterIP) land in one trace.

Sampling is decided on the trace id alone (its low 64 bits below ratio * 2**64, like the SDK's
TraceIdRatioBased), so both agents keep or drop the same connections.

Decisions:
- Failed connections (refused, timeout) have no server ISN: their ids hash the client ISN alone
  (domain-separated), so a refused connection seen at both ends still pairs.  32 bits only:
  collisions become likely past ~65k failed connections in one trace-retention window.
- Records without a client ISN (connection open before the agent started) get no span: there is
  no SYN time and nothing both ends could derive an id from.  Metrics still count them.
- OPEN records (still open at capture end / shutdown) get no span: a span covers SYN to close.
- Which end: observed_side CLIENT -> CLIENT span, SERVER -> SERVER span.  With no side (pcap,
  one capture of the whole conversation) the CLIENT span is emitted when the client is a watched
  pod or the server is not, and the SERVER span when the server is a watched pod.
- `peer.service` names the peer when it sends no span of its own, so Tempo draws a virtual node
  for it: not on a CLIENT span to an agent-watched pod or to a Service (its backend sends the SERVER
  span, joined through DNAT by the ISN ids); a SERVER span whose client sends no span is a root span.
- Span names tell edges apart with bounded cardinality: `tcp connect <ns>/<server>:<port>` on
  CLIENT spans, `tcp accept <ns>/<server>:<port>` on SERVER spans (the server's workload or
  Service, external or node name, never a pod, an address or a client port).  CLIENT and SERVER
  names differ on purpose: Grafana's Service Graph table takes rates from SERVER spans but error
  rates from every span of a name; one name for both kinds would count each failure twice.

Cost: one TracerProvider per resource would be expensive, so ReadableSpan objects are built here
with a cached Resource per workload (bounded LRU) and handed straight to a span processor.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections import OrderedDict
from collections.abc import Callable
from hashlib import blake2b
from typing import Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from podwire.model import (
    ConnectionOpened,
    ConnectionRecord,
    Identity,
    NamedConnection,
    Outcome,
    Side,
    TlsInfo,
)
from podwire.telemetry import names as n
from podwire.telemetry.metrics import is_watched_pod, sends_spans

_ISNS = struct.Struct("!II")
_ISN = struct.Struct("!I")
_PERSON = b"podwire.tcp.v1"  # blake2b personalisation: podwire's ids never collide with others'
_FAILED_TAG = b"no-server-isn"
_MASK64 = (1 << 64) - 1
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERRORS = {
    Outcome.REFUSED: Status(StatusCode.ERROR, "connection refused"),
    Outcome.TIMEOUT: Status(StatusCode.ERROR, "connection timed out"),
    Outcome.RESET: Status(StatusCode.ERROR, "connection reset"),
}
_UNSET = Status(StatusCode.UNSET)


class SpanIds:
    __slots__ = ("client_span_id", "server_span_id", "trace_id")

    def __init__(self, trace_id: int, client_span_id: int, server_span_id: int) -> None:
        self.trace_id = trace_id
        self.client_span_id = client_span_id
        self.server_span_id = server_span_id

    def __repr__(self) -> str:
        return f"SpanIds({self.trace_id:032x}, {self.client_span_id:016x}, {self.server_span_id:016x})"


# Keyed hash states made once and copied per id: the same digests as blake2b(data, digest_size=...,
# person=_PERSON), without setting up the parameter block three times per connection (~2x faster).
_BLAKE16 = blake2b(digest_size=16, person=_PERSON)
_BLAKE8 = blake2b(digest_size=8, person=_PERSON)


def _h(state: blake2b, data: bytes) -> int:
    h = state.copy()
    h.update(data)
    return int.from_bytes(h.digest(), "big") or 1  # all-zero ids are invalid in OTel


def _id_base(client_isn: int, server_isn: int | None) -> bytes:
    return (
        _ISNS.pack(client_isn, server_isn) if server_isn is not None else _ISN.pack(client_isn) + _FAILED_TAG
    )


def span_ids(client_isn: int, server_isn: int | None) -> SpanIds:
    """The ids both ends derive independently (see the module doc)."""
    base = _id_base(client_isn, server_isn)
    return SpanIds(_h(_BLAKE16, base), _h(_BLAKE8, base + b"client"), _h(_BLAKE8, base + b"server"))


def sampled(trace_id: int, ratio: float) -> bool:
    """Deterministic on the trace id, so every agent decides the same for one connection."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return (trace_id & _MASK64) < int(ratio * (1 << 64))


def span_name(kind: SpanKind, server: Identity, port: int) -> str:
    """`tcp connect shop/api:80` (CLIENT), `tcp accept shop/api:8080` (SERVER); see the module doc."""
    verb = n.SPAN_VERB_SERVER if kind is SpanKind.SERVER else n.SPAN_VERB_CLIENT
    ns = f"{server.namespace}/" if server.namespace else ""
    return f"{n.SPAN_NAME_PREFIX} {verb} {ns}{server.workload_name}:{port}"


def has_span(rec: ConnectionRecord) -> bool:
    """A connection gets spans only with a SYN time, a client ISN and an end (module doc)."""
    return rec.client_isn is not None and rec.outcome is not Outcome.OPEN and rec.start_time is not None


def span_ends(rec: ConnectionRecord, client: Identity, server: Identity) -> tuple[bool, bool]:
    """(CLIENT span here?, SERVER span here?) for a record this agent saw (module doc, "Which end")."""
    side = rec.observed_side
    client_pod, server_pod = is_watched_pod(client), is_watched_pod(server)
    return (
        side is Side.CLIENT or (side is None and (client_pod or not server_pod)),
        side is Side.SERVER or (side is None and server_pod),
    )


class SpanConsumer(Protocol):
    """A span processor (BatchSpanProcessor, export.py's bounded one, or a test's)."""

    def on_end(self, span: ReadableSpan) -> None: ...


class ResourceCache:
    """Resource per local workload (and pod): built once, bounded LRU."""

    def __init__(self, base: Resource, node_name: str | None, size: int = 4096) -> None:
        self._base = base
        self._node = node_name
        self._size = size
        self._cache: OrderedDict[Identity, Resource] = OrderedDict()
        # Identities that differ only where the resource does not look (e.g. the Service a pod was
        # reached by) share one object: the encoder groups spans by resource object, the SDK by value.
        self._shared: dict[tuple[tuple[str, str], ...], Resource] = {}

    def get(self, ident: Identity) -> Resource:
        res = self._cache.get(ident)
        if res is not None:
            self._cache.move_to_end(ident)
            return res
        attrs = resource_attributes(ident, self._node)
        key = tuple(attrs.items())
        res = self._shared.get(key)
        if res is None:
            if len(self._shared) >= self._size:
                self._shared.clear()
            res = self._shared[key] = self._base.merge(Resource(attrs))
        self._cache[ident] = res
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return res


def resource_attributes(ident: Identity, node_name: str | None) -> dict[str, str]:
    attrs = {n.SERVICE_NAME: ident.workload_name}
    if ident.namespace:
        attrs[n.SERVICE_NAMESPACE] = ident.namespace
        attrs[n.K8S_NAMESPACE_NAME] = ident.namespace
    if is_watched_pod(ident) or ident.host_network:
        attrs[n.K8S_POD_NAME] = ident.name
    owner = n.K8S_WORKLOAD_ATTRIBUTE.get(ident.workload_kind or "")
    if owner is not None and ident.workload:
        attrs[owner] = ident.workload
    node = ident.node or node_name
    if node:
        attrs[n.K8S_NODE_NAME] = node
    return attrs


def tls_attributes(tls: TlsInfo) -> dict[str, str]:
    """Span attributes of a TLS handshake (only the fields that were visible)."""
    out: dict[str, str] = {}
    if tls.version is not None:
        # "TLS 1.2" -> name "tls", version "1.2" (the semantic conventions split them)
        name, _, number = tls.version.partition(" ")
        if number:
            out[n.TLS_PROTOCOL_NAME] = name.lower()
            out[n.TLS_PROTOCOL_VERSION] = number
        else:
            out[n.TLS_PROTOCOL_VERSION] = tls.version
    for key, value in (
        (n.TLS_SERVER_NAME, tls.server_name),
        (n.TLS_CIPHER, tls.cipher),
        (n.TLS_NEXT_PROTOCOL, tls.alpn),
        (n.TLS_CLIENT_JA3, tls.ja3),
        (n.TLS_SERVER_JA3S, tls.ja3s),
        (n.TLS_CLIENT_JA4, tls.ja4),
        (n.TLS_SERVER_SUBJECT, tls.certificate_subject),
        (n.TLS_SERVER_ISSUER, tls.certificate_issuer),
    ):
        if value is not None:
            out[key] = value
    if tls.certificate_not_after is not None:
        out[n.TLS_SERVER_NOT_AFTER] = dt.datetime.fromtimestamp(tls.certificate_not_after, dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    return out


class _End:
    """What every span of one end shares: (kind, local, peer, server port) decide all of it."""

    __slots__ = ("attrs", "kind", "name", "parent", "resource")

    def __init__(
        self, kind: SpanKind, name: str, resource: Resource, attrs: dict[str, str], parent: bool
    ) -> None:
        self.kind = kind
        self.name = name
        self.resource = resource
        self.attrs = attrs  # the peer's attributes
        self.parent = parent  # a SERVER span has the client span as its parent (the client sends one)


_ENDS = 4096  # ends kept (bounded; then it starts over)
_OUTCOME_TEXT = {o: o.value for o in Outcome}  # plain str: encode.py caches str attribute values


class SpanSink:
    """`podwire.model.Sink` turning connection records into CLIENT/SERVER spans."""

    def __init__(
        self,
        consumer: SpanConsumer,
        base_resource: Resource,
        sample_ratio: float = 1.0,
        node_name: str | None = None,
        scope: InstrumentationScope | None = None,
        on_sampled_out: Callable[[], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._resources = ResourceCache(base_resource, node_name)
        self._ratio = sample_ratio
        self._scope = scope or InstrumentationScope(n.TRACER_NAME)
        self._on_sampled_out = on_sampled_out
        self._ends: dict[tuple[bool, Identity, Identity, int], _End] = {}
        self.emitted = 0
        self.skipped = 0  # no client ISN or still open

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        return  # spans are emitted once, at the close

    def on_connection(self, conn: NamedConnection) -> None:
        rec = conn.record
        if not has_span(rec):
            self.skipped += 1
            return
        assert rec.client_isn is not None  # has_span
        # the ids as span_ids derives them, each hashed only when a span here needs it
        base = _id_base(rec.client_isn, rec.server_isn)
        trace_id = _h(_BLAKE16, base)
        if not sampled(trace_id, self._ratio):
            if self._on_sampled_out is not None:
                self._on_sampled_out()
            return
        client_end, server_end = span_ends(rec, conn.client, conn.server)
        port = rec.server.port
        client_id = 0
        if client_end:
            client_id = _h(_BLAKE8, base + b"client")
            end = self._end(SpanKind.CLIENT, conn.client, conn.server, port)
            self._emit(rec, end, SpanContext(trace_id, client_id, False, _SAMPLED), None)
        if server_end:
            end = self._end(SpanKind.SERVER, conn.server, conn.client, port)
            context = SpanContext(trace_id, _h(_BLAKE8, base + b"server"), False, _SAMPLED)
            parent = None
            if end.parent:
                client_id = client_id or _h(_BLAKE8, base + b"client")
                parent = SpanContext(trace_id, client_id, True, _SAMPLED)
            self._emit(rec, end, context, parent)

    def _end(self, kind: SpanKind, local: Identity, peer: Identity, port: int) -> _End:
        key = (kind is SpanKind.SERVER, local, peer, port)  # a bool: an Enum hashes in Python
        end = self._ends.get(key)
        if end is None:
            if kind is SpanKind.CLIENT:
                peer_has_span, server = sends_spans(peer), peer
            else:
                peer_has_span, server = is_watched_pod(peer), local
            attrs = {n.SPAN_PEER_WORKLOAD: peer.workload_name, n.SPAN_PEER_KIND: peer.kind.value}
            if not peer_has_span:
                attrs[n.PEER_SERVICE] = peer.workload_name
            if kind is SpanKind.CLIENT and peer.service is not None:
                attrs[n.SERVER_SERVICE] = peer.service  # the server is the backend behind this Service
            # A client that sends no span of its own (external, node, hostNetwork) leaves the server
            # span as the root: a parent id that never arrives would show as a broken trace.
            parent = kind is SpanKind.SERVER and peer_has_span
            end = _End(kind, span_name(kind, server, port), self._resources.get(local), attrs, parent)
            if len(self._ends) >= _ENDS:
                self._ends.clear()
            self._ends[key] = end
        return end

    def _emit(
        self, rec: ConnectionRecord, end: _End, context: SpanContext, parent: SpanContext | None
    ) -> None:
        assert rec.start_time is not None  # checked by the caller
        finish = rec.end_time if rec.end_time is not None else rec.start_time + (rec.duration_s or 0.0)
        attrs: dict[str, str | int | float | bool] = {
            n.CLIENT_ADDRESS: rec.client.address,
            n.CLIENT_PORT: rec.client.port,
            n.SERVER_ADDRESS: rec.server.address,
            n.SERVER_PORT: rec.server.port,
            n.NETWORK_TRANSPORT: "tcp",
            n.NETWORK_TYPE: rec.network_type,
            n.SPAN_OUTCOME: _OUTCOME_TEXT[rec.outcome],
            **end.attrs,
        }
        if rec.close_initiator is not None:
            attrs[n.SPAN_CLOSE_INITIATOR] = rec.close_initiator.value
        if rec.bytes_client_to_server is not None:
            attrs[n.SPAN_BYTES_C2S] = rec.bytes_client_to_server
        if rec.bytes_server_to_client is not None:
            attrs[n.SPAN_BYTES_S2C] = rec.bytes_server_to_client
        if rec.handshake_rtt_s is not None:
            attrs[n.SPAN_HANDSHAKE_RTT] = rec.handshake_rtt_s
        if rec.rtt_s is not None:
            attrs[n.SPAN_RTT] = rec.rtt_s
        if rec.min_rtt_s is not None:
            attrs[n.SPAN_MIN_RTT] = rec.min_rtt_s
        if rec.retransmits is not None:
            attrs[n.SPAN_RETRANSMITS] = rec.retransmits
        if rec.client_guessed:
            attrs[n.SPAN_CLIENT_GUESSED] = True
        if rec.tls is not None:
            attrs.update(tls_attributes(rec.tls))
        span = ReadableSpan(
            name=end.name,
            context=context,
            parent=parent,
            resource=end.resource,
            attributes=attrs,
            kind=end.kind,
            status=_ERRORS.get(rec.outcome, _UNSET),
            start_time=round(rec.start_time * 1e6) * 1000,
            end_time=round(finish * 1e6) * 1000,
            instrumentation_scope=self._scope,
        )
        self._consumer.on_end(span)
        self.emitted += 1
