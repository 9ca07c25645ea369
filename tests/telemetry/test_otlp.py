"""The OTLP exporters load only when OTLP export is on (grpc + protobuf: ~30 MB resident), and the
gRPC span exporter's wire path sends what the SDK would."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otlp_receiver import OtlpReceiver
from tests.telemetry.test_encode import podwire_spans

CODE = """
import sys
from podwire.config import Settings
from podwire.telemetry.export import Telemetry
t = Telemetry(Settings(otlp="{otlp}"), env={env})
t.metrics_text()
roots = {{m.split(".")[0] for m in sys.modules}}
loaded = sorted(roots & {{"grpc", "scapy", "kubernetes"}})
print("loaded:" + ",".join(loaded))
t.shutdown(2)
"""


def _loaded(otlp: str, env: dict[str, str]) -> str:
    code = CODE.format(otlp=otlp, env=repr(env))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("loaded:")]
    return line.removeprefix("loaded:")


def test_metrics_only_loads_no_exporter_and_otlp_on_loads_grpc() -> None:
    assert _loaded("off", {}).strip() == ""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert _loaded("on", env).strip() == "grpc"


@pytest.mark.parametrize("layout_known", [True, False])
def test_grpc_span_exporter_sends_the_sdk_message_on_its_fast_path_and_on_the_fallback(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, layout_known: bool
) -> None:
    from podwire.telemetry import otlp

    if not layout_known:  # as if an SDK release had renamed the private fields the fast path replaces
        monkeypatch.setattr(otlp, "_sdk_layout_known", lambda exporter: False)
    exporter = otlp.FastGrpcSpanExporter(endpoint=f"127.0.0.1:{receiver.grpc_port}", insecure=True)
    try:
        assert exporter.wire is layout_known  # the installed SDK's layout is the known one
        spans = podwire_spans()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        (request,) = receiver.trace_requests
        assert request == encode_spans(spans)
    finally:
        exporter.shutdown()
