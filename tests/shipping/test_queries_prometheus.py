"""Every dashboard query and alert expression runs without error on a real Prometheus
(Debian's, backfilled by promtool with synthetic series under podwire's contract names)
and returns data; the node-graph query yields the id/source/target fields Grafana needs,
and the alerts pick exactly the edge and agent that misbehave in the data."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.shipping import prom_data
from tests.shipping.dashboard_queries import all_dashboard_queries
from tests.shipping.prometheus_server import Prometheus, running
from tests.shipping.promql_names import substitute_grafana

REPO = Path(__file__).resolve().parents[2]
MINUTES = 30


@pytest.fixture(scope="module")
def backfilled(
    tmp_path_factory: pytest.TempPathFactory, promtool: Path, prometheus_bin: Path
) -> Iterator[tuple[Prometheus, float]]:
    work = tmp_path_factory.mktemp("prom")
    # Whole-hour-aligned past window, so the block is not in the head's range.
    end = int(time.time()) // 3600 * 3600 - 3600
    start = end - MINUTES * 60
    src = prom_data.write(work / "data.om", start, MINUTES)
    (work / "data").mkdir()
    proc = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", src, work / "data"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with running(prometheus_bin, work) as prom:
        yield prom, float(end)


def test_every_dashboard_query_runs_and_returns_data(backfilled: tuple[Prometheus, float]) -> None:
    prom, at = backfilled
    empty = []
    queries = all_dashboard_queries()
    assert len(queries) > 40
    for where, expr in queries:
        if not prom.query(substitute_grafana(expr), at):
            empty.append(where)
    assert empty == []


def test_node_graph_edges_carry_id_source_target_and_the_failure_ratio(
    backfilled: tuple[Prometheus, float],
) -> None:
    prom, at = backfilled
    dash = json.loads((REPO / "dashboards" / "podwire-service-map.json").read_text())
    (graph,) = [p for p in dash["panels"] if p["type"] == "nodeGraph"]
    rows = {}
    for t in graph["targets"]:
        for series in prom.query(substitute_grafana(t["expr"]), at):
            m = series["metric"]
            rows.setdefault(m["id"], {})[t["refId"]] = float(series["value"][1])
            assert m["id"] == f"{m['source']} > {m['target']}"
    assert set(rows) == {
        "shop/frontend > shop/cart",
        "shop/frontend > shop/catalog",
        "ops/prober > shop/cart",
        "shop/frontend > partner-api",  # an external: its bare name, no "/"
    }
    cart = rows["shop/frontend > shop/cart"]
    assert cart["A"] == pytest.approx(2.0, rel=0.02)  # connections/s
    assert cart["B"] == pytest.approx(2.0 * 9300, rel=0.02)  # bytes/s both ways
    assert cart["C"] == pytest.approx(0.1, rel=0.02)  # failed ratio
    assert rows["shop/frontend > shop/catalog"]["C"] == 0.0  # no failures: 0, not missing
    # resets fail the edge as in the service graph (traces_service_graph_request_failed_total)
    assert rows["ops/prober > shop/cart"]["C"] == pytest.approx(0.2 / 0.5, rel=0.02)


def test_alert_expressions_run_and_select_the_misbehaving_edge_and_agent(
    backfilled: tuple[Prometheus, float],
) -> None:
    prom, at = backfilled
    doc = yaml.safe_load((REPO / "alerts" / "podwire-rules.yaml").read_text())
    got = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            got[rule["alert"]] = [s["metric"] for s in prom.query(rule["expr"], at)]
    (edge,) = got["PodwireEdgeConnectionFailureRatioHigh"]
    assert (edge["client_workload"], edge["server_workload"], edge["server_port"]) == (
        "frontend",
        "cart",
        "8080",
    )
    assert [m["instance"] for m in got["PodwireAgentKernelDrops"]] == ["10.0.0.2:9477"]
    # steady resets are no spike; both agents are up
    assert got["PodwireEdgeResetSpike"] == []
    assert got["PodwireAgentDown"] == []
    assert got["PodwireAgentAbsent"] == []
