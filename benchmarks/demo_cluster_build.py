"""Build and tear-down time of the network-namespace mini-cluster (root needed).

    .venv/bin/python benchmarks/demo_cluster_build.py
Prints a table and writes benchmarks/results/demo_cluster_build.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec
from podwire.demo.traffic import TrafficPlan, demo_spec


def grid(nodes: int, pods: int) -> ClusterSpec:
    return ClusterSpec(
        nodes=tuple(NodeSpec(f"n{i}", tuple(PodSpec(f"p{i}-{j}") for j in range(pods))) for i in range(nodes))
    )


def measure(label: str, spec: ClusterSpec, traffic: bool = False, runs: int = 3) -> dict[str, object]:
    builds, teardowns = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        cluster = Cluster(spec).build()
        t1 = time.monotonic()
        if traffic:
            TrafficPlan().start(cluster)
        t2 = time.monotonic()
        cluster.teardown()
        teardowns.append(time.monotonic() - t2)
        builds.append(t1 - t0)
    return {
        "case": label,
        "netns": len(cluster.netns_names),
        "build_s_median": round(statistics.median(builds), 3),
        "teardown_s_median": round(statistics.median(teardowns), 3),
    }


def main() -> None:
    rows = [
        measure("demo spec (2 nodes, 4 pods, service, external)", demo_spec()),
        measure("demo spec, teardown with traffic running", demo_spec(), traffic=True),
        measure("1 node x 2 pods", grid(1, 2)),
        measure("2 nodes x 10 pods", grid(2, 10)),
        measure("4 nodes x 10 pods (switch netns)", grid(4, 10)),
    ]
    print(f"{'case':52} {'netns':>5} {'build s':>8} {'teardown s':>10}")
    for r in rows:
        print(f"{r['case']:52} {r['netns']:>5} {r['build_s_median']:>8} {r['teardown_s_median']:>10}")
    out = Path(__file__).parent / "results" / "demo_cluster_build.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
