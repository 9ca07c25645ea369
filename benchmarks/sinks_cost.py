"""CPU per connection of everything after the tracker, wired as `podwire run` wires it.

The agent's own sink chain (agent.Pipeline naming each end through the identity service built
from a 100-pod inventory, then telemetry.export.Telemetry's sinks and the views' ConnectionStore)
gets the events the tracker hands out for a churned connection: a ConnectionOpened, then its
closed ConnectionRecord, in batches as one ring block would give them.  No capture, no tracker:
this is the part downstream of them, with nothing else on the CPU.
- hot_us: CPU of the calling (capture) thread per connection;
- cpu_us: CPU of the whole process per connection, span batching and OTLP encoding included
  (the receiver runs in its own process, as in benchmarks/run).
Modes: `metrics` (OTLP off, as `benchmarks/run`'s metrics row), `spans` (100% spans over OTLP/gRPC).

    .venv/bin/python benchmarks/sinks_cost.py [--mode metrics|spans|both] [--connections 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podwire import log  # noqa: E402
from podwire.agent import Pipeline  # noqa: E402
from podwire.config import Settings  # noqa: E402
from podwire.identity import build_service  # noqa: E402
from podwire.model import (  # noqa: E402
    CloseInitiator,
    ConnectionEvent,
    ConnectionOpened,
    ConnectionRecord,
    Endpoint,
    Outcome,
    Side,
)
from podwire.telemetry.export import Telemetry  # noqa: E402
from podwire.tracker.tracker import Tracker, TrackerLimits  # noqa: E402
from podwire.views.store import ConnectionStore, StoreLimits  # noqa: E402

CLIENT_IP, SERVER_IP, PORT, POINT = "10.250.200.2", "10.250.200.3", 7000, 7
BATCH = 64  # events per dispatch: about one ring block of churn


def _receiver_main(conn: Connection) -> None:
    from tests.otlp_receiver import OtlpReceiver

    rx = OtlpReceiver().start()
    conn.send(rx.grpc_port)
    conn.recv()
    rx.stop()


def inventory(path: Path, pods: int = 100) -> Path:
    rows = ["pods:"]
    rows.append(f"  - {{ip: {CLIENT_IP}, namespace: bench, name: client, workload: client, node: node-a}}")
    rows.append(f"  - {{ip: {SERVER_IP}, namespace: bench, name: server, workload: server, node: node-a}}")
    for i in range(pods - 2):
        rows.append(
            f"  - {{ip: 10.250.{i // 250}.{i % 250 + 1}, namespace: filler, name: pod-{i}, node: node-a}}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


def events(count: int, t0: float) -> list[ConnectionEvent]:
    """Opened then closed, per connection, as the tracker emits them for a 2-up 5-down churn."""
    server = Endpoint(SERVER_IP, PORT)
    out: list[ConnectionEvent] = []
    for i in range(count):
        start = t0 + i * 1e-4
        client = Endpoint(CLIENT_IP, 20000 + i % 40000)
        cisn, sisn = (i * 2654435761) & 0xFFFFFFFF, (i * 40503 + 17) & 0xFFFFFFFF
        out.append(ConnectionOpened(POINT, client, server, start, 5e-5, cisn, sisn, Side.CLIENT))
        out.append(
            ConnectionRecord(
                POINT,
                client,
                server,
                "ipv4",
                start,
                start + 4e-4,
                4e-4,
                Outcome.CLOSED,
                CloseInitiator.SERVER,
                2,
                5,
                5e-5,
                False,
                False,
                cisn,
                sisn,
                Side.CLIENT,
            )
        )
    return out


def run(mode: str, count: int, inv: Path, env: dict[str, str]) -> dict[str, float]:
    spans = mode == "spans"
    settings = Settings(
        inventory=str(inv),
        kube="off",
        otlp="on" if spans else "off",
        spans=spans,
        node_name="node-a",
        export_queue_size=max(2048, 2 * count),
    )
    telemetry = Telemetry(settings, env)
    store = ConnectionStore(StoreLimits.from_settings(settings))
    pipeline = Pipeline(
        Tracker(TrackerLimits.from_settings(settings)), build_service(settings), [*telemetry.sinks, store]
    )
    work = events(count, time.time())
    dispatch = pipeline._dispatch  # the per-event path after the tracker
    cpu0, thread0 = time.process_time(), time.thread_time()
    for i in range(0, len(work), BATCH):
        dispatch(work[i : i + BATCH])
    hot = time.thread_time() - thread0
    telemetry.force_flush(60)  # the export's cost belongs to the run
    cpu = time.process_time() - cpu0
    telemetry.metrics_text()  # one scrape, outside the figure: points exist and render
    telemetry.shutdown(5)
    return {"hot_us": hot / count * 1e6, "cpu_us": cpu / count * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--mode", choices=("metrics", "spans", "both"), default="both")
    ap.add_argument("--connections", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    log.configure("console", "warning")
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    modes = ("metrics", "spans") if args.mode == "both" else (args.mode,)
    env: dict[str, str] = {}
    parent = proc = None
    if "spans" in modes:
        parent, child = mp.Pipe()
        proc = mp.Process(target=_receiver_main, args=(child,), daemon=True)
        proc.start()
        port = parent.recv()
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        }
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inv = inventory(Path(tmp) / "inventory.yaml")
            run(modes[0], 2000, inv, env if modes[0] == "spans" else {})  # warm: imports, caches
            for _ in range(args.reps):
                for m in modes:  # alternating: a busy neighbour hits both alike
                    results[m].append(run(m, args.connections, inv, env if m == "spans" else {}))
    finally:
        if parent is not None and proc is not None:
            parent.send("stop")
            proc.join(10)
    print(f"{'mode':<10}{'hot µs/conn (median)':>22}{'process µs/conn (median)':>26}   runs")
    for m, rows in results.items():
        hot = statistics.median(r["hot_us"] for r in rows)
        cpu = statistics.median(r["cpu_us"] for r in rows)
        each = ", ".join(f"{r['cpu_us']:.1f}" for r in rows)
        print(f"{m:<10}{hot:>22.1f}{cpu:>26.1f}   {each}")
    out = ROOT / "benchmarks" / "results" / "sinks_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"connections": args.connections, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
