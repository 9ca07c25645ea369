"""Capture cost under connection churn: LiveCapture's CPU per connection, and drops.

Builds a node netns and a pod netns joined by a veth (random names, removed afterwards), runs a
server in the node and a client in the pod that opens and closes N connections as fast as it
can, and captures the pod's host-side veth with LiveCapture (TPACKET_V3 ring + kernel BPF) in
this process.  Prints the capture thread's CPU seconds per 1,000 connections, the segments seen
per connection and the kernel drops; writes JSON to benchmarks/results/capture_churn.json.

Needs root.  .venv/bin/python benchmarks/capture_churn.py [--connections 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from podwire.capture.live import LiveCapture
from podwire.config import Settings
from podwire.model import SYN

RESULTS = Path(__file__).resolve().parent / "results"

SERVER = (
    "import socket\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('10.231.0.1',7000));s.listen(4096)\n"
    "while True:\n"
    "    c,_=s.accept();c.sendall(b'hello');c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    c=socket.create_connection(('10.231.0.1',7000));c.sendall(b'hi');c.recv(16);c.close()\n"
)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=20_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("capture_churn needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    prefix = "pwb" + os.urandom(3).hex()
    node, pod = prefix + "n", prefix + "p"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sh("ip", "netns", "add", node)
        sh("ip", "netns", "add", pod)
        sh(
            "ip",
            "-n",
            node,
            "link",
            "add",
            prefix + "h",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod,
        )
        sh("ip", "-n", node, "addr", "add", "10.231.0.1/24", "dev", prefix + "h")
        sh("ip", "-n", node, "link", "set", prefix + "h", "up")
        sh("ip", "-n", pod, "addr", "add", "10.231.0.2/24", "dev", "eth0")
        sh("ip", "-n", pod, "link", "set", "eth0", "up")
        cap = LiveCapture(Settings(netns=node, dns_names=False))
        procs.append(subprocess.Popen(["ip", "netns", "exec", node, "python3", "-c", SERVER]))
        time.sleep(0.5)
        segs = syns = 0
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        client = subprocess.Popen(
            ["ip", "netns", "exec", pod, "python3", "-c", CLIENT, str(args.connections)]
        )
        procs.append(client)
        quiet_since: float | None = None
        while True:
            batch = cap.poll(0.05)
            assert batch is not None
            segs += len(batch.segments)
            syns += sum(1 for s in batch.segments if s.flags & 0x12 == SYN)
            if client.poll() is not None:
                if batch.segments:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 0.5:
                    break
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        stats = cap.stats()
        cap.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    n = args.connections
    result = {
        "benchmark": "capture_churn",
        "connections": n,
        "connections_seen": syns,
        "segments": segs,
        "segments_per_connection": segs / n,
        "capture_cpu_s": cpu,
        "capture_cpu_s_per_1000": cpu / n * 1000,
        "capture_cpu_us_per_connection": cpu / n * 1e6,
        "wall_s": wall,
        "connections_per_s": n / wall,
        "kernel_drops": stats.kernel_drops,
        "kernel_packets": stats.kernel_packets,
        "load_avg": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    heads = ("connections", "seen", "segs/conn", "conn/s", "cpu s/1k", "µs/conn", "drops")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (12, 8, 9, 8, 9, 8, 6), strict=True)))
    print(
        f"{n:12} {syns:8} {segs / n:9.2f} {n / wall:8.0f} {cpu / n * 1000:9.4f} {cpu / n * 1e6:8.2f} "
        f"{stats.kernel_drops:6}"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "capture_churn.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
