"""Replay rate: PcapSource + decode in packets/s on one core vs `tshark -q -z conv,tcp` on the same file.

The file is crafted once and cached in ~/.cache/podwire/benchmarks/: N short HTTP-like
connections (SYN, SYN-ACK, ACK, a request, a response of full-size segments with delayed ACKs,
FIN/ACK both ways), 10% over IPv6, written as `tcpdump -s 128` would (caplen 128, orig len the
real frame).  Sequence numbers, ports and timestamps are real-looking, so tshark sees one
conversation per connection.

    .venv/bin/python benchmarks/replay_rate.py [--connections 30000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from podwire.capture.pcap import PcapSource
from podwire.model import SYN

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "podwire" / "benchmarks"
RESULTS = HERE / "results"
SNAP = 128

_ETH4 = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
_ETH6 = bytes.fromhex("020000000002020000000001") + b"\x86\xdd"
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_REC = struct.Struct("<IIII")


def _frame(
    v6: bool, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, plen: int
) -> bytes:
    tcp = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    payload = b"\x00" * plen
    if v6:
        ip = _IP6.pack(6 << 28, 20 + plen, 6, 64, src, dst)
        return _ETH6 + ip + tcp + payload
    ip = _IP4.pack(0x45, 0, 40 + plen, 0, 0x4000, 64, 6, 0, src, dst)
    return _ETH4 + ip + tcp + payload


def make_pcap(path: Path, connections: int, segments: int = 16) -> int:
    """Write the crafted file; returns the packet count."""
    S, A, F, P = 0x02, 0x10, 0x01, 0x08
    packets = 0
    t = 1_733_000_000.0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAP, 1))

        def put(fr: bytes) -> None:
            nonlocal packets, t
            t += 0.00001
            sec = int(t)
            f.write(_REC.pack(sec, int((t - sec) * 1e6), min(len(fr), SNAP), len(fr)))
            f.write(fr[:SNAP])
            packets += 1

        for i in range(connections):
            v6 = i % 10 == 0
            if v6:
                c = b"\xfd\x00" + b"\x00" * 12 + struct.pack("!H", 1 + i % 60000)  # unique 4-tuples to 300k
                s = b"\xfd\x00" + b"\x00" * 13 + b"\x02"
            else:
                c = bytes((10, 1, (i >> 8) & 0xFF, i & 0xFF))
                s = bytes((10, 2, 0, 1))
            cp, sp = 10000 + (i % 50000), 80
            ci, si = (i * 7919) & 0xFFFFFFFF, (i * 104729) & 0xFFFFFFFF
            put(_frame(v6, c, s, cp, sp, ci, 0, S, 0))
            put(_frame(v6, s, c, sp, cp, si, ci + 1, S | A, 0))
            put(_frame(v6, c, s, cp, sp, ci + 1, si + 1, A, 0))
            put(_frame(v6, c, s, cp, sp, ci + 1, si + 1, P | A, 100))
            cseq, sseq = ci + 101, si + 1
            for k in range(segments):
                put(_frame(v6, s, c, sp, cp, sseq, cseq, A if k < segments - 1 else P | A, 1448))
                sseq += 1448
                if k % 2:
                    put(_frame(v6, c, s, cp, sp, cseq, sseq, A, 0))
            put(_frame(v6, c, s, cp, sp, cseq, sseq, F | A, 0))
            put(_frame(v6, s, c, sp, cp, sseq, cseq + 1, F | A, 0))
            put(_frame(v6, c, s, cp, sp, cseq + 1, sseq + 1, A, 0))
    os.replace(tmp, path)
    return packets


def run_ours(path: Path) -> dict[str, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    src = PcapSource(str(path))
    segments = syns = 0
    while (batch := src.poll(0)) is not None:
        segments += len(batch.segments)
        syns += sum(1 for s in batch.segments if s.flags & 0x12 == SYN)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    packets = src.stats.packets
    src.close()
    return {"packets": packets, "segments": segments, "connections": syns, "wall_s": wall, "cpu_s": cpu}


def run_tshark(path: Path) -> dict[str, float]:
    tshark = shutil.which("tshark")
    if tshark is None:
        raise SystemExit("tshark is not installed (apt-get install tshark)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    out = subprocess.run(
        [tshark, "-n", "-r", str(path), "-q", "-z", "conv,tcp"], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    convs = sum(1 for line in out.stdout.splitlines() if "<->" in line)
    return {"connections": convs, "wall_s": wall, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    path = CACHE / f"replay-{args.connections}.pcap"
    if not path.exists():
        t0 = time.perf_counter()
        n = make_pcap(path, args.connections)
        size_mb = path.stat().st_size / 1e6
        print(f"crafted {path} ({n} packets, {size_mb:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    ours = [run_ours(path) for _ in range(args.runs)]
    theirs = [run_tshark(path) for _ in range(args.runs)]
    best = min(ours, key=lambda r: r["cpu_s"])
    best_t = min(theirs, key=lambda r: r["cpu_s"])
    packets = best["packets"]
    rows = [
        (
            "podwire PcapSource+decode",
            best["wall_s"],
            best["cpu_s"],
            packets / best["cpu_s"],
            best["connections"],
        ),
        (
            "tshark -q -z conv,tcp",
            best_t["wall_s"],
            best_t["cpu_s"],
            packets / best_t["cpu_s"],
            best_t["connections"],
        ),
    ]
    print(
        f"file: {path.name}, {packets} packets, {path.stat().st_size / 1e6:.1f} MB; best of {args.runs} runs"
    )
    print(f"{'reader':28} {'wall s':>8} {'cpu s':>8} {'packets/cpu-s':>14} {'connections':>12}")
    for name, wall, cpu, rate, conns in rows:
        print(f"{name:28} {wall:8.3f} {cpu:8.3f} {rate:14,.0f} {conns:12}")
    speedup = best_t["cpu_s"] / best["cpu_s"]
    agree = best["connections"] == best_t["connections"]
    print(f"podwire is {speedup:.1f}x tshark by CPU time; connections agree: {agree}")
    result = {
        "benchmark": "replay_rate",
        "file": path.name,
        "packets": packets,
        "file_bytes": path.stat().st_size,
        "podwire": {
            "runs": ours,
            "packets_per_cpu_s": packets / best["cpu_s"],
            "packets_per_wall_s": packets / best["wall_s"],
        },
        "tshark": {"runs": theirs, "packets_per_cpu_s": packets / best_t["cpu_s"]},
        "speedup_cpu": speedup,
        "connections_agree": best["connections"] == best_t["connections"],
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "load_avg": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = RESULTS / "replay_rate.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
