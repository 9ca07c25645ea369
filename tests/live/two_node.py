"""Two simulated nodes with one real `podwire run` process each, and a fixed plan of connections.

Shared by the OTLP-receiver test (tests/live) and the real-collector test (tests/shipping).
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
from dataclasses import dataclass
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster, Pod

from .harness import client_socket, listener, read_to_eof, send_all_and_count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agents:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}

    def start(self, cluster: Cluster, node: str, env: dict[str, str], inventory: Path, log: Path) -> None:
        port = free_port()
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

    def wait_ready(self, timeout: float = 60.0) -> None:  # start-up is slow on a loaded 2-core machine
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


SERVICE_IP = "10.96.0.10"  # two_node_cluster's Service shop/server-a -> server-a:8080
REFUSED = 2

# the edges the plan makes: (client workload, server workload, server port, outcome) -> connections
EXPECTED_EDGES = {
    ("frontend", "api", 8080, "closed"): 5,
    ("frontend", "db", 9000, "closed"): 4,
    ("report", "api", 8080, "closed"): 3,
    ("report", "api", 80, "closed"): 6,  # via the ClusterIP: named by its backend (conntrack)
    ("report", "db", 9, "refused"): REFUSED,
}


@dataclass(frozen=True)
class Made:
    """What the plan's client sockets really did: (client address, client port) -> (address dialled,
    bytes up, bytes down).  Two client pods may well pick the same ephemeral port."""

    by_client: dict[tuple[str, int], tuple[str, int, int]]
    total: int


def run_plan(cluster: Cluster) -> Made:
    """Same node, both ways across nodes, through the Service's DNAT, and refused: exact bytes each."""
    ca, sa, cb, sb = (cluster.pod(p) for p in ("client-a", "server-a", "client-b", "server-b"))
    api = listener(cluster, sa, port=8080)  # server-a: workload "api", behind the Service
    db = listener(cluster, sb, port=9000)  # server-b: workload "db"
    _serve_forever(api, 700)
    _serve_forever(db, 900)
    plan: list[tuple[Pod, str, int, int]] = [
        *[(ca, sa.ipv4, 8080, 100 + i) for i in range(5)],  # same node
        *[(ca, sb.ipv4, 9000, 200 + i) for i in range(4)],  # a -> b
        *[(cb, sa.ipv4, 8080, 300 + i) for i in range(3)],  # b -> a
        *[(cb, SERVICE_IP, 80, 400 + i) for i in range(6)],  # b -> Service -> a
    ]
    made: dict[tuple[str, int], tuple[str, int, int]] = {}
    for pod, address, port, up in plan:
        s = client_socket(cluster, pod)
        s.settimeout(10)
        s.connect((address, port))
        send_all_and_count(s, up)
        s.shutdown(socket.SHUT_WR)
        down = read_to_eof(s)
        client_address, client_port = s.getsockname()[:2]
        made[(client_address, client_port)] = (address, up, down)
        s.close()
    for _ in range(REFUSED):  # nothing listens on server-b:9
        s = client_socket(cluster, cb)
        with pytest.raises(ConnectionRefusedError):
            s.connect((sb.ipv4, 9))
        s.close()
    assert len(made) == len(plan)  # every connection kept apart
    return Made(made, len(plan) + REFUSED)
