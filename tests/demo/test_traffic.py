"""The demo traffic: real nginx, Python services and clients in pods, with the outcomes the demo promises."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster, ClusterSpec, list_netns, pids_in_netns
from podwire.demo.traffic import STATIC_LARGE, STATIC_SMALL, TrafficPlan, demo_spec

pytestmark = pytest.mark.live


def _http_get(address: str, path: str) -> bytes:
    with socket.create_connection((address, 80), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def demo(cluster_factory: Callable[[ClusterSpec], Cluster]) -> Cluster:
    return cluster_factory(demo_spec(nodes=2))


def test_demo_traffic_makes_every_kind_of_connection_with_its_outcome(demo: Cluster) -> None:
    traffic = TrafficPlan(curl_rate_per_s=5, client_rate_per_s=10, long_lived_ping_s=0.5).start(demo)
    traffic.run_for(4)
    traffic.stop()
    counts = traffic.counts()
    assert counts.get(("http6", "closed"), 0) >= 5
    assert counts.get(("static", "closed"), 0) >= 3
    assert counts.get(("refused", "refused"), 0) >= 3
    assert counts.get(("reset", "reset"), 0) >= 3
    assert counts.get(("long", "closed")) == 1  # one connection held for the whole run
    assert counts.get(("external", "closed"), 0) >= 3
    assert not any(outcome == "error" for _, outcome in counts)
    frontend = demo.pod("frontend-7d9f-x2k")
    for entry in traffic.ledger():
        if entry.kind == "http6":  # frontend -> Service -> api -> db: the db's 2 KiB came back
            assert entry.server == (frontend.ipv6, 80) and entry.received > 2048
        if entry.kind == "static":
            assert entry.received - STATIC_LARGE in range(0, 400) or entry.received - STATIC_SMALL in range(
                0, 400
            )
        if entry.kind == "external":
            assert entry.server == (demo.external("partner-api").ipv4, 8080) and entry.received > 1500
        if entry.kind == "long":
            assert entry.sent >= 5 + 5 * 4  # HOLD + at least four pings
    access = (traffic.workdir / "nginx" / "access.log").read_text().splitlines()
    assert sum("curl/" in line for line in access) >= 10  # curl's loop ran (5/s for 4 s)


def test_frontend_answers_through_the_service_api_and_db_chain(demo: Cluster) -> None:
    traffic = TrafficPlan(curl_rate_per_s=1, client_rate_per_s=1).start(demo)
    try:
        frontend = demo.pod("frontend-7d9f-x2k")
        for address in (frontend.ipv4, frontend.ipv6):
            reply = demo.call("loadgen-5c8b-q4t", _http_get, address, "/")
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert body == b"d" * 2048
    finally:
        traffic.stop()


def test_stopping_traffic_ends_every_program_and_teardown_removes_all(demo: Cluster) -> None:
    traffic = TrafficPlan().start(demo)
    inodes = [os.stat(Path("/run/netns") / name).st_ino for name in demo.netns_names]
    assert len(pids_in_netns(inodes)) >= 6  # nginx master+worker, api, db, partner, curl, client
    traffic.stop()
    assert all(p.poll() is not None for p in traffic.processes.values())
    demo.teardown()
    assert list_netns(demo.prefix) == []
    assert pids_in_netns(inodes) == []
    assert not traffic.workdir.exists()
