"""The OpenTelemetry SDK, set up once: OTLP push (gRPC or HTTP/protobuf) and Prometheus pull.

Configuration: Settings (PODWIRE_*) plus the standard variables
  OTEL_EXPORTER_OTLP_ENDPOINT (and _TRACES_/_METRICS_ variants), OTEL_EXPORTER_OTLP_PROTOCOL
  (grpc | http/protobuf, and per-signal variants), OTEL_EXPORTER_OTLP_HEADERS,
  OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds, as the OTel spec says; the Python SDK alone reads
  seconds, so podwire parses it itself; default 5000 here: short, the collector being down must not
  hold an export thread for long), OTEL_RESOURCE_ATTRIBUTES, OTEL_METRIC_EXPORT_INTERVAL (ms).

Metrics.  One MeterProvider with two readers: a PeriodicExportingMetricReader to OTLP (cumulative
temporality for every instrument) when OTLP is on, and a Prometheus reader serving /metrics.  Both
render the same SDK data, so one set of names serves both.  Name mapping (OTel -> Prometheus, done
by opentelemetry-exporter-prometheus here and by the collector's prometheus exporter downstream):
dots become underscores, the unit is appended when the name lacks it (s -> _seconds,
By -> _bytes, {annotations} -> nothing), counters get _total, histograms _bucket/_sum/_count:
  podwire.tcp.connections {connection}        -> podwire_tcp_connections_total
  podwire.tcp.bytes By                        -> podwire_tcp_bytes_total
  podwire.tcp.connection.duration s           -> podwire_tcp_connection_duration_seconds_bucket
  podwire.tcp.connections.active (up-down)    -> podwire_tcp_connections_active (gauge)
  traces_service_graph_request {request}      -> traces_service_graph_request_total
  traces_service_graph_request_server_seconds -> ..._server_seconds_bucket (already ends in _seconds)
Attribute keys: client.workload -> client_workload, server.port -> server_port, etc.  Scope labels
(otel_scope_*) are switched off on /metrics; resource attributes are in target_info.

Spans.  A BatchSpanProcessor behind a gate that counts: at most Settings.export_queue_size spans
wait; past that, new spans are dropped and counted (podwire.agent.export.dropped{signal=traces,
reason=queue_full}); a failed export counts its spans (reason=export_failed).  The capture thread
only appends to a deque: a collector that is down or slow never blocks it, memory stays bounded by
the queue, and the exporter reconnects on its own when the collector is back.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.re import parse_env_headers
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from podwire import __version__ as _version
from podwire import log
from podwire.config import Settings
from podwire.model import Sink
from podwire.telemetry import names as n
from podwire.telemetry.metrics import (
    AgentSnapshot,
    ExportCounters,
    MetricsProducer,
    MetricsSink,
    PointSource,
    SelfMetrics,
)
from podwire.telemetry.spanmetrics import SpanMetricsSink
from podwire.telemetry.spans import SpanSink
from podwire.telemetry.tlsmetrics import TlsMetricsSink

_log = log.get("podwire.telemetry")

# What /metrics answers with; the listener (views.http) serves `Telemetry.metrics_text()` as this.
METRICS_CONTENT_TYPE: str = CONTENT_TYPE_LATEST

GRPC = "grpc"
HTTP = "http/protobuf"
DEFAULT_TIMEOUT_S = 5.0
# Reconnect quickly when the collector comes back: gRPC's default reconnect backoff grows to 120 s
# and is kept per subchannel in a process-wide pool, so a fresh channel would inherit it.
GRPC_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.use_local_subchannel_pool", 1),
)
_CUMULATIVE: dict[type, AggregationTemporality] = {
    cls: AggregationTemporality.CUMULATIVE
    for cls in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}


class ExportConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """The OTLP side, from the standard OTEL_* variables."""

    enabled: bool
    traces_endpoint: str | None
    metrics_endpoint: str | None
    traces_protocol: str
    metrics_protocol: str
    headers: tuple[tuple[str, str], ...]
    timeout_s: float
    metric_interval_ms: float
    resource_attributes: tuple[tuple[str, str], ...]
    # OTEL_EXPORTER_OTLP_[SIGNAL_]INSECURE, when set; else plain text unless the endpoint is https
    traces_insecure: bool | None = None
    metrics_insecure: bool | None = None
    warnings: tuple[str, ...] = ()  # settings that can run but are probably not what was meant

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str]) -> OtlpConfig:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        enabled = settings.otlp == "on" or (settings.otlp == "auto" and bool(base))
        default_protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", GRPC).strip() or GRPC
        problems: list[str] = []

        def protocol(signal: str) -> str:
            value = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", default_protocol).strip()
            if value not in (GRPC, HTTP):
                problems.append(f"bad OTEL_EXPORTER_OTLP_*PROTOCOL={value!r}: expected grpc or http/protobuf")
            return value

        traces_protocol, metrics_protocol = protocol("TRACES"), protocol("METRICS")

        def endpoint(signal: str, proto: str, path: str) -> str | None:
            specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
            if specific:
                return specific
            root = base or ("http://localhost:4317" if proto == GRPC else "http://localhost:4318")
            if "://" not in root:
                root = "http://" + root
            return root if proto == GRPC else root.rstrip("/") + path

        for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", *(f"OTEL_EXPORTER_OTLP_{s}_ENDPOINT" for s in _SIGNALS)):
            _check_endpoint(key, env.get(key, "").strip(), problems)
        for signal in ("", *(s + "_" for s in _SIGNALS)):
            _check_compression(env, f"OTEL_EXPORTER_OTLP_{signal}COMPRESSION", problems)
            for what in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"):
                _check_pem_file(env, f"OTEL_EXPORTER_OTLP_{signal}{what}", problems)
        insecure = _env_bool(env, "OTEL_EXPORTER_OTLP_INSECURE", problems)
        traces_insecure = _env_bool(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", problems)
        metrics_insecure = _env_bool(env, "OTEL_EXPORTER_OTLP_METRICS_INSECURE", problems)
        warnings: list[str] = []
        if not enabled:
            for key in sorted(env):
                if key.startswith("OTEL_EXPORTER_OTLP_") and key.endswith("_ENDPOINT") and env[key].strip():
                    why = (
                        "PODWIRE_OTLP=off"
                        if settings.otlp == "off"
                        else "OTEL_EXPORTER_OTLP_ENDPOINT is unset"
                    )
                    warnings.append(
                        f"{key} is set but OTLP export is off ({why}; set PODWIRE_OTLP=on to export)"
                    )
        try:
            headers = tuple(
                parse_env_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), liberal=True).items()
            )
        except ValueError as exc:
            problems.append(f"bad OTEL_EXPORTER_OTLP_HEADERS: {exc}")
            headers = ()
        timeout = (
            _env_float(env, "OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_TIMEOUT_S * 1000, MAX_TIMEOUT_MS, problems)
            / 1000
        )
        interval = _env_float(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000.0, MAX_INTERVAL_MS, problems)
        resource = _parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), problems)
        if problems:
            raise ExportConfigError("\n".join(problems))
        return cls(
            enabled,
            endpoint("TRACES", traces_protocol, "/v1/traces") if enabled else None,
            endpoint("METRICS", metrics_protocol, "/v1/metrics") if enabled else None,
            traces_protocol,
            metrics_protocol,
            headers,
            timeout,
            interval,
            resource,
            traces_insecure if traces_insecure is not None else insecure,
            metrics_insecure if metrics_insecure is not None else insecure,
            tuple(warnings),
        )


_SIGNALS = ("TRACES", "METRICS")
MAX_TIMEOUT_MS = 600_000.0
MAX_INTERVAL_MS = 86_400_000.0
COMPRESSIONS = ("gzip", "deflate", "none")
MAX_PEM_BYTES = 1 << 20


def _env_float(env: Mapping[str, str], key: str, default: float, high: float, problems: list[str]) -> float:
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= high:
        problems.append(f"bad {key}={text!r}: must be a number of milliseconds, above 0 and at most {high:g}")
        return default
    return value


def _env_bool(env: Mapping[str, str], key: str, problems: list[str]) -> bool | None:
    text = env.get(key, "").strip().lower()
    if not text:
        return None
    if text in ("true", "false"):
        return text == "true"
    problems.append(f"bad {key}={env[key]!r}: expected true or false")
    return None


def _check_endpoint(key: str, text: str, problems: list[str]) -> None:
    """An OTLP endpoint is http(s)://host[:port][/path]; anything else would retry forever."""
    if not text:
        return
    url = text if "://" in text else "http://" + text
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        problems.append(f"bad {key}={text!r}: not a URL ({exc})")
        return
    if parts.scheme not in ("http", "https"):
        problems.append(f"bad {key}={text!r}: the scheme must be http or https")
    elif not parts.hostname:
        problems.append(f"bad {key}={text!r}: no host")
    elif port == 0:
        problems.append(f"bad {key}={text!r}: port 0")
    elif any(c.isspace() for c in text):
        problems.append(f"bad {key}={text!r}: contains white space")


def _check_compression(env: Mapping[str, str], key: str, problems: list[str]) -> None:
    text = env.get(key, "").strip().lower()
    if text and text not in COMPRESSIONS:
        problems.append(f"bad {key}={env[key]!r}: expected one of {', '.join(COMPRESSIONS)}")


def _check_pem_file(env: Mapping[str, str], key: str, problems: list[str]) -> None:
    """A certificate or key file the exporters will read: there, a regular file, PEM, not huge."""
    path = env.get(key, "").strip()
    if not path:
        return
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                problems.append(f"bad {key}={path!r}: not a regular file")
                return
            head = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        problems.append(f"bad {key}={path!r}: cannot read it: {exc.strerror or exc}")
        return
    if len(head) > MAX_PEM_BYTES:
        problems.append(f"bad {key}={path!r}: larger than {MAX_PEM_BYTES} bytes")
    elif b"-----BEGIN " not in head:
        problems.append(f"bad {key}={path!r}: not a PEM file")


def _parse_resource_attributes(text: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            problems.append(f"bad OTEL_RESOURCE_ATTRIBUTES entry {part!r}: expected key=value")
            continue
        out.append((urllib.parse.unquote(key.strip()), urllib.parse.unquote(value.strip())))
    return tuple(out)


# --- metric plumbing ---------------------------------------------------------------------------


class _MergingExporter(MetricExporter):
    """OTLP metric exporter that adds the pre-aggregated edge points and counts failures."""

    def __init__(self, inner: MetricExporter, producer: MetricsProducer, counters: ExportCounters) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE)
        self._inner = inner
        self._producer = producer
        self._counters = counters

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(
                self._producer.merge_into(metrics_data), timeout_millis=timeout_millis
            )
        except Exception:  # an exporter bug must not kill the reader thread
            _log.exception("metric_export_failed")
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self._counters.fail(n.SIGNAL_METRICS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis)


class _PrometheusReader(PrometheusMetricReader):
    """The SDK's Prometheus reader on a private registry, with the edge points merged in."""

    def __init__(self, producer: MetricsProducer, registry: CollectorRegistry) -> None:
        super().__init__(scope_info_enabled=False, registry=registry)
        self._producer = producer

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(self._producer.merge_into(metrics_data), timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        # A pull reader has nothing to flush.  The base class would collect, and that collection
        # would wait in the exporter's queue until the next scrape, which renders every queued
        # collection: duplicate samples, and a queue that grows while nobody scrapes.
        return True


# --- span plumbing -------------------------------------------------------------------------------


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, counters: ExportCounters) -> None:
        self._inner = inner
        self._counters = counters
        self.taken = 0  # spans the batch worker took out of the queue (written by that thread only)
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self._inner.export(spans)
        except Exception:
            _log.exception("span_export_failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self._counters.fail(n.SIGNAL_TRACES)
            self._counters.drop(n.SIGNAL_TRACES, n.DROP_EXPORT_FAILED, len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedSpanProcessor:
    """BatchSpanProcessor behind a counting gate: never blocks, never holds more than `max_queue`.

    `submitted` is written only by the caller's thread and `taken` only by the batch worker, so
    their difference (the queue length) needs no lock.
    """

    def __init__(self, exporter: SpanExporter, max_queue: int, counters: ExportCounters) -> None:
        self._exporter = _CountingSpanExporter(exporter, counters)
        self._max = max_queue
        self._counters = counters
        self.submitted = 0
        self.dropped = 0
        self._bsp = BatchSpanProcessor(
            self._exporter,
            max_queue_size=max_queue,
            schedule_delay_millis=1000,
            max_export_batch_size=min(512, max_queue),
        )

    @property
    def queued(self) -> int:
        return self.submitted - self._exporter.taken

    @property
    def exported(self) -> int:
        return self._exporter.exported

    def on_end(self, span: ReadableSpan) -> None:
        if self.submitted - self._exporter.taken >= self._max:
            self.dropped += 1
            self._counters.drop(n.SIGNAL_TRACES, n.DROP_QUEUE_FULL, 1)
            return
        self.submitted += 1
        self._bsp.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._bsp.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._bsp.shutdown()  # type: ignore[no-untyped-call]


# --- the whole set-up ----------------------------------------------------------------------------


class Telemetry:
    """Everything telemetry for one agent: sinks for the pipeline, /metrics, OTLP, shutdown.

    `sinks` go into agent.Pipeline; `self_metrics.add_source(fn)` registers a snapshot callback;
    `metrics_text()` renders /metrics (served by views.http); `shutdown(deadline_s)` returns in time.
    """

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.settings = settings
        self.otlp = OtlpConfig.from_env(settings, env)
        self.counters = ExportCounters()
        node = settings.node_name or socket.gethostname()
        env_attrs = dict(self.otlp.resource_attributes)
        sdk_attrs = {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": _sdk_version(),
        }
        # The agent's own resource (metrics): one instance per node, so the series of two agents
        # never collide downstream (job=podwire, instance=<node>).
        self.resource = Resource(
            {
                n.SERVICE_NAME: "podwire",
                "service.version": _version,
                "service.instance.id": node,
                n.K8S_NODE_NAME: node,
                **sdk_attrs,
            }
        ).merge(Resource(env_attrs))
        # Spans: one resource per workload, on top of the user's attributes.
        self.span_resource = Resource({**sdk_attrs}).merge(Resource(env_attrs))
        self.scope = InstrumentationScope(n.METER_NAME, _version)

        self.metrics = MetricsSink.from_settings(settings)
        self.span_metrics = SpanMetricsSink.from_settings(settings)
        self.tls_metrics = TlsMetricsSink(settings.max_series) if settings.tls else None
        sources: list[PointSource] = [self.metrics, self.span_metrics]
        if self.tls_metrics is not None:
            sources.append(self.tls_metrics)
        producer = MetricsProducer(self.scope, sources)
        self.registry = CollectorRegistry(auto_describe=True)
        self._scrape_lock = threading.Lock()
        readers: list[MetricReader] = [_PrometheusReader(producer, self.registry)]
        self._metric_reader: PeriodicExportingMetricReader | None = None
        if self.otlp.enabled:
            inner = self._metric_exporter()
            self._metric_reader = PeriodicExportingMetricReader(
                _MergingExporter(inner, producer, self.counters),
                export_interval_millis=self.otlp.metric_interval_ms,
                export_timeout_millis=self.otlp.timeout_s * 1000,
            )
            readers.append(self._metric_reader)
        self.meter_provider = MeterProvider(
            metric_readers=readers, resource=self.resource, shutdown_on_exit=False
        )
        meter = self.meter_provider.get_meter(n.METER_NAME, _version)
        self.self_metrics = SelfMetrics(meter, self.counters, self.metrics, self.span_metrics)

        self.span_processor: BoundedSpanProcessor | None = None
        self.spans: SpanSink | None = None
        if self.otlp.enabled and settings.spans:
            self.span_processor = BoundedSpanProcessor(
                self._span_exporter(), settings.export_queue_size, self.counters
            )
            self.spans = SpanSink(
                self.span_processor,
                self.span_resource,
                settings.span_sample_ratio,
                settings.node_name,
                self.scope,
            )
        self._shut = False
        for warning in self.otlp.warnings:
            _log.warning("otlp_setting_ignored", problem=warning)
        _log.info(
            "telemetry_ready",
            otlp=self.otlp.enabled,
            traces_endpoint=self.otlp.traces_endpoint,
            metrics_endpoint=self.otlp.metrics_endpoint,
            protocol=self.otlp.metrics_protocol,
            spans=self.spans is not None,
        )

    @property
    def sinks(self) -> tuple[Sink, ...]:
        sinks: list[Sink] = [self.metrics, self.span_metrics]
        if self.tls_metrics is not None:
            sinks.append(self.tls_metrics)
        if self.spans is not None:
            sinks.append(self.spans)
        return tuple(sinks)

    def add_source(self, source: Any) -> None:
        """Register a `() -> AgentSnapshot` callback for the self-metrics."""
        self.self_metrics.add_source(source)

    def _metric_exporter(self) -> MetricExporter:
        # imported only when OTLP is on: the gRPC exporter alone is ~30 MB resident
        from podwire.telemetry.otlp import GrpcMetricExporter, HttpMetricExporter

        o = self.otlp
        if o.metrics_protocol == GRPC:
            return GrpcMetricExporter(
                endpoint=o.metrics_endpoint,
                insecure=_insecure(o.metrics_endpoint, o.metrics_insecure),
                headers=o.headers,
                timeout=o.timeout_s,
                preferred_temporality=_CUMULATIVE,
                channel_options=GRPC_CHANNEL_OPTIONS,  # type: ignore[arg-type]
            )
        return HttpMetricExporter(
            endpoint=o.metrics_endpoint,
            headers=dict(o.headers),
            timeout=o.timeout_s,
            preferred_temporality=_CUMULATIVE,
        )

    def _span_exporter(self) -> SpanExporter:
        from podwire.telemetry.otlp import FastGrpcSpanExporter, FastHttpSpanExporter

        o = self.otlp
        if o.traces_protocol == GRPC:
            return FastGrpcSpanExporter(
                endpoint=o.traces_endpoint,
                insecure=_insecure(o.traces_endpoint, o.traces_insecure),
                headers=o.headers,
                timeout=o.timeout_s,
                channel_options=GRPC_CHANNEL_OPTIONS,
            )
        return FastHttpSpanExporter(endpoint=o.traces_endpoint, headers=dict(o.headers), timeout=o.timeout_s)

    def metrics_text(self) -> bytes:
        """The Prometheus exposition (a collection runs now, on the caller's thread).

        Serialised: the SDK's Prometheus reader queues each collection until it is rendered, so two
        concurrent scrapes could otherwise render one collection twice and the other none."""
        with self._scrape_lock:
            return generate_latest(self.registry)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export now: pending spans first, then a metrics collection (tests, shutdown)."""
        ok = True
        if self.span_processor is not None:
            ok = self.span_processor.force_flush(int(timeout_s * 1000)) and ok
        if self._metric_reader is not None:
            ok = bool(self._metric_reader.force_flush(timeout_s * 1000)) and ok
        return ok

    def shutdown(self, deadline_s: float = 5.0) -> bool:
        """Flush and stop within `deadline_s`; True if everything finished in time."""
        if self._shut:
            return True
        self._shut = True

        def work() -> None:
            try:
                if self.span_processor is not None:
                    self.span_processor.shutdown()
                self.meter_provider.shutdown(timeout_millis=max(1.0, deadline_s * 1000 * 0.9))
            except Exception:
                _log.exception("telemetry_shutdown_failed")

        # The SDK's own shutdowns wait up to 30 s on a dead collector: run them where we can stop waiting.
        thread = threading.Thread(target=work, name="podwire-telemetry-shutdown", daemon=True)
        thread.start()
        thread.join(deadline_s)
        if thread.is_alive():
            _log.warning("telemetry_shutdown_deadline", deadline_s=deadline_s)
            return False
        return True


def _insecure(endpoint: str | None, setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return not (endpoint or "").startswith("https://")


def _sdk_version() -> str:
    from opentelemetry.sdk.version import __version__

    return str(__version__)


# Re-exported for the agent: what a snapshot callback returns.
__all__ = [
    "METRICS_CONTENT_TYPE",
    "AgentSnapshot",
    "BoundedSpanProcessor",
    "ExportConfigError",
    "OtlpConfig",
    "Telemetry",
]
