"""Socket-stats cost: 5,000 open sockets across 20 pods, one round per 10 s interval.

Builds a one-node mini-cluster of 20 pods (random names, always torn down), opens 2,500 TCP
connections from 10 client pods to 10 server pods (5,000 sockets, 250 per pod), then runs the
real sampler rounds (find the pods from their veths' netnsids, enter each pod's namespace, dump
with tcp_info, return) and feeds each round to a real Tracker and MetricsSink as the agent's
capture thread does.  CPU is this thread's CPU time (the sampler's and the capture thread's
share, measured separately); the cost is the median CPU of a steady round / interval, as a share of
one core.  Most of a dump's cost is the kernel walking the TCP hash table, which by default one
table shared by every namespace of the machine: each pod's dump walks every socket of the node.
`--child-ehash N` gives pod namespaces their own table (net.ipv4.tcp_child_ehash_entries, Linux
6.1+), as a node can by setting that sysctl before pods are created.
Writes JSON to benchmarks/results/sockstats_cost.json.

Needs root.  .venv/bin/python benchmarks/sockstats_cost.py [--pods 20 --sockets 5000 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec
from podwire.model import Identity, IdentityKind, StatsRound
from podwire.sockstats.sampler import NodeTarget, Sampler
from podwire.telemetry.metrics import LabelConfig, MetricsSink
from podwire.tracker.tracker import Tracker

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = 0.02  # of one core


def _private_parent_netns(entries: int) -> None:
    """Move this process into a new network namespace whose children get their own ehash."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET, before any other thread exists
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    Path("/proc/sys/net/ipv4/tcp_child_ehash_entries").write_text(f"{entries}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--sockets", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument(
        "--child-ehash",
        type=int,
        default=0,
        help="give each pod namespace its own TCP hash table of this size (the kernel's "
        "net.ipv4.tcp_child_ehash_entries, set in a private parent namespace of this process); "
        "0: the kernel's default, one table shared by every namespace of the machine",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("sockstats_cost needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.child_ehash:
        _private_parent_netns(args.child_ehash)
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.sockets + 4096, args.sockets + 4096))
    half = args.pods // 2
    spec = ClusterSpec(nodes=(NodeSpec("node-a", tuple(PodSpec(f"p{i}") for i in range(args.pods))),))
    cluster = Cluster(spec)
    keep: list[socket.socket] = []
    try:
        cluster.build()
        pods = [cluster.pod(f"p{i}") for i in range(args.pods)]
        servers = pods[half:]

        def listen(ip: str) -> socket.socket:
            s = socket.socket()
            s.bind((ip, 8080))
            s.listen(4096)
            return s

        listeners = [cluster.call(p, listen, p.ipv4) for p in servers]
        keep += listeners
        conns = args.sockets // 2
        for k in range(conns):
            client, li = pods[k % half], (k // half) % len(servers)
            c = cluster.call(client, socket.socket)
            c.connect((servers[li].ipv4, 8080))
            s, _ = listeners[li].accept()
            c.send(b"x" * 100)
            keep += [c, s]
        rounds: list[StatsRound] = []
        target = NodeTarget(cluster.node("node-a").netns, rounds.append, include=cluster.host_veth_pattern)
        sampler = Sampler([target], interval_s=args.interval)
        tracker = Tracker()
        sink = MetricsSink(LabelConfig())
        who = Identity(IdentityKind.POD, "p", "bench", "bench", "Deployment")
        sample_cpu: list[float] = []
        feed_cpu: list[float] = []
        sockets_seen: list[int] = []
        for _ in range(args.rounds):
            t0 = time.thread_time()
            sampler.sample_once()
            sample_cpu.append(time.thread_time() - t0)
            rnd = rounds.pop()
            sockets_seen.append(len(rnd.samples))
            t0 = time.thread_time()
            for ev in tracker.feed_stats(rnd.ts, rnd.samples):
                sink.on_progress(ev, who, who)  # type: ignore[arg-type]
            feed_cpu.append(time.thread_time() - t0)
        sampler.close()
        # round 1 only notes the sockets, round 2 enters them (once); then the steady state
        steady = slice(2, None) if args.rounds > 2 else slice(None)
        per_round = statistics.median(sample_cpu[steady]) + statistics.median(feed_cpu[steady])
        out = {
            "pods": args.pods,
            "sockets": sockets_seen[-1],
            "interval_s": args.interval,
            "child_ehash_entries": args.child_ehash,
            "sampler_cpu_s_per_round": sample_cpu,
            "tracker_cpu_s_per_round": feed_cpu,
            "dumps": sampler.stats.dumps,
            "dump_wall_s_total": round(sampler.stats.dump_seconds, 4),
            "share_of_one_core": per_round / args.interval,
            "budget": BUDGET,
        }
    finally:
        for s in keep:
            s.close()
        cluster.teardown()
    print(f"{'pods':>6} {'sockets':>8} {'sampler ms':>11} {'tracker ms':>11} {'share of a core':>16}")
    print(
        f"{out['pods']:>6} {out['sockets']:>8} {1000 * statistics.median(sample_cpu[steady]):>11.1f} "
        f"{1000 * statistics.median(feed_cpu[steady]):>11.1f} {100 * out['share_of_one_core']:>15.2f}%"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sockstats_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["share_of_one_core"] <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
