"""Dashboards and alerts against real data: Debian's Prometheus scrapes a live agent
(`podwire demo`: a network-namespace mini-cluster with real servers and clients, captured
by the real agent), then every dashboard query and every alert expression runs without
error, and the main panels return data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.shipping.dashboard_queries import all_dashboard_queries
from tests.shipping.prometheus_server import Prometheus, free_port, running
from tests.shipping.promql_names import substitute_grafana

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
PODWIRE = Path(sys.executable).parent / "podwire"
# Panels that must show data for the demo's traffic (title substrings per dashboard).
MAIN = {
    "podwire-service-map": ["Service map", "Edges", "Requests/s by edge"],
    "podwire-workload-traffic": [
        "Connections/s by",
        "Bytes/s each way",
        "Connection duration percentiles",
        "Handshake (SYN to ACK) percentiles",
        "Failed attempts/s by reason",
    ],
    "podwire-agent-health": ["Agents up", "Packets/s read", "Kernel drops/s", "Connection table entries"],
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: Path) -> Iterator[Prometheus]:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces, AF_PACKET)")
    work = tmp_path_factory.mktemp("live-demo")
    port = free_port()
    log = (work / "demo.log").open("wb")
    demo = subprocess.Popen(
        [str(PODWIRE), "demo", "--duration", "120", "--listen", f"127.0.0.1:{port}", "--no-tui"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with running(prometheus_bin, work, scrape_targets=[f"127.0.0.1:{port}"]) as prom:
            deadline = time.monotonic() + 60
            while not prom.query('sum(podwire_tcp_connections_total{job="podwire"}) > 20'):
                assert demo.poll() is None, (work / "demo.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (work / "demo.log").read_text()[-3000:]
                time.sleep(1)
            time.sleep(10)  # several scrapes, so rate() has points
            yield prom
    finally:
        # SIGTERM: the demo tears its namespaces down before exiting.
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        log.close()


def test_every_dashboard_query_runs_and_main_panels_show_data(live: Prometheus) -> None:
    empty_main = []
    ran = 0
    for where, expr in all_dashboard_queries():
        result = live.query(substitute_grafana(expr))  # raises on any PromQL error
        ran += 1
        uid = where.split()[0]
        if not result and any(f"'{t}" in where for t in MAIN.get(uid, [])):
            empty_main.append(where)
    assert ran > 40
    assert empty_main == []


def test_node_graph_shows_the_demo_edges(live: Prometheus) -> None:
    dash = json.loads((REPO / "dashboards" / "podwire-service-map.json").read_text())
    (graph,) = [p for p in dash["panels"] if p["type"] == "nodeGraph"]
    ids = {s["metric"]["id"] for s in live.query(substitute_grafana(graph["targets"][0]["expr"]))}
    assert "tools/loadgen > shop/frontend" in ids
    assert "tools/loadgen > partner-api" in ids  # an external has no namespace: no "/partner-api"
    for edge in ids:
        source, target = edge.split(" > ")
        for end in (source, target):
            assert end.count("/") <= 1 and not end.startswith("/"), edge


def test_every_alert_expression_runs_on_live_data(live: Prometheus) -> None:
    doc = yaml.safe_load((REPO / "alerts" / "podwire-rules.yaml").read_text())
    results = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            results[rule["alert"]] = live.query(rule["expr"])
    # the agent is up and scraped: neither "down" nor "absent" holds
    assert results["PodwireAgentDown"] == []
    assert results["PodwireAgentAbsent"] == []
    assert live.query('up{job="podwire"} == 1')
