"""The OTLP exporters (gRPC and HTTP), imported by export.py only when OTLP export is on.

They pull in grpc and protobuf (~30 MB resident): an agent that only serves /metrics never loads
them.  The span exporters are the SDK's (channel, retries, headers, TLS) with encode.py's encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from podwire import log
from podwire.telemetry.encode import SpanEncoder

__all__ = ["FastGrpcSpanExporter", "FastHttpSpanExporter", "GrpcMetricExporter", "HttpMetricExporter"]

_log = log.get("podwire.telemetry")


_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _WireTraceStub:
    """TraceService.Export sending the request as the wire bytes encode.py wrote.  The SDK's stub
    takes a message: the bytes were parsed into one only for gRPC to serialize it again (measured
    ~6 us per span of the export thread's CPU)."""

    def __init__(self, channel: Any) -> None:
        # no request serializer: gRPC sends bytes as they are
        self.Export = channel.unary_unary(
            _EXPORT, response_deserializer=ExportTraceServiceResponse.FromString
        )


def _sdk_layout_known(exporter: GrpcSpanExporter) -> bool:
    """The SDK fields the wire stub replaces (`_channel`, `_stub`, `_client`) are private: checked
    once, so an SDK release that renames them costs the fast path, never a span."""
    fields = vars(exporter)
    return "_channel" in fields and "_stub" in fields and "_client" in fields


class FastGrpcSpanExporter(GrpcSpanExporter):
    """The SDK's gRPC exporter (channel, retries, headers, TLS) with encode.py's encoder."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wire = _sdk_layout_known(self)
        if self.wire:
            encoder = SpanEncoder()  # one per exporter: its cache is touched by one worker thread
            self._translate: Any = encoder.wire
            self._stub = _WireTraceStub  # the SDK's reconnect path makes its client from `_stub` again
            self._client = _WireTraceStub(self._channel)  # type: ignore[assignment]  # the SDK types it as None
        else:
            _log.warning("span_exporter_sdk_layout_unknown", fallback="the SDK's own encoder")
            self._translate = super()._translate_data

    def _translate_data(self, data: Sequence[ReadableSpan]) -> Any:
        return self._translate(data)


class FastHttpSpanExporter(HttpSpanExporter):
    """The SDK's HTTP exporter with encode.py's encoder (falls back to the SDK's own path)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or getattr(self, "_shutdown", True) or not hasattr(client, "export"):
            return super().export(spans)
        try:
            data = self._encoder.wire(spans)
        except Exception:
            _log.exception("span_encode_failed")
            return SpanExportResult.FAILURE
        result = client.export(data)
        return SpanExportResult.SUCCESS if getattr(result, "success", False) else SpanExportResult.FAILURE
