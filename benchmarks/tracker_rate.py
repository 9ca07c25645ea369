"""Tracker cost: microseconds per connection lifecycle (SYN, SYN-ACK, FIN, FIN) through feed().

    .venv/bin/python benchmarks/tracker_rate.py [--connections N] [--repeat R]

Segments are built up front (that is the capture room's cost), so the figure is the tracker
alone: lookups, transitions, ConnectionOpened + ConnectionRecord construction.  Client ports
cycle over 28,000 values so ports get reused, as in a real churn.  Also measured: a SYN flood
(one SYN per new 4-tuple, small half-open table: eviction path) and expire() over a table
of expired half-open entries.  Prints a table and writes benchmarks/results/tracker_rate.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from pathlib import Path

from podwire.model import ACK, FIN, SYN, Segment
from podwire.tracker.tracker import Tracker, TrackerLimits

CLIENT = bytes([10, 0, 0, 1])
SERVER = bytes([10, 0, 0, 2])
MASK = 0xFFFFFFFF


def lifecycles(n: int, seed: int = 1) -> list[Segment]:
    rng = random.Random(seed)
    out: list[Segment] = []
    ts = 1_700_000_000.0
    for i in range(n):
        port = 32768 + i % 28000
        cisn = rng.getrandbits(32)
        sisn = rng.getrandbits(32)
        up = rng.randrange(0, 5000)
        down = rng.randrange(0, 50000)
        cfin = (cisn + 1 + up) & MASK
        sfin = (sisn + 1 + down) & MASK
        ts += 0.0001
        out.append(Segment(ts, 3, CLIENT, SERVER, port, 80, cisn, 0, SYN, 0, True))
        out.append(
            Segment(ts + 0.00002, 3, SERVER, CLIENT, 80, port, sisn, (cisn + 1) & MASK, SYN | ACK, 0, False)
        )
        out.append(Segment(ts + 0.00005, 3, CLIENT, SERVER, port, 80, cfin, sfin, FIN | ACK, 0, True))
        out.append(
            Segment(ts + 0.00007, 3, SERVER, CLIENT, 80, port, sfin, (cfin + 1) & MASK, FIN | ACK, 0, False)
        )
    return out


def run_feed(segments: list[Segment], limits: TrackerLimits) -> tuple[float, int]:
    tracker = Tracker(limits)
    feed = tracker.feed
    emitted = 0
    gc.collect()
    t0 = time.process_time()
    for seg in segments:
        if feed(seg):
            emitted += 1
    return time.process_time() - t0, emitted


def best_of(repeat: int, fn, *args):  # type: ignore[no-untyped-def]
    results = [fn(*args) for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def syn_flood(n: int) -> tuple[float, int]:
    segs = [
        Segment(
            1.0 + i * 1e-6,
            3,
            bytes([10, 1, (i >> 16) & 255, (i >> 8) & 255]),
            SERVER,
            1024 + i % 60000,
            80,
            i,
            0,
            SYN,
            0,
        )
        for i in range(n)
    ]
    return run_feed(segs, TrackerLimits(max_connections=4096, max_half_open=1024))


def expire_cost(n: int) -> tuple[float, int]:
    tracker = Tracker(TrackerLimits(max_connections=n + 1, max_half_open=n + 1, syn_timeout_s=1.0))
    for i in range(n):
        tracker.feed(
            Segment(1.0 + i * 1e-6, 3, CLIENT, SERVER, 1024 + i % 60000, 80 + i // 60000, i, 0, SYN, 0)
        )
    gc.collect()
    t0 = time.process_time()
    out = tracker.expire(100.0)
    return time.process_time() - t0, len(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tracker_rate.json"))
    args = parser.parse_args()
    n = args.connections
    segments = lifecycles(n)
    limits = TrackerLimits()
    seconds, emitted = best_of(args.repeat, run_feed, segments, limits)
    assert emitted == 2 * n, (emitted, n)  # one opened + one record per connection
    flood_s, _ = best_of(args.repeat, syn_flood, n)
    expire_s, expired = best_of(args.repeat, expire_cost, n)
    assert expired == n
    rows = {
        "us_per_lifecycle": seconds / n * 1e6,
        "us_per_segment": seconds / (4 * n) * 1e6,
        "lifecycles_per_s": n / seconds,
        "us_per_syn_flood_segment": flood_s / n * 1e6,
        "us_per_expired_half_open": expire_s / n * 1e6,
    }
    print(
        f"tracker_rate: {n} connections, best of {args.repeat}, {platform.python_implementation()} "
        f"{platform.python_version()}"
    )
    print(f"{'figure':<28}{'value':>14}")
    for name, value in rows.items():
        print(f"{name:<28}{value:>14.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "tracker_rate",
        "connections": n,
        "repeat": args.repeat,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        **{k: round(v, 4) for k, v in rows.items()},
        "target_us_per_lifecycle": 5.0,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
