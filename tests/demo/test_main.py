"""`podwire demo` as a user runs it: it serves /healthz and /metrics, shows pod-to-pod edges named by
workload, and leaves nothing behind on Ctrl-C, on SIGTERM, and (at the next start) after SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from podwire.demo.cluster import list_netns

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (network namespaces)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_namespaces() -> set[str]:
    return {name for name in list_netns("pwd") if "-" in name}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _start(port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "podwire", "demo", "--no-tui", "--listen", f"127.0.0.1:{port}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _wait_for_edges(proc: subprocess.Popen[str], timeout: float = 60.0) -> list[str]:
    """Read the demo's plain output until a report with edges has been printed."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    edges: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if " edge " in line:
            edges.append(line.strip())
            if any("shop/frontend" in e for e in edges) and any("shop/db" in e for e in edges):
                return edges
    raise AssertionError(f"no edges from the demo; got {edges}")


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_shows_named_edges_serves_http_and_leaves_nothing_when_stopped(how: signal.Signals) -> None:
    before = _demo_namespaces()
    port = _free_port()
    proc = _start(port)
    try:
        edges = _wait_for_edges(proc)
        assert any("shop/api -> shop/db:5432" in e and "closed=" in e for e in edges)
        # the ClusterIP is named by the backend its DNAT chose (conntrack), the Service kept beside it
        assert any("shop/frontend -> shop/api via svc api:80" in e for e in edges)
        assert _get(port, "/healthz")[0] == 200
        status, text = _get(port, "/metrics")
        assert status == 200
        assert "podwire_tcp_connections_total{" in text and 'client_workload="frontend"' in text
        children = _children(proc.pid)
        assert children, "the demo runs its servers and clients as child processes"
        assert _demo_namespaces() - before, "the demo made its namespaces"
        proc.send_signal(how)
        assert proc.wait(30) in (0, 128 + how, -how)  # 130 after Ctrl-C, 143 after SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _demo_namespaces() - before == set()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_killed_demo_is_cleaned_up_by_the_next_one() -> None:
    before = _demo_namespaces()
    port = _free_port()
    killed = _start(port)
    try:
        _wait_for_edges(killed)
        left = _demo_namespaces() - before
        assert left
    finally:
        killed.kill()  # SIGKILL: no handler runs
        killed.wait()
    assert _demo_namespaces() - before == left  # what a crash leaves behind ...
    nxt = _start(_free_port(), "--duration", "3")
    try:
        assert nxt.wait(60) == 0
    finally:
        if nxt.poll() is None:
            nxt.kill()
            nxt.wait()
    assert _demo_namespaces() - before == set()  # ... the next start removed, and its own too
