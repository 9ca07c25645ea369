"""SIGTERM to exit within the 5 s deadline, whatever the collector does (issue 14).

A real `podwire run` exports to a "collector" that accepts TCP and never reads or answers, with
the longest export timeout the settings allow: every export hangs until it is abandoned.
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

import pytest

from podwire.capture import netns
from tests.capture.nets import Pods, pods_namespace

DEADLINE_S = 5.0
PODWIRE = [sys.executable, "-m", "podwire"]


def _connections(pods: Pods, count: int) -> None:
    """`count` short TCP connections node -> pod 0: spans for the exporter to hang on."""
    with netns.inside(pods.pods[0]):
        server = socket.create_server((pods.pod_ip(0), 8080), backlog=256)
    try:
        for _ in range(count):
            with netns.inside(pods.node):
                client = socket.socket()
            client.connect((pods.pod_ip(0), 8080))
            conn, _ = server.accept()
            client.close()
            conn.close()
    finally:
        server.close()


class HungCollector:
    """Accepts every connection and never reads from or writes to it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def pods() -> Iterator[Pods]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with pods_namespace(1) as p:
        yield p


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sigterm_exits_within_the_deadline_with_a_hung_collector(protocol: str, pods: Pods) -> None:
    collector = HungCollector()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_TIMEOUT="600000",  # the longest allowed: exports hang, never time out
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    proc = subprocess.Popen(
        [*PODWIRE, "run", "--kube", "off", "--listen", "127.0.0.1:0", "--netns", pods.node],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "agent_started" in line:
                break
        else:
            pytest.fail(f"the agent did not start: {proc.wait()}")
        deadline = time.monotonic() + 30
        while not collector.held and time.monotonic() < deadline:
            time.sleep(0.1)
        assert collector.held, "the agent never connected to the collector"
        _connections(pods, 300)  # spans queued and in flight to the hung collector
        time.sleep(1.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        collector.close()
    assert took < DEADLINE_S, f"exit {took:.2f} s after SIGTERM\n{rest[-2000:]}"
    assert proc.returncode == 0, rest[-2000:]
