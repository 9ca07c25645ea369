"""Tempo's span-metrics series, counted in the agent: one call per span an agent sends."""

from __future__ import annotations

import msgspec
from opentelemetry.sdk.metrics.export import Histogram, Metric, Sum

from podwire.model import Outcome, Side
from podwire.telemetry import names as n
from podwire.telemetry.spanmetrics import SpanMetricsSink
from tests.telemetry.factory import external, host_pod, named, pod, record, service

ERR, OK = n.SM_STATUS_ERROR, n.SM_STATUS_UNSET
CLIENT, SERVER = n.SM_KIND_CLIENT, n.SM_KIND_SERVER


def calls(sink: SpanMetricsSink) -> dict[tuple[str, str, str, str], int]:
    metrics: dict[str, Metric] = {m.name: m for m in sink.produce()}
    assert set(metrics) == {n.SM_CALLS, n.SM_LATENCY}
    data = metrics[n.SM_CALLS].data
    assert isinstance(data, Sum) and data.is_monotonic
    out = {}
    for p in data.data_points:
        a = p.attributes or {}
        assert set(a) == {"service", "span_name", "span_kind", "status_code"}  # Tempo's labels, no more
        out[(str(a["service"]), str(a["span_name"]), str(a["span_kind"]), str(a["status_code"]))] = int(
            p.value
        )
    hist = metrics[n.SM_LATENCY].data
    assert isinstance(hist, Histogram)
    assert sorted(p.count for p in hist.data_points) == sorted(out.values())  # one duration per call
    return out


def test_each_agent_counts_the_spans_it_sends_so_the_cluster_counts_each_once() -> None:
    node_a, node_b = SpanMetricsSink(), SpanMetricsSink()
    web, api, api_svc, db = pod("web"), pod("api"), service("api"), pod("db", kind="StatefulSet")
    for _ in range(3):  # web -> Service api:80 -> DNAT -> api:8080, seen at both veths
        cisn, sisn = 11, 22
        at_client = record(
            side=Side.CLIENT, server_ip="10.96.0.10", server_port=80, client_isn=cisn, server_isn=sisn
        )
        at_server = record(side=Side.SERVER, client_isn=cisn, server_isn=sisn)
        node_a.on_connection(named(at_client, web, api_svc))
        node_b.on_connection(named(at_server, web, api))
    # api -> db refused, both pods on node-b: the client veth and the server veth each see it
    refused = record(Outcome.REFUSED, side=Side.CLIENT, server_port=5432, duration=0.001)
    node_b.on_connection(named(refused, api, db))
    node_b.on_connection(named(record(Outcome.REFUSED, side=Side.SERVER, server_port=5432), api, db))
    assert calls(node_a) == {("web", "tcp connect shop/api:80", CLIENT, OK): 3}
    assert calls(node_b) == {
        ("api", "tcp accept shop/api:8080", SERVER, OK): 3,
        ("api", "tcp connect shop/db:5432", CLIENT, ERR): 1,
        ("db", "tcp accept shop/db:5432", SERVER, ERR): 1,
    }


def test_ends_without_an_agent_get_no_call_and_spanless_records_none() -> None:
    sink = SpanMetricsSink()
    web = pod("web")
    # to an external: only the client's CLIENT span exists
    sink.on_connection(named(record(server_port=443), web, external("partner-api")))
    # from an external and from a hostNetwork pod: only the server's SERVER span
    sink.on_connection(named(record(side=Side.SERVER), external("partner-api"), web))
    sink.on_connection(named(record(side=Side.SERVER), host_pod("kube-proxy"), web))
    # reset counts as an error, like the span status
    sink.on_connection(named(record(Outcome.RESET, server_port=443), web, external("partner-api")))
    # no span, so no call: still open, and seen mid-stream (no client ISN)
    sink.on_connection(named(record(Outcome.OPEN), web, pod("db")))
    midstream = msgspec.structs.replace(record(), client_isn=None)
    sink.on_connection(named(midstream, web, pod("db")))
    assert calls(sink) == {
        ("web", "tcp connect partner-api:443", CLIENT, OK): 1,
        ("web", "tcp connect partner-api:443", CLIENT, ERR): 1,
        ("web", "tcp accept shop/web:8080", SERVER, OK): 2,
    }


def test_pcap_records_count_both_ends_and_durations_land_in_the_duration_buckets() -> None:
    sink = SpanMetricsSink()
    sink.on_connection(named(record(side=None, duration=0.003), pod("web"), pod("db")))
    (hist,) = [m for m in sink.produce() if m.name == n.SM_LATENCY]
    assert isinstance(hist.data, Histogram)
    for p in hist.data.data_points:
        assert p.explicit_bounds == n.DURATION_BUCKETS
        b = dict(zip((*p.explicit_bounds, float("inf")), p.bucket_counts, strict=True))
        assert b[0.0032] == 1 and p.count == 1 and p.sum == 0.003
    assert len(hist.data.data_points) == 2  # CLIENT and SERVER


def test_series_are_capped_and_the_rest_fold_into_overflow() -> None:
    sink = SpanMetricsSink(max_series=2)
    web = pod("web")
    for port in range(8000, 8005):
        sink.on_connection(named(record(server_port=port), web, pod("db")))
    got = calls(sink)
    assert got[(n.OVERFLOW, n.OVERFLOW, CLIENT, OK)] == 3 and sum(got.values()) == 5
    assert sink.series_dropped == 3 and sink.series == 3


def test_one_pair_counts_by_side_and_status_when_its_series_are_cached() -> None:
    sink = SpanMetricsSink()
    web, db = pod("web"), pod("db")
    for outcome, side in (
        (Outcome.CLOSED, Side.CLIENT),
        (Outcome.RESET, Side.CLIENT),
        (Outcome.CLOSED, Side.SERVER),
        (Outcome.CLOSED, Side.CLIENT),
        (Outcome.CLOSED, None),  # a replay: both ends here
    ):
        sink.on_connection(named(record(outcome, side=side, server_port=5432), web, db))
    assert calls(sink) == {
        ("web", "tcp connect shop/db:5432", CLIENT, OK): 3,
        ("web", "tcp connect shop/db:5432", CLIENT, ERR): 1,
        ("db", "tcp accept shop/db:5432", SERVER, OK): 2,
    }
