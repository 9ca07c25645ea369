"""A ClientHello split across two TCP segments (a large one: many ALPN protocols) in a pcap.

The handshake bytes are OpenSSL's (memory BIOs); scapy writes them into a pcap as a real
connection would carry them (SYN, SYN-ACK, the hello in two MSS-sized segments, the server's
flight, FINs).  `podwire replay` must reassemble the hello, and its JA3/JA3S must equal tshark's
(which reassembles too) on the same file.
"""

from __future__ import annotations

import io
import json
import ssl
import subprocess
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from podwire import agent
from podwire.config import Settings
from tests.tls.handshakes import NOT_AFTER, handshake, make_cert

MSS = 1000
ALPN = (*(f"proto-{i:02d}-" + "x" * 40 for i in range(40)), "http/1.1")


def _frames(client_flight: list[bytes], server_flight: list[bytes]) -> list[Ether]:
    c, s = ("10.9.0.1", 40123), ("10.9.0.2", 443)
    cseq, sseq, t = 1000, 9000, 1700000000.0
    pkts: list[Ether] = []

    def seg(
        src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int, data: bytes = b""
    ) -> None:
        nonlocal t
        p = (
            Ether()
            / IP(src=src[0], dst=dst[0])
            / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack)
        )
        if data:
            p = p / data
        p.time = t
        t += 0.001
        pkts.append(p)

    seg(c, s, "S", cseq, 0)
    seg(s, c, "SA", sseq, cseq + 1)
    cseq += 1
    sseq += 1
    seg(c, s, "A", cseq, sseq)
    hello = client_flight[0]
    assert len(hello) > MSS
    for off in range(0, len(hello), MSS):  # MSS-sized segments, as a NIC without TSO sends them
        part = hello[off : off + MSS]
        seg(c, s, "A" if off + MSS < len(hello) else "PA", cseq, sseq, part)
        cseq += len(part)
    for data in server_flight:
        seg(s, c, "PA", sseq, cseq, data)
        sseq += len(data)
    for data in client_flight[1:]:
        seg(c, s, "PA", cseq, sseq, data)
        cseq += len(data)
    seg(c, s, "FA", cseq, sseq)
    seg(s, c, "FA", sseq, cseq + 1)
    seg(c, s, "A", cseq + 1, sseq + 1)
    return pkts


def test_split_client_hello_is_reassembled_in_replay(tmp_path: Path) -> None:
    cert = make_cert()
    flight = handshake(cert, tmp_path, version=ssl.TLSVersion.TLSv1_2, alpn=ALPN, server_alpn=("http/1.1",))
    pcap = tmp_path / "split.pcap"
    wrpcap(str(pcap), _frames(flight.client, flight.server))

    out = io.StringIO()
    assert agent.replay(Settings(log_format="console"), str(pcap), "jsonl", out) == 0
    (row,) = [json.loads(line) for line in out.getvalue().splitlines()]
    tls = row["tls"]
    assert tls["server_name"] == "web.podwire.test"
    assert tls["client_alpn"] == list(ALPN)  # the list runs into the second segment
    assert tls["alpn"] == "http/1.1"
    assert tls["version"] == "TLS 1.2"
    assert tls["certificate_not_after"] == NOT_AFTER.strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tls.handshake.type == 1 || tls.handshake.type == 2",
         "-T", "fields", "-e", "tls.handshake.ja3", "-e", "tls.handshake.ja3s"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    assert fields == [tls["ja3"], tls["ja3s"]]
