"""Edge metrics and Tempo's service-graph series, through the real SDK into a real OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from podwire.config import Settings
from podwire.model import CloseInitiator, Identity, IdentityKind, Outcome, Side
from podwire.telemetry import names as n
from podwire.telemetry.export import Telemetry
from podwire.telemetry.metrics import AgentSnapshot, counts_here
from podwire.tracker.tracker import ANOMALY_KINDS
from tests.otlp_receiver import OtlpReceiver, Point
from tests.telemetry.factory import external, host_pod, named, opened_for, pod, record, service

SHOP = "shop"


def make(rx: OtlpReceiver, protocol: str = "grpc", **settings: object) -> Telemetry:
    # a long interval: points are exported only by our explicit flushes, so values are exact
    return Telemetry(
        Settings(otlp="on", node_name="node-a", spans=False, **settings), rx.env(protocol, 600_000)
    )


@pytest.fixture
def tel(receiver: OtlpReceiver) -> Iterator[Telemetry]:
    t = make(receiver)
    try:
        yield t
    finally:
        t.shutdown(3)


def by(points: list[Point], key: str) -> dict[object, Point]:
    return {p.attributes[key]: p for p in points}


def flushed(rx: OtlpReceiver, t: Telemetry, name: str) -> list[Point]:
    assert t.force_flush(5)
    return rx.latest_points(name)


# --- exactly once -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "client", "expected"),
    [
        (Side.CLIENT, pod("web"), True),  # the client's veth counts
        (Side.SERVER, pod("web"), False),  # ... so the server's veth must not
        (Side.SERVER, external(), True),  # no client-side record exists anywhere
        (Side.SERVER, host_pod("kube-proxy"), True),  # hostNetwork pods have no veth
        (Side.SERVER, Identity(IdentityKind.NODE, "node-b"), True),
        (Side.SERVER, service("api"), True),
        (None, pod("web"), True),  # pcap: one capture of the whole conversation
        (None, external(), True),
        (Side.CLIENT, external(), True),
    ],
)
def test_counts_here_implements_the_exactly_once_rule(
    side: Side | None, client: Identity, expected: bool
) -> None:
    assert counts_here(side, client) is expected


def test_same_node_pod_to_pod_seen_on_both_veths_counts_once(receiver: OtlpReceiver, tel: Telemetry) -> None:
    web, db = pod("web"), pod("db", kind="StatefulSet")
    rec_c = record(Outcome.CLOSED, Side.CLIENT, point=3)
    rec_s = record(
        Outcome.CLOSED, Side.SERVER, point=4, client_isn=rec_c.client_isn, server_isn=rec_c.server_isn
    )
    for rec in (rec_c, rec_s):
        tel.metrics.on_opened(opened_for(rec), web, db)
        tel.metrics.on_connection(named(rec, web, db))
    (conns,) = flushed(receiver, tel, n.TCP_CONNECTIONS)
    assert conns.value == 1
    (sg,) = receiver.latest_points(n.SG_REQUEST)
    assert sg.value == 1
    (active,) = receiver.latest_points(n.TCP_CONNECTIONS_ACTIVE)
    assert active.value == 0


def test_external_client_is_counted_at_the_server_and_drawn_as_virtual_node(
    receiver: OtlpReceiver, tel: Telemetry
) -> None:
    ext, web = external("api.partner.example"), pod("web")
    tel.metrics.on_connection(named(record(Outcome.CLOSED, Side.SERVER), ext, web))
    (sg,) = flushed(receiver, tel, n.SG_REQUEST)
    assert sg.value == 1
    assert sg.attributes == {
        "client": "api.partner.example",
        "server": "web",
        "connection_type": "virtual_node",
        "client_service_namespace": "",
        "server_service_namespace": SHOP,
    }
    (conns,) = receiver.latest_points(n.TCP_CONNECTIONS)
    assert conns.attributes[n.CLIENT_WORKLOAD_KIND] == "external"
    assert conns.attributes[n.CLIENT_NAMESPACE] == ""


# --- the instruments ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_edge_instruments_carry_exact_names_units_attributes_and_values(
    receiver: OtlpReceiver, protocol: str
) -> None:
    t = make(receiver, protocol)
    try:
        web, db = pod("web"), pod("db", kind="StatefulSet")
        closed = [
            record(duration=d, c2s=100 * i, s2c=1000 * i, rtt=0.0003)
            for i, d in enumerate((0.004, 0.2, 3.0), 1)
        ]
        reset = record(Outcome.RESET, duration=0.05, c2s=10, s2c=None, initiator=CloseInitiator.SERVER)
        refused = record(Outcome.REFUSED, duration=0.0002)
        timeout = record(Outcome.TIMEOUT, duration=7.0)
        still_open = record(Outcome.CLOSED)  # opened, no record yet
        for rec in (*closed, reset, still_open):
            t.metrics.on_opened(opened_for(rec), web, db)
        for rec in (*closed, reset, refused, timeout):
            t.metrics.on_connection(named(rec, web, db))

        edge = {
            "client.workload": "web",
            "client.workload.kind": "Deployment",
            "client.namespace": SHOP,
            "server.workload": "db",
            "server.workload.kind": "StatefulSet",
            "server.namespace": SHOP,
            "server.port": 8080,
        }
        conns = by(flushed(receiver, t, n.TCP_CONNECTIONS), n.OUTCOME)
        assert receiver.totals(n.TCP_CONNECTIONS) == {None: 6}
        assert {k: p.value for k, p in conns.items()} == {"closed": 3, "reset": 1, "refused": 1, "timeout": 1}
        for outcome, p in conns.items():
            assert p.attributes == {**edge, "outcome": outcome}
            assert (p.unit, p.kind, p.monotonic) == ("{connection}", "sum", True)
            assert p.temporality == 2  # AGGREGATION_TEMPORALITY_CUMULATIVE

        byts = by(receiver.latest_points(n.TCP_BYTES), n.DIRECTION)
        assert byts["client_to_server"].value == 100 + 200 + 300 + 10
        assert byts["server_to_client"].value == 1000 + 2000 + 3000  # the reset's unknown bytes add nothing
        assert byts["client_to_server"].unit == "By"

        (dur,) = receiver.latest_points(n.TCP_CONNECTION_DURATION)
        assert dur.unit == "s" and dur.count == 4  # closed + reset; failures never opened
        assert dur.sum == pytest.approx(0.004 + 0.2 + 3.0 + 0.05)
        assert dur.explicit_bounds == n.DURATION_BUCKETS
        b = dict(zip((*dur.explicit_bounds, float("inf")), dur.bucket_counts))
        assert (b[0.0064], b[0.0512], b[0.2048], b[3.2768]) == (1, 1, 1, 1)

        (hs,) = receiver.latest_points(n.TCP_HANDSHAKE_DURATION)
        assert hs.count == 5  # four closed/reset + the one still open, each once
        assert hs.explicit_bounds == n.HANDSHAKE_DURATION_BUCKETS

        fails = by(receiver.latest_points(n.TCP_FAILURES), n.REASON)
        assert {k: p.value for k, p in fails.items()} == {"refused": 1, "timeout": 1}
        (resets,) = receiver.latest_points(n.TCP_RESETS)
        assert resets.attributes[n.SENDER] == "server" and resets.value == 1

        (active,) = receiver.latest_points(n.TCP_CONNECTIONS_ACTIVE)
        assert active.value == 1 and active.monotonic is False and active.attributes == edge

        # Tempo's series: one connection = one request; refused/timeout/reset failed
        sg_labels = {
            "client": "web",
            "server": "db",
            "connection_type": "",
            "client_service_namespace": SHOP,
            "server_service_namespace": SHOP,
        }
        (total,) = receiver.latest_points(n.SG_REQUEST)
        (failed,) = receiver.latest_points(n.SG_REQUEST_FAILED)
        assert (total.value, failed.value) == (6, 3)
        assert total.attributes == sg_labels == failed.attributes
        for name in (n.SG_REQUEST_SERVER_SECONDS, n.SG_REQUEST_CLIENT_SECONDS):
            (h,) = receiver.latest_points(name)
            assert h.attributes == sg_labels and h.count == 6 and h.unit == "s"
            # 100 us .. hours, a factor of 2 per bucket (Tempo's 0.1 s first bucket held every one)
            assert h.explicit_bounds == n.DURATION_BUCKETS
            assert h.explicit_bounds[0] == 0.0001 and h.explicit_bounds[-1] > 3 * 3600
            assert h.sum == pytest.approx(0.004 + 0.2 + 3.0 + 0.05 + 0.0002 + 7.0)
            b = dict(zip((*h.explicit_bounds, float("inf")), h.bucket_counts))
            assert (b[0.0002], b[0.0064], b[0.0512], b[0.2048], b[3.2768], b[13.1072]) == (1, 1, 1, 1, 1, 1)
        transport = "grpc" if protocol == "grpc" else "http"
        assert receiver.request_counts[(transport, "metrics")] >= 1
    finally:
        t.shutdown(3)


def test_duration_buckets_setting_sets_the_duration_and_service_graph_histograms(
    receiver: OtlpReceiver,
) -> None:
    t = make(receiver, duration_buckets=(0.001, 0.01, 60.0))
    try:
        rec = record(duration=0.005)
        t.metrics.on_connection(named(rec, pod("web"), pod("db")))
        t.span_metrics.on_connection(named(rec, pod("web"), pod("db")))
        for name in (n.TCP_CONNECTION_DURATION, n.SG_REQUEST_SERVER_SECONDS, n.SM_LATENCY):
            (h,) = flushed(receiver, t, name)
            assert h.explicit_bounds == (0.001, 0.01, 60.0) and list(h.bucket_counts) == [0, 1, 0, 0], name
        (hs,) = flushed(receiver, t, n.TCP_HANDSHAKE_DURATION)
        assert hs.explicit_bounds == n.HANDSHAKE_DURATION_BUCKETS  # its own scale
    finally:
        t.shutdown(3)


def test_cardinality_cap_folds_new_edges_into_overflow_and_counts_them(receiver: OtlpReceiver) -> None:
    t = make(receiver, max_series=3)
    try:
        db = pod("db")
        for i in range(5):
            for _ in range(2):
                t.metrics.on_connection(named(record(), pod(f"web{i}"), db))
        conns = flushed(receiver, t, n.TCP_CONNECTIONS)
        clients = {p.attributes[n.CLIENT_WORKLOAD]: p.value for p in conns}
        assert clients == {"web0": 2, "web1": 2, "web2": 2, "overflow": 4}  # nothing lost
        (dropped,) = receiver.latest_points(n.AGENT_SERIES_DROPPED)
        assert dropped.value == 4
        (series,) = receiver.latest_points(n.AGENT_SERIES)
        assert series.value == 4  # three edges + overflow: the cap holds
    finally:
        t.shutdown(3)


def test_pod_names_and_client_port_labels_only_when_enabled(receiver: OtlpReceiver) -> None:
    web, db = pod("web", name="web-abc"), pod("db", name="db-0")
    rec = record(client_port=51000)
    off = make(receiver)
    try:
        off.metrics.on_connection(named(rec, web, db))
        (p,) = flushed(receiver, off, n.TCP_CONNECTIONS)
        assert n.CLIENT_POD not in p.attributes and n.CLIENT_PORT not in p.attributes
    finally:
        off.shutdown(3)
    receiver.clear()
    on = make(receiver, label_pod_names=True, label_client_port=True)
    try:
        on.metrics.on_connection(named(rec, web, db))
        (p,) = flushed(receiver, on, n.TCP_CONNECTIONS)
        assert (p.attributes[n.CLIENT_POD], p.attributes[n.SERVER_POD], p.attributes[n.CLIENT_PORT]) == (
            "web-abc",
            "db-0",
            51000,
        )
    finally:
        on.shutdown(3)


def test_self_metrics_read_registered_snapshot_sources(receiver: OtlpReceiver, tel: Telemetry) -> None:
    tel.add_source(
        lambda: AgentSnapshot(packets=1200, kernel_drops=3, interfaces=4, tracker_anomalies={"bad_ack": 2})
    )
    tel.add_source(
        lambda: AgentSnapshot(packets=34, tracker_entries=17, tracker_evictions=5, identity_misses=9)
    )
    tel.force_flush(5)
    values = {
        name: receiver.latest_points(name)
        for name in (
            n.AGENT_PACKETS,
            n.AGENT_KERNEL_DROPS,
            n.AGENT_INTERFACES,
            n.AGENT_TRACKER_ENTRIES,
            n.AGENT_TRACKER_EVICTIONS,
            n.AGENT_TRACKER_ANOMALIES,
            n.AGENT_IDENTITY_MISSES,
        )
    }
    assert [p.value for p in values[n.AGENT_PACKETS]] == [1234]
    assert values[n.AGENT_PACKETS][0].monotonic is True
    assert [p.value for p in values[n.AGENT_KERNEL_DROPS]] == [3]
    assert [p.value for p in values[n.AGENT_INTERFACES]] == [4]
    assert values[n.AGENT_INTERFACES][0].monotonic is False
    assert [p.value for p in values[n.AGENT_TRACKER_ENTRIES]] == [17]
    assert [p.value for p in values[n.AGENT_TRACKER_EVICTIONS]] == [5]
    anomalies = {p.attributes["kind"]: p.value for p in values[n.AGENT_TRACKER_ANOMALIES]}
    # every kind the tracker knows is there from the start, at 0 (rate() needs a start)
    assert anomalies == {**dict.fromkeys(ANOMALY_KINDS, 0), "bad_ack": 2}
    assert [p.value for p in values[n.AGENT_IDENTITY_MISSES]] == [9]
    # the agent's resource names the node, so two agents' series never collide downstream
    assert values[n.AGENT_PACKETS][0].resource["service.instance.id"] == "node-a"


def test_a_service_edge_is_not_virtual_but_node_and_host_network_ends_are(
    receiver: OtlpReceiver, tel: Telemetry
) -> None:
    web = pod("web")
    tel.metrics.on_connection(named(record(server_ip="10.96.0.10", server_port=80), web, service("api")))
    tel.metrics.on_connection(named(record(side=Side.SERVER), host_pod("kube-proxy"), web))
    tel.metrics.on_connection(named(record(), web, Identity(IdentityKind.NODE, "node-b")))
    sg = {
        (p.attributes["client"], p.attributes["server"]): p.attributes["connection_type"]
        for p in flushed(receiver, tel, n.SG_REQUEST)
    }
    assert sg == {
        ("web", "api"): "",
        ("kube-proxy", "web"): "virtual_node",
        ("web", "node-b"): "virtual_node",
    }


def test_active_gauge_stays_exact_when_the_open_table_evicts() -> None:
    from podwire.telemetry.metrics import LabelConfig, MetricsSink

    sink = MetricsSink(LabelConfig(), max_open=2)  # bounded like the tracker's table
    web, db = pod("web"), pod("db")
    recs = [record() for _ in range(3)]

    def active() -> float:
        (metric,) = [m for m in sink.produce() if m.name == n.TCP_CONNECTIONS_ACTIVE]
        return sum(p.value for p in metric.data.data_points)  # type: ignore[union-attr]

    for rec in recs:
        sink.on_opened(opened_for(rec), web, db)
    assert active() == 2  # the oldest was evicted, as the tracker would have
    for rec in recs:
        sink.on_connection(named(rec, web, db))
    assert active() == 0  # its late record does not drive the gauge below zero


def test_one_pair_of_identities_keeps_its_ports_apart() -> None:
    """The edge of a (client, server) pair is cached: the ports (and the client port when labelled)
    still pick the series, and the same pair again counts into the same series."""
    from podwire.telemetry.metrics import LabelConfig, MetricsSink

    web, db = pod("web"), pod("db")

    def connections(sink: MetricsSink) -> dict[tuple[object, object], float]:
        (metric,) = [m for m in sink.produce() if m.name == n.TCP_CONNECTIONS]
        return {
            (p.attributes.get(n.SERVER_PORT), p.attributes.get(n.CLIENT_PORT)): p.value  # type: ignore[union-attr]
            for p in metric.data.data_points  # type: ignore[union-attr]
        }

    for client_port in (False, True):
        sink = MetricsSink(LabelConfig(client_port=client_port))
        for server_port, from_port in ((80, 5001), (443, 5001), (80, 5002), (80, 5001)):
            sink.on_connection(named(record(server_port=server_port, client_port=from_port), web, db))
        if client_port:
            assert connections(sink) == {(80, 5001): 2, (443, 5001): 1, (80, 5002): 1}
        else:
            assert connections(sink) == {(80, None): 3, (443, None): 1}
