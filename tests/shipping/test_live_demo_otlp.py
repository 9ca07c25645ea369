"""The real agent through the real collectors: `podwire demo` (live capture of a
two-node network-namespace cluster) exports OTLP to otelcol-podwire running
otel/agent-single-gateway.yaml, which forwards to otelcol-podwire running otel/gateway.yaml;
Debian's Prometheus scrapes the gateway and a Tempo stand-in receives the spans.

Checks: the edge series arrive in Prometheus under names.py's names with the workload
labels; the gateway's span_metrics see both span kinds; and the CLIENT and SERVER spans
of one connection, exported separately, share a trace id with the server span's parent
being the client span (what a load-balancing-by-trace-id gateway relies on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.shipping.collectors import TempoStub, start_collector, start_gateway, wait_port
from tests.shipping.prometheus_server import Prometheus, free_port, running

pytestmark = [pytest.mark.live, pytest.mark.peers]

REPO = Path(__file__).resolve().parents[2]
OTEL = REPO / "otel"
PODWIRE = Path(sys.executable).parent / "podwire"


@pytest.fixture(scope="module")
def through_collectors(
    tmp_path_factory: pytest.TempPathFactory, otelcol_bin: Path, prometheus_bin: Path
) -> Iterator[tuple[Prometheus, TempoStub]]:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces, AF_PACKET)")
    work = tmp_path_factory.mktemp("live-otlp")
    p = {
        k: free_port()
        for k in ("gw_grpc", "gw_http", "gw_prom", "gw_self", "agent", "agent_self", "tempo", "demo")
    }
    tempo = TempoStub()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(tempo, server)
    server.add_insecure_port(f"127.0.0.1:{p['tempo']}")
    server.start()
    procs: list[subprocess.Popen] = []
    demo: subprocess.Popen | None = None
    demo_log = (work / "demo.log").open("wb")
    try:
        procs.append(
            start_gateway(
                otelcol_bin,
                grpc=p["gw_grpc"],
                http=p["gw_http"],
                prom=p["gw_prom"],
                tempo=p["tempo"],
                self_metrics=p["gw_self"],
                log=work / "gateway.log",
            )
        )
        wait_port(p["gw_grpc"], procs[-1], work / "gateway.log")
        procs.append(
            start_collector(
                otelcol_bin,
                OTEL / "agent-single-gateway.yaml",
                {
                    "AGENT_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{p['agent']}",
                    "GATEWAY_ENDPOINT": f"127.0.0.1:{p['gw_grpc']}",
                    "OTELCOL_SELF_METRICS_HOST": "127.0.0.1",
                    "OTELCOL_SELF_METRICS_PORT": str(p["agent_self"]),
                },
                work / "agent.log",
            )
        )
        wait_port(p["agent"], procs[-1], work / "agent.log")
        demo_env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{p['agent']}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "2000",
        }
        demo = subprocess.Popen(
            [str(PODWIRE), "demo", "--duration", "120", "--listen", f"127.0.0.1:{p['demo']}", "--no-tui"],
            env=demo_env,
            stdin=subprocess.DEVNULL,
            stdout=demo_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with running(prometheus_bin, work, scrape_targets=[f"127.0.0.1:{p['gw_prom']}"]) as prom:
            deadline = time.monotonic() + 90
            while not (
                prom.query("sum(podwire_tcp_connections_total) > 20")
                and prom.query("traces_span_metrics_calls_total")
                and len(tempo.spans) > 20
            ):
                assert demo.poll() is None, (work / "demo.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (work / "demo.log").read_text()[-2000:] + (
                    work / "gateway.log"
                ).read_text()[-2000:]
                time.sleep(1)
            yield prom, tempo
    finally:
        if demo is not None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        demo_log.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop(grace=None)


def test_agent_metrics_arrive_through_both_collectors_with_workload_labels(
    through_collectors: tuple[Prometheus, TempoStub],
) -> None:
    prom, _ = through_collectors
    edges = prom.query(
        "sum by (client_namespace, client_workload, server_namespace, server_workload) "
        "(podwire_tcp_connections_total)"
    )
    pairs = {
        (e["metric"]["client_namespace"], e["metric"]["client_workload"], e["metric"]["server_workload"])
        for e in edges
    }
    assert ("tools", "loadgen", "frontend") in pairs
    assert prom.query("sum(podwire_tcp_bytes_total) > 0")
    assert prom.query(
        "histogram_quantile(0.9, sum by (le) (rate(podwire_tcp_handshake_duration_seconds_bucket[1m])))"
    )
    assert prom.query("sum(traces_service_graph_request_total) > 0")


def test_span_metrics_see_client_and_server_spans(through_collectors: tuple[Prometheus, TempoStub]) -> None:
    prom, _ = through_collectors
    kinds = {
        r["metric"]["span_kind"] for r in prom.query("sum by (span_kind) (traces_span_metrics_calls_total)")
    }
    assert {"SPAN_KIND_CLIENT", "SPAN_KIND_SERVER"} <= kinds


def test_both_ends_of_a_connection_share_one_trace(through_collectors: tuple[Prometheus, TempoStub]) -> None:
    _, tempo = through_collectors
    with tempo.lock:
        spans = list(tempo.spans)
    by_trace: dict[bytes, list[tuple[str, Span]]] = defaultdict(list)
    for service, span in spans:
        by_trace[span.trace_id].append((service, span))
    paired = [
        group
        for group in by_trace.values()
        if {s.kind for _, s in group} >= {Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER}
    ]
    assert paired, f"no trace holds both a CLIENT and a SERVER span among {len(spans)} spans"
    for group in paired:
        client = next(s for _, s in group if s.kind == Span.SPAN_KIND_CLIENT)
        server = next(s for _, s in group if s.kind == Span.SPAN_KIND_SERVER)
        assert server.parent_span_id == client.span_id
        assert {svc for svc, s in group if s is client} != {svc for svc, s in group if s is server}
