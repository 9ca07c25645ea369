"""Every field of the connection record against what real programs sent, on a real kernel.

Two pods on one node; podwire's LiveCapture + Tracker run in the node namespace on the pods'
host-side veths. Each connection is seen twice (client veth and server veth): both must agree.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from podwire.demo.cluster import Cluster
from podwire.model import CloseInitiator, ConnectionRecord, Outcome, Side

from .harness import (
    client_socket,
    listener,
    read_to_eof,
    rst_close,
    send_all_and_count,
    tracking,
)

pytestmark = pytest.mark.live

HEADER = struct.Struct("!II")  # client -> server: how many bytes each way follow


def _serve(lsock: socket.socket, handle: Callable[[socket.socket], None], count: int) -> threading.Thread:
    """Accept `count` connections and run `handle` on each, in order (one background thread)."""

    def loop() -> None:
        for _ in range(count):
            conn, _addr = lsock.accept()
            try:
                handle(conn)
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        data = sock.recv(min(left, 1 << 16))
        if not data:
            raise ConnectionError("peer closed early")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def _server_answers_then_closes(conn: socket.socket) -> None:
    n, m = HEADER.unpack(_read_exact(conn, HEADER.size))
    _read_exact(conn, n)
    send_all_and_count(conn, m)
    # close() with our FIN first: the server initiates the close


def _check_times(r: ConnectionRecord, t0: float, t1: float) -> None:
    assert r.start_time is not None and r.end_time is not None and r.duration_s is not None
    assert t0 - 0.5 <= r.start_time <= r.end_time <= t1 + 0.5
    assert r.duration_s == pytest.approx(r.end_time - r.start_time)
    assert r.handshake_rtt_s is not None and 0 < r.handshake_rtt_s < 1.0
    assert r.started_before_capture is False and r.client_guessed is False


def _pair(t, key: Callable[[ConnectionRecord], bool], count: int = 1) -> tuple[list, list]:
    client_side = t.wait_for(key, count, side=Side.CLIENT)
    server_side = t.wait_for(key, count, side=Side.SERVER)
    return client_side, server_side


def _same_connection_fields(a: ConnectionRecord, b: ConnectionRecord) -> None:
    for name in (
        "client",
        "server",
        "outcome",
        "close_initiator",
        "bytes_client_to_server",
        "bytes_server_to_client",
        "client_isn",
        "server_isn",
        "network_type",
    ):
        assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_short_connections_with_reused_ports_are_each_exact(two_pod_cluster: Cluster, ipv6: bool) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    rng = random.Random(7)
    reused_port = 40_000 + rng.randrange(1000)
    plan = [
        (reused_port if i % 2 == 0 else None, rng.randrange(0, 30_000), rng.randrange(0, 30_000))
        for i in range(200)
    ]
    lsock = listener(cluster, server, ipv6)
    port = lsock.getsockname()[1]
    target = (server.ipv6 if ipv6 else server.ipv4, port)
    with tracking(cluster) as t:
        t0 = time.time()
        srv = _serve(lsock, _server_answers_then_closes, len(plan))
        used: list[tuple[int, int, int]] = []
        for bind_port, n, m in plan:
            s = client_socket(cluster, client, ipv6, bind_port)
            s.connect(target)
            s.sendall(HEADER.pack(n, m) + b"c" * n)
            got = read_to_eof(s)
            assert got == m
            used.append((s.getsockname()[1], HEADER.size + n, m))
            s.close()
        srv.join(10)
        t1 = time.time()

        def ours(r: ConnectionRecord) -> bool:
            return r.server.port == port

        client_side, server_side = _pair(t, ours, len(plan))
    lsock.close()
    assert len(client_side) == len(plan) and len(server_side) == len(plan)
    assert sum(1 for p, _, _ in used if p == reused_port) == 100  # one 4-tuple, 100 generations
    by_port: dict[int, list[tuple[int, int]]] = {}
    for p, n, m in used:
        by_port.setdefault(p, []).append((n, m))
    got_by_port: dict[int, list[ConnectionRecord]] = {}
    for r in sorted(client_side, key=lambda r: r.start_time or 0):
        got_by_port.setdefault(r.client.port, []).append(r)
    assert set(got_by_port) == set(by_port)
    for p, expected in by_port.items():
        got = got_by_port[p]
        assert [(r.bytes_client_to_server, r.bytes_server_to_client) for r in got] == expected
        for r in got:
            assert r.outcome is Outcome.CLOSED
            assert r.close_initiator is CloseInitiator.SERVER
            assert r.network_type == ("ipv6" if ipv6 else "ipv4")
            assert r.client.address == (client.ipv6 if ipv6 else client.ipv4)
            _check_times(r, t0, t1)
    # the server's veth saw the same connections, generation by generation
    server_by_isn = {(r.client_isn, r.server_isn): r for r in server_side}
    for r in client_side:
        _same_connection_fields(r, server_by_isn[(r.client_isn, r.server_isn)])


def test_bulk_stream_of_100_mib_is_exact_both_ways(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    n = 100 * 1024 * 1024 + 12_345
    m = 4_321
    lsock = listener(cluster, server)
    port = lsock.getsockname()[1]
    received: list[int] = []

    def handle(conn: socket.socket) -> None:
        received.append(read_to_eof(conn))
        send_all_and_count(conn, m)

    with tracking(cluster) as t:
        t0 = time.time()
        srv = _serve(lsock, handle, 1)
        s = client_socket(cluster, client)
        s.connect((server.ipv4, port))
        send_all_and_count(s, n)
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == m
        s.close()
        srv.join(30)
        t1 = time.time()
        (r,), (rs,) = _pair(t, lambda r: r.server.port == port)
    lsock.close()
    assert received == [n]
    assert (r.bytes_client_to_server, r.bytes_server_to_client) == (n, m)
    assert r.outcome is Outcome.CLOSED and r.close_initiator is CloseInitiator.CLIENT
    _check_times(r, t0, t1)
    _same_connection_fields(r, rs)
    stats = t.capture.stats()
    assert stats.kernel_drops == 0
    assert stats.packets < 100  # 100 MiB of data never reached Python: only SYN/FIN/RST did


@pytest.mark.parametrize("closer", ["client", "server"])
def test_who_closed_first_is_the_close_initiator(two_pod_cluster: Cluster, closer: str) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    n, m = 1_000, 50_000
    lsock = listener(cluster, server)
    port = lsock.getsockname()[1]

    def handle(conn: socket.socket) -> None:
        _read_exact(conn, n)
        send_all_and_count(conn, m)
        if closer == "client":
            assert conn.recv(1) == b""  # wait for the client's FIN before ours

    with tracking(cluster) as t:
        srv = _serve(lsock, handle, 1)
        s = client_socket(cluster, client)
        s.connect((server.ipv4, port))
        send_all_and_count(s, n)
        _read_exact(s, m)
        if closer == "server":
            assert s.recv(1) == b""  # the server's FIN came first
        s.close()
        srv.join(10)
        (r,), (rs,) = _pair(t, lambda r: r.server.port == port)
    lsock.close()
    assert r.outcome is Outcome.CLOSED
    assert r.close_initiator is CloseInitiator(closer)
    assert (r.bytes_client_to_server, r.bytes_server_to_client) == (n, m)
    _same_connection_fields(r, rs)


@pytest.mark.parametrize("resetter", ["client", "server"])
def test_a_reset_records_who_reset_and_exact_bytes(two_pod_cluster: Cluster, resetter: str) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    n, m = 3_333, 77_777
    lsock = listener(cluster, server)
    port = lsock.getsockname()[1]
    done = threading.Event()

    def handle(conn: socket.socket) -> None:
        _read_exact(conn, n)
        send_all_and_count(conn, m)
        if resetter == "server":
            assert conn.recv(1) == b"k"  # the client has read everything
            rst_close(conn)
        else:
            done.wait(5)

    with tracking(cluster) as t:
        srv = _serve(lsock, handle, 1)
        s = client_socket(cluster, client)
        s.connect((server.ipv4, port))
        send_all_and_count(s, n)
        _read_exact(s, m)
        if resetter == "client":
            rst_close(s)
            done.set()
        else:
            s.sendall(b"k")
            with pytest.raises(ConnectionResetError):
                s.recv(1)
            s.close()
        srv.join(10)
        (r,), (rs,) = _pair(t, lambda r: r.server.port == port)
    lsock.close()
    want_c2s = n + (1 if resetter == "server" else 0)
    assert r.outcome is Outcome.RESET
    assert r.close_initiator is CloseInitiator(resetter)
    assert (r.bytes_client_to_server, r.bytes_server_to_client) == (want_c2s, m)
    _same_connection_fields(r, rs)


def test_connection_to_a_closed_port_is_refused(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    with tracking(cluster) as t:
        s = client_socket(cluster, client)
        with pytest.raises(ConnectionRefusedError):
            s.connect((server.ipv4, 9))
        s.close()
        (r,), _ = _pair(t, lambda r: r.server.port == 9)
    assert r.outcome is Outcome.REFUSED
    assert r.close_initiator is None
    assert (r.bytes_client_to_server, r.bytes_server_to_client) == (0, 0)
    assert r.start_time is not None and r.end_time is not None


def test_unanswered_syn_becomes_a_timeout(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    cluster.nft(
        server,
        "table inet pwtest {\n chain input {\n type filter hook input priority 0;\n"
        " tcp dport 9999 drop\n }\n}\n",
    )
    with tracking(cluster, syn_timeout_s=1.0) as t:
        s = client_socket(cluster, client)
        s.settimeout(1.5)
        with pytest.raises((TimeoutError, socket.timeout)):
            s.connect((server.ipv4, 9999))
        s.close()
        (r,), _ = _pair(t, lambda r: r.server.port == 9999)
    assert r.outcome is Outcome.TIMEOUT
    assert r.close_initiator is None
    assert r.bytes_client_to_server is None and r.bytes_server_to_client is None
    assert r.handshake_rtt_s is None


def test_half_close_counts_data_sent_after_the_first_fin(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    n, m = 10_000, 250_000
    lsock = listener(cluster, server)
    port = lsock.getsockname()[1]

    def handle(conn: socket.socket) -> None:
        assert read_to_eof(conn) == n  # the client's FIN arrived ...
        for _ in range(5):  # ... and the server keeps talking
            send_all_and_count(conn, m // 5)
            time.sleep(0.05)

    with tracking(cluster) as t:
        srv = _serve(lsock, handle, 1)
        s = client_socket(cluster, client)
        s.connect((server.ipv4, port))
        send_all_and_count(s, n)
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == m
        s.close()
        srv.join(10)
        (r,), (rs,) = _pair(t, lambda r: r.server.port == port)
    lsock.close()
    assert r.outcome is Outcome.CLOSED and r.close_initiator is CloseInitiator.CLIENT
    assert (r.bytes_client_to_server, r.bytes_server_to_client) == (n, m)
    assert r.duration_s is not None and r.duration_s >= 0.2
    _same_connection_fields(r, rs)


def test_bytes_stay_exact_under_packet_loss(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    # 3% of TCP frames are dropped inside each pod, after the capture point saw them
    cluster.add_loss(server, 3)
    cluster.add_loss(client, 3)
    rng = random.Random(3)
    plan = [(rng.randrange(200_000, 600_000), rng.randrange(200_000, 600_000)) for _ in range(8)]
    lsock = listener(cluster, server)
    port = lsock.getsockname()[1]
    with tracking(cluster) as t:
        srv = _serve(lsock, _server_answers_then_closes, len(plan))
        sent = []
        for n, m in plan:
            s = client_socket(cluster, client)
            s.settimeout(30)
            s.connect((server.ipv4, port))
            s.sendall(HEADER.pack(n, m) + b"c" * n)
            assert read_to_eof(s) == m
            sent.append((s.getsockname()[1], HEADER.size + n, m))
            s.close()
        srv.join(30)
        client_side, _ = _pair(t, lambda r: r.server.port == port, len(plan))
    cluster.remove_loss(server)
    cluster.remove_loss(client)
    lsock.close()
    got = sorted((r.client.port, r.bytes_client_to_server, r.bytes_server_to_client) for r in client_side)
    assert got == sorted(sent)
