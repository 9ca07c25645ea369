"""The churn benchmark's CPU path without the network: ring walk -> tracker -> naming -> sink.

churn.py measures the agent's capture thread against real traffic, so its figure also holds the
machine's noise (other processes, cold caches after each wake-up).  This script replays the same
path on frames laid out in memory exactly as the kernel lays out a TPACKET_V3 ring (block
descriptors, tpacket3_hdr, sockaddr_ll with ifindex, hatype and pkttype, frames at tp_mac 82),
so a change to the hot path can be
compared in seconds, A/B, with little noise:

  * N connections, each as churn.py makes them: client SYN, server SYN-ACK, server FIN with
    5 bytes, client FIN (Ethernet, IPv4, TCP options as Linux sends them), sll_pkttype set as on
    the client's host-side veth (HOST from the pod, OUTGOING to it);
  * `--per-block` frames per ring block (churn.py's 10 ms blocks hold ~400-600);
  * one RingSocket.drain per block (as one wake-up), then Pipeline.feed, with the identity
    index from an inventory naming both pods and a CollectingSink, as churn.py;
  * settle_heap() first, as Agent.start() does (`--no-settle` to compare);
  * `--stage drain` (ring walk only) or `track` (+ tracker, no naming) to split the cost.

Every run checks that every connection came out CLOSED with exactly 2 and 5 bytes.  Reported:
CPU microseconds per connection (thread CPU time), best of `--repeat`, and the load average.

    .venv/bin/python benchmarks/ring_path.py [--connections 20000] [--repeat 5] [--stage all]
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

from podwire.agent import CollectingSink, Pipeline, settle_heap
from podwire.capture.afpacket import ARPHRD_ETHER, PACKET_OUTGOING, TP_STATUS_USER, RingSocket
from podwire.capture.decode import Decoder
from podwire.config import Settings
from podwire.identity import build_service
from podwire.model import ACK, FIN, SYN, Batch, Outcome, Segment
from podwire.tracker.tracker import Tracker, TrackerLimits

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 256 * 1024  # Settings.ring_block_kib
FIRST = 48  # offset_to_first_pkt
MAC = 82  # tp_mac for Ethernet: TPACKET_ALIGN(sizeof tpacket3_hdr + sockaddr_ll + 16) - 14
CLIENT, SERVER = bytes([10, 77, 0, 2]), bytes([10, 77, 0, 3])
INVENTORY = """pods:
- {ip: 10.77.0.2, namespace: bench, name: client, workload: load, workload_kind: Deployment, node: a}
- {ip: 10.77.0.3, namespace: bench, name: server, workload: srv, workload_kind: Deployment, node: a}
services: []
nodes: []
external: [{cidr: 0.0.0.0/0, name: internet}]
"""
_FRAME = struct.Struct("=IIIIIIH")
_TCP = struct.Struct("!HHIIBBHHH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_OPTS = {
    10: bytes([2, 4, 5, 180, 4, 2, 8, 10]) + bytes(10) + bytes([1, 3, 3, 7]),
    8: bytes([1, 1, 8, 10]) + bytes(8),
}


def _frame(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, payload: int
) -> bytes:
    words = 10 if flags & SYN else 8  # SYN: MSS, SACK, timestamps, window scale; else timestamps
    tcp = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, words << 4, flags, 64240, 0, 0)
    tcp += _OPTS[words] + b"x" * payload
    ip = _IP.pack(0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def connections(n: int) -> list[tuple[bytes, int]]:
    """(frame, sll_pkttype) for n connections as churn.py makes them, seen on the client's veth."""
    out: list[tuple[bytes, int]] = []
    for i in range(n):
        port = 32768 + (i * 7919) % 28232  # the kernel's ephemeral range, scattered
        c, s = (i * 2654435761) & 0xFFFFFFFF, (i * 40503 + 12345) & 0xFFFFFFFF
        out.append((_frame(CLIENT, SERVER, port, 7000, c, 0, SYN, 0), 0))
        out.append((_frame(SERVER, CLIENT, 7000, port, s, c + 1, SYN | ACK, 0), PACKET_OUTGOING))
        out.append((_frame(SERVER, CLIENT, 7000, port, s + 1, c + 3, FIN | ACK, 5), PACKET_OUTGOING))
        out.append((_frame(CLIENT, SERVER, port, 7000, c + 3, s + 7, FIN | ACK, 0), 0))
    return out


class Ring:
    """Blocks of frames in an anonymous mapping, handed to user space as the kernel does."""

    def __init__(self, frames: list[tuple[bytes, int]], per_block: int, ifindex: int = 5) -> None:
        self.blocks = (len(frames) + per_block - 1) // per_block
        self.map = mmap.mmap(-1, BLOCK * self.blocks)
        self._headers: list[tuple[int, int]] = []
        t0 = time.time_ns()
        for b in range(self.blocks):
            chunk = frames[b * per_block : (b + 1) * per_block]
            base, pos = b * BLOCK, b * BLOCK + FIRST
            for j, (buf, pkttype) in enumerate(chunk):
                nxt = (MAC + len(buf) + 15) & ~15 if j < len(chunk) - 1 else 0
                if pos + MAC + len(buf) > base + BLOCK:
                    raise ValueError("--per-block too large for a 256 KiB block")
                ts = t0 + (b * per_block + j) * 20_000
                _FRAME.pack_into(self.map, pos, nxt, ts // 10**9, ts % 10**9, len(buf), len(buf), 1, MAC)
                struct.pack_into("=iHB", self.map, pos + 52, ifindex, ARPHRD_ETHER, pkttype)
                self.map[pos + MAC : pos + MAC + len(buf)] = buf
                pos += nxt
            self._headers.append((base, len(chunk)))

    def hand_over(self) -> None:
        for base, num in self._headers:
            struct.pack_into("=III", self.map, base + 8, TP_STATUS_USER, num, FIRST)

    def socket(self) -> RingSocket:
        # drain() only touches the mapping and its cursor while blocks are ready: no socket needed.
        rs = object.__new__(RingSocket)
        rs._ring, rs._block_size, rs._block_nr, rs._block, rs.unknown_link = (
            self.map,
            BLOCK,
            self.blocks,
            0,
            0,
        )
        rs.ring_bytes = 0
        return rs


def run_once(ring: Ring, n: int, stage: str, settings: Settings, resolver: object) -> float:
    ring.hand_over()
    rs = ring.socket()
    decoder = Decoder()
    decoders = {ARPHRD_ETHER: decoder.ethernet}
    sink = CollectingSink()
    tracker = Tracker(TrackerLimits.from_settings(settings))
    pipeline = Pipeline(tracker, resolver, [sink])  # type: ignore[arg-type]
    track = tracker.feed_many
    t0 = time.thread_time()
    for _ in range(ring.blocks):
        segments: list[Segment] = []
        rs.drain(decoders, segments, 1, decoder.stats)
        batch = Batch(segments, decoder.take_dns())
        if stage == "all":
            pipeline.feed(batch)
        elif stage == "track":
            track(segments)
    seconds = time.thread_time() - t0
    if stage == "all":
        exact = sum(
            1
            for c in sink.connections
            if c.record.outcome is Outcome.CLOSED
            and c.record.bytes_client_to_server == 2
            and c.record.bytes_server_to_client == 5
        )
        assert exact == n, f"{exact} of {n} connections exact"
    assert decoder.stats.segments == 4 * n
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--connections", type=int, default=20_000)
    ap.add_argument("--per-block", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stage", choices=("drain", "track", "all"), default="all")
    ap.add_argument("--no-settle", action="store_true", help="skip settle_heap() (gc freeze + threshold)")
    args = ap.parse_args()
    n = args.connections
    ring = Ring(connections(n), args.per_block)
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.yaml"
        inventory.write_text(INVENTORY)
        settings = Settings(inventory=str(inventory))
        resolver = build_service(settings)
    if not args.no_settle:
        settle_heap()
    runs = []
    for _ in range(args.repeat):
        runs.append(run_once(ring, n, args.stage, settings, resolver) / n * 1e6)
        gc.collect()  # the previous run's tables are garbage now: not the next run's cost
    result = {
        "connections": n,
        "stage": args.stage,
        "per_block": args.per_block,
        "settle_heap": not args.no_settle,
        "us_per_conn_best": round(min(runs), 2),
        "us_per_conn_runs": [round(r, 2) for r in runs],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ring_path_{args.stage}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
