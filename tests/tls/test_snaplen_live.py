"""In the kernel: with TLS on, a TCP control segment is copied into the ring at most
SNAPLEN_CONTROL bytes, a handshake record start up to SNAPLEN_TLS, and nothing else changes.

A pod server corks 8,000 bytes and closes, so its FIN rides on the data's tail (as HTTP/1.0-style
servers do; with one `ret #snaplen` such a frame, up to a 64 KB GSO frame, was copied whole).
A TLS 1.2 client fetches a certificate flight (> 512 bytes: it must keep the long copy).  Two
rings on the same veth see the same frames: one with the staged filter the agent uses, one with
the old single-accept program.  Each frame's captured length is read from the ring itself; the
records come from LiveCapture.
"""

from __future__ import annotations

import mmap
import socket
import struct
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podwire.capture import netns
from podwire.capture.afpacket import RingSocket
from podwire.capture.bpf import BpfProgram, FilterOptions, _compiled, compile_program
from podwire.capture.handshake import FILTER_PARTS, SNAPLEN_TLS
from podwire.model import Segment, Side
from tests.capture.nets import Pods, in_ns, pods_namespace, wait_port
from tests.tls.handshakes import make_cert
from tests.tls.test_tls_live import LiveTls

pytestmark = pytest.mark.live

N_PLAIN = 6
BODY = 8000
SERVER = textwrap.dedent(
    f"""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 9000)); s.listen(16)
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # the FIN joins the corked tail
        c.sendall(b"b" * {BODY})
        c.close()
    """
)
OPTIONS = FilterOptions(extra_parts=FILTER_PARTS, extra_snaplen=SNAPLEN_TLS)


@dataclass(frozen=True)
class Frame:
    captured: int
    wire: int  # Ethernet header + IP total length (a GSO frame's whole length)
    flags: int
    hello: bool  # the payload starts a handshake record
    sport: int
    dport: int


def _recorder(out: list[Frame]) -> Callable[..., Segment | None]:
    def decode(buf: mmap.mmap, start: int, end: int, _ts: float, _point: int, _local: bool) -> None:
        if buf[start + 12 : start + 14] != b"\x08\x00":
            return
        total = struct.unpack_from("!H", buf, start + 16)[0]
        tcp = start + 14 + ((buf[start + 14] & 0x0F) << 2)
        payload = tcp + ((buf[tcp + 12] >> 4) << 2)
        sport, dport = struct.unpack_from("!HH", buf, tcp)
        hello = end > payload and buf[payload] == 0x16
        out.append(Frame(end - start, 14 + total, buf[tcp + 13], hello, sport, dport))

    return decode


def _single_accept_program() -> BpfProgram:
    """What the agent attached before: libpcap's one program for the whole expression, one accept."""
    new = compile_program(OPTIONS)
    insns = tuple(
        (c, jt, jf, SNAPLEN_TLS if c == 0x06 and k else k) for c, jt, jf, k in _compiled(new.expression, 1)
    )
    return BpfProgram(new.expression, insns, SNAPLEN_TLS)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    work: Path = tmp_path_factory.mktemp("snap")
    cert_file, key_file = make_cert().write(work)
    with pods_namespace(1) as made:
        ip = made.pod_ip(0)
        made.start(made.pods[0], "python3", "-c", SERVER, ip)
        made.start(
            made.pods[0], "openssl", "s_server", "-quiet", "-www", "-accept", f"{ip}:8443",
            "-cert", str(cert_file), "-key", str(key_file),
        )  # fmt: skip
        wait_port(made.node, f"{ip}:9000")
        wait_port(made.node, f"{ip}:8443")
        yield made


def _fetch(pods: Pods) -> None:
    """N_PLAIN plain connections (each read to EOF, exactly BODY bytes) and one TLS 1.2 handshake."""
    ip = pods.pod_ip(0)
    got = subprocess.run(
        in_ns(pods.node, "python3", "-c", textwrap.dedent(
            f"""
            import socket
            for _ in range({N_PLAIN}):
                c = socket.create_connection(("{ip}", 9000), timeout=10)
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
                c.close()
                assert len(data) == {BODY}, len(data)
            print("ok")
            """
        )),
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert got.stdout.strip() == b"ok"
    r = subprocess.run(
        in_ns(pods.node, "openssl", "s_client", "-connect", f"{ip}:8443", "-tls1_2"),
        input=b"Q\n", capture_output=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-300:]


def _server_side(live: LiveTls) -> list[object]:
    return [c for c in list(live.sink.connections) if c.record.observed_side is Side.SERVER]


def _closed_both_ways(frames: list[Frame]) -> bool:
    """Every connection seen opening (SYN) has a FIN from each end, and all N_PLAIN + 1 opened."""
    clients = {f.sport for f in frames if f.flags & 0x12 == 0x02}
    fins = {(f.sport, f.dport) for f in frames if f.flags & 0x01}
    return len(clients) == N_PLAIN + 1 and all(
        any(a == c for a, _ in fins) and any(b == c for _, b in fins) for c in clients
    )


def _align(n: int) -> int:
    return (82 + n + 15) & ~15  # a frame's ring cost: tpacket3_hdr + sockaddr_ll (mac at 82), aligned


def _drain_until(rings: list[tuple[RingSocket, list[Frame]]], done: Callable[[], bool]) -> None:
    decoders = [{1: _recorder(frames)} for _, frames in rings]
    deadline = time.monotonic() + 10
    while not done() and time.monotonic() < deadline:
        for (ring, _), dec in zip(rings, decoders, strict=True):
            ring.drain(dec, [])
        time.sleep(0.02)


def test_control_segments_get_the_short_copy_handshakes_the_long_one(pods: Pods) -> None:
    with netns.inside(pods.node):
        veth = socket.if_nametoindex(pods.host_ifs[0])
        staged = RingSocket(compile_program(OPTIONS), blocks=8, retire_ms=5, ifindex=veth)
        single = RingSocket(_single_accept_program(), blocks=8, retire_ms=5, ifindex=veth)
    live = LiveTls(pods)
    new: list[Frame] = []
    old: list[Frame] = []
    try:  # the rings and the capture's filter are in place once constructed
        _fetch(pods)
        # every connection's FINs (both ends) have reached both rings
        _drain_until(
            [(staged, new), (single, old)], lambda: _closed_both_ways(new) and _closed_both_ways(old)
        )
        deadline = time.monotonic() + 10
        while len(_server_side(live)) < N_PLAIN + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        ring_bytes_agent = live.capture.stats().ring_bytes
    finally:
        records = live.stop()
        staged.close()
        single.close()

    # the same frames pass, in the same order (only their copied lengths differ); a ring may hold
    # a late retransmission more than the other when it was last read
    n = min(len(new), len(old))
    new, old = new[:n], old[:n]
    assert [(f.wire, f.flags, f.hello, f.sport) for f in new] == [
        (f.wire, f.flags, f.hello, f.sport) for f in old
    ]
    assert _closed_both_ways(new)
    control = [f for f in new if f.flags & 0x07]
    hellos = [f for f in new if f.hello and not f.flags & 0x07]
    for f in control:
        assert f.captured == min(f.wire, 512), f
    for f in hellos:
        assert f.captured == min(f.wire, SNAPLEN_TLS), f
    assert len(hellos) >= 2 and max(f.wire for f in hellos) > 512  # ClientHello, the certificate flight
    big_fins = {(f.sport, f.dport): f for f in control if f.flags & 0x01 and f.wire > 512}.values()
    assert len(big_fins) == N_PLAIN, control  # each server's FIN rode on the tail of its data
    # the old program copied those whole, the new one 512 bytes each; every other frame the same
    long_fins = [f for f in control if f.flags & 0x01 and f.wire > 512]  # (with any retransmission)
    assert sum(f.captured for f in old) - sum(f.captured for f in new) == sum(f.wire - 512 for f in long_fins)
    assert staged.ring_bytes < single.ring_bytes
    # the agent's program (interface prelude + the same stages) cut the frames as the staged ring did
    # (slack: a retransmitted control segment or two, read by one ring and not the other)
    new_cost, old_cost = sum(_align(f.captured) for f in new), sum(_align(f.captured) for f in old)
    assert new_cost - 2 * _align(512) <= ring_bytes_agent <= new_cost + 2 * _align(512) < old_cost

    # and what the agent makes of it is unchanged: exact bytes, and the TLS 1.2 certificate
    plain = [r for r in records if r.server.port == 9000]
    tls = [r for r in records if r.server.port == 8443]
    assert len(plain) == N_PLAIN and len(tls) == 1
    assert all(r.bytes_server_to_client == BODY and r.bytes_client_to_server == 0 for r in plain)
    assert tls[0].tls is not None and tls[0].tls.version == "TLS 1.2"
    assert tls[0].tls.certificate_subject == "CN=web.podwire.test"
