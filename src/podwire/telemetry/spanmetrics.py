"""Tempo's span-metrics series, counted exactly in the agent: what Grafana's Service Graph table reads.

Grafana's Tempo data source (public/app/plugins/datasource/tempo/datasource.ts and
graphTransform.ts in grafana/grafana) fills the table under the service map with
    topk(5, sum(rate(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER"}[$__range]))
            by (span_name))                                                          (rate)
    topk(5, sum(rate(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR",
            span_name=~"<the rate's names>"}[$__range])) by (span_name))             (error rate)
    histogram_quantile(.9, sum(rate(traces_spanmetrics_latency_bucket{span_name=~"<one name>"}
            [$__range])) by (le))                                                    (p90, per name)
so podwire writes the two series Tempo's span-metrics processor would write from podwire's own
spans, with its labels service, span_name, span_kind, status_code:
- one call per span this agent sends (`spans.span_ends`, before sampling: the counts are exact
  even when spans are sampled; also when no OTLP endpoint takes spans), so cluster-wide each span
  is counted once, by the agent that sends it;
- service = the span's service.name (the local workload), span_name = spans.span_name;
- status_code STATUS_CODE_ERROR for refused, timeout and reset, else STATUS_CODE_UNSET;
- latency = the span's duration, in the same buckets as the service-graph histograms.
Series are bounded by max_series; past it, calls fold into one `overflow` series (counted in
podwire_agent_series_dropped_total like the edges).  Do not also enable Tempo's span-metrics
generator on podwire's spans: it writes these names too, so every call would be counted twice (the
collector connector in otel/gateway.yaml writes traces_span_metrics_*, other names).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum
from opentelemetry.trace import SpanKind

from podwire.config import Settings
from podwire.model import ConnectionOpened, Identity, NamedConnection, Outcome
from podwire.telemetry import names as n
from podwire.telemetry.metrics import _CHUNK, _CUMULATIVE, LabelConfig, _Hist, _hist_point
from podwire.telemetry.spans import has_span, span_ends, span_name

_FAILED = frozenset((Outcome.REFUSED, Outcome.TIMEOUT, Outcome.RESET))
_SeriesKey = tuple[str, str, str, str]


class _Series:
    __slots__ = ("attrs", "calls", "latency", "start_ns")

    def __init__(self, attrs: dict[str, str | int], start_ns: int, buckets: tuple[float, ...]) -> None:
        self.attrs = attrs
        self.start_ns = start_ns
        self.calls = 0
        self.latency = _Hist(buckets)


class SpanMetricsSink:
    """`podwire.model.Sink` counting span-metrics series; `produce()` hands them to MetricsProducer."""

    def __init__(
        self,
        max_series: int = 20_000,
        buckets: tuple[float, ...] = n.DURATION_BUCKETS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._max_series = max_series
        self._buckets = buckets
        self._clock_ns = clock_ns
        self._series: dict[_SeriesKey, _Series] = {}
        # (client, server, server port, observed side, failed) -> the series its ends count into
        self._by_ends: dict[tuple[object, ...], tuple[_Series, ...]] = {}
        self._lock = threading.Lock()
        self.series_dropped = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SpanMetricsSink:
        cfg = LabelConfig.from_settings(settings)
        return cls(cfg.max_series, cfg.duration_buckets)

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        return  # a span, and so a call, exists at the close

    def on_connection(self, conn: NamedConnection) -> None:
        rec = conn.record
        if not has_span(rec):
            return
        failed = rec.outcome in _FAILED
        # the series a connection counts into depend only on these: looked up, not rebuilt, per connection
        ends = (conn.client, conn.server, rec.server.port, rec.observed_side, failed)
        seconds = rec.duration_s if rec.duration_s is not None else 0.0
        with self._lock:
            found = self._by_ends.get(ends)
            if found is None:
                found = self._find(conn, failed)
            for series in found:
                series.calls += 1
                series.latency.record(seconds)

    def _find(self, conn: NamedConnection, failed: bool) -> tuple[_Series, ...]:
        """The series of a connection's ends (none, one or both); cached unless one is past the bound."""
        rec = conn.record
        client_end, server_end = span_ends(rec, conn.client, conn.server)
        status = n.SM_STATUS_ERROR if failed else n.SM_STATUS_UNSET
        port = rec.server.port
        found: list[_Series] = []
        cache = True
        if client_end:
            name = span_name(SpanKind.CLIENT, conn.server, port)
            series, kept = self._series_for(conn.client.workload_name, name, n.SM_KIND_CLIENT, status)
            found.append(series)
            cache = cache and kept
        if server_end:
            name = span_name(SpanKind.SERVER, conn.server, port)
            series, kept = self._series_for(conn.server.workload_name, name, n.SM_KIND_SERVER, status)
            found.append(series)
            cache = cache and kept
        out = tuple(found)
        if cache:  # past the bound, every call is counted as dropped: never cached
            if len(self._by_ends) >= self._max_series:
                self._by_ends.clear()
            self._by_ends[(conn.client, conn.server, port, rec.observed_side, failed)] = out
        return out

    def _series_for(self, service: str, name: str, kind_label: str, status: str) -> tuple[_Series, bool]:
        """The series of a label set, made if new; False when it folded into overflow."""
        key = (service, name, kind_label, status)
        series = self._series.get(key)
        if series is not None:
            return series, True
        if len(self._series) < self._max_series:
            series = self._series[key] = self._make(key)
            return series, True
        self.series_dropped += 1
        key = (n.OVERFLOW, n.OVERFLOW, kind_label, status)
        series = self._series.get(key)
        if series is None:
            # the overflow series may pass the cap by the 4 (kind, status) pairs: still bounded
            series = self._series[key] = self._make(key)
        return series, False

    def _make(self, key: _SeriesKey) -> _Series:
        attrs: dict[str, str | int] = {
            n.SM_SERVICE: key[0],
            n.SM_SPAN_NAME: key[1],
            n.SM_SPAN_KIND: key[2],
            n.SM_STATUS_CODE: key[3],
        }
        return _Series(attrs, self._clock_ns(), self._buckets)

    @property
    def series(self) -> int:
        return len(self._series)

    def produce(self) -> list[Metric]:
        """Cumulative points for every series (collection thread)."""
        now = self._clock_ns()
        with self._lock:
            live = list(self._series.values())
        copies: list[tuple[dict[str, str | int], int, int, _Hist]] = []
        for i in range(0, len(live), _CHUNK):  # short lock holds: the capture thread barely waits
            with self._lock:
                copies.extend((s.attrs, s.start_ns, s.calls, s.latency.copy()) for s in live[i : i + _CHUNK])
        if not copies:
            return []
        calls = [NumberDataPoint(a, t0, now, c) for a, t0, c, _ in copies]
        latency: list[HistogramDataPoint] = [_hist_point(h, a, t0, now) for a, t0, _, h in copies]
        return [
            Metric(
                n.SM_CALLS,
                "Span metrics: spans (connection ends)",
                n.UNIT_CALLS,
                Sum(calls, _CUMULATIVE, True),
            ),
            Metric(
                n.SM_LATENCY,
                "Span metrics: span duration in seconds",
                n.UNIT_NONE,
                Histogram(latency, _CUMULATIVE),
            ),
        ]
