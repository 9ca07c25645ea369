"""The identity index alone (no API server): memory and speed at 100k pods, 10k services, 1k nodes.

    .venv/bin/python benchmarks/identity_index.py

Figures: RSS of the populated index, lookups/s (current and time-aware, hits and misses),
set/remove updates/s with IP reuse.  Prints a table; writes benchmarks/results/identity_index.json.
The full figure against a real kube-apiserver is benchmarks/identity_scale.py.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "identity_index.json"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    from podwire.identity.external import ExternalNames
    from podwire.identity.index import IdentityIndex, make_identity
    from podwire.model import IdentityKind

    pods, services, nodes = 100_000, 10_000, 1_000
    gc.collect()
    rss0 = rss_mb()
    clock = [1000.0]
    index = IdentityIndex(
        history_s=3600.0, fallback=ExternalNames([("0.0.0.0/0", "internet")]), clock=lambda: clock[0]
    )
    t = time.perf_counter()
    for n in range(pods):
        r = n // 100
        ns = f"bench-{r % 100:02d}"
        name = f"app-{r}-{r:08x}-{n:05x}"
        ident = make_identity(
            IdentityKind.POD,
            name,
            namespace=ns,
            workload=f"app-{r}",
            workload_kind="Deployment",
            node=f"node-{n % nodes:04d}",
        )
        index.set(
            f"pod/{n:08d}-0000-4000-8000-000000000000",
            [f"10.{64 + n // 65536}.{(n // 256) % 256}.{n % 256}"],
            ident,
            float("-inf"),
        )
    for j in range(services):
        index.set(
            f"svc/{j}",
            [f"10.96.{j // 256}.{j % 256}"],
            make_identity(IdentityKind.SERVICE, f"svc-{j:05d}", namespace=f"bench-{j % 100:02d}"),
            float("-inf"),
        )
    for i in range(nodes):
        nm = f"node-{i:04d}"
        index.set(
            f"node/{i}",
            [f"172.16.{i // 256}.{i % 256}"],
            make_identity(IdentityKind.NODE, nm, node=nm),
            float("-inf"),
        )
    build_s = time.perf_counter() - t
    gc.collect()
    rss1 = rss_mb()

    addrs = [f"10.{64 + n // 65536}.{(n // 256) % 256}.{n % 256}" for n in range(pods)]
    addrs += [f"10.96.{j // 256}.{j % 256}" for j in range(services)]
    addrs += [f"172.16.{i // 256}.{i % 256}" for i in range(nodes)]
    misses = [f"198.51.{i // 256 % 256}.{i % 256}" for i in range(len(addrs) // 10)]
    mixed = addrs + misses
    random.Random(7).shuffle(mixed)
    resolve = index.resolve
    out: dict[str, float] = {}
    for label, seq, at in (("hits_now", addrs, None), ("hits_at", addrs, 2000.0), ("mixed_now", mixed, None)):
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for a in seq:
                resolve(a, at)
            best = max(best, len(seq) / (time.perf_counter() - t))
        out[label] = best

    # Churn with IP reuse: each step removes a pod and gives its IP to a new one.
    t = time.perf_counter()
    steps = 50_000
    for k in range(steps):
        clock[0] += 0.001
        n = k
        ip = addrs[n]
        index.remove(f"pod/{n:08d}-0000-4000-8000-000000000000")
        index.set(
            f"pod/new-{n}",
            [ip],
            make_identity(
                IdentityKind.POD, f"new-{n}", namespace="bench-00", workload="new", workload_kind="Pod"
            ),
        )
    updates_s = 2 * steps / (time.perf_counter() - t)
    t = time.perf_counter()
    for a in addrs[:steps]:
        resolve(a, 1000.0)
    hist_s = steps / (time.perf_counter() - t)
    gc.collect()
    rss2 = rss_mb()

    result = {
        "objects": {"pods": pods, "services": services, "nodes": nodes},
        "build_s": build_s,
        "index_rss_mb": rss1 - rss0,
        "index_rss_after_churn_mb": rss2 - rss0,
        "lookups_per_s_hits_now": out["hits_now"],
        "lookups_per_s_hits_at_time": out["hits_at"],
        "lookups_per_s_mixed_10pct_external": out["mixed_now"],
        "lookups_per_s_historical": hist_s,
        "updates_per_s_with_ip_reuse": updates_s,
        "python": sys.version.split()[0],
    }
    print(f"{'figure':<40} {'value':>14}")
    for k, v in result.items():
        if isinstance(v, float):
            print(f"{k:<40} {v:>14,.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
