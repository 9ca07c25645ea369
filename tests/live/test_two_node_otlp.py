"""Two simulated nodes, one real `podwire run` process per node, exporting OTLP to a real receiver.

Connections cross nodes, stay inside a node, and go through a Service ClusterIP (nftables DNAT in the
node namespace). Cluster-wide, every connection must be counted exactly once, and the client and
server spans of every connection must share a trace id, with the server span's parent = the client span
— including the DNATed ones, whose client side only ever saw the ClusterIP.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster
from podwire.demo.inventory import write_inventory
from podwire.telemetry import names as n
from tests.otlp_receiver import OtlpReceiver

from .two_node import EXPECTED_EDGES, REFUSED, SERVICE_IP, Agents, agents, run_plan

pytestmark = pytest.mark.live
__all__ = ["agents"]  # the fixture


def test_two_agents_count_each_connection_once_and_pair_its_spans(
    two_node_cluster: Cluster, agents: Agents, tmp_path: Path
) -> None:
    cluster = two_node_cluster
    inventory = write_inventory(cluster, tmp_path / "inventory.yaml")
    rx = OtlpReceiver().start()
    try:
        agents.start(
            cluster,
            "node-a",
            {**rx.env("grpc"), "PODWIRE_LOG_FORMAT": "json"},
            inventory,
            tmp_path / "agent-a.log",
        )
        agents.start(
            cluster,
            "node-b",
            {**rx.env("http/protobuf"), "PODWIRE_LOG_FORMAT": "json"},
            inventory,
            tmp_path / "agent-b.log",
        )
        agents.wait_ready()
        made = run_plan(cluster)
        total = made.total

        def counted() -> bool:
            return sum(rx.totals(n.TCP_CONNECTIONS).values()) >= total

        rx.wait_for(counted, timeout=20)
        time.sleep(1.5)  # one more export round: nothing may be counted twice later
        by_edge: dict[tuple[str, str, int, str], float] = {}
        for p in rx.latest_points_all(n.TCP_CONNECTIONS):
            a = p.attributes
            key = (a[n.CLIENT_WORKLOAD], a[n.SERVER_WORKLOAD], a[n.SERVER_PORT], a[n.OUTCOME])
            by_edge[key] = by_edge.get(key, 0) + (p.value or 0)
        assert by_edge == EXPECTED_EDGES
        up_bytes: dict[tuple[str, str], float] = {}
        for p in rx.latest_points_all(n.TCP_BYTES):
            a = p.attributes
            key = (f"{a[n.CLIENT_WORKLOAD]}->{a[n.SERVER_WORKLOAD]}:{a[n.SERVER_PORT]}", a[n.DIRECTION])
            up_bytes[key] = up_bytes.get(key, 0) + (p.value or 0)
            assert a.get(n.SERVER_SERVICE) == ("server-a" if a[n.SERVER_PORT] == 80 else None)
        assert up_bytes[("frontend->api:8080", n.CLIENT_TO_SERVER)] == sum(100 + i for i in range(5))
        assert up_bytes[("frontend->api:8080", n.SERVER_TO_CLIENT)] == 5 * 700
        assert up_bytes[("frontend->db:9000", n.SERVER_TO_CLIENT)] == 4 * 900
        assert up_bytes[("report->api:80", n.CLIENT_TO_SERVER)] == sum(400 + i for i in range(6))
        assert up_bytes[("report->api:80", n.SERVER_TO_CLIENT)] == 6 * 700
        sg = rx.totals(n.SG_REQUEST)
        assert sum(sg.values()) == total
        assert sum(rx.totals(n.SG_REQUEST_FAILED).values()) == REFUSED

        # spans: both ends of every established connection, one trace, parent = client span
        # (refused connections too: both veths saw the SYN and the RST)
        def paired() -> bool:
            pairs = rx.span_pairs()
            return sum(1 for p in pairs.values() if "client" in p and "server" in p) >= total

        rx.wait_for(paired, timeout=20)
        pairs = [p for p in rx.span_pairs().values() if "client" in p and "server" in p]
        assert len(pairs) == total
        joined_through_service = 0
        for pair in pairs:
            c, s_ = pair["client"], pair["server"]
            assert s_.parent_span_id == c.span_id
            if c.attributes["server.port"] == 9:
                assert c.status_code == s_.status_code == 2  # ERROR: refused
                continue
            port = c.attributes["client.port"]
            address, up, down = made.by_client[(c.attributes["client.address"], port)]
            assert c.attributes["server.address"] == address
            assert s_.attributes["client.port"] == port
            for span in (c, s_):
                assert span.attributes["podwire.bytes.client_to_server"] == up
                assert span.attributes["podwire.bytes.server_to_client"] == down
            if address == SERVICE_IP:
                # the client saw only the ClusterIP; the server span is the backend pod's
                assert s_.resource["service.name"] == "api"
                assert s_.attributes["server.port"] == 8080
                joined_through_service += 1
        assert joined_through_service == 6
    finally:
        codes = agents.stop()
        rx.stop()
    assert codes == [0, 0], (tmp_path / "agent-a.log").read_text()[-2000:]
