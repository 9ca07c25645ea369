"""`podwire demo` as a user runs it: it serves /healthz and /metrics, shows pod-to-pod edges named by
workload, and leaves nothing behind on Ctrl-C, on SIGTERM, and (at the next start) after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from podwire.demo.cluster import STATE_DIR, list_netns

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (network namespaces)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prefix_of(pid: int, timeout: float = 30.0) -> str:
    """The cluster prefix a demo process recorded as its own (other demos may run beside this test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in STATE_DIR.glob("pwd*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written or removed
            if state.get("pid") == pid:
                return str(state["prefix"])
        time.sleep(0.1)
    raise AssertionError(f"demo pid {pid} recorded no cluster in {STATE_DIR}")


def _namespaces(prefix: str) -> set[str]:
    return set(list_netns(prefix + "-"))


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


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(port: int, *extra: str) -> subprocess.Popen[str]:
    # Started as a non-interactive shell starts a background job (`podwire demo &` in a script, or
    # a CI runner): SIGINT inherited ignored.  Ctrl-C and `kill -INT` must stop it all the same.
    return subprocess.Popen(
        [sys.executable, "-m", "podwire", "demo", "--no-tui", "--listen", f"127.0.0.1:{port}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=_ignore_sigint,
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
        prefix = _prefix_of(proc.pid)
        assert _namespaces(prefix), "the demo made its namespaces"
        proc.send_signal(how)
        assert proc.wait(30) in (0, 128 + how, -how)  # 130 after Ctrl-C, 143 after SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _namespaces(prefix) == set()
    assert not (STATE_DIR / f"{prefix}.json").exists()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_killed_demo_is_cleaned_up_by_the_next_one() -> None:
    port = _free_port()
    killed = _start(port)
    try:
        _wait_for_edges(killed)
        prefix = _prefix_of(killed.pid)
        left = _namespaces(prefix)
        assert left
    finally:
        killed.kill()  # SIGKILL: no handler runs
        killed.wait()
    assert _namespaces(prefix) == left  # what a crash leaves behind ...
    nxt = _start(_free_port(), "--duration", "3")
    try:
        nxt_prefix = _prefix_of(nxt.pid)
        assert nxt.wait(60) == 0
    finally:
        if nxt.poll() is None:
            nxt.kill()
            nxt.wait()
    assert _namespaces(prefix) == set()  # ... the next start removed, and its own too
    assert not (STATE_DIR / f"{prefix}.json").exists()
    assert _namespaces(nxt_prefix) == set()
