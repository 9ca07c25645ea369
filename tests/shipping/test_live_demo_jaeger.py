"""What Grafana and a real trace backend show, from the README's own OTLP set-up.

`podwire demo --otlp-endpoint` (live capture of the two-node namespace cluster, the demo's own
5 s export interval) -> the real collector (otelcol-podwire with otel/gateway.yaml) -> Jaeger
v1.76.0 built from the Go module proxy (traces) and Debian's Prometheus scraping the gateway
(metrics).  Checked through Jaeger's HTTP API:
- every pod-to-pod connection is one trace whose SERVER span's parent is its CLIENT span;
- service names are the workloads; every documented attribute is on every span;
- the one-span traces are exactly the connections whose other end has no agent;
- the spans Jaeger holds are exactly what the agent counted in traces_spanmetrics_calls_total.
And Grafana's exact service-map and Service Graph table PromQL (as in its Tempo data source,
public/app/plugins/datasource/tempo/datasource.ts and graphTransform.ts) return one row per edge
with a rate, an error rate and a p90 within 2x of the true duration (Jaeger's span durations).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.shipping.collectors import start_gateway, wait_port
from tests.shipping.prometheus_server import Prometheus, free_port, running

pytestmark = [pytest.mark.live, pytest.mark.peers]

PODWIRE = Path(sys.executable).parent / "podwire"
DEMO_S = 45
RANGE = "10m"  # Grafana's $__range: the whole demo
FIRST_BUCKET_S = 0.0001  # the duration buckets resolve 100 us and up (names.DURATION_BUCKETS)
# Spans ending this close to the last one may have lost their other end to the shutdown.
SHUTDOWN_EDGE_US = 3_000_000
WORKLOADS = {"loadgen", "frontend", "api", "db"}
ALWAYS = (
    "client.address",
    "client.port",
    "server.address",
    "server.port",
    "network.transport",
    "network.type",
    "podwire.outcome",
    "podwire.peer.workload",
    "podwire.peer.kind",
)
CLOSED = ("podwire.close_initiator", "podwire.bytes.client_to_server", "podwire.bytes.server_to_client")


@dataclass(frozen=True)
class JSpan:
    trace: str
    id: str
    parent: str | None
    kind: str  # client | server
    service: str
    name: str
    tags: dict[str, object]
    start_us: int
    duration_us: int
    error: bool


@dataclass
class Run:
    prom: Prometheus
    spans: list[JSpan]
    traces: dict[str, list[JSpan]] = field(default_factory=dict)


def _jaeger_config(path: Path, otlp: int, http: int, grpc: int) -> Path:
    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "mem"},
                "http": {"endpoint": f"127.0.0.1:{http}"},
                "grpc": {"endpoint": f"127.0.0.1:{grpc}"},
            },
            "jaeger_storage": {"backends": {"mem": {"memory": {"max_traces": 200_000}}}},
        },
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{otlp}"}}}},
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "mem"}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _get(base: str, path: str, params: dict[str, str] | None = None) -> dict:
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def jaeger_spans(base: str) -> list[JSpan]:
    """Every span Jaeger holds, through its HTTP API (per service, traces merged by id)."""
    out: dict[tuple[str, str], JSpan] = {}
    now_us = int(time.time() * 1e6)
    for service in _get(base, "/api/services")["data"] or []:
        params = {
            "service": service,
            "limit": "100000",
            "start": str(now_us - 3600 * 10**6),
            "end": str(now_us + 60 * 10**6),
        }
        for trace in _get(base, "/api/traces", params)["data"] or []:
            procs = trace["processes"]
            for sp in trace["spans"]:
                tags = {t["key"]: t["value"] for t in sp["tags"]}
                parents = [r["spanID"] for r in sp.get("references") or [] if r["refType"] == "CHILD_OF"]
                out[(sp["traceID"], sp["spanID"])] = JSpan(
                    sp["traceID"],
                    sp["spanID"],
                    parents[0] if parents else None,
                    str(tags.get("span.kind")),
                    procs[sp["processID"]]["serviceName"],
                    sp["operationName"],
                    tags,
                    int(sp["startTime"]),
                    int(sp["duration"]),
                    tags.get("error") is True or tags.get("otel.status_code") == "ERROR",
                )
    return list(out.values())


def _span_metrics(prom: Prometheus) -> dict[tuple[str, str, str, bool], int]:
    rows = prom.query("sum by (service, span_name, span_kind, status_code) (traces_spanmetrics_calls_total)")
    return {
        (
            r["metric"]["service"],
            r["metric"]["span_name"],
            r["metric"]["span_kind"].removeprefix("SPAN_KIND_").lower(),
            r["metric"]["status_code"] == "STATUS_CODE_ERROR",
        ): round(float(r["value"][1]))
        for r in rows
    }


def _jaeger_counts(spans: list[JSpan]) -> dict[tuple[str, str, str, bool], int]:
    counts: dict[tuple[str, str, str, bool], int] = defaultdict(int)
    for s in spans:
        counts[(s.service, s.name, s.kind, s.error)] += 1
    return dict(counts)


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory, otelcol_bin: Path, jaeger_bin: Path, prometheus_bin: Path
) -> Iterator[Run]:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces, AF_PACKET)")
    work = tmp_path_factory.mktemp("jaeger")
    p = {
        k: free_port()
        for k in ("j_otlp", "j_http", "j_grpc", "gw_grpc", "gw_http", "gw_prom", "gw_self", "demo")
    }
    procs: list[subprocess.Popen] = []
    demo_log = (work / "demo.log").open("wb")
    demo: subprocess.Popen | None = None
    try:
        with (work / "jaeger.log").open("wb") as jlog:
            cfg = _jaeger_config(work / "jaeger.yaml", p["j_otlp"], p["j_http"], p["j_grpc"])
            procs.append(
                subprocess.Popen(
                    [str(jaeger_bin), f"--config={cfg}"],
                    # no self-tracing: Jaeger's SDK would dial localhost:4317
                    env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
                    stdin=subprocess.DEVNULL,
                    stdout=jlog,
                    stderr=jlog,
                )
            )
        wait_port(p["j_otlp"], procs[-1], work / "jaeger.log", timeout=60)
        wait_port(p["j_http"], procs[-1], work / "jaeger.log", timeout=60)
        procs.append(
            start_gateway(
                otelcol_bin,
                grpc=p["gw_grpc"],
                http=p["gw_http"],
                prom=p["gw_prom"],
                tempo=p["j_otlp"],
                self_metrics=p["gw_self"],
                log=work / "gateway.log",
            )
        )
        wait_port(p["gw_grpc"], procs[-1], work / "gateway.log")
        # The README's set-up: no OTEL_* variables, only the demo's option (and its 5 s interval).
        # (and no PODWIRE_* keys of the test run: the demo refuses unknown ones)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PODWIRE_"))}
        argv = [str(PODWIRE), "demo", "--duration", str(DEMO_S), "--no-tui"]
        argv += ["--listen", f"127.0.0.1:{p['demo']}", "--otlp-endpoint", f"http://127.0.0.1:{p['gw_grpc']}"]
        with running(prometheus_bin, work, scrape_targets=[f"127.0.0.1:{p['gw_prom']}"]) as prom:
            demo = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=demo_log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            assert demo.wait(timeout=DEMO_S + 120) == 0, (work / "demo.log").read_text()[-3000:]
            # The last export reaches Prometheus (through the gateway) and the last spans Jaeger.
            base = f"http://127.0.0.1:{p['j_http']}"
            deadline = time.monotonic() + 60
            while True:
                spans = jaeger_spans(base)
                if spans and _jaeger_counts(spans) == _span_metrics(prom):
                    break
                if time.monotonic() > deadline:
                    break  # the tests below say what differs
                time.sleep(2)
            run = Run(prom, spans)
            for s in spans:
                run.traces.setdefault(s.trace, []).append(s)
            yield run
    finally:
        if demo is not None and demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        demo_log.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _settled(run: Run, spans: list[JSpan]) -> bool:
    last = max(s.start_us + s.duration_us for s in run.spans)
    return all(s.start_us + s.duration_us < last - SHUTDOWN_EDGE_US for s in spans)


def test_jaeger_holds_exactly_the_spans_the_agent_counted(demo_run: Run) -> None:
    assert len(demo_run.spans) > 100
    assert _jaeger_counts(demo_run.spans) == _span_metrics(demo_run.prom)


def test_every_pod_to_pod_connection_is_one_paired_trace(demo_run: Run) -> None:
    paired = 0
    broken = []
    for trace_id, group in demo_run.traces.items():
        pod_ends = [s for s in group if s.tags.get("podwire.peer.kind") in ("pod", "service")]
        if not pod_ends:
            continue
        clients = [s for s in group if s.kind == "client"]
        servers = [s for s in group if s.kind == "server"]
        ok = len(clients) == 1 and len(servers) == 1 and servers[0].parent == clients[0].id
        ok = ok and clients[0].parent is None
        if ok:
            paired += 1
        elif _settled(demo_run, group):
            broken.append((trace_id, [(s.kind, s.service, s.name, s.parent) for s in group]))
    assert broken == []
    assert paired > 50


def test_service_names_are_workloads_and_span_names_their_servers(demo_run: Run) -> None:
    assert {s.service for s in demo_run.spans} == WORKLOADS
    for s in demo_run.spans:
        server = s.tags["podwire.peer.workload"] if s.kind == "client" else s.service
        verb = "connect" if s.kind == "client" else "accept"
        assert re.fullmatch(rf"tcp {verb} (\w+/)?{re.escape(str(server))}:\d+", s.name), s


def test_every_documented_attribute_is_present(demo_run: Run) -> None:
    missing = defaultdict(list)
    for s in demo_run.spans:
        want = ALWAYS + (CLOSED if s.tags["podwire.outcome"] == "closed" else ())
        for key in want:
            if key not in s.tags:
                missing[key].append((s.kind, s.service, s.name, s.trace))
    assert {k: (len(v), v[:3]) for k, v in missing.items()} == {}


def test_orphans_are_exactly_the_connections_without_an_agent_at_the_other_end(demo_run: Run) -> None:
    orphans = {t: g[0] for t, g in demo_run.traces.items() if len(g) == 1}
    assert orphans, "the demo calls partner-api (no agent there): its CLIENT spans stand alone"
    for s in orphans.values():
        if _settled(demo_run, [s]):
            assert s.tags["podwire.peer.kind"] in ("external", "node"), s
            assert s.tags.get("peer.service") == s.tags["podwire.peer.workload"], s
    # and the other way round: a span naming a peer.service is alone in its trace
    for s in demo_run.spans:
        if "peer.service" in s.tags:
            assert len(demo_run.traces[s.trace]) == 1, s


# --- Grafana's own PromQL (Tempo data source), $__range = RANGE -----------------------------------


def grafana_escape(value: str) -> str:
    """getEscapedRegexValues(getEscapedValues([value])) in datasource.ts."""
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return re.sub(r"""[$^*{}\[\]'+?.()|]""", lambda m: "\\\\" + m.group(0), value)


def service_map_queries() -> dict[str, str]:
    """makePromServiceMapRequest: per serviceMapMetrics entry, a sum-by-rate and a group-by query."""
    metrics = (
        "traces_service_graph_request_server_seconds_sum",
        "traces_service_graph_request_total",
        "traces_service_graph_request_failed_total",
        "traces_service_graph_request_server_seconds_bucket",
    )
    out = {}
    for m in metrics:
        out[m] = f"sum by (client, server) (rate({m}[$__range]))"
        out[m + "_labels"] = f"group by (client, connection_type, server) ({m})"
    return out


def _q(prom: Prometheus, expr: str) -> list[dict]:
    return prom.query(expr.replace("$__range", RANGE).replace("$__rate_interval", RANGE))


def _p90(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.9 * len(values)))]


def test_grafana_service_map_has_one_edge_per_client_server_pair(demo_run: Run) -> None:
    prom = demo_run.prom
    truth: dict[tuple[str, str], list[JSpan]] = defaultdict(list)
    for s in demo_run.spans:
        if s.kind == "client":
            truth[(s.service, str(s.tags["podwire.peer.workload"]))].append(s)
        elif s.parent is None:  # a client without spans of its own
            truth[(str(s.tags["podwire.peer.workload"]), s.service)].append(s)
    q = service_map_queries()
    labels = {(r["metric"]["client"], r["metric"]["server"]): r["metric"].get("connection_type", "")
              for r in _q(prom, q["traces_service_graph_request_total_labels"])}  # fmt: skip
    assert set(labels) == set(truth), (labels, set(truth))
    assert labels[("loadgen", "partner-api")] == "virtual_node"
    assert labels[("frontend", "api")] == ""
    rates = {(r["metric"]["client"], r["metric"]["server"]): float(r["value"][1])
             for r in _q(prom, q["traces_service_graph_request_total"])}  # fmt: skip
    busy = [e for e, spans in truth.items() if len(spans) >= 20]
    assert busy and all(rates.get(e, 0) > 0 for e in busy), (rates, busy)
    for m in (
        "traces_service_graph_request_server_seconds_sum",
        "traces_service_graph_request_server_seconds_bucket",
    ):
        assert _q(prom, q[m]) and _q(prom, q[m + "_labels"])
    # the edge's "Request classic histogram" link (makeHistogramLink): p90 within 2x of the truth
    for client, server in busy:
        expr = (
            "histogram_quantile(0.9, sum(rate(traces_service_graph_request_server_seconds_bucket"
            f'{{client="{client}",server="{server}"}}[$__rate_interval])) by (le, client, server))'
        )
        (row,) = _q(prom, expr)
        got = float(row["value"][1])
        want = _p90([s.duration_us / 1e6 for s in truth[(client, server)]])
        if want < FIRST_BUCKET_S:
            assert got <= FIRST_BUCKET_S, (client, server, got, want)
        else:
            assert want / 2 <= got <= want * 2, (client, server, got, want)


def test_grafana_service_graph_table_has_rate_error_rate_and_p90_per_server(demo_run: Run) -> None:
    prom = demo_run.prom
    rate_expr = (
        "topk(5, sum(rate(traces_spanmetrics_calls_total"
        '{span_kind="SPAN_KIND_SERVER"}[$__range])) by (span_name))'
    )
    rates = {r["metric"]["span_name"]: float(r["value"][1]) for r in _q(prom, rate_expr)}
    truth: dict[str, list[JSpan]] = defaultdict(list)
    for s in demo_run.spans:
        if s.kind == "server":
            truth[s.name].append(s)
    top = sorted(truth, key=lambda name: -len(truth[name]))[:5]
    assert len(rates) == min(5, len(truth)) and set(rates) <= set(truth)
    assert set(top[:3]) <= set(rates)  # the busiest servers: frontend, api, db
    assert all(v > 0 for v in rates.values())
    names = [grafana_escape(n) for n in rates]
    err_expr = (
        'topk(5, sum(rate(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR",'
        f'span_name=~"{"|".join(names)}"}}[$__range])) by (span_name))'
    )
    errors = {r["metric"]["span_name"]: float(r["value"][1]) for r in _q(prom, err_expr)}
    for name, rate in rates.items():
        failed = sum(s.error for s in truth[name])
        if failed == 0:
            assert errors.get(name, 0.0) == 0.0, name
        else:
            ratio, true_ratio = errors.get(name, 0.0) / rate, failed / len(truth[name])
            assert true_ratio / 2 <= ratio <= true_ratio * 2, (name, ratio, true_ratio)
        p90_expr = (
            'histogram_quantile(.9, sum(rate(traces_spanmetrics_latency_bucket{span_name=~"'
            f'{grafana_escape(name)}"}}[$__range])) by (le))'
        )
        (row,) = _q(prom, p90_expr)
        got = float(row["value"][1])
        # only SERVER spans are named "tcp accept ...": the truth is their durations
        want = _p90([s.duration_us / 1e6 for s in truth[name]])
        if want < FIRST_BUCKET_S:  # e.g. refused: ~30 us, below the first bucket's resolution
            assert got <= FIRST_BUCKET_S, (name, got, want)
        else:
            assert want / 2 <= got <= want * 2, (name, got, want)
