"""Telemetry cost per connection: metrics only, and with 100% spans (SDK path, capture excluded).

Prints a table and writes benchmarks/results/telemetry_cost.json.
- hot_us: CPU of the calling (capture) thread per connection: on_opened + on_connection.
- cpu_us: process CPU per connection, all threads (batching, OTLP encoding, metric collection
  and export included), with the OTLP receiver in a separate process.
- otlp bytes/conn: wire bytes the receiver got for spans, per connection; metrics bytes per
  export and per edge series (cumulative metrics cost per series per interval, not per connection).
Also: one synchronous SDK Counter.add with the edge attributes, the path metrics.py avoids.

    .venv/bin/python benchmarks/telemetry_cost.py [--connections 20000] [--edges 50]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.telemetry.factory import named, opened_for, pod, record  # noqa: E402

from podwire import log  # noqa: E402
from podwire.config import Settings  # noqa: E402
from podwire.telemetry.export import Telemetry  # noqa: E402


def _receiver_main(conn: mp.connection.Connection) -> None:
    from tests.otlp_receiver import OtlpReceiver

    rx = OtlpReceiver().start()
    conn.send((rx.grpc_port, rx.http_port))
    while True:
        cmd = conn.recv()
        if cmd == "stats":
            conn.send((dict(rx.wire_bytes), len(rx.spans()), len(rx.metric_requests)))
        elif cmd == "clear":
            rx.clear()
            conn.send(True)
        else:
            rx.stop()
            conn.send(True)
            return


def _workload(count: int, edges: int) -> list[tuple[object, object, object]]:
    rng = random.Random(1)
    clients = [pod(f"client-{i}", node="node-a") for i in range(edges)]
    servers = [pod(f"server-{i % 7}", kind="StatefulSet", node="node-b") for i in range(edges)]
    out = []
    for _ in range(count):
        i = rng.randrange(edges)
        rec = record(
            duration=rng.uniform(0.001, 2.0), c2s=rng.randrange(100, 10000), s2c=rng.randrange(100, 100000)
        )
        out.append((opened_for(rec), clients[i], servers[i], named(rec, clients[i], servers[i])))
    return out  # type: ignore[return-value]


def run(
    label: str, spans: bool, env: dict[str, str], work: list, ctl: mp.connection.Connection
) -> dict[str, float]:
    ctl.send("clear")
    ctl.recv()
    t = Telemetry(Settings(otlp="on", node_name="node-a", spans=spans, export_queue_size=len(work) + 10), env)
    sinks = t.sinks
    cpu0, wall0 = time.process_time(), time.perf_counter()
    thread0 = time.thread_time()
    for opened, client, server, conn in work:
        for sink in sinks:
            sink.on_opened(opened, client, server)
            sink.on_connection(conn)
    hot = time.thread_time() - thread0  # CPU of this (the capture) thread only
    t.force_flush(60)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    time.sleep(0.5)
    ctl.send("stats")
    wire, nspans, nmetric_requests = ctl.recv()
    t.shutdown(5)
    n = len(work)
    return {
        "label": label,
        "connections": n,
        "hot_us": hot / n * 1e6,
        "cpu_us": cpu / n * 1e6,
        "wall_s": wall,
        "spans_received": nspans,
        "span_bytes_per_conn": wire["traces"] / n if spans else 0.0,
        "metric_bytes_per_export": wire["metrics"] / max(1, nmetric_requests),
        "metric_exports": nmetric_requests,
    }


def sdk_counter_add_us(reps: int = 20000) -> float:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    mp_ = MeterProvider(metric_readers=[InMemoryMetricReader(), InMemoryMetricReader()])
    c = mp_.get_meter("bench").create_counter("c")
    attrs = {
        "client.workload": "a",
        "client.workload.kind": "Deployment",
        "client.namespace": "ns",
        "server.workload": "b",
        "server.workload.kind": "StatefulSet",
        "server.namespace": "ns",
        "server.port": 8080,
        "outcome": "closed",
    }
    began = time.perf_counter()
    for _ in range(reps):
        c.add(1, attrs)
    return (time.perf_counter() - began) / reps * 1e6


def collection_cost(edges: int = 5000) -> tuple[float, float]:
    """produce() per edge (reader thread), and bytes of edge state per edge."""
    import tracemalloc

    from podwire.telemetry.metrics import LabelConfig, MetricsSink

    sink = MetricsSink(LabelConfig(max_series=edges + 1))
    db = pod("db")
    recs = [named(record(), pod(f"w{i}"), db) for i in range(edges)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for r in recs:
        sink.on_connection(r)
    per_edge_bytes = (tracemalloc.get_traced_memory()[0] - before) / edges
    tracemalloc.stop()
    began = time.process_time()
    sink.produce()
    return (time.process_time() - began) / edges * 1e6, per_edge_bytes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--edges", type=int, default=50)
    args = ap.parse_args()
    log.configure("console", "warning")
    import logging

    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    parent, child = mp.Pipe()
    proc = mp.Process(target=_receiver_main, args=(child,), daemon=True)
    proc.start()
    try:
        grpc_port, _http_port = parent.recv()
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{grpc_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # one export at the end: per-connection cost only
        }
        work = _workload(args.connections, args.edges)
        rows = [
            run("metrics only", False, env, work, parent),
            run("metrics + 100% spans", True, env, work, parent),
        ]
        sdk_add = sdk_counter_add_us()
        produce_us, edge_bytes = collection_cost()
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    print(f"{'mode':<24}{'hot µs/conn':>12}{'cpu µs/conn':>12}{'span B/conn':>12}{'metrics B/export':>18}")
    for r in rows:
        print(
            f"{r['label']:<24}{r['hot_us']:>12.1f}{r['cpu_us']:>12.1f}{r['span_bytes_per_conn']:>12.0f}"
            f"{r['metric_bytes_per_export']:>18.0f}"
        )
    per_series = rows[0]["metric_bytes_per_export"] / args.edges
    print(f"metrics bytes per export per edge ({args.edges} edges): {per_series:.0f}")
    print(
        f"collection: {produce_us:.1f} µs CPU per edge series per reader; edge state {edge_bytes:.0f} B/edge"
    )
    print(f"(avoided) one SDK Counter.add with 8 edge attributes, 2 readers: {sdk_add:.1f} µs")
    out = ROOT / "benchmarks" / "results" / "telemetry_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "edges": args.edges,
                "metric_bytes_per_export_per_edge": per_series,
                "sdk_counter_add_us": sdk_add,
                "produce_us_per_edge": produce_us,
                "edge_state_bytes": edge_bytes,
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
