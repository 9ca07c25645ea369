"""Naming both ends of a connection: by who held each address when it started; record JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from podwire.identity import IdentityIndex, identity_json, make_identity, name_connection
from podwire.model import (
    UNKNOWN_EXTERNAL,
    ConnectionRecord,
    Endpoint,
    IdentityKind,
    Outcome,
)


def record(client: str, server: str, start: float | None, end: float | None) -> ConnectionRecord:
    return ConnectionRecord(
        point=0,
        client=Endpoint(client, 40000),
        server=Endpoint(server, 8443),
        network_type="ipv4",
        start_time=start,
        end_time=end,
        duration_s=None,
        outcome=Outcome.CLOSED,
        close_initiator=None,
        bytes_client_to_server=None,
        bytes_server_to_client=None,
        handshake_rtt_s=None,
        started_before_capture=start is None,
        client_guessed=False,
        client_isn=None,
        server_isn=None,
        observed_side=None,
    )


FRONT = make_identity(
    IdentityKind.POD,
    "frontend-1",
    namespace="shop",
    workload="frontend",
    workload_kind="Deployment",
    node="node-a",
)
BATCH = make_identity(
    IdentityKind.POD,
    "report-29000-x",
    namespace="ops",
    workload="report",
    workload_kind="CronJob",
    node="node-b",
)
SVC = make_identity(IdentityKind.SERVICE, "payments", namespace="shop")


def test_ends_are_named_at_the_connection_start_even_when_the_ip_moved_on():
    index = IdentityIndex(clock=lambda: 0.0)
    index.set("pod/f", ["10.1.0.5"], FRONT, at=100.0)
    index.set("svc/p", ["10.96.0.20"], SVC, at=100.0)
    index.remove("pod/f", at=200.0)
    index.set("pod/b", ["10.1.0.5"], BATCH, at=210.0)  # the IP is reused
    late = name_connection(index, record("10.1.0.5", "10.96.0.20", start=150.0, end=205.0))
    assert (late.client, late.server) == (FRONT, SVC)
    now = name_connection(index, record("10.1.0.5", "10.96.0.20", start=220.0, end=230.0))
    assert now.client == BATCH
    # Already open when the capture started: no start, so named by its end.
    no_start = name_connection(index, record("10.1.0.5", "203.0.113.9", start=None, end=190.0))
    assert no_start.client == FRONT and no_start.server is UNKNOWN_EXTERNAL


def test_identity_json_shapes():
    assert identity_json(FRONT) == {
        "kind": "pod",
        "namespace": "shop",
        "name": "frontend-1",
        "workload": "frontend",
        "workload_kind": "Deployment",
    }
    assert identity_json(SVC) == {"kind": "service", "name": "payments", "namespace": "shop"}
    node = make_identity(IdentityKind.NODE, "node-a", node="node-a")
    assert identity_json(node) == {"kind": "node", "name": "node-a"}
    assert identity_json(UNKNOWN_EXTERNAL) == {"kind": "external", "name": "external"}
    bare = make_identity(IdentityKind.POD, "debug", namespace="shop")
    assert identity_json(bare)["workload"] == "debug" and identity_json(bare)["workload_kind"] == "Pod"


def _handshake_and_close(c: str, s: str, sport: int, t: float) -> list:
    from scapy.all import IP, TCP, Ether

    out = []
    for src, dst, sp, dp, flags, seq, ack in (
        (c, s, sport, 8443, "S", 100, 0),
        (s, c, 8443, sport, "SA", 500, 101),
        (c, s, sport, 8443, "A", 101, 501),
        (c, s, sport, 8443, "FA", 111, 521),
        (s, c, 8443, sport, "FA", 521, 112),
        (c, s, sport, 8443, "A", 112, 522),
    ):
        p = Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack)
        p.time = t
        t += 0.01
        out.append(p)
    return out


def test_replay_with_inventory_names_both_ends_by_workload(tmp_path: Path):
    from scapy.utils import wrpcap

    pcap = tmp_path / "two.pcap"
    wrpcap(
        str(pcap),
        _handshake_and_close("10.1.0.5", "10.96.0.20", 40000, 1000.0)
        + _handshake_and_close("10.1.0.6", "203.0.113.7", 40001, 1001.0),
    )
    inv = tmp_path / "inventory.yaml"
    inv.write_text(
        "pods: [{ip: 10.1.0.5, namespace: shop, name: frontend-7d9f-x2k, workload: frontend,"
        " workload_kind: Deployment, node: node-a},\n"
        "       {ip: 10.1.0.6, namespace: shop, name: payments-0, workload: payments,"
        " workload_kind: StatefulSet}]\n"
        "services: [{ip: 10.96.0.20, namespace: shop, name: payments}]\n"
        "external: [{cidr: 203.0.113.0/24, name: partner-api}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "podwire", "replay", str(pcap), "--inventory", str(inv), "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["client"]["workload"], r["server"]["workload"]) for r in recs] == [
        (
            {
                "kind": "pod",
                "namespace": "shop",
                "name": "frontend-7d9f-x2k",
                "workload": "frontend",
                "workload_kind": "Deployment",
            },
            {"kind": "service", "name": "payments", "namespace": "shop"},
        ),
        (
            {
                "kind": "pod",
                "namespace": "shop",
                "name": "payments-0",
                "workload": "payments",
                "workload_kind": "StatefulSet",
            },
            {"kind": "external", "name": "partner-api"},
        ),
    ]
