"""The views' memory: recent named connections, bounded by age and by count.

`ConnectionStore` is a Sink (fed from the capture threads).  It keeps only the connections this
agent counts (`telemetry.metrics.counts_here`, the metrics' exactly-once rule), so summing the
stores of every agent counts each connection once, cluster-wide.

Bounds: entries older than `window_s` are evicted (by arrival time), and past `max_connections`
the oldest goes; the open-connection counters are capped at `max_edges` edges.  Every eviction is
counted by reason.  k8spacket kept everything and its users were OOM-killed; this cannot grow.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec

from podwire.config import Settings
from podwire.model import (
    UNKNOWN_EXTERNAL,
    ConnectionOpened,
    Endpoint,
    Identity,
    IdentityKind,
    NamedConnection,
    Side,
)
from podwire.telemetry.metrics import counts_here


# Node and Stored are built per connection: frozen Structs (~0.1 us each, where a frozen dataclass
# took ~1.6 us), untracked by the collector (they hold strings and frozen values, never a cycle).
class Node(msgspec.Struct, frozen=True, gc=False):
    """A node of the graph: a workload (pods), a Service, a node, or an external peer."""

    id: str
    name: str  # the workload's (or service's, node's, peer's) name
    namespace: str  # "" when it has none
    kind: str  # Deployment, StatefulSet, ..., service, node, external


def node_of(identity: Identity, endpoint: Endpoint) -> Node:
    if identity.kind is IdentityKind.POD:
        kind = identity.workload_kind or "Pod"
        name = identity.workload_name
        return Node(f"{identity.namespace}/{name}", name, identity.namespace or "", kind)
    if identity.kind is IdentityKind.SERVICE:
        ns = identity.namespace or ""
        return Node(f"svc:{ns}/{identity.name}", identity.name, ns, "service")
    if identity.kind is IdentityKind.EXTERNAL and identity.name == UNKNOWN_EXTERNAL.name:
        return Node(f"ip:{endpoint.address}", endpoint.address, "", "external")
    return Node(f"{identity.kind}:{identity.name}", identity.name, "", str(identity.kind))


class Stored(msgspec.Struct, frozen=True, gc=False):
    """One connection in the store; `id` is unique for this agent's lifetime."""

    id: int
    received: float  # unix seconds when the store got it (ages are measured from this)
    source: Node
    target: Node
    conn: NamedConnection

    @property
    def last_seen(self) -> float:
        r = self.conn.record
        return r.end_time if r.end_time is not None else self.received


@dataclass(slots=True)
class StoreStats:
    stored: int = 0
    evicted_age: int = 0
    evicted_size: int = 0
    edges_evicted: int = 0  # open-connection counters dropped at max_edges


@dataclass(frozen=True, slots=True)
class StoreLimits:
    window_s: float = 900.0
    max_connections: int = 20_000
    max_edges: int = 5_000

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreLimits:
        return cls(
            window_s=settings.views_window_s,
            max_connections=settings.views_max_connections,
            max_edges=settings.views_max_edges,
        )


EdgeKey = tuple[str, str]


class ConnectionStore:
    """Recent connections this agent counts, plus how many are open per edge right now."""

    def __init__(
        self,
        limits: StoreLimits | None = None,
        clock: Callable[[], float] = time.time,
        counts: Callable[[Side | None, Identity], bool] = counts_here,
    ) -> None:
        self.limits = limits or StoreLimits()
        self.stats = StoreStats()
        self._clock = clock
        self._counts = counts
        self._lock = threading.Lock()
        self._entries: deque[Stored] = deque()
        self._by_id: dict[int, Stored] = {}
        # edge -> (source, target, connections open now); least recently touched first
        self._open: OrderedDict[EdgeKey, tuple[Node, Node, int]] = OrderedDict()
        self._ids = itertools.count(1)
        # node_of per identity, built once (every connection looks up both ends twice); as many as
        # the open counters can name, then it starts over
        self._nodes: dict[Identity | str, Node] = {}
        self._max_nodes = 2 * self.limits.max_edges
        self.instance = secrets.token_hex(4)  # makes ids unique across agents (the TLS API's ids)
        self.started = clock()

    # --- Sink ----------------------------------------------------------------------------------

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        if not self._counts(event.observed_side, client):
            return
        source, target = self._node(client, event.client), self._node(server, event.server)
        with self._lock:
            self._bump(source, target, +1)

    def on_connection(self, conn: NamedConnection) -> None:
        r = conn.record
        if not self._counts(r.observed_side, conn.client):
            return
        source, target = self._node(conn.client, r.client), self._node(conn.server, r.server)
        now = self._clock()
        with self._lock:
            if r.server_isn is not None and not r.started_before_capture:
                self._bump(source, target, -1)  # it was counted open at its SYN-ACK
            entry = Stored(next(self._ids), now, source, target, conn)
            self._entries.append(entry)
            self._by_id[entry.id] = entry
            self.stats.stored += 1
            self._evict(now)

    def _node(self, identity: Identity, endpoint: Endpoint) -> Node:
        # the unnamed external peer is drawn per address (node_of): cache it by address
        unnamed = identity.kind is IdentityKind.EXTERNAL and identity.name == UNKNOWN_EXTERNAL.name
        key: Identity | str = endpoint.address if unnamed else identity
        node = self._nodes.get(key)
        if node is None:
            if len(self._nodes) >= self._max_nodes:
                self._nodes.clear()
            node = self._nodes[key] = node_of(identity, endpoint)
        return node

    # --- bounds --------------------------------------------------------------------------------

    def _bump(self, source: Node, target: Node, delta: int) -> None:
        key = (source.id, target.id)
        old = self._open.pop(key, None)
        count = max(0, (old[2] if old else 0) + delta)
        if count == 0 and delta < 0:
            return  # nothing open: no need to keep the counter
        if old is None and len(self._open) >= self.limits.max_edges:
            self._open.popitem(last=False)
            self.stats.edges_evicted += 1
        self._open[key] = (source, target, count)

    def _evict(self, now: float) -> None:
        horizon = now - self.limits.window_s
        entries = self._entries
        while entries and entries[0].received < horizon:
            del self._by_id[entries.popleft().id]
            self.stats.evicted_age += 1
        while len(entries) > self.limits.max_connections:
            del self._by_id[entries.popleft().id]
            self.stats.evicted_size += 1

    # --- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def snapshot(self) -> tuple[list[Stored], list[tuple[Node, Node, int]]]:
        """The stored connections (oldest first) and the open counters, after age eviction."""
        with self._lock:
            self._evict(self._clock())
            return list(self._entries), [v for v in self._open.values() if v[2] > 0]

    def get(self, entry_id: int) -> Stored | None:
        with self._lock:
            return self._by_id.get(entry_id)

    def __iter__(self) -> Iterator[Stored]:
        return iter(self.snapshot()[0])

    def now(self) -> float:
        return self._clock()
