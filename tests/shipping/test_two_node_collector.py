"""Two real `podwire run` agents -> the real OpenTelemetry Collector (otel/gateway.yaml: OTLP receiver ->
Prometheus exporter) -> Debian's Prometheus, which also scrapes the agents' own /metrics.

The same PromQL answers must come back both ways, and they must be what the traffic really was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster
from podwire.demo.inventory import write_inventory
from tests.live.conftest import cluster_factory, two_node_cluster
from tests.live.two_node import EXPECTED_EDGES, REFUSED, Agents, run_plan
from tests.otlp_receiver import OtlpReceiver
from tests.shipping.collectors import start_gateway, wait_port
from tests.shipping.prometheus_server import Prometheus, free_port, running

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
__all__ = ["cluster_factory", "two_node_cluster"]  # fixtures

EDGE = "client_workload, server_workload, server_port"


def _by_edge(prom: Prometheus, expr: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(
            r["metric"].get(k, "") for k in ("client_workload", "server_workload", "server_port", "outcome")
        ): float(r["value"][1])
        for r in prom.query(expr)
    }


@pytest.fixture
def agents() -> Iterator[Agents]:
    a = Agents()
    try:
        yield a
    finally:
        a.stop()


def test_collector_path_and_direct_scrape_give_the_same_exact_answers(
    two_node_cluster: Cluster, agents: Agents, otelcol_bin: Path, prometheus_bin: Path, tmp_path: Path
) -> None:
    cluster = two_node_cluster
    inventory = write_inventory(cluster, tmp_path / "inventory.yaml")
    ports = {k: free_port() for k in ("grpc", "http", "prom", "self")}
    tempo = OtlpReceiver().start()  # Tempo stand-in: the gateway forwards spans here
    gateway = start_gateway(
        otelcol_bin,
        grpc=ports["grpc"],
        http=ports["http"],
        prom=ports["prom"],
        tempo=tempo.grpc_port,
        self_metrics=ports["self"],
        log=tmp_path / "gateway.log",
    )
    try:
        wait_port(ports["grpc"], gateway, tmp_path / "gateway.log")
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['grpc']}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
        for node in ("node-a", "node-b"):
            agents.start(cluster, node, env, inventory, tmp_path / f"agent-{node}.log")
        agents.wait_ready()
        made = run_plan(cluster)
        targets = [f"127.0.0.1:{ports['prom']}", *(f"127.0.0.1:{p}" for p in agents.ports.values())]
        collector = f'instance="127.0.0.1:{ports["prom"]}"'
        direct = f'instance!="127.0.0.1:{ports["prom"]}"'
        with running(prometheus_bin, tmp_path, scrape_targets=targets) as prom:
            query = "sum by ({edge}, outcome) (podwire_tcp_connections_total{{{sel}}})"
            deadline = time.monotonic() + 60
            while True:
                via_collector = _by_edge(prom, query.format(edge=EDGE, sel=collector))
                via_scrape = _by_edge(prom, query.format(edge=EDGE, sel=direct))
                if via_collector == via_scrape == _expected() or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert via_scrape == _expected()
            assert via_collector == via_scrape

            def value(expr: str, sel: str) -> float:
                result = prom.query(expr.replace("SEL", sel))
                assert result, expr
                return float(result[0]["value"][1])

            for expr in (
                "sum(traces_service_graph_request_total{SEL})",
                "sum(traces_service_graph_request_failed_total{SEL})",
                'sum(podwire_tcp_bytes_total{direction="client_to_server",SEL})',
                'sum(podwire_tcp_bytes_total{direction="server_to_client",SEL})',
                "sum(podwire_tcp_connection_duration_seconds_count{SEL})",
                "sum(podwire_tcp_handshake_duration_seconds_count{SEL})",
            ):
                assert value(expr, collector) == value(expr, direct), expr
            assert value("sum(traces_service_graph_request_total{SEL})", direct) == made.total
            assert value("sum(traces_service_graph_request_failed_total{SEL})", direct) == REFUSED
            up = sum(up for _address, up, _down in made.by_client.values())
            down = sum(down for _address, _up, down in made.by_client.values())
            assert value('sum(podwire_tcp_bytes_total{direction="client_to_server",SEL})', collector) == up
            assert value('sum(podwire_tcp_bytes_total{direction="server_to_client",SEL})', collector) == down
        # the gateway forwarded both ends of every connection to "Tempo"
        pairs = OtlpReceiver.wait_for(
            lambda: (
                [p for p in tempo.span_pairs().values() if "client" in p and "server" in p]
                if len(tempo.span_pairs()) >= made.total
                else None
            ),
            timeout=30,
        )
        assert len(pairs) == made.total
    finally:
        agents.stop()
        gateway.terminate()
        try:
            gateway.wait(15)
        except Exception:
            gateway.kill()
        tempo.stop()


def _expected() -> dict[tuple[str, ...], float]:
    return {(c, s, str(p), o): float(v) for (c, s, p, o), v in EXPECTED_EDGES.items()}
