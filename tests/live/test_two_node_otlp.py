"""Two simulated nodes, one real `podwire run` process per node, exporting OTLP to a real receiver.

Connections cross nodes, stay inside a node, and go through a Service ClusterIP (nftables DNAT in the
node namespace). Cluster-wide, every connection must be counted exactly once, and the client and
server spans of every connection must share a trace id, with the server span's parent = the client span
— including the DNATed ones, whose client side only ever saw the ClusterIP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster
from podwire.demo.inventory import write_inventory
from podwire.telemetry import names as n
from tests.otlp_receiver import OtlpReceiver

from .harness import client_socket, listener, read_to_eof, send_all_and_count

pytestmark = pytest.mark.live


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agents:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}

    def start(self, cluster: Cluster, node: str, env: dict[str, str], inventory: Path, log: Path) -> None:
        port = _free_port()
        argv = [
            sys.executable,
            "-m",
            "podwire",
            "run",
            "--netns",
            cluster.node(node).netns,
            "--inventory",
            str(inventory),
            "--kube",
            "off",
            "--node-name",
            node,
            "--interface-include",
            cluster.host_veth_pattern,
            "--listen",
            f"127.0.0.1:{port}",
        ]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
        full_env.update(env)
        self.procs.append(
            subprocess.Popen(argv, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        )
        self.ports[node] = port

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.request

        for node, port in self.ports.items():
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert all(p.poll() is None for p in self.procs), f"an agent died (node {node})"
                assert time.monotonic() < deadline, f"agent on {node} never became ready"
                time.sleep(0.1)

    def stop(self) -> list[int]:
        codes = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                codes.append(p.wait(15))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


@pytest.fixture
def agents() -> Iterator[Agents]:
    a = Agents()
    try:
        yield a
    finally:
        a.stop()


def _serve_forever(lsock: socket.socket, reply: int) -> None:
    def loop() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with conn:
                try:
                    read_to_eof(conn)
                    send_all_and_count(conn, reply)
                except OSError:
                    pass

    threading.Thread(target=loop, daemon=True).start()


def test_two_agents_count_each_connection_once_and_pair_its_spans(
    two_node_cluster: Cluster, agents: Agents, tmp_path: Path
) -> None:
    cluster = two_node_cluster
    ca, sa, cb, sb = (cluster.pod(p) for p in ("client-a", "server-a", "client-b", "server-b"))
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
        api = listener(cluster, sa, port=8080)  # server-a: workload "api", behind the Service
        db = listener(cluster, sb, port=9000)  # server-b: workload "db"
        _serve_forever(api, 700)
        _serve_forever(db, 900)
        plan = [
            # (client pod, target address, port, bytes up, expected server workload, server port label)
            *[(ca, sa.ipv4, 8080, 100 + i, "api", 8080) for i in range(5)],  # same node
            *[(ca, sb.ipv4, 9000, 200 + i, "db", 9000) for i in range(4)],  # a -> b
            *[(cb, sa.ipv4, 8080, 300 + i, "api", 8080) for i in range(3)],  # b -> a
            *[(cb, "10.96.0.10", 80, 400 + i, "server-a", 80) for i in range(6)],  # b -> Service -> a
        ]
        client_ports: dict[int, tuple[str, int, int]] = {}
        for pod, address, port, up, _wl, _p in plan:
            s = client_socket(cluster, pod)
            s.settimeout(10)
            s.connect((address, port))
            send_all_and_count(s, up)
            s.shutdown(socket.SHUT_WR)
            down = read_to_eof(s)
            client_ports[s.getsockname()[1]] = (address, up, down)
            s.close()
        for _ in range(2):  # refused: nothing listens on server-b:9
            s = client_socket(cluster, cb)
            with pytest.raises(ConnectionRefusedError):
                s.connect((sb.ipv4, 9))
            s.close()
        total = len(plan) + 2

        def counted() -> bool:
            return sum(rx.totals(n.TCP_CONNECTIONS).values()) >= total

        rx.wait_for(counted, timeout=20)
        time.sleep(1.5)  # one more export round: nothing may be counted twice later
        by_edge: dict[tuple[str, str, int, str], float] = {}
        for p in rx.latest_points_all(n.TCP_CONNECTIONS):
            a = p.attributes
            key = (a[n.CLIENT_WORKLOAD], a[n.SERVER_WORKLOAD], a[n.SERVER_PORT], a[n.OUTCOME])
            by_edge[key] = by_edge.get(key, 0) + (p.value or 0)
        assert by_edge == {
            ("frontend", "api", 8080, "closed"): 5,
            ("frontend", "db", 9000, "closed"): 4,
            ("report", "api", 8080, "closed"): 3,
            ("report", "server-a", 80, "closed"): 6,
            ("report", "db", 9, "refused"): 2,
        }
        up_bytes: dict[tuple[str, str], float] = {}
        for p in rx.latest_points_all(n.TCP_BYTES):
            a = p.attributes
            key = (a[n.CLIENT_WORKLOAD] + "->" + a[n.SERVER_WORKLOAD], a[n.DIRECTION])
            up_bytes[key] = up_bytes.get(key, 0) + (p.value or 0)
        assert up_bytes[("frontend->api", n.CLIENT_TO_SERVER)] == sum(100 + i for i in range(5))
        assert up_bytes[("frontend->api", n.SERVER_TO_CLIENT)] == 5 * 700
        assert up_bytes[("frontend->db", n.SERVER_TO_CLIENT)] == 4 * 900
        assert up_bytes[("report->server-a", n.CLIENT_TO_SERVER)] == sum(400 + i for i in range(6))
        assert up_bytes[("report->server-a", n.SERVER_TO_CLIENT)] == 6 * 700
        sg = rx.totals(n.SG_REQUEST)
        assert sum(sg.values()) == total
        assert sum(rx.totals(n.SG_REQUEST_FAILED).values()) == 2

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
            address, up, down = client_ports[port]
            assert c.attributes["server.address"] == address
            assert s_.attributes["client.port"] == port
            assert c.attributes.get("podwire.bytes.client_to_server", up) == up
            if address == "10.96.0.10":
                # the client saw only the ClusterIP; the server span is the backend pod's
                assert s_.resource["service.name"] == "api"
                assert s_.attributes["server.port"] == 8080
                joined_through_service += 1
        assert joined_through_service == 6
    finally:
        codes = agents.stop()
        rx.stop()
    assert codes == [0, 0], (tmp_path / "agent-a.log").read_text()[-2000:]
