"""Kernel memory of capture with 10, 100 and 250 pods on one bridged node: flat in pods (issue 8).

For each pod count: build a one-node mini-cluster (real bridge, veths, pod namespaces), read the
kernel's memory, start a real `podwire run` in the node namespace, wait until it captures every pod
veth (its podwire_agent_interfaces gauge), read again, stop it.  Reported per pod count:

- packet sockets: lines of /proc/net/packet read inside the node namespace
- ring bytes: the agent's mmapped packet-socket rings (its /proc/PID/maps `socket:` mappings):
  pinned kernel pages, the bulk of capture's kernel memory
- packet rmem: the sockets' receive-queue bytes (/proc/net/packet Rmem)
- slab delta: /proc/meminfo Slab after - before the agent started (noisy on a busy machine)
- sockets delta: /proc/net/sockstat "sockets: used" after - before (machine-wide: noisy too)

Writes benchmarks/results/capture_kernel_memory.json.  Needs root.  Run it on a quiet machine:
  .venv/bin/python benchmarks/capture_kernel_memory.py [--pods 10,100,250]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec, call_in_netns

RESULTS = Path(__file__).resolve().parent / "results"


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024  # kB -> bytes
    return out


def sockets_used() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("sockets:"):
            return int(line.split()[2])
    return 0


def packet_table(netns: str) -> tuple[int, int]:
    """(packet sockets, sum of their Rmem) in `netns`."""

    def read() -> tuple[int, int]:
        with open("/proc/thread-self/net/packet") as f:
            rows = f.read().splitlines()[1:]
        return len(rows), sum(int(r.split()[6]) for r in rows)

    return call_in_netns(netns, read)


def ring_bytes(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith("socket:"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            total += end - start
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return None


def measure(pods: int) -> dict[str, object]:
    spec = ClusterSpec(nodes=(NodeSpec("node-a", tuple(PodSpec(f"p{i:03d}") for i in range(pods))),))
    with Cluster(spec) as cluster:
        node = cluster.node("node-a")
        time.sleep(1.0)
        before, socks0 = meminfo(), sockets_used()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
        argv = [sys.executable, "-m", "podwire", "run", "--netns", node.netns, "--kube", "off"]
        argv += ["--interface-include", cluster.host_veth_pattern, "--listen", f"127.0.0.1:{port}"]
        agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while metric(port, "podwire_agent_interfaces") != pods:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the agent did not capture {pods} interfaces")
                time.sleep(0.2)
            time.sleep(1.0)
            after, socks1 = meminfo(), sockets_used()
            n_packet, rmem = packet_table(node.netns)
            rings = ring_bytes(agent.pid)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    return {
        "pods": pods,
        "packet_sockets": n_packet,
        "ring_bytes": rings,
        "packet_rmem_bytes": rmem,
        "slab_delta_bytes": after["Slab"] - before["Slab"],
        "sockets_delta": socks1 - socks0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="10,100,250", help="comma-separated pod counts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("capture_kernel_memory needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.pods.split(",")]
    rows = [measure(n) for n in counts]
    mib = 1 << 20
    heads = ("pods", "pkt socks", "ring MiB", "rmem KiB", "slab Δ MiB", "socks Δ")
    print(" ".join(f"{h:>11}" for h in heads))
    for r in rows:
        print(
            f"{r['pods']:>11} {r['packet_sockets']:>11} {r['ring_bytes'] / mib:>11.1f} "  # type: ignore[operator]
            f"{r['packet_rmem_bytes'] / 1024:>11.1f} {r['slab_delta_bytes'] / mib:>11.1f} "  # type: ignore[operator]
            f"{r['sockets_delta']:>11}"
        )
    rings = [int(r["ring_bytes"]) for r in rows]  # type: ignore[call-overload]
    flat = len(set(rings)) == 1
    sizes = ", ".join(f"{b / mib:.0f} MiB" for b in rings)
    print(f"ring memory flat in pods: {'yes' if flat else 'no'} ({sizes})")
    result = {
        "benchmark": "capture_kernel_memory",
        "rows": rows,
        "ring_memory_flat": flat,
        "load_avg": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "capture_kernel_memory.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
