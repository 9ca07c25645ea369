"""SIGTERM in the middle of connection churn: every connection that closed before the signal is
exported by the real `podwire run` process (its last OTLP export, to tests/otlp_receiver.py).

Client threads in a pod make whole connections back to back, up to the signal (connections are in
flight when it arrives).  The ring's retire time is longer than the default (1.5 s, a valid setting)
and the rate low enough that a block does not fill meanwhile, so the block the kernel is filling
holds the last connections for sure: the test waits until the agent's /metrics moves (a block was
just read), lets 0.4 s of connections close, notes how many had closed, and sends SIGTERM.  Every one
of them must be in the agent's last export (and nothing the clients never made).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster
from podwire.demo.inventory import write_inventory
from podwire.telemetry import names as n
from tests.otlp_receiver import OtlpReceiver

from .bridged import Server, connection_counts, exchange, scrape, wait_until
from .two_node import Agents, agents

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]
__all__ = ["agents"]  # the fixture

CHURN_S = 3.0
THREADS = 2
PAUSE_S = 0.04  # ~40 connections/s: a 128 KiB ring block holds several seconds of them
RETIRE_MS = 1500
PORT = 8080


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver().start()
    try:
        yield rx
    finally:
        rx.stop()


# a short retire time, and a long one (a valid setting): the kernel hands the last block over only
# seconds after the signal
@pytest.mark.parametrize("retire_ms", [RETIRE_MS, 8000])
def test_every_connection_closed_before_sigterm_is_exported(
    two_pod_cluster: Cluster, agents: Agents, receiver: OtlpReceiver, tmp_path: Path, retire_ms: int
) -> None:
    cluster = two_pod_cluster
    client, srv = cluster.pod("client"), cluster.pod("server")
    inventory = write_inventory(cluster, tmp_path / "inventory.yaml")
    server = Server(srv.netns, srv.ipv4, PORT, 500)
    env = {
        **receiver.env("http/protobuf", interval_ms=1000),
        "PODWIRE_LOG_FORMAT": "json",
        "PODWIRE_SPANS": "false",  # the last export is the metrics one; spans would only slow shutdown
        "PODWIRE_RING_RETIRE_MS": str(retire_ms),
    }
    made = [0] * THREADS
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(i: int) -> None:
        try:
            while not stop.is_set():
                exchange(client.netns, server)
                made[i] += 1
                stop.wait(PAUSE_S)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,), daemon=True) for i in range(THREADS)]
    try:
        agents.start(cluster, "node-a", env, inventory, tmp_path / "agent.log")
        agents.wait_ready()
        for t in threads:
            t.start()
        time.sleep(CHURN_S)
        port = agents.ports["node-a"]
        seen = sum(connection_counts(scrape(port)).values())
        # the agent's count moves when a ring block was read; a new one starts with the next packet
        assert wait_until(
            lambda: sum(connection_counts(scrape(port)).values()) != seen, 3 * retire_ms / 1000, 0.02
        )
        time.sleep(0.4)  # connections into a block that retires only 1.5 s after it started
        closed_before = sum(made)  # each of these returned from close(): every packet was sent
        time.sleep(0.01)
        agents.procs[0].send_signal(signal.SIGTERM)  # in the middle of the churn...
        stop.set()  # ...which then ends (each client finishes the connection it is in)
        code = agents.procs[0].wait(30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)  # each finishes the connection it is in
        server.close()
    assert not errors, errors[0]
    total = sum(made)
    assert closed_before > 30, f"only {closed_before} connections: the churn did not churn"
    counted: dict[tuple[str, str, int, str], float] = {}
    for p in receiver.latest_points_all(n.TCP_CONNECTIONS):
        a = p.attributes
        key = (a[n.CLIENT_WORKLOAD], a[n.SERVER_WORKLOAD], a[n.SERVER_PORT], a[n.OUTCOME])
        counted[key] = counted.get(key, 0) + (p.value or 0)
    exported = counted.get(("frontend", "api", PORT, "closed"), 0)
    assert closed_before <= exported <= total, (closed_before, exported, total, counted)
    assert code == 0, (tmp_path / "agent.log").read_text()[-2000:]
