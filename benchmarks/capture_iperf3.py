"""iperf3 between two pods on one bridged node, with and without a real `podwire run` capturing.

The kernel filter must keep bulk data out of Python: with the agent capturing both pods' veths,
the throughput should stay >= 97% of the throughput without it (issue 8).  Runs alternate
(without, with, without, with, ...) so a busy neighbour on the machine hits both sides alike;
the figure is the ratio of the medians.

Needs root and iperf3 (Debian package iperf3).  Run it on a quiet machine:
  .venv/bin/python benchmarks/capture_iperf3.py [--runs 5] [--seconds 5] [--streams 1]
Writes benchmarks/results/capture_iperf3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec

RESULTS = Path(__file__).resolve().parent / "results"
PORT = 5201


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    def __init__(self, cluster: Cluster) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
        node = cluster.node("node-a")
        argv = [sys.executable, "-m", "podwire", "run", "--netns", node.netns, "--kube", "off"]
        argv += ["--interface-include", cluster.host_veth_pattern, "--listen", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while self.interfaces() != 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start capturing both pods")
            time.sleep(0.2)

    def interfaces(self) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("podwire_agent_interfaces"):
                        return float(line.rsplit(" ", 1)[1])
        except OSError:
            return None
        return None

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def iperf(cluster: Cluster, server_ip: str, seconds: float, streams: int) -> float:
    """One iperf3 run from the client pod; bits per second received by the server."""
    proc = cluster.run(
        "client",
        ["iperf3", "-c", server_ip, "-p", str(PORT), "-t", str(seconds), "-P", str(streams), "-J"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {err.decode().strip() or out.decode()[-400:]}")
    data: dict[str, Any] = json.loads(out)
    return float(data["end"]["sum_received"]["bits_per_second"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs with and without the agent, each")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per iperf3 run")
    ap.add_argument("--streams", type=int, default=1, help="parallel streams (iperf3 -P)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("capture_iperf3 needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("capture_iperf3 needs iperf3 (apt-get install iperf3)", file=sys.stderr)
        return 2
    spec = ClusterSpec(nodes=(NodeSpec("node-a", (PodSpec("client"), PodSpec("server"))),))
    without: list[float] = []
    with_agent: list[float] = []
    agent_cpu: list[float] = []
    with Cluster(spec) as cluster:
        server_ip = cluster.pod("server").ipv4
        cluster.run("server", ["iperf3", "-s", "-p", str(PORT)], stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        iperf(cluster, server_ip, 1, args.streams)  # warm-up
        for _ in range(args.runs):
            without.append(iperf(cluster, server_ip, args.seconds, args.streams))
            agent = Agent(cluster)
            try:
                cpu0 = agent.cpu_s()
                with_agent.append(iperf(cluster, server_ip, args.seconds, args.streams))
                agent_cpu.append(agent.cpu_s() - cpu0)
            finally:
                agent.stop()
    off, on = statistics.median(without), statistics.median(with_agent)
    ratio = on / off
    result = {
        "benchmark": "capture_iperf3",
        "runs": args.runs,
        "seconds": args.seconds,
        "streams": args.streams,
        "without_agent_bps": without,
        "with_agent_bps": with_agent,
        "median_without_gbps": off / 1e9,
        "median_with_gbps": on / 1e9,
        "ratio": ratio,
        "agent_cpu_s_per_run": agent_cpu,
        "load_avg": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    heads = ("runs", "s/run", "without Gb/s", "with Gb/s", "ratio", "agent cpu s/run")
    print(" ".join(f"{h:>15}" for h in heads))
    print(
        f"{args.runs:>15} {args.seconds:>15.1f} {off / 1e9:>15.2f} {on / 1e9:>15.2f} {ratio:>15.3f} "
        f"{statistics.median(agent_cpu):>15.3f}"
    )
    print(f"throughput with the agent >= 97%: {'yes' if ratio >= 0.97 else 'no'}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "capture_iperf3.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
