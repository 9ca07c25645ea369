"""Export: OTEL_* configuration, collector down and back, /metrics scraped by Debian's Prometheus."""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.config import Settings
from podwire.model import CloseInitiator, Outcome
from podwire.telemetry import names as n
from podwire.telemetry.export import METRICS_CONTENT_TYPE, ExportConfigError, OtlpConfig, Telemetry
from podwire.telemetry.metrics import AgentSnapshot
from podwire.views.http import HttpServer, metrics_route
from tests.otlp_receiver import OtlpReceiver
from tests.telemetry.factory import named, opened_for, pod, record

PROMETHEUS = "/usr/bin/prometheus"


# --- configuration ---------------------------------------------------------------------------------


def test_otlp_config_follows_the_standard_variables() -> None:
    s = Settings()
    assert OtlpConfig.from_env(s, {}).enabled is False  # auto: off without an endpoint
    grpc = OtlpConfig.from_env(s, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert (grpc.enabled, grpc.traces_protocol, grpc.traces_endpoint) == (
        True,
        "grpc",
        "http://collector:4317",
    )
    http = OtlpConfig.from_env(
        s,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=t1",
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.cluster.name=prod,deployment.environment=eu",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://other:4318/custom",
        },
    )
    assert http.traces_endpoint == "http://collector:4318/v1/traces"
    assert http.metrics_endpoint == "http://other:4318/custom"  # a signal's own endpoint is used as is
    assert dict(http.headers) == {"authorization": "Bearer abc", "x-tenant": "t1"}
    assert dict(http.resource_attributes) == {"k8s.cluster.name": "prod", "deployment.environment": "eu"}
    assert http.metric_interval_ms == 15000.0
    assert http.timeout_s == 5.0  # short by default
    assert OtlpConfig.from_env(s, {"OTEL_EXPORTER_OTLP_TIMEOUT": "1500"}).timeout_s == 1.5  # spec: ms
    assert (
        OtlpConfig.from_env(s.replace(otlp="off"), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).enabled
        is False
    )


def test_bad_otel_values_give_one_line_each() -> None:
    with pytest.raises(ExportConfigError) as err:
        OtlpConfig.from_env(
            Settings(otlp="on"),
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift",
                "OTEL_METRIC_EXPORT_INTERVAL": "soon",
                "OTEL_RESOURCE_ATTRIBUTES": "novalue",
            },
        )
    lines = str(err.value).splitlines()
    assert len(lines) == 4  # protocol (traces, metrics), interval, resource entry
    assert any("OTEL_METRIC_EXPORT_INTERVAL" in line for line in lines)


def test_resource_attributes_reach_metrics_and_spans(receiver: OtlpReceiver) -> None:
    env = {**receiver.env("grpc", 600_000), "OTEL_RESOURCE_ATTRIBUTES": "k8s.cluster.name=prod"}
    t = Telemetry(Settings(otlp="on", node_name="node-a"), env)
    try:
        for sink in t.sinks:
            sink.on_connection(named(record(), pod("web"), pod("db")))
        t.force_flush(5)
        (p,) = receiver.latest_points(n.TCP_CONNECTIONS)
        assert p.resource["k8s.cluster.name"] == "prod" and p.resource["service.name"] == "podwire"
        (span,) = receiver.wait_for(receiver.spans)
        assert span.resource["k8s.cluster.name"] == "prod" and span.resource["service.name"] == "web"
    finally:
        t.shutdown(3)


# --- collector down ------------------------------------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_down_then_back_never_blocks_bounds_memory_counts_drops_and_recovers(
    receiver: OtlpReceiver, protocol: str
) -> None:
    env = {**receiver.env(protocol, 300), "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"}
    t = Telemetry(Settings(otlp="on", node_name="node-a", export_queue_size=300), env)
    web, db = pod("web"), pod("db")
    fed = 0

    def feed(count: int) -> float:
        nonlocal fed
        worst = 0.0
        for _ in range(count):
            rec = record()
            conn = named(rec, web, db)
            began = time.perf_counter()
            for sink in t.sinks:
                sink.on_opened(opened_for(rec), web, db)
                sink.on_connection(conn)
            worst = max(worst, time.perf_counter() - began)
            fed += 1
        return worst

    try:
        feed(50)
        assert t.force_flush(5)
        receiver.wait_for(lambda: len(receiver.spans()) == 50)

        receiver.stop()  # the collector goes away
        feed(3000)
        rss_after_first = _rss_kib()
        worst = feed(3000)
        rss_after_second = _rss_kib()
        time.sleep(2.5)  # periodic metric exports and span batches fail meanwhile
        proc = t.span_processor
        assert proc is not None
        assert proc.queued <= 300  # the queue is the bound ...
        assert rss_after_second - rss_after_first < 8 * 1024  # ... so memory stays flat (KiB)
        # the capture thread never waits for the network: one wait would last the 1 s export timeout
        # (the margin absorbs scheduling on a loaded machine)
        assert worst < 0.5
        dropped = dict(t.counters.dropped)
        # every span fed while down is waiting (<= 300 queued, <= 300 in a failing export) or counted
        queue_full = dropped[(n.SIGNAL_TRACES, n.DROP_QUEUE_FULL)]
        assert queue_full > 0
        assert queue_full + dropped.get((n.SIGNAL_TRACES, n.DROP_EXPORT_FAILED), 0) >= 6000 - 600
        assert t.counters.failures.get(n.SIGNAL_METRICS, 0) >= 1
        assert t.counters.failures.get(n.SIGNAL_TRACES, 0) >= 1

        receiver.start()  # back, on the same ports
        receiver.clear()
        back = time.monotonic()

        def delivered() -> bool:  # traffic keeps flowing; delivery resumes on its own
            feed(5)
            t.force_flush(5)
            return len(receiver.spans()) >= 5

        receiver.wait_for(delivered, timeout=30, interval=0.2)
        assert time.monotonic() - back < 10  # reconnects within the 2 s backoff cap (plus slack)

        def total() -> float:
            pts = receiver.latest_points(n.TCP_CONNECTIONS)
            return pts[0].value if pts else 0

        # cumulative metrics lose nothing while the collector is down
        receiver.wait_for(lambda: total() == fed, timeout=20)
        t.force_flush(5)
        # every span is accounted for: delivered, dropped at the queue, or lost with a failed export
        d = t.counters.dropped
        assert proc.submitted + d[(n.SIGNAL_TRACES, n.DROP_QUEUE_FULL)] == fed
        lost = d.get((n.SIGNAL_TRACES, n.DROP_EXPORT_FAILED), 0)
        assert proc.exported + lost == proc.submitted
        failures = {p.attributes[n.SIGNAL]: p.value for p in receiver.latest_points(n.AGENT_EXPORT_FAILURES)}
        assert failures[n.SIGNAL_TRACES] >= 1 and failures[n.SIGNAL_METRICS] >= 1
        drops = {
            (p.attributes[n.SIGNAL], p.attributes[n.REASON]): p.value
            for p in receiver.latest_points(n.AGENT_EXPORT_DROPPED)
        }
        assert drops[(n.SIGNAL_TRACES, n.DROP_QUEUE_FULL)] == d[(n.SIGNAL_TRACES, n.DROP_QUEUE_FULL)]
    finally:
        assert t.shutdown(5)


def test_shutdown_keeps_its_deadline_with_the_collector_down(receiver: OtlpReceiver) -> None:
    t = Telemetry(
        Settings(otlp="on", node_name="node-a"),
        {**receiver.env("grpc", 600_000), "OTEL_EXPORTER_OTLP_TIMEOUT": "10000"},
    )
    receiver.stop()
    for sink in t.sinks:
        for _ in range(100):
            sink.on_connection(named(record(), pod("web"), pod("db")))
    began = time.monotonic()
    t.shutdown(1.0)
    assert time.monotonic() - began < 1.5


# --- /metrics scraped by Prometheus -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus_for() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.TemporaryDirectory(prefix="podwire-prom-")

    def start(target: str) -> str:
        port = _free_port()
        cfg = Path(tmp.name) / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: podwire\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        log = open(Path(tmp.name) / "prometheus.log", "wb")  # noqa: SIM115 (lives as long as the process)
        procs.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp.name}/data",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        tmp.cleanup()


def _query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def _value(base: str, promql: str) -> float | None:
    result = _query(base, promql)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="Debian's prometheus is not installed")
def test_prometheus_scrapes_metrics_and_promql_returns_the_exact_values(prometheus_for) -> None:  # type: ignore[no-untyped-def]
    t = Telemetry(Settings(otlp="off", node_name="node-a"), {})
    http = HttpServer("127.0.0.1", 0)
    metrics_route(http, t.metrics_text, METRICS_CONTENT_TYPE)
    http.start()
    try:
        web, db = pod("web"), pod("db", kind="StatefulSet")
        for rec in (record(duration=0.01), record(duration=0.3), record(duration=2.0)):
            t.metrics.on_opened(opened_for(rec), web, db)
            for sink in t.sinks:
                sink.on_connection(named(rec, web, db))
        t.metrics.on_opened(opened_for(record()), web, db)  # still open
        for rec in (
            record(Outcome.REFUSED),
            record(Outcome.RESET, duration=0.05, initiator=CloseInitiator.SERVER),
        ):
            for sink in t.sinks:
                sink.on_connection(named(rec, web, db))
        t.add_source(lambda: AgentSnapshot(packets=4321, kernel_drops=0, tracker_entries=12))

        text = t.metrics_text().decode()
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert families >= {
            "podwire_tcp_connections_total",
            "podwire_tcp_bytes_total",
            "podwire_tcp_connection_duration_seconds",
            "podwire_tcp_handshake_duration_seconds",
            "podwire_tcp_failures_total",
            "podwire_tcp_resets_total",
            "podwire_tcp_connections_active",
            "traces_service_graph_request_total",
            "traces_service_graph_request_failed_total",
            "traces_service_graph_request_server_seconds",
            "traces_service_graph_request_client_seconds",
            "podwire_agent_packets_total",
            "podwire_agent_tracker_entries",
            "podwire_agent_series_dropped_total",
        }, families
        assert "podwire_tcp_connection_duration_seconds_bucket{" in text
        assert "otel_scope_name" not in text

        prom = prometheus_for(f"127.0.0.1:{http.address[1]}")
        OtlpReceiver.wait_for(lambda: _safe_value(prom, 'up{job="podwire"}') == 1.0, timeout=60, interval=0.5)
        edge = 'client_workload="web",server_workload="db",server_port="8080",client_namespace="shop"'
        expected = {
            f'podwire_tcp_connections_total{{{edge},outcome="closed"}}': 3,
            f'podwire_tcp_connections_total{{{edge},outcome="refused"}}': 1,
            f'podwire_tcp_connections_total{{{edge},outcome="reset"}}': 1,
            f'podwire_tcp_bytes_total{{{edge},direction="client_to_server"}}': 4000,
            f'podwire_tcp_bytes_total{{{edge},direction="server_to_client"}}': 20000,
            f"podwire_tcp_connection_duration_seconds_count{{{edge}}}": 4,
            f'podwire_tcp_connection_duration_seconds_bucket{{{edge},le="0.0512"}}': 2,
            f'podwire_tcp_connection_duration_seconds_bucket{{{edge},le="+Inf"}}': 4,
            f"podwire_tcp_handshake_duration_seconds_count{{{edge}}}": 5,
            f'podwire_tcp_failures_total{{{edge},reason="refused"}}': 1,
            f'podwire_tcp_resets_total{{{edge},sender="server"}}': 1,
            f"podwire_tcp_connections_active{{{edge}}}": 1,
            'traces_service_graph_request_total{client="web",server="db",client_service_namespace="shop",'
            'server_service_namespace="shop",connection_type=""}': 5,
            'traces_service_graph_request_failed_total{client="web",server="db"}': 2,
            # 0.01, 0.05, 0.25 (the refused one), 0.3
            'traces_service_graph_request_server_seconds_bucket{client="web",server="db",le="0.4096"}': 4,
            'traces_service_graph_request_client_seconds_count{client="web",server="db"}': 5,
            "podwire_agent_packets_total": 4321,
            "podwire_agent_tracker_entries": 12,
            "podwire_agent_series_dropped_total": 0,
            # Grafana's Service Graph table series: one CLIENT span per connection seen at the client
            'traces_spanmetrics_calls_total{service="web",span_name="tcp connect shop/db:8080",'
            'span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET"}': 3,
            'traces_spanmetrics_calls_total{service="web",status_code="STATUS_CODE_ERROR"}': 2,
            'sum(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER"}) or vector(0)': 0,
            'traces_spanmetrics_latency_bucket{service="web",status_code="STATUS_CODE_UNSET",le="0.0128"}': 1,
            'traces_spanmetrics_latency_count{service="web",status_code="STATUS_CODE_UNSET"}': 3,
            # self-metrics known at start exist at 0 before their first event
            'podwire_agent_export_failures_total{signal="metrics"}': 0,
            'podwire_agent_export_dropped_total{signal="traces",reason="queue_full"}': 0,
        }
        for promql, want in expected.items():
            assert _value(prom, promql) == want, promql
    finally:
        http.stop()
        t.shutdown(2)


def _safe_value(base: str, promql: str) -> float | None:
    try:
        return _value(base, promql)
    except OSError:
        return None


def test_slow_collector_never_slows_the_capture_thread() -> None:
    with OtlpReceiver(delay_s=2.0) as slow:  # answers every export after 2 s
        env = {**slow.env("grpc", 300), "OTEL_EXPORTER_OTLP_TIMEOUT": "1500"}
        t = Telemetry(Settings(otlp="on", node_name="node-a", export_queue_size=200), env)
        try:
            web, db = pod("web"), pod("db")
            worst = 0.0
            for _ in range(4):
                for _ in range(500):
                    conn = named(record(), web, db)
                    began = time.perf_counter()
                    for sink in t.sinks:
                        sink.on_connection(conn)
                    worst = max(worst, time.perf_counter() - began)
                time.sleep(0.5)
            assert worst < 0.5  # a wait on the collector would last 1.5 s (timeout) or 2 s (its delay)
            assert t.span_processor is not None and t.span_processor.queued <= 200
            assert t.counters.dropped[(n.SIGNAL_TRACES, n.DROP_QUEUE_FULL)] > 0
        finally:
            began = time.monotonic()
            t.shutdown(2.0)
            assert time.monotonic() - began < 2.5


def test_metrics_text_has_each_sample_once_after_flushes_and_concurrent_scrapes(
    receiver: OtlpReceiver,
) -> None:
    import concurrent.futures

    t = Telemetry(Settings(otlp="on", node_name="node-a", spans=False), receiver.env("grpc", 600_000))
    try:
        t.metrics.on_connection(named(record(), pod("web"), pod("db")))
        for _ in range(3):
            assert t.force_flush(5)  # pushes OTLP; must not queue collections for /metrics

        def closed_samples(text: bytes) -> list[str]:
            return [
                line
                for line in text.decode().splitlines()
                if line.startswith("podwire_tcp_connections_total{")
            ]

        assert [line.rsplit(" ", 1)[1] for line in closed_samples(t.metrics_text())] == ["1.0"]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(lambda _: t.metrics_text(), range(32)))
        assert all(len(closed_samples(text)) == 1 for text in texts)
    finally:
        t.shutdown(3)


def test_otel_values_the_exporters_would_choke_on_are_refused_up_front(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    ok = OtlpConfig.from_env(
        Settings(otlp="on"),
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(key_file),
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
        },
    )
    assert (ok.traces_insecure, ok.metrics_insecure) == (True, None)
    with pytest.raises(ExportConfigError) as err:
        OtlpConfig.from_env(
            Settings(otlp="on"),
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:0",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "grpc://collector:4317",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "zstd",
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(tmp_path),
                "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "1",
                "OTEL_METRIC_EXPORT_INTERVAL": "1e15",
            },
        )
    lines = str(err.value).splitlines()
    for key in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ):
        assert sum(line.startswith(f"bad {key}=") for line in lines) == 1, (key, lines)
    assert len(lines) == 6


def test_a_signal_endpoint_without_otlp_is_a_warning_not_an_error() -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}
    auto = OtlpConfig.from_env(Settings(), env)
    assert auto.enabled is False
    (warning,) = auto.warnings
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in warning and "unset" in warning
    assert OtlpConfig.from_env(Settings(otlp="on"), env).warnings == ()
