"""Services named by their backend: conntrack on the client's node, real nftables DNAT, two backends.

node-a: client (shop/frontend), blue (shop/api-blue), green (shop/api-green); Service shop/api
10.96.0.20:80 -> blue:8080 and green:8080 in turn (nftables numgen, like kube-proxy's nftables mode).
The agent is the real `podwire.agent.Agent`; the truth is what each backend's listener accepted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.agent import Agent, CollectingSink
from podwire.config import Settings
from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec, ServiceSpec
from podwire.demo.inventory import write_inventory
from podwire.model import IdentityKind, Side
from tests.live.harness import client_socket, listener, read_to_eof

pytestmark = pytest.mark.live

SERVICE_IP = "10.96.0.20"
CONNECTIONS = 10

SPEC = ClusterSpec(
    nodes=(
        NodeSpec(
            "node-a",
            (
                PodSpec("client", namespace="shop", workload="frontend", workload_kind="Deployment"),
                PodSpec("blue", namespace="shop", workload="api-blue", workload_kind="Deployment"),
                PodSpec("green", namespace="shop", workload="api-green", workload_kind="Deployment"),
            ),
        ),
    ),
    services=(ServiceSpec("api", "shop", SERVICE_IP, 80, "blue", 8080, more_backends=("green",)),),
)


class Backend:
    """A listener in a pod that counts the connections it accepted and answers 500 bytes."""

    def __init__(self, cluster: Cluster, pod: str) -> None:
        self.accepted = 0
        self._sock = listener(cluster, cluster.pod(pod), port=8080)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1  # before the answer: the client returns once it has read it
            with conn:
                read_to_eof(conn)
                conn.sendall(b"b" * 500)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@pytest.fixture
def cluster(cluster_factory) -> Cluster:  # type: ignore[no-untyped-def]
    return cluster_factory(SPEC)


@pytest.fixture
def backends(cluster: Cluster) -> Iterator[dict[str, Backend]]:
    made = {name: Backend(cluster, name) for name in ("blue", "green")}
    try:
        yield made
    finally:
        for b in made.values():
            b.stop()


def _dial_service(cluster: Cluster, n: int) -> None:
    for _ in range(n):
        s = client_socket(cluster, cluster.pod("client"))
        with s:
            s.settimeout(5)
            s.connect((SERVICE_IP, 80))
            s.sendall(b"q" * 200)
            s.shutdown(socket.SHUT_WR)
            assert read_to_eof(s) == 500


def _metric_lines(address: tuple[str, int], name: str) -> list[str]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
        return [line for line in r.read().decode().splitlines() if line.startswith((name + "{", name + " "))]


def _closed_by_edge(lines: list[str]) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for line in lines:
        if 'outcome="closed"' not in line:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        key = (labels["server_workload"], labels["server_workload_kind"], labels.get("server_service", ""))
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _agent(cluster: Cluster, tmp_path: Path, **changes: object) -> tuple[Agent, CollectingSink]:
    settings = Settings(
        listen=("127.0.0.1", 0),
        log_format="console",
        inventory=str(write_inventory(cluster, tmp_path / "inventory.yaml")),
        kube="off",
        interface_include=cluster.host_veth_pattern,
        node_name="node-a",
    ).replace(**changes)
    sink = CollectingSink()
    agent = Agent(settings, netns_list=[cluster.node("node-a").netns], extra_sinks=[sink])
    return agent, sink


def test_connections_to_a_clusterip_are_edges_to_the_backend_the_dnat_chose(
    cluster: Cluster, backends: dict[str, Backend], tmp_path: Path
) -> None:
    agent, sink = _agent(cluster, tmp_path)
    agent.start()
    try:
        time.sleep(0.5)  # the capture opens its ring
        _dial_service(cluster, CONNECTIONS)
        expected = {
            ("api-blue", "Deployment", "api"): float(backends["blue"].accepted),
            ("api-green", "Deployment", "api"): float(backends["green"].accepted),
        }
        assert sum(expected.values()) == CONNECTIONS and all(expected.values())  # both backends were used
        deadline = time.monotonic() + 20
        while _closed_by_edge(_metric_lines(agent.http.address, "podwire_tcp_connections_total")) != expected:
            assert time.monotonic() < deadline, _metric_lines(
                agent.http.address, "podwire_tcp_connections_total"
            )
            time.sleep(0.2)
        # nothing is left on the Service edge, and the active gauge came back to 0 on each backend edge
        active = _metric_lines(agent.http.address, "podwire_tcp_connections_active")
        assert active and all(line.endswith(" 0") or line.endswith(" 0.0") for line in active), active
        looked_up = {
            dict(re.findall(r'(\w+)="([^"]*)"', line))["result"]: float(line.rsplit(" ", 1)[1])
            for line in _metric_lines(agent.http.address, "podwire_agent_service_backends_total")
        }
        assert looked_up["found"] >= CONNECTIONS and looked_up["unavailable"] == 0
        # each record at the client's veth names the backend that really served it (by its address)
        client_side = [c for c in sink.connections if c.record.observed_side is Side.CLIENT]
        assert len(client_side) == CONNECTIONS
        by_ip = {cluster.pod(p).ipv4: p for p in ("blue", "green")}
        for conn in client_side:
            assert conn.record.server.address == SERVICE_IP  # the wire truth stays in the record
            assert conn.server.kind is IdentityKind.POD and conn.server.service == "api"
            assert conn.server.name in by_ip.values()
        served = {p: sum(c.server.name == p for c in client_side) for p in ("blue", "green")}
        assert served == {"blue": backends["blue"].accepted, "green": backends["green"].accepted}
    finally:
        agent.stop(5)


def test_without_service_backends_the_service_stays_the_edge(
    cluster: Cluster, backends: dict[str, Backend], tmp_path: Path
) -> None:
    agent, _sink = _agent(cluster, tmp_path, service_backends=False)
    agent.start()
    try:
        time.sleep(0.5)
        _dial_service(cluster, 4)
        expected = {("api", "service", ""): 4.0}
        deadline = time.monotonic() + 20
        while _closed_by_edge(_metric_lines(agent.http.address, "podwire_tcp_connections_total")) != expected:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        agent.stop(5)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_no_cap_net_admin_falls_back_to_the_service_and_says_so(
    cluster: Cluster, backends: dict[str, Backend], tmp_path: Path
) -> None:
    """A real `podwire run` without CAP_NET_ADMIN: one warning, the Service edge, lookups counted."""
    inventory = write_inventory(cluster, tmp_path / "inventory.yaml")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PODWIRE_LISTEN": f"127.0.0.1:{port}",
        "PODWIRE_NETNS": cluster.node("node-a").netns,
        "PODWIRE_INVENTORY": str(inventory),
        "PODWIRE_KUBE": "off",
        "PODWIRE_INTERFACE_INCLUDE": cluster.host_veth_pattern,
        "PODWIRE_LOG_FORMAT": "json",
    }
    drop = "-net_admin"
    argv = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-m", "podwire", "run"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if _metric_lines(("127.0.0.1", port), "podwire_agent_interfaces"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
        _dial_service(cluster, 3)
        deadline = time.monotonic() + 20
        expected = {("api", "service", ""): 3.0}
        while (
            _closed_by_edge(_metric_lines(("127.0.0.1", port), "podwire_tcp_connections_total")) != expected
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        results = {
            dict(re.findall(r'(\w+)="([^"]*)"', line))["result"]: float(line.rsplit(" ", 1)[1])
            for line in _metric_lines(("127.0.0.1", port), "podwire_agent_service_backends_total")
        }
        assert results["unavailable"] >= 3 and results["found"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    warnings = [line for line in err.splitlines() if "conntrack is unavailable" in line]
    assert len(warnings) == 1 and "CAP_NET_ADMIN" in warnings[0], err[-2000:]
