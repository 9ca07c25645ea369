"""End to end with the real collector: OTel SDK (as the agent exports) -> otelcol-podwire
with otel/agent-single-gateway.yaml -> otelcol-podwire with otel/gateway.yaml -> Debian's
Prometheus scraping the gateway's Prometheus exporter; traces -> a Tempo stand-in (an
OTLP/gRPC trace receiver) and the span_metrics connector.

It proves that every instrument named in names.py comes out of the collector under the
Prometheus name that names.py documents (the contract the dashboards and alerts use),
that PromQL answers match what was sent, and that every dashboard query and alert
expression runs on the result."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, set_span_in_context

from podwire.telemetry import names
from tests.shipping.collectors import TempoStub, start_collector, start_gateway, wait_port
from tests.shipping.dashboard_queries import all_dashboard_queries
from tests.shipping.prometheus_server import Prometheus, free_port, running
from tests.shipping.promql_names import load_contract, substitute_grafana

pytestmark = pytest.mark.peers  # the Go-built otelcol-podwire

REPO = Path(__file__).resolve().parents[2]
OTEL = REPO / "otel"

EDGE = {
    names.CLIENT_NAMESPACE: "shop",
    names.CLIENT_WORKLOAD: "frontend",
    names.CLIENT_WORKLOAD_KIND: "Deployment",
    names.SERVER_NAMESPACE: "shop",
    names.SERVER_WORKLOAD: "cart",
    names.SERVER_WORKLOAD_KIND: "Deployment",
    names.SERVER_PORT: 8080,
}
SG = {
    names.SG_CLIENT: "frontend",
    names.SG_SERVER: "cart",
    names.SG_CONNECTION_TYPE: "",
    names.SG_CLIENT_NAMESPACE: "shop",
    names.SG_SERVER_NAMESPACE: "shop",
}


@dataclass(frozen=True)
class Pipeline:
    agent_otlp: str
    prometheus: Prometheus
    tempo: TempoStub


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, otelcol_bin: Path, prometheus_bin: Path
) -> Iterator[Pipeline]:
    work = tmp_path_factory.mktemp("otel-e2e")
    p = {k: free_port() for k in ("gw_grpc", "gw_http", "gw_prom", "gw_self", "agent", "agent_self", "tempo")}
    tempo = TempoStub()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(tempo, server)
    server.add_insecure_port(f"127.0.0.1:{p['tempo']}")
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        gw_log = work / "gateway.log"
        procs.append(
            start_gateway(
                otelcol_bin,
                grpc=p["gw_grpc"],
                http=p["gw_http"],
                prom=p["gw_prom"],
                tempo=p["tempo"],
                self_metrics=p["gw_self"],
                log=gw_log,
            )
        )
        wait_port(p["gw_grpc"], procs[-1], gw_log)
        agent_log = work / "agent.log"
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
                agent_log,
            )
        )
        wait_port(p["agent"], procs[-1], agent_log)
        with running(prometheus_bin, work, scrape_targets=[f"127.0.0.1:{p['gw_prom']}"]) as prom:
            yield Pipeline(f"127.0.0.1:{p['agent']}", prom, tempo)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop(grace=None)


def _send_metrics(endpoint: str) -> None:
    """One instrument per names.py metric, typed as its documented Prometheus name implies."""
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "podwire", "service.instance.id": "node-a"}),
        metric_readers=[reader],
    )
    meter = provider.get_meter(names.METER_NAME)
    for prom, otel_name, kind in load_contract().instruments:
        if prom.startswith("traces_service_graph"):
            attrs: dict = dict(SG)
        elif prom.startswith("traces_spanmetrics"):
            attrs = {names.SM_SERVICE: "cart", names.SM_SPAN_NAME: "tcp accept shop/cart:8080"}
        elif prom.startswith("podwire_tcp_"):
            attrs = dict(EDGE)
        else:
            attrs = {}
        extra = {
            "podwire_tcp_connections_total": {names.OUTCOME: "closed"},
            "podwire_tcp_bytes_total": {names.DIRECTION: names.CLIENT_TO_SERVER},
            "podwire_tcp_failures_total": {names.REASON: "refused"},
            "podwire_tcp_resets_total": {names.SENDER: "server"},
            "podwire_agent_export_failures_total": {names.SIGNAL: names.SIGNAL_METRICS},
            "podwire_agent_export_dropped_total": {
                names.SIGNAL: names.SIGNAL_TRACES,
                names.REASON: "queue_full",
            },
            "podwire_agent_tracker_anomalies_total": {names.KIND: "out_of_window"},
        }.get(prom, {})
        attrs.update(extra)
        if kind == "histogram":
            # traces_spanmetrics_latency keeps Tempo's name: no unit, so no _seconds suffix
            unit = names.UNIT_NONE if otel_name == names.SM_LATENCY else names.UNIT_SECONDS
            h = meter.create_histogram(otel_name, unit=unit)
            for v in (0.002, 0.02, 0.2, 2.0, 20.0):
                h.record(v, attrs)
        elif kind == "counter":
            unit = names.UNIT_BYTES if "bytes" in otel_name else "{item}"
            meter.create_counter(otel_name, unit=unit).add(5, attrs)
        else:  # a gauge in seconds (min RTT, certificate not-after) gets its _seconds from the unit
            unit = names.UNIT_SECONDS if prom.endswith("_seconds") else "{item}"
            meter.create_observable_gauge(
                otel_name, callbacks=[lambda _opts, a=attrs: [_obs(7, a)]], unit=unit
            )
    provider.force_flush()
    provider.shutdown()


def _obs(value: float, attrs: dict):
    from opentelemetry.metrics import Observation

    return Observation(value, attrs)


def _send_spans(endpoint: str) -> tuple[int, int]:
    """A CLIENT span from the client's node and its SERVER child from the server's node."""
    providers = []

    def tracer(service: str):
        tp = TracerProvider(
            resource=Resource.create({names.SERVICE_NAME: service, names.SERVICE_NAMESPACE: "shop"})
        )
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
        providers.append(tp)
        return tp.get_tracer(names.TRACER_NAME)

    attrs = {names.SERVER_PORT: 8080, names.SPAN_OUTCOME: "closed"}
    client = tracer("frontend").start_span(
        "tcp connect shop/cart:8080", kind=SpanKind.CLIENT, attributes=attrs
    )
    server = tracer("cart").start_span(
        "tcp accept shop/cart:8080",
        kind=SpanKind.SERVER,
        attributes=attrs,
        context=set_span_in_context(client),
    )
    server.end()
    client.end()
    for tp in providers:
        tp.shutdown()
    return client.get_span_context().trace_id, client.get_span_context().span_id


def _poll(prom: Prometheus, expr: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = prom.query(expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture(scope="module")
def sent(pipeline: Pipeline) -> tuple[int, int]:
    _send_metrics(pipeline.agent_otlp)
    return _send_spans(pipeline.agent_otlp)


def test_every_names_py_metric_reaches_prometheus_under_its_documented_name(
    pipeline: Pipeline, sent: tuple[int, int]
) -> None:
    prom = pipeline.prometheus
    contract = load_contract()
    ours = '{__name__=~"podwire_.+|traces_service_graph_.+|traces_spanmetrics_.+"}'
    assert _poll(prom, f"count({ours}) >= {len(contract.series)}")
    got = {r["metric"]["__name__"] for r in prom.query(ours)}
    assert got == set(contract.series), (sorted(got - contract.series), sorted(contract.series - got))


def test_promql_answers_match_what_the_agent_sent(pipeline: Pipeline, sent: tuple[int, int]) -> None:
    prom = pipeline.prometheus
    (r,) = _poll(
        prom,
        "sum by (client_namespace, client_workload, server_namespace, server_workload, server_port, outcome) "
        '(podwire_tcp_connections_total{client_workload="frontend", server_workload="cart"})',
    )
    assert r["metric"] == {
        "client_namespace": "shop",
        "client_workload": "frontend",
        "server_namespace": "shop",
        "server_workload": "cart",
        "server_port": "8080",
        "outcome": "closed",
    }
    assert float(r["value"][1]) == 5.0
    (b,) = prom.query('sum by (direction) (podwire_tcp_bytes_total{server_workload="cart"})')
    assert b["metric"] == {"direction": "client_to_server"} and float(b["value"][1]) == 5.0
    (count,) = prom.query("sum(podwire_tcp_connection_duration_seconds_count)")
    assert float(count["value"][1]) == 5.0
    (le,) = prom.query('sum(podwire_tcp_connection_duration_seconds_bucket{le="+Inf"})')
    assert float(le["value"][1]) == 5.0


def test_spans_reach_tempo_and_span_metrics(pipeline: Pipeline, sent: tuple[int, int]) -> None:
    trace_id, client_span_id = sent
    calls = _poll(
        pipeline.prometheus,
        'sum by (service_name, span_kind) (traces_span_metrics_calls_total{server_port="8080"})',
    )
    assert {(c["metric"]["service_name"], c["metric"]["span_kind"]) for c in calls} == {
        ("frontend", "SPAN_KIND_CLIENT"),
        ("cart", "SPAN_KIND_SERVER"),
    }
    deadline = time.monotonic() + 30
    while len(pipeline.tempo.spans) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    by_service = {svc: span for svc, span in pipeline.tempo.spans}
    assert set(by_service) == {"frontend", "cart"}
    assert by_service["frontend"].trace_id == by_service["cart"].trace_id == trace_id.to_bytes(16, "big")
    assert by_service["cart"].parent_span_id == client_span_id.to_bytes(8, "big")


def test_dashboard_queries_and_alerts_run_on_collector_output(
    pipeline: Pipeline, sent: tuple[int, int]
) -> None:
    prom = pipeline.prometheus
    assert _poll(prom, "podwire_tcp_connections_total")
    for _, expr in all_dashboard_queries():
        prom.query(substitute_grafana(expr))  # raises on any PromQL error
    doc = yaml.safe_load((REPO / "alerts" / "podwire-rules.yaml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            prom.query(rule["expr"])
