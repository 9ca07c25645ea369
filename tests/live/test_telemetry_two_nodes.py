"""Two agents, two nodes, real traffic, one OTLP receiver: exactly once, paired spans, DNAT joined.

node-a: client-a (shop/frontend), server-a (shop/api);  node-b: client-b (batch/report),
server-b (shop/db);  Service shop/server-a 10.96.0.10:80 -> server-a:8080 (DNAT on every node).
The client's node names the ClusterIP connection by its backend (conntrack), with the Service kept.
Each agent is the real `podwire.agent.Agent` (capture in its node namespace, tracker, inventory
identity, telemetry) exporting over gRPC to tests/otlp_receiver.py.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.agent import Agent
from podwire.config import Settings
from podwire.demo.cluster import Cluster
from podwire.demo.inventory import write_inventory
from podwire.telemetry import names as n
from tests.live.harness import client_socket, listener, read_to_eof
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.live

PER_EDGE = 12
SERVICE_IP = "10.96.0.10"


def _serve(sock: socket.socket, stop: threading.Event) -> None:
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
            conn.sendall(b"r" * 700)


def _connect(cluster: Cluster, pod_name: str, address: str, port: int) -> None:
    s = client_socket(cluster, cluster.pod(pod_name))
    with s:
        s.settimeout(5)
        s.connect((address, port))
        s.sendall(b"q" * 300)
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == 700


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver().start()
    try:
        yield rx
    finally:
        rx.stop()


def test_two_agents_count_each_connection_once_and_pair_its_spans_through_dnat(
    two_node_cluster: Cluster, receiver: OtlpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = two_node_cluster
    inventory = write_inventory(cluster, tmp_path / "inventory.yaml")
    for key, value in receiver.env("grpc", 500).items():
        monkeypatch.setenv(key, value)
    agents: list[Agent] = []
    stop = threading.Event()
    servers: list[threading.Thread] = []
    try:
        for node in cluster.nodes:
            settings = Settings(
                listen=("127.0.0.1", 0),
                log_format="console",
                inventory=str(inventory),
                kube="off",
                interface_include=cluster.host_veth_pattern,
                node_name=node.name,
                otlp="on",
            )
            agent = Agent(settings, netns_list=[node.netns])
            agents.append(agent)
            agent.start()
        for pod_name in ("server-a", "server-b"):
            sock = listener(cluster, cluster.pod(pod_name), port=8080)
            t = threading.Thread(target=_serve, args=(sock, stop), daemon=True)
            t.start()
            servers.append(t)
        time.sleep(0.5)  # captures open their rings

        server_a, server_b = cluster.pod("server-a"), cluster.pod("server-b")
        for _ in range(PER_EDGE):
            _connect(cluster, "client-a", server_a.ipv4, 8080)  # same node
            _connect(cluster, "client-a", server_b.ipv4, 8080)  # across nodes
            _connect(cluster, "client-b", SERVICE_IP, 80)  # ClusterIP, DNATed on node-b to node-a

        def edges() -> dict[tuple[str, str], float]:
            for agent in agents:
                agent.telemetry.force_flush(5)
            out: dict[tuple[str, str], float] = {}
            for p in receiver.latest_points_all(n.TCP_CONNECTIONS):
                key = (p.attributes[n.CLIENT_WORKLOAD], p.attributes[n.SERVER_WORKLOAD])
                out[key] = out.get(key, 0) + (p.value or 0)
            return out

        expected = {
            ("frontend", "api"): PER_EDGE,
            ("frontend", "db"): PER_EDGE,
            ("report", "api"): PER_EDGE,  # the ClusterIP, named by the backend its DNAT chose
        }
        receiver.wait_for(lambda: edges() == expected, timeout=30, interval=0.5)
        # exactly once, cluster-wide: same-node seen on two veths, cross-node seen by two agents
        assert edges() == expected
        (via_service,) = [
            p
            for p in receiver.latest_points_all(n.TCP_CONNECTIONS)
            if p.attributes[n.CLIENT_WORKLOAD] == "report"
        ]
        assert via_service.attributes[n.SERVER_WORKLOAD_KIND] == "Deployment"
        assert via_service.attributes[n.SERVER_SERVICE] == "server-a"
        assert via_service.attributes[n.SERVER_PORT] == 80  # the port the client dialled
        assert all(
            n.SERVER_SERVICE not in p.attributes
            for p in receiver.latest_points_all(n.TCP_CONNECTIONS)
            if p.attributes[n.CLIENT_WORKLOAD] == "frontend"
        )
        assert via_service.resource["service.instance.id"] == "node-b"  # the client's node counted it
        bytes_ = receiver.totals(n.TCP_BYTES, n.DIRECTION)  # exact payload bytes, from sequence numbers
        assert bytes_ == {"client_to_server": 300.0 * 3 * PER_EDGE, "server_to_client": 700.0 * 3 * PER_EDGE}

        assert receiver.totals(n.TCP_CONNECTIONS_ACTIVE) == {None: 0}  # +1 at each open, -1 at its close
        assert receiver.totals(n.TCP_HANDSHAKE_DURATION) == {None: 3 * PER_EDGE}
        assert receiver.totals(n.TCP_CONNECTION_DURATION) == {None: 3 * PER_EDGE}
        # the same numbers on each agent's own /metrics (pull mode)
        pulled = 0.0
        for agent in agents:
            host, port = agent.http.address
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("podwire_tcp_connections_total{") and 'outcome="closed"' in line:
                        pulled += float(line.rsplit(" ", 1)[1])
        assert pulled == 3 * PER_EDGE

        def complete() -> dict[bytes, dict[str, object]]:
            pairs = receiver.span_pairs()
            return pairs if sum(len(p) == 2 for p in pairs.values()) >= 3 * PER_EDGE else {}

        pairs = receiver.wait_for(complete, timeout=30, interval=0.5)
        assert len(pairs) == 3 * PER_EDGE
        for pair in pairs.values():
            c, s = pair["client"], pair["server"]
            assert s.parent_span_id == c.span_id and s.trace_id == c.trace_id  # type: ignore[attr-defined]
        dnat = [p for p in pairs.values() if p["client"].attributes["server.address"] == SERVICE_IP]  # type: ignore[attr-defined]
        assert len(dnat) == PER_EDGE
        for pair in dnat:
            c, s = pair["client"], pair["server"]
            # the ClusterIP on the client's side, joined to the backend pod on the server's side
            assert c.resource["service.name"] == "report" and c.resource["k8s.node.name"] == "node-b"  # type: ignore[attr-defined]
            assert s.resource["service.name"] == "api" and s.resource["k8s.pod.name"] == "server-a"  # type: ignore[attr-defined]
            assert s.attributes["server.address"] == server_a.ipv4 and s.attributes["server.port"] == 8080  # type: ignore[attr-defined]
            assert c.attributes["client.port"] == s.attributes["client.port"]  # type: ignore[attr-defined]
            assert c.attributes[n.SERVER_SERVICE] == "server-a"  # type: ignore[attr-defined]
            assert "peer.service" not in c.attributes  # type: ignore[attr-defined]  # the backend sends its own span
        # the service graph draws report -> api (the backend) once per connection
        sg = {
            (p.attributes["client"], p.attributes["server"]): p.value
            for p in receiver.latest_points_all(n.SG_REQUEST)
        }
        assert sg == {
            ("frontend", "api"): PER_EDGE,
            ("frontend", "db"): PER_EDGE,
            ("report", "api"): PER_EDGE,
        }
    finally:
        stop.set()
        for agent in agents:
            agent.stop(5)
        for t in servers:
            t.join(2)
