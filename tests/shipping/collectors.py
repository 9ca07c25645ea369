"""Helpers to run otelcol-podwire processes and a Tempo stand-in (OTLP/gRPC trace receiver)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class TempoStub(trace_service_pb2_grpc.TraceServiceServicer):
    spans: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(self, request, context):  # gRPC's method name
        with self.lock:
            for rs in request.resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append((service, span))
        return trace_service_pb2.ExportTraceServiceResponse()


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(log.read_text()[-3000:])


def start_collector(otelcol: Path, config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(otelcol), f"--config={config}"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


OTEL = Path(__file__).resolve().parents[2] / "otel"


def start_gateway(
    otelcol: Path, *, grpc: int, http: int, prom: int, tempo: int, self_metrics: int, log: Path
) -> subprocess.Popen:
    """otel/gateway.yaml on loopback: OTLP in on grpc/http, Prometheus exporter on prom, spans to tempo."""
    return start_collector(
        otelcol,
        OTEL / "gateway.yaml",
        {
            "GATEWAY_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc}",
            "GATEWAY_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http}",
            "GATEWAY_PROMETHEUS_ENDPOINT": f"127.0.0.1:{prom}",
            "TEMPO_OTLP_ENDPOINT": f"127.0.0.1:{tempo}",
            "OTELCOL_SELF_METRICS_HOST": "127.0.0.1",
            "OTELCOL_SELF_METRICS_PORT": str(self_metrics),
        },
        log,
    )
