"""dashboards/: generated files are current, each dashboard is well-formed for Grafana
(schemaVersion, Prometheus data-source variable, unique ids, non-overlapping grid), every
query parses as PromQL and uses only names podwire emits, and each dashboard covers what
issue 5 asks of it. (Running the queries against a real Prometheus: test_queries_prometheus.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shipping.dashboard_queries import DASHBOARDS, FILES, REPO, dashboard_queries
from tests.shipping.dashboard_queries import load as _load
from tests.shipping.dashboard_queries import panels as _panels
from tests.shipping.promql_names import load_contract, problems, substitute_grafana, uses


def test_four_dashboards_exist() -> None:
    assert [f.name for f in FILES] == [
        "podwire-agent-health.json",
        "podwire-service-map.json",
        "podwire-tls.json",
        "podwire-workload-traffic.json",
    ]


def test_tls_dashboard_covers_who_to_whom_versions_ciphers_and_days_to_expiry() -> None:
    path = DASHBOARDS / "podwire-tls.json"
    assert _metrics_of(path) >= {
        "podwire_tls_handshakes_total",
        "podwire_tls_deprecated_handshakes_total",
        "podwire_tls_certificate_not_after_seconds",
    }
    exprs = " ".join(expr for _, expr in dashboard_queries(_load(path)))
    for label in ("tls_version", "tls_cipher", "tls_server_name", "client_workload", "server_workload"):
        assert f"{label}" in exprs
    assert "/ 86400" in exprs and "time()" in exprs


def test_generated_dashboards_and_chart_copies_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, DASHBOARDS / "generate.py", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for f in FILES:
        assert (REPO / "helm" / "podwire" / "dashboards" / f.name).read_text() == f.read_text()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_dashboard_is_well_formed_for_grafana(path: Path) -> None:
    dash = _load(path)
    assert dash["schemaVersion"] >= 39
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds_vars == [ds_vars[0]] and ds_vars[0]["query"] == "prometheus"
    name = ds_vars[0]["name"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in _panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": f"${{{name}}}"}, p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == f"${{{name}}}"
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == f"${{{name}}}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_query_parses_and_uses_only_podwire_names(path: Path) -> None:
    contract = load_contract()
    found: list[str] = []
    count = 0
    for where, expr in dashboard_queries(_load(path)):
        count += 1
        found += problems(substitute_grafana(expr), contract, where)
    assert count > 3
    assert found == []


def _metrics_of(path: Path) -> set[str]:
    out: set[str] = set()
    for _, expr in dashboard_queries(_load(path)):
        out |= uses(substitute_grafana(expr)).metrics
    return out


def test_service_map_is_a_node_graph_of_edges_with_rate_bytes_and_failure_ratio() -> None:
    dash = _load(DASHBOARDS / "podwire-service-map.json")
    (graph,) = [p for p in _panels(dash) if p["type"] == "nodeGraph"]
    # Grafana's node graph treats a frame with a `source` field as edges (and derives nodes
    # from it); it needs id/source/target, and shows mainstat/secondarystat/detail__*.
    for t in graph["targets"]:
        assert t["format"] == "table" and t["instant"] is True
        made = uses(substitute_grafana(t["expr"])).made_labels
        assert made == {"id", "source", "target"}, t["refId"]
    renames = next(x for x in graph["transformations"] if x["id"] == "organize")["options"]["renameByName"]
    assert set(renames.values()) == {"mainstat", "secondarystat", "detail__failure_ratio"}
    by_ref = {t["refId"]: uses(substitute_grafana(t["expr"])).metrics for t in graph["targets"]}
    assert by_ref["A"] == {"podwire_tcp_connections_total"}
    assert by_ref["B"] == {"podwire_tcp_bytes_total"}
    assert by_ref["C"] == {"podwire_tcp_connections_total"}  # failed = refused|timeout|reset outcomes
    assert 'outcome=~"refused|timeout|reset"' in graph["targets"][2]["expr"]
    assert "last 5 minutes" not in graph["title"]  # the queries rate over $__rate_interval
    assert {"traces_service_graph_request_total", "traces_service_graph_request_failed_total"} <= _metrics_of(
        DASHBOARDS / "podwire-service-map.json"
    )


def test_workload_traffic_covers_connections_bytes_percentiles_failures_and_resets() -> None:
    path = DASHBOARDS / "podwire-workload-traffic.json"
    dash = _load(path)
    assert {v["name"] for v in dash["templating"]["list"]} >= {"namespace", "workload"}
    assert _metrics_of(path) >= {
        "podwire_tcp_connections_total",
        "podwire_tcp_bytes_total",
        "podwire_tcp_connection_duration_seconds_bucket",
        "podwire_tcp_handshake_duration_seconds_bucket",
        "podwire_tcp_failures_total",
        "podwire_tcp_resets_total",
    }
    exprs = [e for _, e in dashboard_queries(dash)]
    assert sum("histogram_quantile(" in e for e in exprs) == 12  # 3 quantiles x 2 histograms x 2 roles
    assert any("by (client_namespace, client_workload, reason)" in e for e in exprs)
    assert any("sender)" in e for e in exprs)


def test_agent_health_covers_packets_drops_table_evictions_export_and_identity() -> None:
    assert _metrics_of(DASHBOARDS / "podwire-agent-health.json") >= {
        "podwire_agent_packets_total",
        "podwire_agent_kernel_drops_total",
        "podwire_agent_tracker_entries",
        "podwire_agent_tracker_evictions_total",
        "podwire_agent_export_failures_total",
        "podwire_agent_identity_misses_total",
    }


def test_contract_reader_finds_the_documented_prometheus_names() -> None:
    c = load_contract()
    assert {
        "podwire_tcp_connections_total",
        "podwire_tcp_bytes_total",
        "podwire_tcp_connection_duration_seconds_bucket",
        "podwire_agent_tracker_evictions_total",
        "traces_service_graph_request_total",
        "traces_service_graph_request_server_seconds_bucket",
    } <= c.series
    assert {
        "client_workload",
        "client_workload_kind",
        "client_namespace",
        "server_workload",
        "server_workload_kind",
        "server_namespace",
        "server_port",
    } <= c.labels
