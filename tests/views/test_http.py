"""The hardened listener (issue 14 item 2): timeouts, connection cap, backlog, fds, Server header.

The listener runs for real on loopback; the fd test runs it in a child process whose soft
RLIMIT_NOFILE is containerd's default, 1024, and floods it with 2,000 idle connections.
"""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from podwire.views.http import HttpLimits, HttpServer, health_routes, text


@pytest.fixture
def server() -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, HttpLimits(request_timeout_s=1.0, idle_timeout_s=1.0, max_connections=8))
    health_routes(srv, lambda: True)
    srv.route("/echo", lambda q: text(",".join(f"{k}={v[0]}" for k, v in sorted(q.items()))))
    srv.start()
    yield srv
    srv.stop()


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed `sock` (recv returns b''), or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def test_server_header_has_no_version_and_keep_alive_serves_several_requests(server: HttpServer) -> None:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    for i in range(3):
        conn.request("GET", f"/echo?n={i}&a=b")
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == f"a=b,n={i}".encode()
        assert r.getheader("Server") == "podwire"
    conn.request("GET", "/nope")
    r = conn.getresponse()
    assert r.status == 404 and r.read() == b"not found\n"
    conn.request("POST", "/healthz", body=b"x")
    r = conn.getresponse()
    assert r.status == 405
    r.read()
    conn.close()


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(server: HttpServer) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    assert b"200 OK" in sock.recv(4096)
    closed = _closed_within(sock, 4.0)
    assert closed is not None and closed < 2.5, closed
    assert server.stats.timed_out >= 1


def test_a_request_head_trickled_byte_by_byte_is_cut_at_the_request_timeout(server: HttpServer) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    start = time.monotonic()
    closed_at = None
    while time.monotonic() - start < 5:
        try:
            sock.sendall(b"X")  # one byte of a header every 0.1 s: never a complete head
        except OSError:
            closed_at = time.monotonic() - start
            break
        if _closed_within(sock, 0.1) is not None:
            closed_at = time.monotonic() - start
            break
    assert closed_at is not None and closed_at < 2.5, closed_at


def test_a_head_over_the_size_limit_gets_431(server: HttpServer) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000)
    sock.settimeout(3)
    assert sock.recv(4096).startswith(b"HTTP/1.1 431 ")


def test_at_the_cap_the_idlest_connection_makes_room(server: HttpServer) -> None:
    idle = [socket.create_connection(server.address) for _ in range(8)]
    deadline = time.monotonic() + 10
    while server.stats.accepted < 8:  # all 8 held by the server before the 9th comes
        assert time.monotonic() < deadline, server.stats
        time.sleep(0.02)
    conn = http.client.HTTPConnection(*server.address, timeout=3)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    assert server.stats.evicted_at_cap >= 1
    assert _closed_within(idle[0], 1.0) is not None  # the first opened was the idlest
    for s in idle:
        s.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs iproute2's ss")
def test_the_listen_backlog_is_a_real_one(server: HttpServer) -> None:
    port = server.address[1]
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[2]) == HttpLimits().backlog == 128  # Send-Q of a listening socket is its backlog


_CHILD = textwrap.dedent(
    """
    import resource, socket, sys, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    from podwire.views.http import HttpServer, health_routes, text

    def probe(_q):
        socks = []
        try:
            for _ in range(200):  # what capture would open next: sockets, rings
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except OSError as exc:
            return text(f"failed after {len(socks)}: {exc}", 500)
        finally:
            for s in socks:
                s.close()
        return text(str(len(socks)))

    srv = HttpServer("127.0.0.1", 0)
    health_routes(srv, lambda: True)
    srv.route("/probe", probe)
    srv.start()
    print("PORT", srv.address[1], flush=True)
    time.sleep(120)
    """
)


def test_two_thousand_idle_connections_under_a_1024_fd_limit_leave_healthz_and_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2300:
        pytest.skip("needs a hard RLIMIT_NOFILE of at least 2300 for the client side")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2300), hard))
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    flood: list[socket.socket] = []
    try:
        assert child.stdout is not None
        port = next(int(line.split()[1]) for line in child.stdout if line.startswith("PORT "))
        for i in range(2000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            flood.append(s)
            if i % 20 == 19:
                time.sleep(0.05)  # paced: a burst would mostly sit in SYN retries
        time.sleep(1.0)
        held = len(os.listdir(f"/proc/{child.pid}/fd"))
        assert held < HttpLimits().max_connections + 40, held  # the cap, not the flood, bounds the fds
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
        assert time.monotonic() - start < 3.0
        conn.request("GET", "/probe")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"200")  # fds are left for capture
        conn.close()
    finally:
        for s in flood:
            s.close()
        child.kill()
        child.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    code = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))\n"
        "from podwire.views.http import raise_nofile_limit\n"
        "print(raise_nofile_limit() == (hard, hard))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
