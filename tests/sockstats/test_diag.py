"""The hand-written sock_diag dump against the kernel's own counters (loopback sockets in a
throwaway network namespace of the test's, always removed)."""

from __future__ import annotations

import socket
import threading

from podwire.sockstats.diag import TCP_ESTABLISHED, DiagDump, NamespaceSockets


def _in_fresh_netns(fn: object) -> NamespaceSockets:
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


def test_dump_reads_both_families_listeners_and_exact_byte_counters() -> None:
    def scenario() -> tuple[NamespaceSockets, int, int]:
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
        c6 = socket.create_connection(("127.0.0.1", v6.getsockname()[1]))
        s6, _ = v6.accept()
        c6.sendall(b"c" * 10)
        s6.recv(10)
        with DiagDump() as dump:
            result = dump.tcp()
        ports = (srv.getsockname()[1], v6.getsockname()[1])
        for x in (srv, v6, c, s, c6, s6):
            x.close()
        return result, *ports

    result, port, port6 = _in_fresh_netns(scenario)
    assert result.listening == frozenset({port, port6})
    by_local = {(x.lport, x.rport): x for x in result.sockets}
    client = next(x for x in result.sockets if x.rport == port)
    server = by_local[(port, client.lport)]
    assert client.local == client.remote == socket.inet_aton("127.0.0.1")
    assert client.state == server.state == TCP_ESTABLISHED
    assert (client.bytes_acked, client.bytes_received) == (123_456 + 1, 789)  # +1: the SYN
    assert (server.bytes_acked, server.bytes_received) == (789, 123_456)
    assert client.rtt_us > 0 and 0 < client.min_rtt_us <= client.rtt_us * 10
    mapped = next(x for x in result.sockets if x.lport == port6)
    assert mapped.local == socket.inet_aton("127.0.0.1")  # IPv4-mapped turned into 4 bytes
    assert mapped.bytes_received == 10
