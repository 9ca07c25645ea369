"""Cluster-wide view: agents in their own processes on loopback, one slow, one failing.

node-a's agent saw web->db (cross-node) and web->cache (same node, on both veths); node-b's agent
saw web->db again at the server's veth and its own report->db.  Merged exactly once: web->db 3,
web->cache 2, report->db 4, whatever agent is asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

NODE_A = [
    ["web", "db", "client", 3, 300, 700, 0.2],
    ["web", "cache", "client", 2, 10, 20, 0.05],
    ["web", "cache", "server", 2, 10, 20, 0.05],  # the same two, seen at cache's veth
]
NODE_B = [
    ["web", "db", "server", 3, 300, 700, 0.2],  # web->db again, at db's veth on node-b
    ["report", "db", "client", 4, 50, 5000, 1.5],
]
TLS_A = [["web", "shop", "client", 2, 10, 10, 0.1, "shop.example"]]
TLS_B = [["report", "bank", "client", 1, 10, 10, 0.1, "bank.example"]]


Start = Callable[[dict[str, Any]], str]


@pytest.fixture
def start() -> Iterator[Start]:
    procs: list[subprocess.Popen[str]] = []

    def run(spec: dict[str, Any]) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.views.peer_agent", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        port = next(int(line.split()[1]) for line in proc.stdout if line.startswith("PORT "))
        return f"127.0.0.1:{port}"

    try:
        yield run
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _get(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as r:
        return json.load(r)


def _edges(body: dict[str, Any]) -> dict[str, int]:
    return {e["id"]: e["detail__closed"] for e in body["edges"]}


EXPECTED = {"shop/web->shop/db": 3, "shop/web->shop/cache": 2, "shop/report->shop/db": 4}


def test_merged_graph_counts_each_connection_once_and_flags_the_failing_peer(start: Start) -> None:
    slow = start({"edges": NODE_B, "delay_s": 0.8})
    failing = start({"fail": True})
    asker = start({"edges": NODE_A, "peers": f"{slow},{failing}", "timeout_s": 2.0})

    t0 = time.monotonic()
    body = _get(asker, "/nodegraph/api/graph/data?stats-type=connection")
    took = time.monotonic() - t0
    assert _edges(body) == EXPECTED
    assert body["partial"] is True
    peers = {p["peer"]: p for p in body["peers"]}
    assert peers[slow]["ok"] is True and peers[slow]["seconds"] >= 0.8
    assert peers[failing]["ok"] is False and "500" in peers[failing]["error"]
    assert took < 2.0 + 1.0  # asked in parallel: the slow peer's delay, not the sum
    # the peers' own lists stay local: node-b stored only what it counts
    assert {(i["src"], i["dst"]): i["connCount"] for i in _get(slow, "/nodegraph/connections")} == {
        ("shop/report", "shop/db"): 4
    }
    # bytes are summed too: web->db's 3 x 300 bytes once, not twice
    by_id = {e["id"]: e for e in body["edges"]}
    assert by_id["shop/web->shop/db"]["detail__bytes_sent"] == 900
    assert by_id["shop/report->shop/db"]["detail__bytes_received"] == 20_000
    assert by_id["shop/report->shop/db"]["detail__duration_max_s"] == 1.5


def test_a_peer_slower_than_the_timeout_is_flagged_and_the_rest_is_merged(start: Start) -> None:
    slow = start({"edges": NODE_B, "delay_s": 3.0})
    failing = start({"fail": True})
    asker = start({"edges": NODE_A, "peers": f"{slow},{failing}", "timeout_s": 0.5})

    t0 = time.monotonic()
    body = _get(asker, "/nodegraph/api/graph/data")
    assert time.monotonic() - t0 < 2.0  # the per-peer deadline held
    assert _edges(body) == {"shop/web->shop/db": 3, "shop/web->shop/cache": 2}
    assert body["partial"] is True
    assert [p["ok"] for p in body["peers"]] == [False, False]
    assert "timed out" in body["peers"][0]["error"]


def test_with_every_peer_answering_the_answer_is_not_partial(start: Start) -> None:
    b = start({"edges": NODE_B})
    asker = start({"edges": NODE_A, "peers": b})
    body = _get(asker, "/nodegraph/api/graph/data?stats-type=bytes")
    assert _edges(body) == EXPECTED and body["partial"] is False
    # the edge drill-down fans out too: report->db's connections live on node-b
    detail = _get(asker, "/nodegraph/api/edge?source=shop/report&target=shop/db")
    assert len(detail["connections"]) == 4 and detail["partial"] is False
    assert {c["bytes_server_to_client"] for c in detail["connections"]} == {5000}


def test_the_tls_list_and_details_fan_out_too(start: Start) -> None:
    b = start({"edges": TLS_B})
    failing = start({"fail": True})
    asker = start({"edges": TLS_A, "peers": f"{b},{failing}"})
    with urllib.request.urlopen(f"http://{asker}/tlsparser/api/data", timeout=30) as r:
        items = json.load(r)
        assert r.headers["X-Podwire-Partial"] == "false"  # the failing peer fails only its node graph
    assert sorted(i["domain"] for i in items) == ["bank.example", "shop.example", "shop.example"]
    (remote,) = [i for i in items if i["domain"] == "bank.example"]
    details = _get(asker, f"/tlsparser/api/data/{remote['id']}")  # held by b: asked through the asker
    assert details["id"] == remote["id"] and details["domain"] == "bank.example"
    assert details["connection"]["client"]["workload"]["workload"] == "report"
