"""pcap/pcapng replay: scapy-written, hand-built and real tcpdump/dumpcap files; garbage refused."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, raw
from scapy.utils import PcapNgWriter, PcapWriter, wrpcap

from podwire.capture.pcap import PcapError, PcapSource
from podwire.model import ACK, FIN, RST, SYN, Segment
from tests.capture.nets import Pods, in_ns, nginx, pods_namespace

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
T0 = 1_733_000_000


def conversation() -> list[Packet]:
    """A tiny HTTP-like exchange: handshake, data both ways, FIN/FIN, then a refused SYN -> RST."""
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)

    def p(
        src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int, data: bytes = b""
    ) -> Packet:
        return (
            ETH
            / IP(src=src[0], dst=dst[0])
            / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack)
            / data
        )

    pkts = [
        p(c, s, "S", 100, 0),
        p(s, c, "SA", 900, 101),
        p(c, s, "A", 101, 901),
        p(c, s, "PA", 101, 901, b"GET / HTTP/1.1\r\n\r\n"),
        p(s, c, "PA", 901, 119, b"x" * 500),
        p(c, s, "FA", 119, 1401),
        p(s, c, "FA", 1401, 120, b"tail"),
        p(c, s, "A", 120, 1406),
        p(c, ("10.0.0.2", 81), "S", 5000, 0),
        p(("10.0.0.2", 81), c, "RA", 0, 5001),
    ]
    for i, pkt in enumerate(pkts):
        pkt.time = T0 + i * 0.001 + 0.000123
    return pkts


CONTROL_FLAGS = [SYN, SYN | ACK, FIN | ACK, FIN | ACK, SYN, RST | ACK]


def read_all(path: str | Path, **kw: object) -> tuple[list[Segment], PcapSource]:
    src = PcapSource(str(path), **kw)  # type: ignore[arg-type]
    out: list[Segment] = []
    while (batch := src.poll(0)) is not None:
        out.extend(batch.segments)
    src.close()
    return out, src


def check_conversation(segs: list[Segment], exact_ts: bool = True) -> None:
    assert [s.flags for s in segs] == CONTROL_FLAGS
    fin = segs[3]
    assert (fin.seq, fin.payload_len) == (1401, 4)
    assert segs[0].src == socket.inet_aton("10.0.0.1") and segs[0].sport == 40000
    assert all(s.point == 0 and s.from_local is None for s in segs)
    if exact_ts:
        assert segs[0].ts == pytest.approx(T0 + 0.000123, abs=1e-6)
        assert segs[5].ts == pytest.approx(T0 + 0.009123, abs=1e-6)


def test_scapy_wrpcap_microsecond_file(tmp_path: Path) -> None:
    path = tmp_path / "us.pcap"
    wrpcap(str(path), conversation())
    segs, src = read_all(path)
    check_conversation(segs)
    assert src.format == "pcap" and src.stats.packets == 10 and src.stats.truncated == 0
    assert src.decoder.stats.data == 4  # A, PA, PA, A


def test_nanosecond_pcap(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    pkts = conversation()
    pkts[0].time = T0 + 0.000000777  # needs nanoseconds
    with PcapWriter(str(path), nano=True) as w:
        for pkt in pkts:
            w.write(pkt)
    segs, _ = read_all(path)
    assert segs[0].ts == pytest.approx(T0 + 0.000000777, abs=1e-8)
    assert [s.flags for s in segs] == CONTROL_FLAGS


def _pcap_bytes(frames: list[bytes], bo: str, magic: int, linktype: int = 1, scale: int = 1_000_000) -> bytes:
    out = struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, fr in enumerate(frames):
        out += struct.pack(bo + "IIII", T0 + i, (i * 10 + 5) * (scale // 1_000_000), len(fr), len(fr)) + fr
    return out


@pytest.mark.parametrize(
    ("bo", "magic"), [("<", 0xA1B2C3D4), (">", 0xA1B2C3D4), ("<", 0xA1B23C4D), (">", 0xA1B23C4D)]
)
def test_both_byte_orders_and_both_resolutions(tmp_path: Path, bo: str, magic: int) -> None:
    frames = [raw(p) for p in conversation()]
    scale = 1_000_000_000 if magic == 0xA1B23C4D else 1_000_000
    path = tmp_path / "x.pcap"
    path.write_bytes(_pcap_bytes(frames, bo, magic, scale=scale))
    segs, _ = read_all(path)
    assert [s.flags for s in segs] == CONTROL_FLAGS
    assert segs[1].ts == pytest.approx(T0 + 1 + 15e-6, abs=1e-7)


def test_raw_ip_link_type_pcap(tmp_path: Path) -> None:
    frames = [raw(p[IP]) for p in conversation()]
    path = tmp_path / "raw.pcap"
    path.write_bytes(_pcap_bytes(frames, "<", 0xA1B2C3D4, linktype=101))
    segs, src = read_all(path)
    assert [s.flags for s in segs] == CONTROL_FLAGS and src.linktype == 101


def test_scapy_pcapng_writer(tmp_path: Path) -> None:
    path = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(path))
    for pkt in conversation():
        w.write(pkt)
    w.close()
    segs, src = read_all(path)
    assert src.format == "pcapng"
    check_conversation(segs)


# ---- hand-built pcapng: every block type we read, and some we skip --------------------------


def block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(bo + "II", btype, length) + body + struct.pack(bo + "I", length)


def option(bo: str, code: int, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def shb(bo: str) -> bytes:
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += option(bo, 14, struct.pack(bo + "q", tsoffset))
    if opts:
        opts += struct.pack(bo + "HH", 0, 0)
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, 0) + opts)


def epb(bo: str, iface: int, ticks: int, frame: bytes) -> bytes:
    return block(
        bo,
        6,
        struct.pack(bo + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame,
    )


def spb(bo: str, frame: bytes) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", len(frame)) + frame)


def opb(bo: str, iface: int, ticks: int, frame: bytes) -> bytes:
    return block(
        bo,
        2,
        struct.pack(bo + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame,
    )


SYN_ETH = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="S", seq=11))
FIN_RAW6 = raw(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=3, dport=4, flags="F", seq=22) / b"abc")
RST_ETH = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=6, flags="R", seq=33))
ACK_ETH = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=7, dport=8, flags="A", seq=44) / b"data")


def handmade_pcapng() -> bytes:
    le, be = "<", ">"
    return b"".join(
        [
            shb(le),
            idb(le, 1, tsresol=9),  # iface 0: Ethernet, nanoseconds
            idb(le, 101, tsresol=0x80 | 20, tsoffset=1000),  # iface 1: raw IP, 2^-20 s, +1000 s
            epb(le, 0, (T0 * 10**9) + 123_456_789, SYN_ETH),
            epb(le, 1, 5 * 2**20 + 2**19, FIN_RAW6),  # 5.5 s + 1000 s offset
            block(le, 0x0BAD, b"unknown block type"),
            block(le, 4, b"\x00\x00\x00\x00"),  # name resolution block: skipped
            spb(le, ACK_ETH),  # data: skipped by the decoder
            spb(le, RST_ETH),  # iface 0, no timestamp
            opb(le, 0, (T0 * 10**9) + 7, SYN_ETH),
            epb(le, 9, 0, SYN_ETH),  # no such interface: counted
            shb(be),  # a new section, other byte order; interfaces start again
            idb(be, 1),  # default resolution: microseconds
            epb(be, 0, T0 * 10**6 + 42, RST_ETH),
        ]
    )


def test_handmade_pcapng_with_every_block_type_and_two_byte_orders(tmp_path: Path) -> None:
    path = tmp_path / "h.pcapng"
    path.write_bytes(handmade_pcapng())
    segs, src = read_all(path)
    assert [(s.flags, s.seq) for s in segs] == [(SYN, 11), (FIN, 22), (RST, 33), (SYN, 11), (RST, 33)]
    assert segs[0].ts == pytest.approx(T0 + 0.123456789, abs=1e-7)
    assert segs[1].ts == pytest.approx(1005.5) and segs[1].payload_len == 3 and len(segs[1].src) == 16
    assert segs[2].ts == 0.0
    assert segs[3].ts == pytest.approx(T0 + 7e-9, abs=1e-6)
    assert segs[4].ts == pytest.approx(T0 + 42e-6, abs=1e-7)
    assert src.stats.blocks_skipped == 2
    assert src.stats.unsupported_interface == 1
    assert src.stats.truncated == 0
    assert src.decoder.stats.data == 1


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_truncated_tail_at_every_offset_is_counted_and_ends_cleanly(tmp_path: Path, kind: str) -> None:
    if kind == "pcap":
        full = _pcap_bytes([raw(p) for p in conversation()], "<", 0xA1B2C3D4)
        last = len(raw(conversation()[-1])) + 16
    else:
        full = handmade_pcapng()
        last = len(epb(">", 0, 0, RST_ETH))
    path = tmp_path / f"t.{kind}"
    whole, _ = read_all(_write(path, full))
    for cut in range(len(full) - last + 1, len(full)):
        segs, src = read_all(_write(path, full[:cut]))
        assert segs == whole[:-1], cut
        assert src.stats.truncated == 1, cut


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


GARBAGE: list[tuple[str, bytes | None]] = [
    ("empty", b""),
    ("three bytes", b"\xd4\xc3\xb2"),
    ("text", b"this is not a capture file\n" * 10),
    ("random", random.Random(5).randbytes(4096)),
    ("pcap header cut", struct.pack("<IHH", 0xA1B2C3D4, 2, 4)),
    ("pcapng bad byte order", struct.pack("<II", 0x0A0D0D0A, 28) + b"\x00" * 20),
    ("pcapng shb longer than file", struct.pack("<III", 0x0A0D0D0A, 4096, 0x1A2B3C4D) + b"\x00" * 16),
]


@pytest.mark.parametrize(("case", "data"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_files_raise_one_clear_line_at_open(tmp_path: Path, case: str, data: bytes) -> None:
    path = _write(tmp_path / "garbage.pcap", data or b"")
    with pytest.raises(PcapError) as err:
        PcapSource(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_missing_file_and_directory_raise_pcap_error(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.pcap", tmp_path):
        with pytest.raises(PcapError) as err:
            PcapSource(str(path))
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_small_batches_cover_the_whole_file_then_none(tmp_path: Path) -> None:
    path = tmp_path / "b.pcap"
    wrpcap(str(path), conversation() * 7)
    src = PcapSource(str(path), batch_packets=3)
    polls, segs = 0, []
    while (batch := src.poll(0)) is not None:
        polls += 1
        segs.extend(batch.segments)
    assert len(segs) == 6 * 7 and polls >= 70 // 3
    assert src.poll(0) is None


# ---- real captures: tcpdump / dumpcap recording curl -> nginx in namespaces -----------------

BODY = random.Random(9).randbytes(123_457)


def _capture(pods: Pods, argv: list[str], ready: bytes) -> subprocess.Popen[bytes]:
    proc = pods.start(pods.node, *argv)
    assert proc.stderr is not None
    deadline = time.monotonic() + 15
    seen = b""
    while ready not in seen:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            raise AssertionError(f"capture did not start: {seen!r}")
        seen += line
    return proc


def wait_for_file(path: Path, done: object, timeout: float = 15.0) -> None:
    """Wait until the capture tool has written what `done(segments)` looks for (tools buffer blocks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            segs, _ = read_all(path)
            if done(segs):  # type: ignore[operator]
                return
        except PcapError:
            pass  # not even the file header yet
        time.sleep(0.2)
    raise AssertionError(f"{path} never held the last segment")


@pytest.mark.live
@pytest.mark.parametrize(
    "tool",
    ["tcpdump-us", "tcpdump-ns", "dumpcap-pcapng"],
)
def test_real_capture_of_curl_and_nginx_gives_exact_bytes_from_sequence_numbers(
    tmp_path: Path, tool: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    out = tmp_path / "cap"
    with pods_namespace(1) as pods:
        server = f"{pods.node_ip(0)}:8080"
        server6 = f"[{pods.node_ip6(0)}]:8080"
        with nginx(pods, pods.node, [server, server6], BODY):
            iface = pods.host_ifs[0]
            if tool == "tcpdump-us":
                argv = ["tcpdump", "-i", iface, "-U", "--immediate-mode", "-w", str(out), "-s", "256", "tcp"]
            elif tool == "tcpdump-ns":
                argv = [
                    "tcpdump",
                    "-i",
                    iface,
                    "-U",
                    "--immediate-mode",
                    "--time-stamp-precision=nano",
                    "-w",
                    str(out),
                    "tcp",
                ]
            else:
                argv = ["dumpcap", "-i", iface, "-q", "-w", str(out), "-f", "tcp"]
            cap = _capture(pods, argv, b"listening on" if tool.startswith("tcpdump") else b"Capturing on")
            # "Capturing on" can come before the capture is live: knock on a closed port until it shows.
            for _ in range(20):
                subprocess.run(
                    in_ns(pods.pods[0], "curl", "-sS", f"http://{pods.node_ip(0)}:8082/"), capture_output=True
                )
                try:
                    wait_for_file(out, lambda segs: any(s.sport == 8082 and s.flags & RST for s in segs), 1.0)
                    break
                except AssertionError:
                    continue
            results = []
            for url in (f"http://{server}/file", f"http://{server6}/file", f"http://{server}/file"):
                r = subprocess.run(
                    in_ns(
                        pods.pods[0],
                        "curl",
                        "-sS",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{local_port} %{size_request} %{size_header} %{size_download}",
                        url,
                    ),
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results.append(tuple(int(v) for v in r.stdout.split()))
            refused = subprocess.run(
                in_ns(pods.pods[0], "curl", "-sS", f"http://{pods.node_ip(0)}:8081/"), capture_output=True
            )
            assert refused.returncode != 0
            wait_for_file(out, lambda segs: any(s.sport == 8081 and s.flags & RST for s in segs))
            cap.send_signal(signal.SIGINT)
            cap.wait(15)
    segs, src = read_all(out)
    assert src.format == ("pcapng" if tool.startswith("dumpcap") else "pcap")
    assert src.stats.truncated == 0 and src.decoder.stats.errors == 0
    for port, sent, header_bytes, body_bytes in results:
        conn = [s for s in segs if port in (s.sport, s.dport)]
        c_syn = next(s for s in conn if s.flags & (SYN | ACK) == SYN)
        s_syn = next(s for s in conn if s.flags & (SYN | ACK) == SYN | ACK)
        c_fin = next(s for s in conn if s.flags & FIN and s.sport == port)
        s_fin = next(s for s in conn if s.flags & FIN and s.dport == port)
        assert (c_fin.seq + c_fin.payload_len - c_syn.seq - 1) % 2**32 == sent
        assert (s_fin.seq + s_fin.payload_len - s_syn.seq - 1) % 2**32 == header_bytes + body_bytes
        assert body_bytes == len(BODY)
    assert sum(1 for s in segs if len(s.src) == 16 and s.flags & SYN) == 2  # the IPv6 SYN and SYN-ACK
    refused_syn = [s for s in segs if s.dport == 8081 and s.flags == SYN]
    refused_rst = [s for s in segs if s.sport == 8081 and s.flags & RST]
    assert refused_syn and refused_rst
    # tshark, an independent reader, sees the same set of TCP conversations.
    tshark = subprocess.run(
        ["tshark", "-r", str(out), "-q", "-z", "conv,tcp"], check=True, capture_output=True, text=True
    ).stdout
    theirs = {int(line.split()[0].rsplit(":", 1)[1]) for line in tshark.splitlines() if "<->" in line}
    ours = {s.sport for s in segs if s.flags & (SYN | ACK) == SYN}
    assert ours == theirs
