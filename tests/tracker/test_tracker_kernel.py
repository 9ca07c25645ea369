"""The tracker against the real Linux TCP stack: loopback connections captured by tcpdump,
decoded by the capture room's pcap reader, and every record checked against what the
programs themselves sent and received."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podwire.model import CloseInitiator, ConnectionOpened, ConnectionRecord, Outcome
from podwire.tracker.tracker import Tracker

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("tcpdump") is None, reason="needs root and tcpdump"
)

LINGER_RST = struct.pack("ii", 1, 0)  # close() sends RST


def _free_port(family: int, host: str) -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[Callable[[list[int]], Path]]:
    """Start tcpdump on lo for the given ports; always stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    out = tmp_path / "lo.pcap"

    def start(ports: list[int]) -> Path:
        expr = " or ".join(f"tcp port {p}" for p in ports)
        proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-s", "128", "-w", str(out), expr],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on lo ..." once the filter is attached
        assert b"listening" in line, line
        return out

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _drain(conn: socket.socket) -> int:
    n = 0
    while True:
        try:
            data = conn.recv(1 << 16)
        except ConnectionResetError:
            return n
        if not data:
            return n
        n += len(data)


class Server:
    """A real listening socket running `handle(conn)` per connection in a thread."""

    def __init__(self, family: int, host: str, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket(family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._handle = handle
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def _reply_after_eof(reply: int) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _drain(conn)
        with contextlib.suppress(OSError):  # the client reset instead of half-closing
            conn.sendall(b"s" * reply)
        conn.close()

    return handle


def _send_and_close(reply: int) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.sendall(b"s" * reply)
        conn.close()

    return handle


def _read_then_rst(reply: int) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"s" * reply)
        time.sleep(0.02)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()

    return handle


def test_loopback_connections_match_what_the_programs_sent(capture: Callable[[list[int]], Path]) -> None:
    servers = {
        "half_close": Server(socket.AF_INET, "127.0.0.1", _reply_after_eof(12_345)),
        "server_close": Server(socket.AF_INET, "127.0.0.1", _send_and_close(777)),
        "server_rst": Server(socket.AF_INET, "127.0.0.1", _read_then_rst(50)),
        "ipv6": Server(socket.AF_INET6, "::1", _reply_after_eof(4321)),
    }
    refused_port = _free_port(socket.AF_INET, "127.0.0.1")
    try:
        pcap = capture([s.port for s in servers.values()] + [refused_port])
        expected: dict[int, tuple[Outcome, CloseInitiator | None, int, int]] = {}  # client port -> record

        def connect(name: str) -> socket.socket:
            family, host = (socket.AF_INET6, "::1") if name == "ipv6" else (socket.AF_INET, "127.0.0.1")
            sock = socket.socket(family)
            sock.connect((host, servers[name].port))
            return sock

        for i in range(10):  # client half-closes, then the server answers and closes
            c = connect("half_close")
            c.sendall(b"c" * (1000 + i))
            c.shutdown(socket.SHUT_WR)
            got = _drain(c)
            expected[c.getsockname()[1]] = (Outcome.CLOSED, CloseInitiator.CLIENT, 1000 + i, got)
            c.close()
        c = connect("half_close")  # a bulk stream
        c.sendall(b"b" * (20 << 20))
        c.shutdown(socket.SHUT_WR)
        got = _drain(c)
        expected[c.getsockname()[1]] = (Outcome.CLOSED, CloseInitiator.CLIENT, 20 << 20, got)
        c.close()
        for _ in range(3):  # server closes first
            c = connect("server_close")
            got = _drain(c)
            expected[c.getsockname()[1]] = (Outcome.CLOSED, CloseInitiator.SERVER, 0, got)
            c.close()
        for _ in range(3):  # server resets after answering
            c = connect("server_rst")
            c.sendall(b"q" * 10)
            got = _drain(c)
            expected[c.getsockname()[1]] = (Outcome.RESET, CloseInitiator.SERVER, 10, got)
            c.close()
        for _ in range(3):  # client resets while the server still has unread data for it
            c = connect("half_close")
            c.sendall(b"r" * 300)
            time.sleep(0.02)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            expected[c.getsockname()[1]] = (Outcome.RESET, CloseInitiator.CLIENT, 300, 0)
            c.close()
        c = connect("ipv6")
        c.sendall(b"6" * 2000)
        c.shutdown(socket.SHUT_WR)
        got = _drain(c)
        ipv6_port = c.getsockname()[1]
        expected[ipv6_port] = (Outcome.CLOSED, CloseInitiator.CLIENT, 2000, got)
        c.close()
        for _ in range(2):
            c = socket.socket()
            with pytest.raises(ConnectionRefusedError):
                c.connect(("127.0.0.1", refused_port))
            expected[c.getsockname()[1]] = (Outcome.REFUSED, None, 0, 0)
            c.close()
        time.sleep(0.3)
    finally:
        for s in servers.values():
            s.close()

    from podwire.capture.pcap import PcapSource  # the capture room's decoder

    time.sleep(0.2)
    deadline = time.monotonic() + 10
    while True:  # tcpdump writes packet-buffered; wait for the last refused connection's RST
        tracker = Tracker()
        recs: dict[int, ConnectionRecord] = {}
        opened = 0
        source = PcapSource(str(pcap))
        last = 0.0
        try:
            while (batch := source.poll(0)) is not None:
                for seg in batch.segments:
                    last = seg.ts
                    for ev in tracker.feed(seg):
                        if isinstance(ev, ConnectionOpened):
                            opened += 1
                        else:
                            recs[ev.client.port] = ev
        finally:
            source.close()
        if set(recs) >= set(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert tracker.flush(last) == []  # every connection ended inside the capture
    assert set(recs) == set(expected)
    assert opened == sum(1 for e in expected.values() if e[0] != Outcome.REFUSED)
    for port, (outcome, initiator, up, down) in expected.items():
        rec = recs[port]
        assert (rec.outcome, rec.close_initiator) == (outcome, initiator), rec
        assert (rec.bytes_client_to_server, rec.bytes_server_to_client) == (up, down), rec
        assert rec.started_before_capture is False and rec.client_guessed is False
        assert rec.start_time is not None and rec.end_time is not None and rec.end_time >= rec.start_time
        if outcome != Outcome.REFUSED:
            assert rec.handshake_rtt_s is not None and 0 < rec.handshake_rtt_s < 1
    assert recs[ipv6_port].network_type == "ipv6" and recs[ipv6_port].client.address == "::1"
    assert {r.network_type for p, r in recs.items() if p != ipv6_port} == {"ipv4"}
