"""Small pcaps that tests replay: what they hold is known exactly, so the records can be checked."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, TCP, Ether
from scapy.utils import wrpcap

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"


def one_connection(path: Path, up: int, down: int) -> None:
    """10.0.0.1:40000 -> 10.0.0.2:80: handshake, `up` bytes, then `down` bytes riding on the server's
    FIN (the server closes first), the client's FIN; 10 ms apart from t=1700000000."""
    c, s = CLIENT, SERVER
    pkts = [
        Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="S", seq=1000),
        Ether() / IP(src=s, dst=c) / TCP(sport=80, dport=40000, flags="SA", seq=5000, ack=1001),
        Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001),
        Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001) / (b"q" * up),
        Ether()
        / IP(src=s, dst=c)
        / TCP(sport=80, dport=40000, flags="FA", seq=5001, ack=1001 + up)
        / (b"r" * down),
        Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="FA", seq=1001 + up, ack=5002 + down),
    ]
    for i, p in enumerate(pkts):
        p.time = 1700000000.0 + i * 0.01
    wrpcap(str(path), pkts)
