"""The fast span encoder writes exactly the message the SDK's encoder writes."""

from __future__ import annotations

import msgspec
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from podwire.model import CloseInitiator, Outcome, Side
from podwire.telemetry.encode import SpanEncoder
from podwire.telemetry.spans import SpanSink
from tests.telemetry.factory import external, named, pod, record


class Collect:
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def podwire_spans() -> list[ReadableSpan]:
    sink_out = Collect()
    sink = SpanSink(
        sink_out,
        Resource({"k8s.cluster.name": "prod"}),
        1.0,
        "node-a",
        InstrumentationScope("podwire", "0.1.0"),
    )
    web, db, ext = pod("web"), pod("db", kind="StatefulSet"), external("example.com")
    for rec, c, s in [
        (record(side=Side.CLIENT), web, db),
        (record(side=Side.SERVER), web, db),
        (record(Outcome.REFUSED, Side.CLIENT), web, db),
        (record(Outcome.RESET, Side.CLIENT, initiator=CloseInitiator.SERVER, c2s=None), web, ext),
        (record(side=None, network_type="ipv6", client_ip="fd00::1", server_ip="fd00::2"), web, db),
        (record(side=Side.SERVER, c2s=2**40, s2c=0), ext, db),
        # the same pod reached through its Service: one resource, as the SDK groups them
        (record(side=Side.SERVER), web, msgspec.structs.replace(db, service="db-svc")),
    ]:
        sink.on_connection(named(rec, c, s))
    return sink_out.spans


def test_fast_encoder_matches_the_sdk_encoder_message_for_message() -> None:
    spans = podwire_spans()
    assert len(spans) == 8
    encoder = SpanEncoder()
    for _ in range(2):  # the second pass is served from the element caches
        fast = ExportTraceServiceRequest.FromString(encoder.encode(spans))
        assert fast == encode_spans(spans)


def test_fast_encoder_handles_odd_values_and_falls_back_for_what_it_does_not_know() -> None:
    ctx = SpanContext(2**127 + 5, 2**63 + 7, False, TraceFlags(1))
    odd = ReadableSpan(
        name="x",
        context=ctx,
        parent=SpanContext(2**127 + 5, 9, False, TraceFlags(1)),
        resource=Resource({"n": -3, "f": 1.5, "b": False, "s": "é"}),
        attributes={"neg": -1, "big": 2**62, "t": True, "d": -0.25, "u": "ünï"},
        kind=SpanKind.INTERNAL,
        status=Status(StatusCode.OK),
        start_time=1,
        end_time=2**63,
    )
    assert ExportTraceServiceRequest.FromString(SpanEncoder().encode([odd])) == encode_spans([odd])
    with_list = ReadableSpan(name="y", context=ctx, attributes={"l": ("a", "b")}, resource=Resource({}))
    assert SpanEncoder().request([odd, with_list]) == encode_spans([odd, with_list])  # SDK fallback


def test_ints_and_floats_at_every_varint_width_match_the_sdk() -> None:
    ctx = SpanContext(7, 9, False, TraceFlags(1))
    edges = [0, 1, 127, 128, 16383, 16384, 65535, 2**21 - 1, 2**21, 2**28, 2**35, 2**63 - 1, -1, -(2**63)]
    attrs: dict[str, int | float] = {f"i{i}": v for i, v in enumerate(edges)}
    attrs.update({"f0": 0.0, "f1": -1e300, "f2": 5e-324})
    span = ReadableSpan(name="v", context=ctx, attributes=attrs, resource=Resource({"port": 65535}))
    assert ExportTraceServiceRequest.FromString(SpanEncoder().encode([span])) == encode_spans([span])
