"""k8spacket-compatible Node Graph API: edge items, filters, and Grafana Node Graph frames.

Paths, parameters and JSON as in k8spacket v2 (internal/modules/nodegraph: http/handler.go,
repository/db_repository.go, model, fields.json): `/nodegraph/connections` lists one item per
edge (`src`, `srcName`, `srcNamespace`, `dst`, `dstName`, `dstNamespace`, `connCount`,
`connPersistent`, `bytesSent`, `bytesReceived`, `duration`, `maxDuration`, `lastSeen`);
`/nodegraph/api/graph/fields?stats-type=` and `/nodegraph/api/graph/data` speak the Grafana Node
Graph API data source's contract (`edges_fields`/`nodes_fields`; `nodes`/`edges`).  Filters:
`namespace` (regex on either end's namespace), `include`/`exclude` (regex on either end's id or
name), `from`/`to` (epoch ms, on the connection's last-seen time); regexes search, like Go's.

Differences, on purpose: nodes are workloads, not IPs; `duration` and `maxDuration` are seconds
(k8spacket stored milliseconds) and rates are bytes per second of the queried span (k8spacket
divided bytes by summed milliseconds).  Extra item fields: `established`, `closed`, `failed`,
`refused`, `timeout`, `reset`, `open`, `durationCount`, `ports`, `srcKind`, `dstKind`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podwire.model import Outcome
from podwire.views.store import Node, Stored

STATS_TYPES = ("connection", "bytes", "duration")
FAILED = (Outcome.REFUSED, Outcome.TIMEOUT, Outcome.RESET)


class QueryError(ValueError):
    """A bad query parameter: answered with 400 and this message."""


@dataclass(frozen=True, slots=True)
class Filter:
    namespace: re.Pattern[str] | None = None
    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None
    start: float | None = None  # unix seconds
    end: float | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, Sequence[str]]) -> Filter:
        def regex(key: str) -> re.Pattern[str] | None:
            text = _first(query, key)
            if not text:
                return None
            if len(text) > 1000:
                raise QueryError(f"{key}: regex longer than 1000 characters")
            try:
                return re.compile(text)
            except re.error as exc:
                raise QueryError(f"{key}: bad regex: {exc}") from None

        def millis(key: str) -> float | None:
            text = _first(query, key)
            if not text:
                return None
            try:
                value = int(text)
            except ValueError:
                raise QueryError(f"{key}: expected epoch milliseconds, got {text[:40]!r}") from None
            if not 0 <= value < 10**14:
                raise QueryError(f"{key}: out of range")
            return value / 1000.0

        return cls(regex("namespace"), regex("include"), regex("exclude"), millis("from"), millis("to"))

    def query_string(self) -> dict[str, str]:
        """The same filter, for a peer's /nodegraph/connections."""
        out: dict[str, str] = {}
        for key, pattern in (
            ("namespace", self.namespace),
            ("include", self.include),
            ("exclude", self.exclude),
        ):
            if pattern is not None:
                out[key] = pattern.pattern
        if self.start is not None:
            out["from"] = str(round(self.start * 1000))
        if self.end is not None:
            out["to"] = str(round(self.end * 1000))
        return out

    def nodes_pass(self, source: Node, target: Node) -> bool:
        if self.namespace is not None and not (
            self.namespace.search(source.namespace) or self.namespace.search(target.namespace)
        ):
            return False
        names = (source.id, source.name, target.id, target.name)
        if self.include is not None and not any(self.include.search(n) for n in names):
            return False
        return not (self.exclude is not None and any(self.exclude.search(n) for n in names))

    def time_passes(self, t: float) -> bool:
        return (self.start is None or t >= self.start) and (self.end is None or t <= self.end)

    def span_s(self, now: float, window_s: float, started: float) -> float:
        """Seconds the rates are taken over: the queried span, else what the store can hold."""
        end = min(self.end, now) if self.end is not None else now
        start = self.start if self.start is not None else max(now - window_s, started)
        return max(end - start, 1e-3)


def _first(query: Mapping[str, Sequence[str]], key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


@dataclass(slots=True)
class EdgeItem:
    """One edge's sums; summing two items of the same edge is the merge (fan-out)."""

    source: Node
    target: Node
    established: int = 0
    closed: int = 0
    refused: int = 0
    timeout: int = 0
    reset: int = 0
    open: int = 0
    bytes_sent: int = 0  # client -> server
    bytes_received: int = 0
    duration_sum: float = 0.0
    duration_count: int = 0
    duration_max: float = 0.0
    last_seen: float = 0.0
    ports: tuple[int, ...] = ()

    @property
    def failed(self) -> int:
        return self.refused + self.timeout + self.reset

    @property
    def ended(self) -> int:
        return self.closed + self.failed

    @property
    def key(self) -> tuple[str, str]:
        return (self.source.id, self.target.id)

    def add(self, other: EdgeItem) -> None:
        self.established += other.established
        self.closed += other.closed
        self.refused += other.refused
        self.timeout += other.timeout
        self.reset += other.reset
        self.open += other.open
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.duration_sum += other.duration_sum
        self.duration_count += other.duration_count
        self.duration_max = max(self.duration_max, other.duration_max)
        self.last_seen = max(self.last_seen, other.last_seen)
        self.ports = tuple(sorted(set(self.ports) | set(other.ports)))[:32]

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.source.id,
            "srcName": self.source.name,
            "srcNamespace": self.source.namespace,
            "srcKind": self.source.kind,
            "dst": self.target.id,
            "dstName": self.target.name,
            "dstNamespace": self.target.namespace,
            "dstKind": self.target.kind,
            "connCount": self.ended,
            "connPersistent": self.open,
            "bytesSent": self.bytes_sent,
            "bytesReceived": self.bytes_received,
            "duration": round(self.duration_sum, 6),
            "maxDuration": round(self.duration_max, 6),
            "durationCount": self.duration_count,
            "lastSeen": rfc3339_ms(self.last_seen),
            "established": self.established,
            "closed": self.closed,
            "failed": self.failed,
            "refused": self.refused,
            "timeout": self.timeout,
            "reset": self.reset,
            "open": self.open,
            "ports": list(self.ports),
        }

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> EdgeItem:
        """A peer's item (podwire's own format; k8spacket's fields are a subset)."""
        source = Node(
            str(item["src"]), str(item["srcName"]), str(item["srcNamespace"]), str(item.get("srcKind", ""))
        )
        target = Node(
            str(item["dst"]), str(item["dstName"]), str(item["dstNamespace"]), str(item.get("dstKind", ""))
        )
        return cls(
            source,
            target,
            established=int(item.get("established", 0)),
            closed=int(item.get("closed", 0)),
            refused=int(item.get("refused", 0)),
            timeout=int(item.get("timeout", 0)),
            reset=int(item.get("reset", 0)),
            open=int(item.get("open", 0)),
            bytes_sent=int(item.get("bytesSent", 0)),
            bytes_received=int(item.get("bytesReceived", 0)),
            duration_sum=float(item.get("duration", 0.0)),
            duration_count=int(item.get("durationCount", 0)),
            duration_max=float(item.get("maxDuration", 0.0)),
            last_seen=_parse_rfc3339(str(item.get("lastSeen", ""))),
            ports=tuple(int(p) for p in item.get("ports", ()))[:32],
        )


def rfc3339_ms(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_rfc3339(text: str) -> float:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def edge_items(
    entries: Iterable[Stored], open_now: Iterable[tuple[Node, Node, int]], flt: Filter
) -> list[EdgeItem]:
    """Aggregate stored connections (and the open counters) into one item per edge."""
    items: dict[tuple[str, str], EdgeItem] = {}
    for e in entries:
        if not flt.time_passes(e.last_seen) or not flt.nodes_pass(e.source, e.target):
            continue
        key = (e.source.id, e.target.id)
        item = items.get(key)
        if item is None:
            item = items[key] = EdgeItem(e.source, e.target)
        r = e.conn.record
        outcome = r.outcome
        if outcome is Outcome.CLOSED:
            item.closed += 1
        elif outcome is Outcome.REFUSED:
            item.refused += 1
        elif outcome is Outcome.TIMEOUT:
            item.timeout += 1
        elif outcome is Outcome.RESET:
            item.reset += 1
        if outcome in (Outcome.CLOSED, Outcome.RESET, Outcome.OPEN):
            item.established += 1
        item.bytes_sent += r.bytes_client_to_server or 0
        item.bytes_received += r.bytes_server_to_client or 0
        if r.duration_s is not None and outcome in (Outcome.CLOSED, Outcome.RESET):  # established ones
            item.duration_sum += r.duration_s
            item.duration_count += 1
            item.duration_max = max(item.duration_max, r.duration_s)
        item.last_seen = max(item.last_seen, e.last_seen)
        if r.server.port not in item.ports and len(item.ports) < 32:
            item.ports = tuple(sorted((*item.ports, r.server.port)))
    for source, target, count in open_now:
        if not flt.nodes_pass(source, target):
            continue
        key = (source.id, target.id)
        item = items.get(key)
        if item is None:
            item = items[key] = EdgeItem(source, target)
        item.open += count
        item.established += count  # open now: its handshake completed
    return sorted(items.values(), key=lambda i: i.key)


def merge(groups: Iterable[Iterable[EdgeItem]]) -> list[EdgeItem]:
    """Sum the items of several agents by edge (each agent counted its connections once)."""
    out: dict[tuple[str, str], EdgeItem] = {}
    for group in groups:
        for item in group:
            have = out.get(item.key)
            if have is None:
                out[item.key] = EdgeItem(item.source, item.target)
                out[item.key].add(item)
            else:
                have.add(item)
    return sorted(out.values(), key=lambda i: i.key)


# --- Grafana Node Graph frames -----------------------------------------------------------------

_ARCS = (("arc__closed", "Closed", "green"), ("arc__failed", "Failed", "red"), ("arc__open", "Open", "blue"))
_MODE_TITLES = {
    "connection": ("Established", "Failed"),
    "bytes": ("Sent (B/s)", "Received (B/s)"),
    "duration": ("Average duration (s)", "Max duration (s)"),
}
_EDGE_DETAILS = (
    ("detail__connections_per_s", "Connections per second"),
    ("detail__established", "Established"),
    ("detail__closed", "Closed"),
    ("detail__failed", "Failed"),
    ("detail__failure_ratio", "Failure ratio"),
    ("detail__open", "Open now"),
    ("detail__bytes_sent", "Bytes sent (client to server)"),
    ("detail__bytes_received", "Bytes received (server to client)"),
    ("detail__bytes_sent_per_s", "Sent (B/s)"),
    ("detail__bytes_received_per_s", "Received (B/s)"),
    ("detail__duration_avg_s", "Average duration (s)"),
    ("detail__duration_max_s", "Max duration (s)"),
)
_NODE_DETAILS = (
    ("detail__namespace", "Namespace", "string"),
    ("detail__kind", "Kind", "string"),
    ("detail__established", "Established", "number"),
    ("detail__failed", "Failed", "number"),
    ("detail__bytes_in_per_s", "Received (B/s)", "number"),
    ("detail__bytes_out_per_s", "Sent (B/s)", "number"),
)


def stats_type(query: Mapping[str, Sequence[str]]) -> str:
    value = _first(query, "stats-type") or "connection"
    if value not in STATS_TYPES:
        raise QueryError(f"stats-type: expected one of {', '.join(STATS_TYPES)}")
    return value


def fields(mode: str) -> dict[str, Any]:
    main, secondary = _MODE_TITLES[mode]
    return {
        "edges_fields": [
            {"field_name": "id", "type": "string"},
            {"field_name": "source", "type": "string"},
            {"field_name": "target", "type": "string"},
            {"field_name": "mainStat", "type": "string", "displayName": main},
            {"field_name": "secondaryStat", "type": "string", "displayName": secondary},
            *({"field_name": f, "type": "number", "displayName": d} for f, d in _EDGE_DETAILS),
        ],
        "nodes_fields": [
            {"field_name": "id", "type": "string"},
            {"field_name": "title", "type": "string"},
            {"field_name": "subTitle", "type": "string"},
            {"field_name": "mainStat", "type": "string", "displayName": main},
            {"field_name": "secondaryStat", "type": "string", "displayName": secondary},
            *({"field_name": f, "type": "number", "color": c, "displayName": d} for f, d, c in _ARCS),
            *({"field_name": f, "type": t, "displayName": d} for f, d, t in _NODE_DETAILS),
        ],
    }


def rate(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


@dataclass(slots=True)
class _NodeSums:
    node: Node
    established: int = 0
    closed: int = 0
    failed: int = 0
    open: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration_sum: float = 0.0
    duration_count: int = 0
    duration_max: float = 0.0


def graph(items: Sequence[EdgeItem], mode: str, span_s: float) -> dict[str, Any]:
    """`{"nodes": [...], "edges": [...]}` for one stats mode; rates over `span_s` seconds."""
    nodes: dict[str, _NodeSums] = {}

    def sums(node: Node) -> _NodeSums:
        s = nodes.get(node.id)
        if s is None:
            s = nodes[node.id] = _NodeSums(node)
        return s

    edges = []
    for item in items:
        src, dst = sums(item.source), sums(item.target)
        for s in (src, dst):
            s.established += item.established
            s.closed += item.closed
            s.failed += item.failed
            s.open += item.open
        src.bytes_out += item.bytes_sent
        src.bytes_in += item.bytes_received
        dst.bytes_in += item.bytes_sent
        dst.bytes_out += item.bytes_received
        dst.duration_sum += item.duration_sum  # a server's durations are those of its connections
        dst.duration_count += item.duration_count
        dst.duration_max = max(dst.duration_max, item.duration_max)
        edges.append(_edge(item, mode, span_s))
    return {"nodes": [_node(s, mode, span_s) for s in nodes.values()], "edges": edges}


def _edge(item: EdgeItem, mode: str, span_s: float) -> dict[str, Any]:
    avg = item.duration_sum / item.duration_count if item.duration_count else 0.0
    sent, received = item.bytes_sent / span_s, item.bytes_received / span_s
    ratio = item.failed / item.ended if item.ended else 0.0
    if mode == "connection":
        main = f"established: {item.established}"
        secondary = f"failed: {item.failed} ({ratio:.0%})"
    elif mode == "bytes":
        main, secondary = f"sent: {rate(sent, 'B/s')}", f"received: {rate(received, 'B/s')}"
    else:
        main = f"avg: {seconds(avg)}" if item.duration_count else "avg: n/a"
        secondary = f"max: {seconds(item.duration_max)}" if item.duration_count else "max: n/a"
    return {
        "id": f"{item.source.id}->{item.target.id}",
        "source": item.source.id,
        "target": item.target.id,
        "mainStat": main,
        "secondaryStat": secondary,
        "detail__connections_per_s": round((item.ended + item.open) / span_s, 6),
        "detail__established": item.established,
        "detail__closed": item.closed,
        "detail__failed": item.failed,
        "detail__failure_ratio": round(ratio, 6),
        "detail__open": item.open,
        "detail__bytes_sent": item.bytes_sent,
        "detail__bytes_received": item.bytes_received,
        "detail__bytes_sent_per_s": round(sent, 6),
        "detail__bytes_received_per_s": round(received, 6),
        "detail__duration_avg_s": round(avg, 6),
        "detail__duration_max_s": round(item.duration_max, 6),
    }


def _node(s: _NodeSums, mode: str, span_s: float) -> dict[str, Any]:
    n = s.node
    if mode == "connection":
        main, secondary = f"established: {s.established}", f"failed: {s.failed}"
    elif mode == "bytes":
        main = f"sent: {rate(s.bytes_out / span_s, 'B/s')}"
        secondary = f"received: {rate(s.bytes_in / span_s, 'B/s')}"
    elif s.duration_count:
        main, secondary = (
            f"avg: {seconds(s.duration_sum / s.duration_count)}",
            f"max: {seconds(s.duration_max)}",
        )
    else:
        main, secondary = "avg: n/a", "max: n/a"
    total = s.closed + s.failed + s.open
    return {
        "id": n.id,
        "title": n.name,
        "subTitle": f"{n.namespace} {n.kind}".strip(),
        "mainStat": main,
        "secondaryStat": secondary,
        "arc__closed": round(s.closed / total, 6) if total else 0.0,
        "arc__failed": round(s.failed / total, 6) if total else 0.0,
        "arc__open": round(s.open / total, 6) if total else 0.0,
        "detail__namespace": n.namespace,
        "detail__kind": n.kind,
        "detail__established": s.established,
        "detail__failed": s.failed,
        "detail__bytes_in_per_s": round(s.bytes_in / span_s, 6),
        "detail__bytes_out_per_s": round(s.bytes_out / span_s, 6),
    }
