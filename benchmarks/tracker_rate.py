"""Tracker cost: microseconds per connection lifecycle (SYN, SYN-ACK, FIN, FIN) through
feed_many(), in batches of about a ring block, as the agent feeds it.

    .venv/bin/python benchmarks/tracker_rate.py [--connections N] [--repeat R]

Segments are built up front (that is the capture room's cost), so the figures are the
tracker alone: lookups, the transition table, ConnectionOpened + ConnectionRecord
construction.  Client ports cycle over 28,000 values, so ports are reused as in a real churn.
Times are CPU seconds of this process (time.process_time), best of R runs, so other load on
a shared machine inflates them less than wall time would.  Also measured:
  * per segment kind (all SYNs, then all SYN-ACKs, ...);
  * a SYN flood (a new 4-tuple per SYN, small half-open table: the eviction path);
  * expire() per expired half-open entry (builds its TIMEOUT record);
  * calibration: the cost of one ConnectionRecord(...) (a frozen msgspec Struct) and the load
    average, to compare runs on different or busy machines.
Prints a table and writes benchmarks/results/tracker_rate.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from podwire.model import ACK, FIN, SYN, CloseInitiator, ConnectionRecord, Endpoint, Outcome, Segment
from podwire.tracker.tracker import Tracker, TrackerLimits

CLIENT = bytes([10, 0, 0, 1])
SERVER = bytes([10, 0, 0, 2])
MASK = 0xFFFFFFFF


def lifecycles(n: int, seed: int = 1) -> list[Segment]:
    """n connections, one after another, each SYN, SYN-ACK, client FIN, server FIN."""
    rng = random.Random(seed)
    out: list[Segment] = []
    ts = 1_700_000_000.0
    for i in range(n):
        port = 32768 + i % 28000
        cisn = rng.getrandbits(32)
        sisn = rng.getrandbits(32)
        cfin = (cisn + 1 + rng.randrange(0, 5000)) & MASK
        sfin = (sisn + 1 + rng.randrange(0, 50000)) & MASK
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


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


BATCH = 500  # segments per feed_many() call, about one ring block as the agent feeds them


def feed_run(segments: list[Segment], limits: TrackerLimits) -> float:
    tracker = Tracker(limits)
    feed = tracker.feed_many
    emitted = 0
    batches = [segments[i : i + BATCH] for i in range(0, len(segments), BATCH)]

    def go() -> None:
        nonlocal emitted
        for batch in batches:
            emitted += len(feed(batch))

    gc.collect()
    seconds = cpu(go)
    assert emitted == len(segments) // 2, "expected one opened + one record per connection"
    return seconds


def per_kind(segments: list[Segment], chunk: int = 500) -> list[float]:
    """CPU seconds per segment kind, fed kind by kind in chunks of `chunk` connections
    (so the table stays small, as it does in a churn)."""
    tracker = Tracker()
    feed = tracker.feed_many
    out = [0.0, 0.0, 0.0, 0.0]
    for start in range(0, len(segments), 4 * chunk):
        block = segments[start : start + 4 * chunk]
        for kind in range(4):
            batch = block[kind::4]

            def go(batch: list[Segment] = batch) -> None:
                feed(batch)

            out[kind] += cpu(go)
    return out


def syn_flood(n: int) -> float:
    segs = []
    for i in range(n):
        src = bytes((10, 1, (i >> 16) & 255, (i >> 8) & 255))
        segs.append(Segment(1.0 + i * 1e-6, 3, src, SERVER, 1024 + i % 60000, 80, i, 0, SYN, 0))
    tracker = Tracker(TrackerLimits(max_connections=4096, max_half_open=1024))
    feed = tracker.feed_many

    def go() -> None:
        for start in range(0, len(segs), BATCH):
            feed(segs[start : start + BATCH])

    gc.collect()
    seconds = cpu(go)
    assert tracker.stats.evictions["half_open"] == n - 1024
    return seconds


def expire_run(n: int) -> float:
    tracker = Tracker(TrackerLimits(max_connections=n + 1, max_half_open=n + 1, syn_timeout_s=1.0))
    for i in range(n):
        tracker.feed(
            Segment(1.0 + i * 1e-6, 3, CLIENT, SERVER, 1024 + i % 60000, 80 + i // 60000, i, 0, SYN, 0)
        )
    out: list[object] = []
    gc.collect()
    seconds = cpu(lambda: out.extend(tracker.expire(100.0)))
    assert len(out) == n
    return seconds


def frozen_record_us() -> float:
    ep = Endpoint("10.0.0.1", 80)
    args = (
        1,
        ep,
        ep,
        "ipv4",
        1.0,
        2.0,
        1.0,
        Outcome.CLOSED,
        CloseInitiator.CLIENT,
        1,
        2,
        0.1,
        False,
        False,
        1,
        2,
        None,
    )
    n = 20000
    return min(timeit.repeat(lambda: ConnectionRecord(*args), number=n, repeat=5)) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tracker_rate.json"))
    args = parser.parse_args()
    n, repeat = args.connections, args.repeat
    segments = lifecycles(n)
    lifecycle_s = min(feed_run(segments, TrackerLimits()) for _ in range(repeat))
    kinds = [min(col) for col in zip(*(per_kind(segments) for _ in range(repeat)), strict=True)]
    flood_s = min(syn_flood(n) for _ in range(repeat))
    expire_s = min(expire_run(n) for _ in range(repeat))
    rows = {
        "us_per_lifecycle": lifecycle_s / n * 1e6,
        "lifecycles_per_cpu_s": n / lifecycle_s,
        "us_per_syn": kinds[0] / n * 1e6,
        "us_per_synack": kinds[1] / n * 1e6,
        "us_per_first_fin": kinds[2] / n * 1e6,
        "us_per_second_fin": kinds[3] / n * 1e6,
        "us_per_syn_flood_segment": flood_s / n * 1e6,
        "us_per_expired_half_open": expire_s / n * 1e6,
        "calibration_us_record_init": frozen_record_us(),
        "load_average_1m": os.getloadavg()[0],
    }
    print(
        f"tracker_rate: {n} connections, best of {repeat}, CPU time, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    print(f"{'figure':<36}{'value':>14}")
    for name, value in rows.items():
        print(f"{name:<36}{value:>14.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "tracker_rate",
        "connections": n,
        "repeat": repeat,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        **{k: round(v, 4) for k, v in rows.items()},
        "target_us_per_lifecycle": 5.0,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
