"""Socket-stats cost: 5,000 open sockets across 20 pods, one round per 10 s interval.

Builds a one-node mini-cluster of 20 pods (random names, always torn down), opens 2,500 TCP
connections from 10 client pods to 10 server pods (5,000 sockets, 250 per pod), then runs the
real sampler rounds (find the pods from their veths' netnsids, enter each pod's namespace, dump
with tcp_info, return) and feeds each round to a real Tracker and MetricsSink as the agent's
capture thread does (with the agent's GC settings, `settle_heap`).  CPU is this thread's CPU time
(the sampler's and the capture thread's share, measured separately; "kernel ms" is the sampler's
system time); the cost is the median CPU of a steady round / interval, as a share of one core.
By default the connections are idle after their first 100 bytes; `--busy` moves data on every
connection between rounds (not measured), so every sample changes.

Most of the kernel time is the walk of the TCP hash table, by default one table shared by every
namespace of the machine: each pod's dump walks every bucket and every socket of the node.  "empty
ns ms" is that floor: as many dumps as pods, of a namespace holding no socket.  `--child-ehash N`
gives pod namespaces their own table (net.ipv4.tcp_child_ehash_entries, Linux 6.1+), as a node can
by setting that sysctl before pods are created.  The last line compares the CPU per socket of
pyroute2's DiagSocket and of podwire's DiagDump on one pod's namespace.
Writes JSON to benchmarks/results/sockstats_cost.json.

Needs root.  .venv/bin/python benchmarks/sockstats_cost.py [--pods 20 --sockets 5000 --rounds 7]
[--busy] [--child-ehash 1024]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from podwire.agent import settle_heap
from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec
from podwire.model import Identity, IdentityKind, StatsRound
from podwire.sockstats.diag import DiagDump
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


def _empty_walks(count: int) -> float:
    """Kernel CPU seconds of `count` dumps of a namespace with no socket at all: what the walks of a
    shared TCP hash table cost by themselves (the floor per pod no request can skip)."""
    import ctypes

    out: list[float] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET, this thread only (gone when it ends)
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        with DiagDump() as dump:
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            for _ in range(count):
                dump.connections(0, dump.listening())
            out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_stime - r0.ru_stime)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0]


def _per_socket_us(reps: int = 3) -> tuple[float, float, int]:
    """CPU us per socket of one dump of the calling thread's namespace (IPv4, connections and
    listeners, with tcp_info): (pyroute2's DiagSocket, this module's DiagDump, sockets)."""
    from pyroute2 import DiagSocket

    states = (1 << 1) | (1 << 10)  # ESTABLISHED, LISTEN
    with DiagSocket() as ds:
        ds.bind()
        t0 = time.thread_time()
        for _ in range(reps):
            n = sum(
                m.get_attr("INET_DIAG_INFO") is not None
                for m in ds.get_sock_stats(family=socket.AF_INET, states=states, extensions=2)
            )
        theirs = (time.thread_time() - t0) / reps / max(n, 1)
    with DiagDump() as dump:
        t0 = time.thread_time()
        for _ in range(reps * 10):
            listening = dump.listening()
            mine = len(dump.connections(0, listening)) + len(listening)
        ours = (time.thread_time() - t0) / reps / 10 / max(mine, 1)
    return 1e6 * theirs, 1e6 * ours, n


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
    ap.add_argument(
        "--busy",
        action="store_true",
        help="every connection moves data between rounds (else they are idle after their first 100 bytes)",
    )
    ap.add_argument("--profile", action="store_true", help="print where the steady rounds' CPU goes")
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
        pairs: list[tuple[socket.socket, socket.socket]] = []
        for k in range(conns):
            client, li = pods[k % half], (k // half) % len(servers)
            c = cluster.call(client, socket.socket)
            c.connect((servers[li].ipv4, 8080))
            s, _ = listeners[li].accept()
            c.send(b"x" * 100)
            keep += [c, s]
            pairs.append((c, s))
        rounds: list[StatsRound] = []
        target = NodeTarget(cluster.node("node-a").netns, rounds.append, include=cluster.host_veth_pattern)
        sampler = Sampler([target], interval_s=args.interval)
        tracker = Tracker()
        sink = MetricsSink(LabelConfig())
        who = Identity(IdentityKind.POD, "p", "bench", "bench", "Deployment")
        sample_cpu: list[float] = []
        sample_sys: list[float] = []
        feed_cpu: list[float] = []
        sockets_seen: list[int] = []
        profile = cProfile.Profile() if args.profile else None
        settle_heap()  # as the agent does once started (its sampler thread runs with these GC settings)
        for rnd_no in range(args.rounds):
            if args.busy:  # every connection moves data between rounds (not measured)
                for c, s in pairs:
                    c.send(b"y" * 100)
                for c, s in pairs:
                    s.recv(4096)
            if profile is not None and rnd_no >= 2:
                profile.enable()
            t0, r0 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
            sampler.sample_once()
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            sample_cpu.append(time.thread_time() - t0)
            sample_sys.append(r1.ru_stime - r0.ru_stime)
            rnd = rounds.pop()
            sockets_seen.append(len(rnd.samples))
            t0 = time.thread_time()
            for ev in tracker.feed_stats(rnd.ts, rnd.samples):
                sink.on_progress(ev, who, who)  # type: ignore[arg-type]
            feed_cpu.append(time.thread_time() - t0)
            if profile is not None:
                profile.disable()
        sampler.close()
        floor = statistics.median(_empty_walks(args.pods) for _ in range(3))
        pyroute2_us, ours_us, one_pod = cluster.call(servers[0], _per_socket_us)
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        # round 1 only notes the sockets, round 2 enters them (once); then the steady state
        steady = slice(2, None) if args.rounds > 2 else slice(None)
        per_round = statistics.median(sample_cpu[steady]) + statistics.median(feed_cpu[steady])
        out = {
            "pods": args.pods,
            "sockets": sockets_seen[-1],
            "interval_s": args.interval,
            "child_ehash_entries": args.child_ehash,
            "busy": args.busy,
            "sampler_cpu_s_per_round": sample_cpu,
            "sampler_sys_s_per_round": sample_sys,
            "tracker_cpu_s_per_round": feed_cpu,
            "dumps": sampler.stats.dumps,
            "dump_wall_s_total": round(sampler.stats.dump_seconds, 4),
            "share_of_one_core": per_round / args.interval,
            "empty_namespace_dumps_kernel_s": floor,
            "per_socket_us_one_pod": {"sockets": one_pod, "pyroute2_diag": pyroute2_us, "podwire": ours_us},
            "budget": BUDGET,
        }
    finally:
        for s in keep:
            s.close()
        cluster.teardown()
    print(
        f"{'pods':>6} {'sockets':>8} {'sampler ms':>11} {'(kernel ms)':>12} {'(empty ns ms)':>14} "
        f"{'tracker ms':>11} {'share of a core':>16}"
    )
    print(
        f"{out['pods']:>6} {out['sockets']:>8} {1000 * statistics.median(sample_cpu[steady]):>11.1f} "
        f"{1000 * statistics.median(sample_sys[steady]):>12.1f} {1000 * floor:>14.1f} "
        f"{1000 * statistics.median(feed_cpu[steady]):>11.1f} {100 * out['share_of_one_core']:>15.2f}%"
    )
    print(
        f"one pod's dump ({one_pod} sockets), CPU per socket: pyroute2 DiagSocket {pyroute2_us:.0f} us, "
        f"podwire's DiagDump {ours_us:.1f} us"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sockstats_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["share_of_one_core"] <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
