"""Identity index at cluster scale, against a real kube-apiserver (tests.peers).

Creates 100,000 pods (owned by 1,000 ReplicaSets of Deployments, IPs set through the status
subresource), 10,000 Services and 1,000 Nodes, then, in a fresh child process (clean RSS):

- time to first sync: KubeSource.start() until every kind is listed      (target <= 10 s)
- RSS of the index: process RSS after sync minus before (imports done)     (target <= 300 MB)
- watch events applied/s: real watch events (deletes, IP reuse, status and label
  updates) from the server, divided by the time spent decoding+applying them
  (target >= 20,000/s); the live wall-clock rate is bounded by how fast the
  API server accepts writes here, and is printed beside it
- lookups/s: resolve() over pod, service, node and unknown addresses       (target >= 1M/s)

    .venv/bin/python benchmarks/identity_scale.py [--pods N --services N --nodes N]

Prints a table and writes benchmarks/results/identity_scale.json.  The machine is shared
(2 cores): creation takes minutes; its time is not a figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "identity_scale.json"
PODS_PER_RS = 100
NAMESPACES = 100


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pod_ip(n: int) -> str:
    return f"10.{64 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def node_ip(i: int) -> str:
    return f"172.16.{i // 256}.{i % 256}"


# ---- creating the cluster's objects ------------------------------------------------------------


class Writer:
    """Parallel raw JSON writes through the official client's connection pool."""

    def __init__(self, kubeconfig: str, workers: int) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = workers
        self.api = client.ApiClient(cfg)
        self.pool = self.api.rest_client.pool_manager
        self.host = cfg.host
        self.workers = workers
        self.errors = 0

    def _do(self, method: str, path: str, body: Any, ctype: str = "application/json") -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in range(20):
            resp = self.pool.request(
                method,
                self.host + path,
                body=data,
                headers={"Content-Type": ctype, "Accept": "application/json"},
            )
            if resp.status < 300:
                return json.loads(resp.data)  # type: ignore[no-any-return]
            if resp.status in (429, 500, 503, 504):
                time.sleep(0.05 * (attempt + 1))
                continue
            if resp.status == 409 and method == "POST":
                return {}
            self.errors += 1
            raise RuntimeError(f"{method} {path}: {resp.status} {resp.data[:300]!r}")
        raise RuntimeError(f"{method} {path}: gave up")

    def run(self, label: str, jobs: list[tuple[str, str, Any, str]]) -> list[dict[str, Any]]:
        t0 = time.monotonic()
        with ThreadPoolExecutor(self.workers) as ex:
            out = list(ex.map(lambda j: self._do(*j), jobs, chunksize=64))
        dt = time.monotonic() - t0
        print(f"  {label:<28} {len(jobs):>7} in {dt:6.1f} s ({len(jobs) / dt:7.0f}/s)", flush=True)
        return out


def populate(kubeconfig: str, pods: int, services: int, nodes: int, workers: int) -> dict[str, Any]:
    w = Writer(kubeconfig, workers)
    t0 = time.monotonic()
    print("creating objects:", flush=True)
    nss = [f"bench-{k:02d}" for k in range(NAMESPACES)]
    w.run(
        "namespaces",
        [("POST", "/api/v1/namespaces", {"metadata": {"name": ns}}, "application/json") for ns in nss],
    )
    w.run(
        "nodes",
        [
            (
                "POST",
                "/api/v1/nodes",
                {
                    "metadata": {"name": f"node-{i:04d}"},
                    "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)}]},
                },
                "application/json",
            )
            for i in range(nodes)
        ],
    )
    w.run(
        "services",
        [
            (
                "POST",
                f"/api/v1/namespaces/{nss[j % NAMESPACES]}/services",
                {
                    "metadata": {"name": f"svc-{j:05d}"},
                    "spec": {"ports": [{"port": 80}], "selector": {"s": str(j)}},
                },
                "application/json",
            )
            for j in range(services)
        ],
    )
    n_rs = max(1, pods // PODS_PER_RS)
    rs_jobs = []
    for r in range(n_rs):
        ns = nss[r % NAMESPACES]
        labels = {"app": f"app-{r}", "pod-template-hash": f"{r:08x}"}
        rs_jobs.append(
            (
                "POST",
                f"/apis/apps/v1/namespaces/{ns}/replicasets",
                {
                    "metadata": {
                        "name": f"app-{r}-{r:08x}",
                        "labels": labels,
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "name": f"app-{r}",
                                "uid": f"00000000-0000-4000-8000-{r:012d}",
                                "controller": True,
                            }
                        ],
                    },
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                        },
                    },
                },
                "application/json",
            )
        )
    created_rs = w.run("replicasets", rs_jobs)
    rs_uid = {r: (created_rs[r].get("metadata") or {}).get("uid", "") for r in range(n_rs)}

    def pod_body(n: int) -> tuple[str, str, Any, str]:
        r = n // PODS_PER_RS
        ns = nss[r % NAMESPACES]
        rs = f"app-{r}-{r:08x}"
        return (
            "POST",
            f"/api/v1/namespaces/{ns}/pods",
            {
                "metadata": {
                    "name": f"{rs}-{n:05x}",
                    "labels": {"app": f"app-{r}", "pod-template-hash": f"{r:08x}"},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": rs,
                            "uid": rs_uid[r],
                            "controller": True,
                        }
                    ],
                },
                "spec": {
                    "nodeName": f"node-{n % max(1, nodes):04d}",
                    "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
                },
            },
            "application/json",
        )

    w.run("pods", [pod_body(n) for n in range(pods)])
    w.run("pod status (podIP)", [status_patch(n) for n in range(pods)])
    return {"seconds": time.monotonic() - t0, "errors": w.errors}


def pod_path(n: int) -> tuple[str, str]:
    r = n // PODS_PER_RS
    return f"bench-{r % NAMESPACES:02d}", f"app-{r}-{r:08x}-{n:05x}"


def status_patch(n: int, ip_of: int | None = None) -> tuple[str, str, Any, str]:
    ns, name = pod_path(n)
    ip = pod_ip(n if ip_of is None else ip_of)
    return (
        "PATCH",
        f"/api/v1/namespaces/{ns}/pods/{name}/status",
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
        "application/merge-patch+json",
    )


def churn(kubeconfig: str, pods: int, count: int, workers: int) -> int:
    """Real watch traffic: delete `count` pods, create `count` new ones reusing their IPs, and
    relabel `count` others.  Returns the number of pod watch events it causes."""
    w = Writer(kubeconfig, workers)
    victims = list(range(0, count))
    relabel = list(range(count, 2 * count))
    jobs = []
    for n in victims:
        ns, name = pod_path(n)
        jobs.append(
            ("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", {"gracePeriodSeconds": 0}, "application/json")
        )
    w.run("churn: delete pods", jobs)
    new = []
    for k, n in enumerate(victims):
        ns, name = pod_path(n)
        r = n // PODS_PER_RS
        new.append(
            (
                "POST",
                f"/api/v1/namespaces/{ns}/pods",
                {
                    "metadata": {"name": name, "labels": {"app": f"app-{r}", "gen": "2"}},
                    "spec": {
                        "nodeName": "node-0000",
                        "containers": [{"name": "c", "image": "registry.invalid/b:2"}],
                    },
                },
                "application/json",
            )
        )
    w.run("churn: create (bare pods)", new)
    w.run("churn: status (reused IPs)", [status_patch(n) for n in victims])
    rl = []
    for n in relabel:
        ns, name = pod_path(n)
        rl.append(
            (
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}",
                {"metadata": {"labels": {"touched": "yes"}}},
                "application/merge-patch+json",
            )
        )
    w.run("churn: relabel pods", rl)
    return 4 * count


def resolve_kind(index: Any, ip: str) -> str:
    return str(index.resolve(ip, None).kind)


# ---- the measuring child ------------------------------------------------------------------------


def child(kubeconfig: str, pods: int, services: int, nodes: int) -> None:
    """Fresh process: sync, RSS, lookups, then watch events during the parent's churn."""
    from podwire import log
    from podwire.identity.external import ExternalNames
    from podwire.identity.index import IdentityIndex
    from podwire.identity.kube import KubeSource, load_client
    from podwire.identity.kubestore import KubeStore

    log.configure("console", "warning")  # stderr: stdout carries the results

    api = load_client(kubeconfig)
    gc.collect()
    rss0 = rss_mb()
    index = IdentityIndex(history_s=3600.0, fallback=ExternalNames([("10.96.0.0/12", "cluster-services")]))
    source = KubeSource(KubeStore(index), api)
    t0 = time.monotonic()
    source.start()
    while not source.ready:
        if time.monotonic() - t0 > 300:
            raise SystemExit("no first sync within 300 s: " + repr(source.stats()))
        source.raise_for_access()
        time.sleep(0.01)
    sync_s = time.monotonic() - t0
    peak_sync = hwm_mb()
    gc.collect()
    rss1 = rss_mb()
    st = index.stats()
    kinds = {k.kind: k.objects for k in source.stats().kinds}

    # Lookups: every pod IP, services, nodes, and 10% unknown addresses, shuffled.
    addrs = [pod_ip(n) for n in range(pods)]
    svc_ips = [ip for ip in list(index) if resolve_kind(index, ip) == "service"]
    addrs += svc_ips + [node_ip(i) for i in range(nodes)]
    addrs += [f"198.51.{i // 256 % 256}.{i % 256}" for i in range(len(addrs) // 10)]
    random.Random(7).shuffle(addrs)
    resolve = index.resolve
    named = sum(1 for a in addrs if resolve(a, None).kind != "external")
    best_now = best_at = 0.0
    at = time.time()
    for _ in range(3):
        t = time.perf_counter()
        for a in addrs:
            resolve(a, None)
        best_now = max(best_now, len(addrs) / (time.perf_counter() - t))
        t = time.perf_counter()
        for a in addrs:
            resolve(a, at)
        best_at = max(best_at, len(addrs) / (time.perf_counter() - t))

    out = {
        "sync_s": sync_s,
        "rss_before_mb": rss0,
        "rss_after_sync_mb": rss1,
        "index_rss_mb": rss1 - rss0,
        "peak_rss_during_sync_mb": peak_sync,
        "index_addresses": st.addresses,
        "index_keys": st.keys,
        "objects_listed": kinds,
        "lookup_addresses": len(addrs),
        "lookups_named": named,
        "lookups_per_s_now": best_now,
        "lookups_per_s_at_time": best_at,
    }
    print(json.dumps({"phase": "synced", **out}), flush=True)

    # Watch events: the parent churns; we count what arrives and the time spent applying it.
    line = sys.stdin.readline()
    expected = int(json.loads(line)["expected_events"])
    ev0, ap0 = source.events_applied, source.apply_seconds
    w0 = time.monotonic()
    deadline = time.monotonic() + 600
    while source.events_applied - ev0 < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    events = source.events_applied - ev0
    apply_s = source.apply_seconds - ap0
    wall = time.monotonic() - w0
    gc.collect()
    st2 = index.stats()
    source.stop(5.0)
    print(
        json.dumps(
            {
                "phase": "watched",
                "watch_events": events,
                "watch_apply_s": apply_s,
                "watch_events_per_apply_s": events / apply_s if apply_s else 0.0,
                "watch_wall_s_from_churn_start": wall,
                "rss_after_churn_mb": rss_mb(),
                "addresses_with_history": st2.addresses_with_history,
            }
        ),
        flush=True,
    )


def read_phase(stream: Any, phase: str) -> dict[str, Any]:
    for line in stream:
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("phase") == phase:
                return doc  # type: ignore[no-any-return]
    raise SystemExit(f"measuring child ended before {phase!r}")


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=1_000)
    ap.add_argument("--churn", type=int, default=5_000, help="pods deleted/recreated/relabelled (x4 events)")
    ap.add_argument("--workers", type=int, default=24)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pods, args.services, args.nodes)
        return 0

    from tests.peers import kube_api_server, peer_binaries

    bins = peer_binaries("kube-apiserver", "etcd")
    with kube_api_server(bins["kube-apiserver"], bins["etcd"]) as api:
        kubeconfig = str(api.admin_kubeconfig)
        created = populate(kubeconfig, args.pods, args.services, args.nodes, args.workers)
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                kubeconfig,
                "--pods",
                str(args.pods),
                "--services",
                str(args.services),
                "--nodes",
                str(args.nodes),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        synced = read_phase(proc.stdout, "synced")
        print(f"first sync {synced['sync_s']:.2f} s; churning...", flush=True)
        expected = 4 * args.churn
        proc.stdin.write(json.dumps({"expected_events": expected}) + "\n")
        proc.stdin.flush()
        t0 = time.monotonic()
        churn(kubeconfig, args.pods, args.churn, args.workers)
        churn_s = time.monotonic() - t0
        watched = read_phase(proc.stdout, "watched")
        proc.wait(60)

    result = {
        "machine": {"cpus": os.cpu_count(), "note": "2 cores shared with other builds and tests"},
        "objects": {
            "pods": args.pods,
            "services": args.services,
            "nodes": args.nodes,
            "replicasets": max(1, args.pods // PODS_PER_RS),
        },
        "create_seconds": created["seconds"],
        **{k: v for k, v in synced.items() if k != "phase"},
        **{k: v for k, v in watched.items() if k != "phase"},
        "watch_events_expected": expected,
        "churn_wall_s": churn_s,
        "watch_events_per_wall_s_live": watched["watch_events"] / churn_s if churn_s else 0.0,
    }
    rows = [
        ("time to first sync", f"{result['sync_s']:.2f} s", "<= 10 s", result["sync_s"] <= 10),
        ("RSS of the index", f"{result['index_rss_mb']:.0f} MB", "<= 300 MB", result["index_rss_mb"] <= 300),
        (
            "watch events applied/s",
            f"{result['watch_events_per_apply_s']:,.0f}",
            ">= 20,000",
            result["watch_events_per_apply_s"] >= 20_000,
        ),
        (
            "lookups/s (now)",
            f"{result['lookups_per_s_now']:,.0f}",
            ">= 1,000,000",
            result["lookups_per_s_now"] >= 1_000_000,
        ),
        (
            "lookups/s (at a time)",
            f"{result['lookups_per_s_at_time']:,.0f}",
            ">= 1,000,000",
            result["lookups_per_s_at_time"] >= 1_000_000,
        ),
    ]
    print()
    print(f"{'figure':<26} {'measured':>14} {'target':>14}  ok")
    for name, got, target, ok in rows:
        print(f"{name:<26} {got:>14} {target:>14}  {'yes' if ok else 'NO'}")
    print(f"\nobjects listed: {result['objects_listed']}; index addresses: {result['index_addresses']}")
    print(
        f"process RSS after sync: {result['rss_after_sync_mb']:.0f} MB "
        f"(peak during sync {result['peak_rss_during_sync_mb']:.0f} MB)"
    )
    print(
        f"live watch: {result['watch_events']} events in {result['churn_wall_s']:.1f} s of churn "
        f"({result['watch_events_per_wall_s_live']:,.0f}/s wall, bounded by the API server's write rate)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
