"""The Node Graph API contract against real connections in the network-namespace mini-cluster.

Two nodes, one real Agent each (capture in its node's namespace); node-a's agent fans out to
node-b's.  Traffic, all known exactly:
  frontend (node-a) -> api (node-a):8080    N_API closed (300 B up, 700 B down), N_REFUSED refused (port 9)
  frontend (node-a) -> db (node-b):8080     N_DB closed, the server answers after DB_DELAY_S
  report (node-b)   -> Service shop/server-a 10.96.0.10:80   N_SVC closed: DNATed to api, so an edge
                       to the backend's workload (conntrack tells the client's agent which backend)
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podwire.agent import Agent
from podwire.config import Settings
from podwire.demo.cluster import Cluster, ClusterSpec
from podwire.demo.inventory import write_inventory
from tests.live.conftest import TWO_NODE_SPEC
from tests.live.harness import client_socket, listener, read_to_eof

pytestmark = pytest.mark.live

N_API, N_REFUSED, N_DB, N_SVC = 6, 3, 4, 5
DB_DELAY_S = 0.3
SERVICE_IP = "10.96.0.10"
API, DB, SVC = "shop/frontend->shop/api", "shop/frontend->shop/db", "batch/report->shop/api"


@dataclass
class World:
    cluster: Cluster
    a: Agent
    b: Agent
    t_before: float
    t_after: float

    def url(self, agent: Agent, path: str, **query: str) -> str:
        host, port = agent.http.address
        return f"http://{host}:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")

    def get(self, path: str, agent: Agent | None = None, **query: str) -> Any:
        with urllib.request.urlopen(self.url(agent or self.a, path, **query), timeout=20) as r:
            assert r.headers["Content-Type"].startswith("application/json")
            return json.load(r)


def _serve(sock: socket.socket, stop: threading.Event, delay: float) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            read_to_eof(conn)
            time.sleep(delay)
            conn.sendall(b"r" * 700)


def _connect(cluster: Cluster, pod_name: str, address: str, port: int) -> None:
    with client_socket(cluster, cluster.pod(pod_name)) as s:
        s.settimeout(5)
        s.connect((address, port))
        s.sendall(b"q" * 300)
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == 700


def _refused(cluster: Cluster, pod_name: str, address: str) -> None:
    with client_socket(cluster, cluster.pod(pod_name)) as s:
        s.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            s.connect((address, 9))


@pytest.fixture(scope="module")
def world(module_cluster_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    spec: ClusterSpec = TWO_NODE_SPEC
    cluster = module_cluster_factory(spec)
    inventory = write_inventory(cluster, Path(tmp_path_factory.mktemp("views")) / "inventory.yaml")

    def settings(node: str, peers: tuple[str, ...] = ()) -> Settings:
        return Settings(
            listen=("127.0.0.1", 0),
            log_format="console",
            inventory=str(inventory),
            kube="off",
            interface_include=cluster.host_veth_pattern,
            node_name=node,
            otlp="off",
            views_peers=peers,
        )

    stop = threading.Event()
    agents: list[Agent] = []
    try:
        b = Agent(settings("node-b"), netns_list=[cluster.node("node-b").netns])
        agents.append(b)
        b.start()
        host, port = b.http.address
        a = Agent(settings("node-a", (f"{host}:{port}",)), netns_list=[cluster.node("node-a").netns])
        agents.append(a)
        a.start()
        for pod_name, delay in (("server-a", 0.0), ("server-b", DB_DELAY_S)):
            sock = listener(cluster, cluster.pod(pod_name), port=8080)
            threading.Thread(target=_serve, args=(sock, stop, delay), daemon=True).start()
        time.sleep(0.5)  # captures open their rings
        t_before = time.time()
        api, db = cluster.pod("server-a").ipv4, cluster.pod("server-b").ipv4
        for _ in range(N_API):
            _connect(cluster, "client-a", api, 8080)
        for _ in range(N_REFUSED):
            _refused(cluster, "client-a", api)
        for _ in range(N_DB):
            _connect(cluster, "client-a", db, 8080)
        for _ in range(N_SVC):
            _connect(cluster, "client-b", SERVICE_IP, 80)
        world = World(cluster, a, b, t_before, 0.0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            closed = {e["id"]: e["detail__closed"] for e in world.get("/nodegraph/api/graph/data")["edges"]}
            if closed == {API: N_API, DB: N_DB, SVC: N_SVC}:
                break
            time.sleep(0.5)
        world.t_after = time.time()
        yield world
    finally:
        stop.set()
        for agent in agents:
            agent.stop(5)


def test_health_answers_200(world: World) -> None:
    with urllib.request.urlopen(world.url(world.a, "/nodegraph/api/health"), timeout=5) as r:
        assert r.status == 200


def test_connection_mode_counts_established_closed_failed_once_cluster_wide(world: World) -> None:
    body = world.get("/nodegraph/api/graph/data", **{"stats-type": "connection"})
    assert body["partial"] is False and [p["ok"] for p in body["peers"]] == [True]
    edges = {e["id"]: e for e in body["edges"]}
    assert set(edges) == {API, DB, SVC}
    api = edges[API]
    assert (api["detail__established"], api["detail__closed"], api["detail__failed"]) == (
        N_API,
        N_API,
        N_REFUSED,
    )
    assert api["detail__failure_ratio"] == pytest.approx(N_REFUSED / (N_API + N_REFUSED), abs=1e-6)
    assert api["mainStat"] == f"established: {N_API}"
    assert api["secondaryStat"] == f"failed: {N_REFUSED} ({N_REFUSED / (N_API + N_REFUSED):.0%})"
    assert (edges[DB]["detail__closed"], edges[SVC]["detail__closed"]) == (N_DB, N_SVC)
    assert edges[SVC]["source"] == "batch/report" and edges[SVC]["target"] == "shop/api"
    nodes = {n["id"]: n for n in body["nodes"]}
    assert nodes["shop/frontend"]["title"] == "frontend"
    assert nodes["shop/frontend"]["subTitle"] == "shop Deployment"
    assert nodes["shop/db"]["subTitle"] == "shop StatefulSet"
    for n in nodes.values():  # arcs are fractions that add up to 1
        assert sum(n[k] for k in ("arc__closed", "arc__failed", "arc__open")) == pytest.approx(1.0, abs=1e-5)
    assert nodes["shop/api"]["arc__failed"] == pytest.approx(
        N_REFUSED / (N_API + N_REFUSED + N_SVC), abs=1e-5
    )


def test_bytes_mode_gives_exact_bytes_and_rates_in_bytes_per_second(world: World) -> None:
    frm, to = int(world.t_before * 1000) - 1000, int(world.t_after * 1000) + 1  # `to` is in the past
    body = world.get("/nodegraph/api/graph/data", **{"stats-type": "bytes", "from": str(frm), "to": str(to)})
    span = (to - frm) / 1000
    assert body["span_s"] == pytest.approx(span, abs=1e-3)
    for edge_id, n in ((API, N_API), (DB, N_DB), (SVC, N_SVC)):
        e = next(e for e in body["edges"] if e["id"] == edge_id)
        assert (e["detail__bytes_sent"], e["detail__bytes_received"]) == (300 * n, 700 * n)
        assert e["detail__bytes_sent_per_s"] == pytest.approx(300 * n / span, rel=1e-5)
        assert e["detail__bytes_received_per_s"] == pytest.approx(700 * n / span, rel=1e-5)
        assert e["mainStat"].startswith("sent: ") and e["mainStat"].endswith("B/s")


def test_duration_mode_is_in_seconds(world: World) -> None:
    body = world.get("/nodegraph/api/graph/data", **{"stats-type": "duration"})
    db = next(e for e in body["edges"] if e["id"] == DB)
    # the server held each connection DB_DELAY_S: seconds, not milliseconds (k8spacket's unit)
    assert DB_DELAY_S <= db["detail__duration_avg_s"] <= db["detail__duration_max_s"] < DB_DELAY_S + 0.5
    assert db["mainStat"].startswith("avg: ") and db["mainStat"].endswith(" ms")
    api = next(e for e in body["edges"] if e["id"] == API)
    assert 0 < api["detail__duration_avg_s"] < DB_DELAY_S


def test_fields_per_mode_follow_the_node_graph_contract(world: World) -> None:
    for mode, main in (
        ("connection", "Established"),
        ("bytes", "Sent (B/s)"),
        ("duration", "Average duration (s)"),
    ):
        f = world.get("/nodegraph/api/graph/fields", **{"stats-type": mode})
        edges = {x["field_name"]: x for x in f["edges_fields"]}
        nodes = {x["field_name"]: x for x in f["nodes_fields"]}
        assert {"id", "source", "target", "mainStat", "secondaryStat"} <= set(edges)
        assert {"id", "title", "subTitle", "mainStat", "secondaryStat"} <= set(nodes)
        assert nodes["mainStat"]["displayName"] == main
        arcs = [x for x in f["nodes_fields"] if x["field_name"].startswith("arc__")]
        assert arcs and all(x["type"] == "number" and x["color"] for x in arcs)
        # every field the data carries is declared, with its type
        data = world.get("/nodegraph/api/graph/data", **{"stats-type": mode})
        for frame, declared in (("edges", edges), ("nodes", nodes)):
            for row in data[frame]:
                assert set(row) == set(declared)
                for k, v in row.items():
                    assert isinstance(v, str) == (declared[k]["type"] == "string"), (k, v)


def test_filters_namespace_include_exclude_and_time(world: World) -> None:
    def ids(**q: str) -> set[str]:
        return {e["id"] for e in world.get("/nodegraph/api/graph/data", **q)["edges"]}

    assert ids(namespace="^batch$") == {SVC}
    assert ids(namespace="shop") == {API, DB, SVC}  # either end's namespace
    assert ids(include="db") == {DB}
    assert ids(include="^batch/") == {SVC}
    assert ids(exclude="api") == {DB}  # either end
    assert ids(exclude="frontend", include="report") == {SVC}
    assert ids(**{"from": str(int(world.t_after * 1000) + 60_000)}) == set()
    assert ids(to=str(int(world.t_before * 1000) - 60_000)) == set()
    assert ids(**{"from": str(int(world.t_before * 1000) - 1000)}) == {API, DB, SVC}
    for bad in ({"include": "("}, {"namespace": "[a-"}, {"from": "yesterday"}, {"stats-type": "packets"}):
        with pytest.raises(urllib.error.HTTPError) as err:
            world.get("/nodegraph/api/graph/data", **bad)
        assert err.value.code == 400
        assert "error" in json.load(err.value)


def test_connections_are_k8spacket_items_and_local_to_each_agent(world: World) -> None:
    a = {(i["src"], i["dst"]): i for i in world.get("/nodegraph/connections")}
    b = {(i["src"], i["dst"]): i for i in world.get("/nodegraph/connections", world.b)}
    # each agent lists what it counts: frontend's edges on node-a, report's on node-b (not db's server side)
    assert set(a) == {("shop/frontend", "shop/api"), ("shop/frontend", "shop/db")}
    assert set(b) == {("batch/report", "shop/api")}
    item = a[("shop/frontend", "shop/db")]
    for key in (
        "src",
        "srcName",
        "srcNamespace",
        "dst",
        "dstName",
        "dstNamespace",
        "connCount",
        "connPersistent",
        "bytesSent",
        "bytesReceived",
        "duration",
        "maxDuration",
        "lastSeen",
    ):
        assert key in item
    assert (item["srcName"], item["srcNamespace"], item["dstName"]) == ("frontend", "shop", "db")
    assert (item["connCount"], item["connPersistent"]) == (N_DB, 0)
    assert (item["bytesSent"], item["bytesReceived"]) == (300 * N_DB, 700 * N_DB)
    assert DB_DELAY_S * N_DB <= item["duration"] < (DB_DELAY_S + 0.5) * N_DB  # seconds
    assert item["lastSeen"].endswith("Z")
    assert world.get("/nodegraph/connections", namespace="^batch$") == []


def test_edge_click_through_lists_the_recent_connections_across_agents(world: World) -> None:
    body = world.get("/nodegraph/api/edge", source="batch/report", target="shop/api")
    assert body["partial"] is False and len(body["connections"]) == N_SVC  # they live on node-b's agent
    for c in body["connections"]:
        assert c["server"]["address"] == SERVICE_IP and c["server"]["port"] == 80
        assert (c["bytes_client_to_server"], c["bytes_server_to_client"], c["outcome"]) == (
            300,
            700,
            "closed",
        )
    refused = world.get("/nodegraph/api/edge", source="shop/frontend", target="shop/api", limit="50")
    outcomes = sorted(c["outcome"] for c in refused["connections"])
    assert outcomes == ["closed"] * N_API + ["refused"] * N_REFUSED


def test_the_page_is_self_contained(world: World) -> None:
    with urllib.request.urlopen(world.url(world.a, "/"), timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        html = r.read().decode()
    assert "nodegraph/api/graph/data" in html
    # no external fetch: no script or stylesheet sources, and the only absolute URL is SVG's namespace name
    assert "<script src" not in html and "<link" not in html
    assert [u for u in ("http://", "https://") for _ in range(html.count(u))] == ["http://"]
    assert 'SVGNS = "http://www.w3.org/2000/svg"' in html


def test_the_store_and_the_listener_report_on_metrics(world: World) -> None:
    with urllib.request.urlopen(world.url(world.a, "/metrics"), timeout=10) as r:
        text = r.read().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("podwire_agent_views_", "podwire_agent_http_"))
    }
    # node-a's agent holds frontend's connections: N_API + N_REFUSED + N_DB (node-b holds report's)
    assert values["podwire_agent_views_connections"] == N_API + N_REFUSED + N_DB
    for reason in ("age", "size", "edges"):
        assert values[f'podwire_agent_views_evictions_total{{reason="{reason}"}}'] == 0
    for reason in ("idlest_at_cap", "refused_at_cap", "timeout", "bad_request", "accept_error"):
        assert f'podwire_agent_http_connections_closed_total{{reason="{reason}"}}' in values
