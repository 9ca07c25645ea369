"""Run podwire's real capture + tracker on a mini-cluster node, and real sockets in its pods.

`Tracking` is the agent's own Pipeline (LiveCapture in the node netns -> Tracker -> sinks) in a
thread; tests compare its records with what their programs really sent and received.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from podwire.agent import CollectingSink, Pipeline
from podwire.capture.live import LiveCapture
from podwire.config import Settings
from podwire.demo.cluster import Cluster, Pod
from podwire.identity import build_service
from podwire.model import ConnectionRecord, NamedConnection, Side
from podwire.tracker.tracker import Tracker, TrackerLimits


class Tracking:
    def __init__(self, cluster: Cluster, node: str, **overrides: Any) -> None:
        self.settings = Settings(
            netns=cluster.node(node).netns,
            interface_include=cluster.host_veth_pattern,
            log_format="console",
        ).replace(**overrides)
        self.capture = LiveCapture(self.settings)
        self.tracker = Tracker(TrackerLimits.from_settings(self.settings))
        self.sink = CollectingSink()
        self.pipeline = Pipeline(self.tracker, build_service(self.settings), [self.sink])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            last = time.time()
            while not self._stop.is_set():
                batch = self.capture.poll(0.05)
                with self._lock:
                    if batch is not None and (batch.segments or batch.dns):
                        self.pipeline.feed(batch)
                    now = time.time()
                    if now - last >= 0.2:
                        self.pipeline.tick(now)
                        last = now
        except BaseException as exc:  # surfaced by the test, never swallowed
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.capture.close()

    def records(self, side: Side | None = Side.CLIENT) -> list[ConnectionRecord]:
        with self._lock:
            conns = list(self.sink.connections)
        return [c.record for c in conns if side is None or c.record.observed_side is side]

    def named(self) -> list[NamedConnection]:
        with self._lock:
            return list(self.sink.connections)

    def wait_for(
        self,
        predicate: Callable[[ConnectionRecord], bool],
        count: int,
        timeout: float = 20.0,
        side: Side | None = Side.CLIENT,
    ) -> list[ConnectionRecord]:
        deadline = time.monotonic() + timeout
        while True:
            if self.error is not None:
                raise self.error
            found = [r for r in self.records(side) if predicate(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def flush(self) -> None:
        with self._lock:
            self.pipeline.finish(time.time())


@contextmanager
def tracking(cluster: Cluster, node: str = "node-a", **overrides: Any) -> Iterator[Tracking]:
    t = Tracking(cluster, node, **overrides)
    t.start()
    try:
        # the rings are open once the first poll ran; give netlink discovery a beat
        time.sleep(0.3)
        yield t
    finally:
        t.stop()


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def listener(cluster: Cluster, pod: Pod, ipv6: bool = False, port: int = 0) -> socket.socket:
    """A listening socket inside the pod's namespace (sockets keep their namespace)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = pod.ipv6 if ipv6 else pod.ipv4

    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(512)
        return s

    return cluster.call(pod, make)


def client_socket(
    cluster: Cluster, pod: Pod, ipv6: bool = False, bind_port: int | None = None
) -> socket.socket:
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = pod.ipv6 if ipv6 else pod.ipv4

    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        if bind_port is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, bind_port))
        return s

    return cluster.call(pod, make)


def send_all_and_count(sock: socket.socket, n: int, chunk: int = 1 << 16) -> int:
    block = b"x" * chunk
    left = n
    while left:
        left -= sock.send(block[: min(chunk, left)])
    return n


def kernel_retransmits(sock: socket.socket) -> int:
    """tcpi_total_retrans of a socket, from TCP_INFO (offset 100, as sock_diag carries it)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, 100)[0])


def read_to_eof(sock: socket.socket) -> int:
    total = 0
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return total
        total += len(data)


def rst_close(sock: socket.socket) -> None:
    """close() with SO_LINGER 0: the kernel sends a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
