"""An OTLP receiver on loopback for tests: gRPC and HTTP/protobuf, decoding what was really sent.

    with OtlpReceiver() as rx:                 # both listeners on free loopback ports
        env = rx.env("grpc")                   # OTEL_EXPORTER_OTLP_* for an agent under test
        ...
        rx.wait_for(lambda: rx.points("podwire.tcp.connections"))
        rx.stop(); rx.start()                  # collector down, then back on the same ports

Everything received is kept decoded (ExportMetricsServiceRequest / ExportTraceServiceRequest),
with the wire size of each request (bytes-per-connection figures).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class Point:
    """One metric data point, flattened with its metric and resource."""

    name: str
    unit: str
    kind: str  # sum | gauge | histogram
    monotonic: bool | None
    temporality: int | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    value: float | None  # sum / gauge
    count: int | None  # histogram
    sum: float | None
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    time_unix_nano: int


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    status_message: str


class OtlpReceiver:
    def __init__(self, host: str = "127.0.0.1", delay_s: float = 0.0) -> None:
        self.host = host
        self.grpc_port = 0
        self.http_port = 0
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.wire_bytes = {"metrics": 0, "traces": 0}
        self.request_counts = {
            ("grpc", "metrics"): 0,
            ("grpc", "traces"): 0,
            ("http", "metrics"): 0,
            ("http", "traces"): 0,
        }
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> OtlpReceiver:
        receiver = self

        class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver._take("grpc", "metrics", request, request.ByteSize())
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver._take("grpc", "traces", request, request.ByteSize())
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(), server)
        port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if port == 0:
            raise OSError(f"cannot bind gRPC {self.host}:{self.grpc_port}")
        self.grpc_port = port
        server.start()
        self._grpc = server

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                wire = len(body)
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
                request: Any
                if self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    response: Any = metrics_service_pb2.ExportMetricsServiceResponse()
                    receiver._take("http", "metrics", request, wire)
                elif self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    response = trace_service_pb2.ExportTraceServiceResponse()
                    receiver._take("http", "traces", request, wire)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                out = response.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                return

        ThreadingHTTPServer.allow_reuse_address = True
        self._http = ThreadingHTTPServer((self.host, self.http_port), _Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._grpc is not None

    def env(self, protocol: str = "grpc", interval_ms: int = 500) -> dict[str, str]:
        if protocol == "grpc":
            endpoint = f"http://{self.host}:{self.grpc_port}"
        else:
            endpoint = f"http://{self.host}:{self.http_port}"
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",  # ms
        }

    def _take(self, transport: str, signal: str, request: Any, size: int) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            (self.metric_requests if signal == "metrics" else self.trace_requests).append(request)
            self.wire_bytes[signal] += size
            self.request_counts[(transport, signal)] += 1

    def clear(self) -> None:
        with self._lock:
            self.metric_requests.clear()
            self.trace_requests.clear()
            self.wire_bytes = {"metrics": 0, "traces": 0}

    # -- decoded views --

    def _iter_points(self, requests: list[Any]) -> Iterator[Point]:
        for req in requests:
            for rm in req.resource_metrics:
                res = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        if kind == "sum":
                            for p in m.sum.data_points:
                                value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                                yield Point(
                                    m.name,
                                    m.unit,
                                    "sum",
                                    m.sum.is_monotonic,
                                    m.sum.aggregation_temporality,
                                    attrs(p.attributes),
                                    res,
                                    value,
                                    None,
                                    None,
                                    (),
                                    (),
                                    p.time_unix_nano,
                                )
                        elif kind == "gauge":
                            for p in m.gauge.data_points:
                                value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                                yield Point(
                                    m.name,
                                    m.unit,
                                    "gauge",
                                    None,
                                    None,
                                    attrs(p.attributes),
                                    res,
                                    value,
                                    None,
                                    None,
                                    (),
                                    (),
                                    p.time_unix_nano,
                                )
                        elif kind == "histogram":
                            for p in m.histogram.data_points:
                                yield Point(
                                    m.name,
                                    m.unit,
                                    "histogram",
                                    None,
                                    m.histogram.aggregation_temporality,
                                    attrs(p.attributes),
                                    res,
                                    None,
                                    p.count,
                                    p.sum,
                                    tuple(p.bucket_counts),
                                    tuple(p.explicit_bounds),
                                    p.time_unix_nano,
                                )

    def latest_points(self, name: str, instance: str | None = None) -> list[Point]:
        """The points of `name` from the newest metrics request that carried it (cumulative).

        With several agents sending, pass `instance` (their service.instance.id, the node name),
        or use `latest_points_all` for the newest points of every agent together.
        """
        with self._lock:
            requests = list(self.metric_requests)
        for req in reversed(requests):
            pts = [
                p
                for p in self._iter_points([req])
                if p.name == name and (instance is None or p.resource.get("service.instance.id") == instance)
            ]
            if pts:
                return pts
        return []

    def latest_points_all(self, name: str) -> list[Point]:
        """The newest cumulative points of `name` from every agent (by service.instance.id)."""
        with self._lock:
            requests = list(self.metric_requests)
        instances = {
            p.resource.get("service.instance.id") for p in self._iter_points(requests) if p.name == name
        }
        return [p for i in sorted(instances, key=str) for p in self.latest_points(name, i)]

    def metric_names(self) -> set[str]:
        with self._lock:
            requests = list(self.metric_requests)
        return {p.name for p in self._iter_points(requests)}

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            requests = list(self.trace_requests)
        out = []
        for req in requests:
            for rs in req.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            ReceivedSpan(
                                s.name,
                                s.kind,
                                s.trace_id,
                                s.span_id,
                                s.parent_span_id,
                                s.start_time_unix_nano,
                                s.end_time_unix_nano,
                                attrs(s.attributes),
                                res,
                                s.status.code,
                                s.status.message,
                            )
                        )
        return out

    def span_pairs(self) -> dict[bytes, dict[str, ReceivedSpan]]:
        """trace id -> {"client": span, "server": span} (either may be missing): what live tests check."""
        out: dict[bytes, dict[str, ReceivedSpan]] = {}
        for span in self.spans():
            role = {3: "client", 2: "server"}.get(span.kind)
            if role is not None:
                out.setdefault(span.trace_id, {})[role] = span
        return out

    def totals(self, name: str, key: str | None = None) -> dict[Any, float]:
        """Latest cumulative value of a metric over every agent and series (by one attribute if given)."""
        out: dict[Any, float] = {}
        for p in self.latest_points_all(name):
            k = p.attributes.get(key) if key else None
            out[k] = out.get(k, 0) + (p.value if p.value is not None else (p.count or 0))
        return out

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
        end = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
            time.sleep(interval)
