"""Agent CPU per connection under churn, beside tcpdump on the same kernel filter.

Two pods on one mini-cluster node; K client processes in one pod open, use and close N connections
in total, as fast as they can, against a server in the other pod (each connection: 2 bytes up,
5 bytes down). podwire's own pipeline (LiveCapture in the node netns -> Tracker -> identity ->
sinks) captures the client's host-side veth in a thread of this process, while `tcpdump -w
/dev/null` runs the same BPF expression on the same veth. Reported: CPU seconds per 1,000
connections for the agent's capture thread and for tcpdump, their ratio, the churn rate,
kernel drops, and how many connections came out exact.

Modes: `track` (capture + tracker), `metrics` (+ naming + the OTel metrics sink), `spans` (+ 100%
spans exported over OTLP/gRPC to a loopback receiver).

Needs root.  .venv/bin/python benchmarks/churn.py [--connections 20000] [--clients 3] [--mode track]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.otlp_receiver

from podwire.agent import CollectingSink, Pipeline, settle_heap
from podwire.capture.bpf import FilterOptions, expression
from podwire.capture.live import LiveCapture
from podwire.config import Settings
from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec
from podwire.identity import build_service
from podwire.model import Outcome, Side
from podwire.tracker.tracker import Tracker, TrackerLimits

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RECEIVER = """
import json, sys
from tests.otlp_receiver import OtlpReceiver
rx = OtlpReceiver().start()
print(json.dumps(rx.env("grpc", interval_ms=5000)), flush=True)
sys.stdin.read()
rx.stop()
print(json.dumps(rx.wire_bytes), flush=True)
"""
PORT = 7000

SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', {port})); s.listen(4096)
while True:
    c, _ = s.accept()
    try:
        c.recv(16); c.sendall(b'hello')
    except OSError:
        pass
    c.close()
"""
CLIENT = """
import socket, sys
n = int(sys.argv[1]); done = 0
while done < n:
    c = socket.create_connection((sys.argv[2], {port}))
    c.sendall(b'hi'); c.recv(16); c.close(); done += 1
"""


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process from /proc/<pid>/schedstat (ns, unlike the 10 ms ticks of /stat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=3, help="client processes (more = higher churn)")
    ap.add_argument("--mode", choices=("track", "metrics", "spans"), default="track")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("churn needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    spec = ClusterSpec(
        nodes=(NodeSpec("node-a", (PodSpec("client", "bench", "load"), PodSpec("server", "bench", "srv"))),)
    )
    receiver = None
    with Cluster(spec) as cluster:
        client, server, node = cluster.pod("client"), cluster.pod("server"), cluster.node("node-a")
        from podwire.demo.inventory import write_inventory

        # pods named from an inventory, as in the demo: lookups hit the index like on a real node
        inv = write_inventory(cluster, cluster.workdir() / "inventory.yaml")
        settings = Settings(netns=node.netns, interface_include=f"^{client.host_ifname}$", inventory=str(inv))
        sinks: list[object] = []
        collect = CollectingSink()
        telemetry = None
        if args.mode != "track":
            from podwire.telemetry.export import Telemetry

            env = dict(os.environ)
            if args.mode == "spans":
                # the receiver runs in its own process: its decoding is not the agent's cost
                receiver = subprocess.Popen(
                    [sys.executable, "-c", RECEIVER],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=str(ROOT),
                )
                assert receiver.stdout is not None
                env.update(json.loads(receiver.stdout.readline()))
                settings = settings.replace(otlp="on", spans=True)
            else:
                settings = settings.replace(otlp="off", spans=False)
            telemetry = Telemetry(settings, env=env)
            sinks.extend(telemetry.sinks)
        capture = LiveCapture(settings)
        tracker = Tracker(TrackerLimits.from_settings(settings))
        pipeline = Pipeline(tracker, build_service(settings), [collect, *sinks])  # type: ignore[list-item]
        stop = threading.Event()
        cpu = [0.0]

        def loop() -> None:
            t0 = time.thread_time()
            last = time.time()
            while not stop.is_set():
                batch = capture.poll(0.1)
                if batch is not None and batch.segments:
                    pipeline.feed(batch)
                now = time.time()
                if now - last >= 1.0:
                    pipeline.tick(now)
                    last = now
            cpu[0] = time.thread_time() - t0

        srv = cluster.run(server, [sys.executable, "-c", SERVER.format(port=PORT)])
        time.sleep(0.5)
        dump = cluster.run(
            node,
            ["tcpdump", "-i", client.host_ifname, "-n", "-q", "-w", "/dev/null", expression(FilterOptions())],
        )
        settle_heap()  # as Agent.start() does before its capture threads start
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        time.sleep(1.0)
        proc0 = resource.getrusage(resource.RUSAGE_SELF)
        dump_cpu0 = _proc_cpu(dump.pid)
        per_client = args.connections // args.clients
        total = per_client * args.clients
        t0 = time.monotonic()
        clients = [
            cluster.run(
                client, [sys.executable, "-c", CLIENT.format(port=PORT), str(per_client), server.ipv4]
            )
            for _ in range(args.clients)
        ]
        for c in clients:
            c.wait()
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done = sum(1 for c in collect.connections if c.record.server.port == PORT)
            if done >= total:
                break
            time.sleep(0.1)
        time.sleep(1.5)  # let both readers drain and idle the same wall time
        dump_cpu = _proc_cpu(dump.pid) - dump_cpu0
        if telemetry is not None:
            telemetry.force_flush(10)  # export cost belongs to the run
        proc1 = resource.getrusage(resource.RUSAGE_SELF)
        process_cpu = (proc1.ru_utime + proc1.ru_stime) - (proc0.ru_utime + proc0.ru_stime)
        stop.set()
        thread.join(5)
        stats = capture.stats()
        capture.close()
        if telemetry is not None:
            telemetry.force_flush(10)
            telemetry.shutdown(5)
        otlp_bytes = None
        if receiver is not None:
            out, _ = receiver.communicate("", timeout=30)
            otlp_bytes = json.loads(out.splitlines()[-1])
        recs = [c.record for c in collect.connections if c.record.server.port == PORT]
        exact = sum(
            1
            for r in recs
            if r.outcome is Outcome.CLOSED
            and r.bytes_client_to_server == 2
            and r.bytes_server_to_client == 5
            and r.observed_side is Side.CLIENT
        )
        srv.kill()
    result = {
        "mode": args.mode,
        "connections": total,
        "seen": len(recs),
        "exact": exact,
        "rate_conn_per_s": round(total / elapsed),
        "kernel_drops": stats.kernel_drops,
        "segments_per_conn": round(stats.segments / max(1, total), 2),
        "agent_cpu_s_per_1k": round(cpu[0] / total * 1000, 4),
        "agent_us_per_conn": round(cpu[0] / total * 1e6, 2),
        "agent_process_us_per_conn": round(process_cpu / total * 1e6, 2),  # + export threads
        "tcpdump_cpu_s_per_1k": round(dump_cpu / total * 1000, 4),
        "agent_to_tcpdump_ratio": round(cpu[0] / dump_cpu, 2) if dump_cpu else None,
    }
    if otlp_bytes is not None:
        result["otlp_trace_bytes_per_conn"] = round(otlp_bytes["traces"] / max(1, total), 1)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"churn_{args.mode}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if exact == total and stats.kernel_drops == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
