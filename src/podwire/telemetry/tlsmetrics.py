"""TLS metrics from the `tls` of connection records: handshakes, deprecated versions, certificate expiry.

Aggregated here like the edge metrics (plain ints per label set, points built at collection) and
counted once cluster-wide by the same rule (`counts_here`).  Bounded: at most `max_series` label
sets per instrument; past that, handshakes fold into one series whose labels are all `overflow`,
and certificates past the bound are not tracked (both counted in `dropped`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum

from podwire.model import ConnectionOpened, Identity, NamedConnection
from podwire.telemetry import names as n
from podwire.telemetry.metrics import counts_here

_CUMULATIVE = AggregationTemporality.CUMULATIVE
_Key = tuple[str, ...]
_HANDSHAKE_LABELS = (
    n.CLIENT_WORKLOAD,
    n.CLIENT_NAMESPACE,
    n.SERVER_WORKLOAD,
    n.SERVER_NAMESPACE,
    n.TLS_ATTR_SERVER_NAME,
    n.TLS_ATTR_VERSION,
    n.TLS_ATTR_CIPHER,
)
_DEPRECATED_LABELS = (
    n.CLIENT_WORKLOAD,
    n.CLIENT_NAMESPACE,
    n.SERVER_WORKLOAD,
    n.SERVER_NAMESPACE,
    n.TLS_ATTR_VERSION,
)
_CERT_LABELS = (n.SERVER_WORKLOAD, n.SERVER_NAMESPACE, n.TLS_ATTR_SERVER_NAME)


class TlsMetricsSink:
    """`podwire.model.Sink` for the TLS instruments (capture thread in, collection thread out)."""

    def __init__(self, max_series: int = 20_000, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._max = max_series
        self._clock_ns = clock_ns
        self._start_ns = clock_ns()
        self._handshakes: dict[_Key, int] = {}
        self._deprecated: dict[_Key, int] = {}
        self._not_after: dict[_Key, float] = {}
        self._lock = threading.Lock()
        self.dropped = 0

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        return

    def on_connection(self, conn: NamedConnection) -> None:
        rec = conn.record
        tls = rec.tls
        if tls is None or not counts_here(rec.observed_side, conn.client):
            return
        client, server = conn.client, conn.server
        ends = (client.workload_name, client.namespace or "", server.workload_name, server.namespace or "")
        with self._lock:
            if tls.version is not None:  # a ServerHello was seen: a handshake, not just an offer
                self._count(
                    self._handshakes,
                    (*ends, tls.server_name or n.TLS_NONE, tls.version, tls.cipher or n.TLS_NONE),
                )
                if tls.deprecated:
                    self._count(self._deprecated, (*ends, tls.version))
            if tls.certificate_not_after is not None:
                name = tls.server_name or (tls.certificate_sans[0] if tls.certificate_sans else n.TLS_NONE)
                key = (ends[2], ends[3], name)
                if key in self._not_after or len(self._not_after) < self._max:
                    self._not_after[key] = tls.certificate_not_after
                else:
                    self.dropped += 1

    def _count(self, table: dict[_Key, int], key: _Key) -> None:
        if key not in table and len(table) >= self._max:
            self.dropped += 1
            key = (n.OVERFLOW,) * len(key)
        table[key] = table.get(key, 0) + 1

    def produce(self) -> list[Metric]:
        now, t0 = self._clock_ns(), self._start_ns
        with self._lock:
            handshakes = list(self._handshakes.items())
            deprecated = list(self._deprecated.items())
            not_after = list(self._not_after.items())
        out: list[Metric] = []
        for name, help_, unit, labels, items, gauge in (
            (
                n.TLS_HANDSHAKES,
                "TLS handshakes seen (ServerHello)",
                n.UNIT_CONNECTIONS,
                _HANDSHAKE_LABELS,
                handshakes,
                False,
            ),
            (
                n.TLS_DEPRECATED_HANDSHAKES,
                "TLS handshakes that chose SSL 3.0, TLS 1.0 or TLS 1.1",
                n.UNIT_CONNECTIONS,
                _DEPRECATED_LABELS,
                deprecated,
                False,
            ),
            (
                n.TLS_CERTIFICATE_NOT_AFTER,
                "Leaf certificate notAfter, unix seconds (TLS <= 1.2 handshakes)",
                n.UNIT_SECONDS,
                _CERT_LABELS,
                not_after,
                True,
            ),
        ):
            if items:
                pts = [NumberDataPoint(dict(zip(labels, k, strict=True)), t0, now, v) for k, v in items]
                out.append(Metric(name, help_, unit, Gauge(pts) if gauge else Sum(pts, _CUMULATIVE, True)))
        return out
