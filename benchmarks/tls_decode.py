"""TLS decoding cost, in process: CPU microseconds per segment and per handshake.

    .venv/bin/python benchmarks/tls_decode.py [--connections 2000] [--repeat 5]

Real handshakes (OpenSSL through Python's ssl, in memory, with a certificate this script makes)
are framed as Ethernet/IPv4/TCP, each write one frame (as GSO hands it to AF_PACKET at a veth) or
cut into 536-byte segments (as on a wire without GRO, or in a pcap; the test flights are small).
Measured, CPU time of this process (time.process_time), best of R runs:

  * tap: `Decoder.ethernet` with TLS on, per handshake frame (the frames the kernel filter passes);
  * tap on data: per 1,448-byte application-data segment, TLS on minus TLS off (replay only: the
    live filter never passes those);
  * assembler: `TlsAssembler.feed` + `take` per connection (reassembly, ClientHello/ServerHello
    parsing, JA3/JA3S/JA4, the leaf certificate through `cryptography`), TLS 1.3 and TLS 1.2;
    TLS 1.2 with the parsed-certificate cache hit (one server, the usual case) and missed
    (a new certificate per connection, the worst case);
  * the whole path (tap + assembler) per handshake segment, whole and MSS-split.

Prints a table and writes benchmarks/results/tls_decode.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.tls.handshakes

from tests.tls.handshakes import Flight, handshake, make_cert  # noqa: E402

from podwire.capture.decode import Decoder  # noqa: E402
from podwire.model import ConnectionRecord, Endpoint, Outcome, TlsChunk  # noqa: E402
from podwire.tls.assembler import TlsAssembler, TlsLimits  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MSS = 1448  # data segments
SPLIT = 536  # handshake writes cut here: IPv4's default MSS, so the test's small flights do span segments
CLIENT, SERVER = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
_ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, payload: bytes) -> bytes:
    ip = _IP4.pack(0x45, 0, 20 + 20 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    tcp = _TCP.pack(sport, dport, seq, 1, 5 << 4, 0x18, 65535, 0, 0)  # PSH|ACK
    return _ETH + ip + tcp + payload


def frames_of(flight: Flight, cport: int, split: bool) -> list[bytes]:
    """Each write as one frame, or cut at MSS; client and server writes interleaved as sent."""
    out: list[bytes] = []
    seq = {True: 1001, False: 5_000_001}
    for i in range(max(len(flight.client), len(flight.server))):
        for is_client, writes in ((True, flight.client), (False, flight.server)):
            if i >= len(writes):
                continue
            data = writes[i]
            parts = [data[o : o + SPLIT] for o in range(0, len(data), SPLIT)] if split else [data]
            for part in parts:
                if is_client:
                    out.append(frame(CLIENT, SERVER, cport, 443, seq[True], part))
                else:
                    out.append(frame(SERVER, CLIENT, 443, cport, seq[False], part))
                seq[is_client] += len(part)
    return out


def record(cport: int) -> ConnectionRecord:
    return ConnectionRecord(
        point=7, client=Endpoint("10.0.0.1", cport), server=Endpoint("10.0.0.2", 443),
        network_type="ipv4", start_time=1.0, end_time=2.0, duration_s=1.0, outcome=Outcome.CLOSED,
        close_initiator=None, bytes_client_to_server=None, bytes_server_to_client=None,
        handshake_rtt_s=None, started_before_capture=False, client_guessed=False,
        client_isn=1000, server_isn=5_000_000, observed_side=None,
    )  # fmt: skip


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def measure(flight: Flight, n: int, repeat: int, split: bool) -> dict[str, float]:
    conns = [(40000 + i % 20000, frames_of(flight, 40000 + i % 20000, split)) for i in range(n)]
    segments = sum(len(f) for _, f in conns)

    def tap_only() -> list[list[TlsChunk]]:
        dec = Decoder(tls=True)
        out = []
        for _, frames in conns:
            for buf in frames:
                dec.ethernet(buf, 0, len(buf), 1.0, 7, True)
            out.append(dec.take_tls())
        return out

    chunks = tap_only()
    assert all(chunks), "the tap passed nothing"
    recs = [record(cport) for cport, _ in conns]

    def assemble(miss: bool) -> Callable[[], None]:
        def run() -> None:
            asm = TlsAssembler(TlsLimits(max_connections=n + 1))
            for chunk_list, rec in zip(chunks, recs, strict=True):
                if miss:
                    asm._certs.clear()  # every certificate parsed again
                asm.feed(chunk_list)
                assert asm.take(rec) is not None
            assert asm.stats.errors == 0 and asm.stats.gap == 0

        return run

    t_tap = best(tap_only, repeat)
    t_hit = best(assemble(False), repeat)
    t_miss = best(assemble(True), repeat)
    return {
        "segments_per_handshake": segments / n,
        "tap_us_per_segment": t_tap / segments * 1e6,
        "assembler_us_per_handshake": t_hit / n * 1e6,
        "assembler_us_per_handshake_cert_parsed_each_time": t_miss / n * 1e6,
        "whole_us_per_segment": (t_tap + t_hit) / segments * 1e6,
        "whole_us_per_handshake": (t_tap + t_hit) / n * 1e6,
    }


def data_segment_cost(n: int, repeat: int) -> dict[str, float]:
    payload = b"\x17\x03\x03\x05\xa3" + os.urandom(MSS - 5)
    frames = [frame(CLIENT, SERVER, 40000 + i % 20000, 443, 1000 + i * MSS, payload) for i in range(n)]

    def run(tls: bool) -> Callable[[], None]:
        def go() -> None:
            dec = Decoder(tls=tls)
            eth = dec.ethernet
            for buf in frames:
                eth(buf, 0, len(buf), 1.0, 7, True)
            assert not dec.take_tls()

        return go

    on, off = best(run(True), repeat), best(run(False), repeat)
    return {
        "decoder_us_per_data_segment_tls_off": off / n * 1e6,
        "decoder_us_per_data_segment_tls_on": on / n * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cert = make_cert()
    results: dict[str, object] = {
        "connections": args.connections,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        flights = {
            "TLS 1.3": handshake(cert, Path(tmp), alpn=("h2", "http/1.1")),
            "TLS 1.2": handshake(cert, Path(tmp), version=ssl.TLSVersion.TLSv1_2, alpn=("http/1.1",)),
        }
    rows = []
    for name, flight in flights.items():
        for split in (False, True):
            key = f"{name}, {'MSS-split' if split else 'one frame per write'}"
            r = measure(flight, args.connections, args.repeat, split)
            results[key] = r
            rows.append((key, r))
    results["data"] = data = data_segment_cost(args.connections * 10, args.repeat)
    cols = (
        "segments_per_handshake",
        "tap_us_per_segment",
        "assembler_us_per_handshake",
        "assembler_us_per_handshake_cert_parsed_each_time",
        "whole_us_per_segment",
        "whole_us_per_handshake",
    )
    heads = ("segs", "tap/seg", "asm/hs", "asm/hs*", "all/seg", "all/hs")
    print(f"{'handshakes':40} " + " ".join(f"{h:>{5 if i == 0 else 8}}" for i, h in enumerate(heads)))
    for key, r in rows:
        print(f"{key:40} " + " ".join(f"{r[c]:{5 if i == 0 else 8}.1f}" for i, c in enumerate(cols)))
    print("(µs CPU; asm/hs* = the leaf certificate parsed for every connection, no cache hit)")
    off, on = data["decoder_us_per_data_segment_tls_off"], data["decoder_us_per_data_segment_tls_on"]
    print(f"data segment through the decoder (replay): TLS off {off:.2f} µs, TLS on {on:.2f} µs")
    print(f"load average at start: {results['loadavg']:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tls_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
