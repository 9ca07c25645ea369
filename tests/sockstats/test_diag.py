"""The hand-written sock_diag dump against the kernel's own counters (loopback sockets in a
throwaway network namespace of the test's, always removed)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from podwire.model import SocketSample
from podwire.sockstats.diag import DiagDump


def _in_fresh_netns(fn: object) -> Any:
    """Run fn in a thread that unshared its own network namespace (gone when the thread ends)."""
    import ctypes
    import subprocess

    out: list[object] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
            out.append(OSError(ctypes.get_errno(), "unshare"))
            return
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        try:
            out.append(fn())  # type: ignore[operator]
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    (result,) = out
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[return-value]


Result = tuple[
    frozenset[int],
    list[SocketSample],
    list[SocketSample],
    tuple[list[SocketSample], int],
    bool,
    int,
    int,
    int,
]


@pytest.mark.parametrize("one_walk", [True, False], ids=["one-walk", "per-family"])
def test_dump_reads_both_families_listeners_and_exact_byte_counters(one_walk: bool) -> None:
    def scenario() -> Result:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        v6 = socket.socket(socket.AF_INET6)
        v6.bind(("::", 0))  # dual stack: an IPv4 client shows as ::ffff:127.0.0.1
        v6.listen()
        c = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
        s, _ = srv.accept()
        c.sendall(b"a" * 123_456)
        got = 0
        while got < 123_456:
            got += len(s.recv(1 << 16))
        s.sendall(b"b" * 789)
        got = 0
        while got < 789:
            got += len(c.recv(1 << 16))
        c4 = socket.create_connection(("127.0.0.1", v6.getsockname()[1]))
        s4, _ = v6.accept()
        c4.sendall(b"c" * 10)
        s4.recv(10)
        c6 = socket.create_connection(("::1", v6.getsockname()[1]))  # a true IPv6 connection
        s6, _ = v6.accept()
        c6.sendall(b"d" * 33)
        s6.recv(33)
        with DiagDump(one_walk) as dump:
            listening = dump.listening()
            everything = dump.connections(7, listening, skip_local=False)
            crossing = dump.connections(7, listening)
            limited = dump.connections(7, listening, skip_local=False, limit=2), dump.over_limit
            used_one_walk = dump.one_walk
        ports = (srv.getsockname()[1], v6.getsockname()[1], c6.getsockname()[1])
        for x in (srv, v6, c, s, c4, s4, c6, s6):
            x.close()
        return listening, everything, crossing, limited, used_one_walk, *ports

    listening, found, crossing, limited, used_one_walk, port, port6, client6 = _in_fresh_netns(scenario)
    assert used_one_walk is one_walk  # this kernel answers the one-walk request
    assert listening == frozenset({port, port6})
    assert len(found) == 6 and {x.point for x in found} == {7}
    assert crossing == []  # loopback connections never cross a pod's veth
    samples, over = limited  # bounded: the first 2, and the other 4 counted
    assert len(samples) == 2 and over == 4 and {x[1:5] for x in samples} <= {x[1:5] for x in found}
    by_ports = {(x.lport, x.rport): x for x in found}
    client = next(x for x in found if x.rport == port)
    server = by_ports[(port, client.lport)]
    assert client.local == client.remote == socket.inet_aton("127.0.0.1")
    assert client.established and server.established
    assert not client.local_listens and server.local_listens
    assert (client.bytes_acked, client.bytes_received) == (123_456 + 1, 789)  # +1: the SYN
    assert (server.bytes_acked, server.bytes_received) == (789, 123_456)
    assert client.rtt_us > 0 and 0 < client.min_rtt_us <= client.rtt_us * 10
    assert client.total_retrans == 0
    mapped = next(x for x in found if x.lport == port6 and len(x.local) == 4)
    assert mapped.local == socket.inet_aton("127.0.0.1")  # IPv4-mapped turned into 4 bytes
    assert mapped.bytes_received == 10
    v6_server = by_ports[(port6, client6)]
    assert v6_server.local == v6_server.remote == socket.inet_pton(socket.AF_INET6, "::1")
    assert v6_server.bytes_received == 33 and v6_server.local_listens
    assert by_ports[(client6, port6)].bytes_acked == 33 + 1
