"""Connection spans: ids from ISNs, pairing across two agents, sampling, resources, attributes."""

from __future__ import annotations

import random

import pytest

from podwire.config import Settings
from podwire.model import Outcome, Side
from podwire.telemetry import names as n
from podwire.telemetry.export import Telemetry
from podwire.telemetry.spans import sampled, span_ids
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.telemetry.factory import T0, external, named, pod, record, service

CLIENT_KIND, SERVER_KIND = 3, 2  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2


def agent(rx: OtlpReceiver, node: str, protocol: str = "grpc", ratio: float = 1.0) -> Telemetry:
    return Telemetry(Settings(otlp="on", node_name=node, span_sample_ratio=ratio), rx.env(protocol, 600_000))


def flush(*agents: Telemetry) -> None:
    for a in agents:
        assert a.force_flush(5)


def test_ids_depend_on_the_two_isns_only() -> None:
    a = span_ids(0x01020304, 0xA0B0C0D0)
    assert span_ids(0x01020304, 0xA0B0C0D0).trace_id == a.trace_id  # stable
    assert a.trace_id.bit_length() <= 128 and a.client_span_id.bit_length() <= 64
    assert len({a.client_span_id, a.server_span_id}) == 2
    assert span_ids(0x01020304, 0xA0B0C0D1).trace_id != a.trace_id
    assert span_ids(0x01020305, 0xA0B0C0D0).trace_id != a.trace_id
    # a refused connection has no server ISN: ids from the client ISN, distinct from any pair
    f = span_ids(0x01020304, None)
    assert f.trace_id != a.trace_id and span_ids(0x01020304, None).trace_id == f.trace_id


def test_ids_are_the_documented_hashes_so_agents_of_any_version_pair() -> None:
    # blake2b(ISNs [+ "client" | "server"], person=b"podwire.tcp.v1"), pinned: an agent that derived
    # them otherwise would split every trace it shares with an agent of another version
    a = span_ids(0x01020304, 0xA0B0C0D0)
    assert (a.trace_id, a.client_span_id, a.server_span_id) == (
        0xB63873B807DEA4DF0A2ABF2DCB3B6B4A,
        0xFA1E19F6F11B0B04,
        0x68F1C43DD3A3DDD3,
    )
    f = span_ids(0x01020304, None)  # no server ISN: the client ISN and a tag
    assert (f.trace_id, f.client_span_id, f.server_span_id) == (
        0x7028B4263D06334F18A253C00FFBFA9F,
        0xE5E33750987A524C,
        0x4965C998EBD3611E,
    )


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_client_and_server_spans_from_two_agents_join_across_a_clusterip_dnat(
    receiver: OtlpReceiver, protocol: str
) -> None:
    """The client node sees SYN to the ClusterIP 10.96.0.10:80; the server node sees the DNATed
    SYN to the backend 10.244.2.20:8080.  Only the ISNs are shared, and they are enough."""
    node_a, node_b = agent(receiver, "node-a", protocol), agent(receiver, "node-b", protocol)
    try:
        web, api_svc = pod("web", node="node-a"), service("api")
        api = pod("api", node="node-b", name="api-5c8d-q2")
        cisn, sisn = 0x1234ABCD, 0x9876FEDC
        at_client = record(
            side=Side.CLIENT,
            server_ip="10.96.0.10",
            server_port=80,
            client_port=43210,
            client_isn=cisn,
            server_isn=sisn,
            duration=0.5,
        )
        at_server = record(
            side=Side.SERVER,
            server_ip="10.244.2.20",
            server_port=8080,
            client_port=43210,
            client_isn=cisn,
            server_isn=sisn,
            start=T0 + 0.0002,
            duration=0.4996,
        )
        node_a.spans.on_connection(named(at_client, web, api_svc))  # type: ignore[union-attr]
        node_b.spans.on_connection(named(at_server, web, api))  # type: ignore[union-attr]
        flush(node_a, node_b)
        spans = receiver.wait_for(lambda: len(receiver.spans()) == 2 and receiver.spans())
        (c,) = [s for s in spans if s.kind == CLIENT_KIND]
        (s,) = [s for s in spans if s.kind == SERVER_KIND]
        ids = span_ids(cisn, sisn)
        assert c.trace_id == s.trace_id == ids.trace_id.to_bytes(16, "big")
        assert c.span_id == ids.client_span_id.to_bytes(8, "big") and c.parent_span_id == b""
        assert s.parent_span_id == c.span_id
        assert s.span_id == ids.server_span_id.to_bytes(8, "big")
        # SYN to close, in unix ns
        assert (c.start_time_unix_nano, c.end_time_unix_nano) == (
            1_764_400_000_000_000_000,
            1_764_400_000_500_000_000,
        )
        assert s.start_time_unix_nano == 1_764_400_000_000_200_000
        # resources: the local workload, its pod and node
        assert c.resource[n.SERVICE_NAME] == "web" and c.resource["k8s.deployment.name"] == "web"
        assert c.resource[n.K8S_NODE_NAME] == "node-a" and c.resource[n.SERVICE_NAMESPACE] == "shop"
        assert s.resource[n.SERVICE_NAME] == "api" and s.resource[n.K8S_POD_NAME] == "api-5c8d-q2"
        assert s.resource[n.K8S_NODE_NAME] == "node-b" and s.resource[n.K8S_NAMESPACE_NAME] == "shop"
        # semantic-convention attributes, as each end saw them
        assert (c.attributes["server.address"], c.attributes["server.port"]) == ("10.96.0.10", 80)
        assert (s.attributes["server.address"], s.attributes["server.port"]) == ("10.244.2.20", 8080)
        assert c.attributes["client.port"] == s.attributes["client.port"] == 43210
        assert c.attributes["network.transport"] == "tcp" and c.attributes["network.type"] == "ipv4"
        assert c.attributes[n.SPAN_OUTCOME] == "closed" and c.attributes[n.SPAN_CLOSE_INITIATOR] == "client"
        assert c.attributes[n.SPAN_BYTES_C2S] > 0 and n.SPAN_HANDSHAKE_RTT in c.attributes
        # a Service's backend sends the SERVER span: no peer.service, or Tempo would draw a
        # virtual node "api" beside the real one
        assert "peer.service" not in c.attributes and "peer.service" not in s.attributes
        # names tell edges apart (bounded: workload/Service and port) and CLIENT from SERVER
        assert (c.name, s.name) == ("tcp connect shop/api:80", "tcp accept shop/api:8080")
        assert c.status_code == s.status_code == 0
    finally:
        node_a.shutdown(3)
        node_b.shutdown(3)


def test_sampling_is_deterministic_so_both_ends_keep_the_same_connections(receiver: OtlpReceiver) -> None:
    node_a, node_b = agent(receiver, "node-a", ratio=0.3), agent(receiver, "node-b", ratio=0.3)
    try:
        web, db = pod("web"), pod("db")
        rng = random.Random(7)
        pairs = [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(400)]
        for cisn, sisn in pairs:
            node_a.spans.on_connection(
                named(record(side=Side.CLIENT, client_isn=cisn, server_isn=sisn), web, db)
            )  # type: ignore[union-attr]
            node_b.spans.on_connection(
                named(record(side=Side.SERVER, client_isn=cisn, server_isn=sisn), web, db)
            )  # type: ignore[union-attr]
        flush(node_a, node_b)
        expected = {
            span_ids(c, s).trace_id.to_bytes(16, "big")
            for c, s in pairs
            if sampled(span_ids(c, s).trace_id, 0.3)
        }
        spans = receiver.wait_for(lambda: len(receiver.spans()) >= 2 * len(expected) and receiver.spans())
        client_traces = {s.trace_id for s in spans if s.kind == CLIENT_KIND}
        server_traces = {s.trace_id for s in spans if s.kind == SERVER_KIND}
        assert client_traces == server_traces == expected
        pairs = receiver.span_pairs()
        assert all(p["server"].parent_span_id == p["client"].span_id for p in pairs.values())
        assert 80 <= len(expected) <= 160  # ~30% of 400
    finally:
        node_a.shutdown(3)
        node_b.shutdown(3)


def test_failed_and_reset_connections_are_error_spans_and_refused_ones_still_pair(
    receiver: OtlpReceiver,
) -> None:
    node_a, node_b = agent(receiver, "node-a"), agent(receiver, "node-b")
    try:
        web, db = pod("web"), pod("db")
        refused_c = record(Outcome.REFUSED, Side.CLIENT, client_isn=77, duration=0.0003)
        refused_s = record(Outcome.REFUSED, Side.SERVER, client_isn=77, duration=0.0001)
        reset = record(Outcome.RESET, Side.CLIENT)
        node_a.spans.on_connection(named(refused_c, web, db))  # type: ignore[union-attr]
        node_a.spans.on_connection(named(reset, web, db))  # type: ignore[union-attr]
        node_b.spans.on_connection(named(refused_s, web, db))  # type: ignore[union-attr]
        flush(node_a, node_b)
        spans: list[ReceivedSpan] = receiver.wait_for(lambda: len(receiver.spans()) == 3 and receiver.spans())
        refused = [s for s in spans if s.attributes[n.SPAN_OUTCOME] == "refused"]
        assert len(refused) == 2 and refused[0].trace_id == refused[1].trace_id
        (rc,) = [s for s in refused if s.kind == CLIENT_KIND]
        (rs,) = [s for s in refused if s.kind == SERVER_KIND]
        assert rs.parent_span_id == rc.span_id
        assert all(s.status_code == STATUS_ERROR for s in spans)
        assert {s.status_message for s in spans} == {"connection refused", "connection reset"}
        assert n.SPAN_BYTES_C2S not in rc.attributes  # unknown bytes are left out, not zero
    finally:
        node_a.shutdown(3)
        node_b.shutdown(3)


def test_no_span_without_a_syn_or_a_close_and_pcap_records_give_both_ends(receiver: OtlpReceiver) -> None:
    t = agent(receiver, "node-a")
    try:
        web, db = pod("web"), pod("db")
        open_rec = record(Outcome.OPEN, Side.CLIENT, duration=None)
        t.spans.on_connection(named(open_rec, web, db))  # type: ignore[union-attr]
        pcap = record(Outcome.CLOSED, None)
        t.spans.on_connection(named(pcap, web, db))  # type: ignore[union-attr]
        to_internet = record(Outcome.CLOSED, None, server_ip="93.184.216.34", server_port=443)
        t.spans.on_connection(named(to_internet, web, external("example.com")))  # type: ignore[union-attr]
        flush(t)
        spans = receiver.wait_for(lambda: len(receiver.spans()) == 3 and receiver.spans())
        assert t.spans is not None and t.spans.skipped == 1  # the open one
        pcap_spans = [
            s
            for s in spans
            if s.trace_id == span_ids(pcap.client_isn or 0, pcap.server_isn).trace_id.to_bytes(16, "big")
        ]
        assert sorted(s.kind for s in pcap_spans) == [SERVER_KIND, CLIENT_KIND]
        (ext,) = [s for s in spans if s.attributes["server.port"] == 443]
        assert ext.kind == CLIENT_KIND and ext.attributes["peer.service"] == "example.com"
        assert ext.name == "tcp connect example.com:443"  # no namespace: no "/"
        assert ext.parent_span_id == b""
    finally:
        t.shutdown(3)


def test_server_span_of_an_external_client_is_a_root_naming_the_client_as_peer(
    receiver: OtlpReceiver,
) -> None:
    t = agent(receiver, "node-b")
    try:
        rec = record(side=Side.SERVER, client_ip="203.0.113.9")
        t.spans.on_connection(named(rec, external("partner-api"), pod("api")))  # type: ignore[union-attr]
        flush(t)
        (span,) = receiver.wait_for(receiver.spans)
        assert span.kind == SERVER_KIND and span.parent_span_id == b""
        assert span.attributes["peer.service"] == "partner-api"
        assert span.trace_id == span_ids(rec.client_isn or 0, rec.server_isn).trace_id.to_bytes(16, "big")
    finally:
        t.shutdown(3)


def test_socket_stats_ride_on_the_span_only_when_sampled(receiver: OtlpReceiver) -> None:
    import msgspec

    t = agent(receiver, "node-a")
    try:
        web, db = pod("web"), pod("db")
        sampled_rec = msgspec.structs.replace(
            record(Outcome.CLOSED, Side.CLIENT, server_port=7001), rtt_s=0.02, min_rtt_s=0.019, retransmits=4
        )
        plain = record(Outcome.CLOSED, Side.CLIENT, server_port=7002)
        for rec in (sampled_rec, plain):
            t.spans.on_connection(named(rec, web, db))  # type: ignore[union-attr]
        flush(t)
        spans = receiver.wait_for(lambda: len(receiver.spans()) == 2 and receiver.spans())
        by_port = {s.attributes["server.port"]: s.attributes for s in spans}
        assert by_port[7001][n.SPAN_RTT] == 0.02 and by_port[7001][n.SPAN_MIN_RTT] == 0.019
        assert by_port[7001][n.SPAN_RETRANSMITS] == 4
        assert not {n.SPAN_RTT, n.SPAN_MIN_RTT, n.SPAN_RETRANSMITS} & set(by_port[7002])
    finally:
        t.shutdown(3)


def test_a_tls_connections_spans_carry_the_handshake_and_only_what_was_visible(
    receiver: OtlpReceiver,
) -> None:
    import msgspec

    from podwire.model import TlsInfo

    t = agent(receiver, "node-a")
    try:
        v12 = TlsInfo(
            server_name="web.shop.svc", version="TLS 1.2", cipher="TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            alpn="h2", ja3="a" * 32, ja3s="b" * 32, ja4="t12d1510h2_aaaaaaaaaaaa_bbbbbbbbbbbb",
            certificate_not_after=1_900_000_000.0, certificate_subject="CN=web.shop.svc",
            certificate_issuer="O=shop CA",
        )  # fmt: skip
        v13 = TlsInfo(server_name=None, version="TLS 1.3", cipher="TLS_AES_128_GCM_SHA256", ja3s="c" * 32)
        for port, tls in ((7443, v12), (7444, v13)):
            rec = msgspec.structs.replace(record(Outcome.CLOSED, Side.CLIENT, server_port=port), tls=tls)
            t.spans.on_connection(named(rec, pod("web"), pod("db")))  # type: ignore[union-attr]
        flush(t)
        spans = receiver.wait_for(lambda: len(receiver.spans()) == 2 and receiver.spans())
        by_port = {s.attributes["server.port"]: s.attributes for s in spans}
        a = by_port[7443]
        assert (a[n.TLS_PROTOCOL_NAME], a[n.TLS_PROTOCOL_VERSION]) == ("tls", "1.2")
        assert a[n.TLS_SERVER_NAME] == "web.shop.svc" and a[n.TLS_CIPHER] == v12.cipher
        assert a[n.TLS_NEXT_PROTOCOL] == "h2"
        assert (a[n.TLS_CLIENT_JA3], a[n.TLS_SERVER_JA3S], a[n.TLS_CLIENT_JA4]) == (
            v12.ja3,
            v12.ja3s,
            v12.ja4,
        )
        assert (a[n.TLS_SERVER_SUBJECT], a[n.TLS_SERVER_ISSUER]) == ("CN=web.shop.svc", "O=shop CA")
        assert a[n.TLS_SERVER_NOT_AFTER] == "2030-03-17T17:46:40Z"
        b = by_port[7444]
        assert b[n.TLS_PROTOCOL_VERSION] == "1.3" and b[n.TLS_SERVER_JA3S] == "c" * 32
        invisible = {n.TLS_SERVER_NAME, n.TLS_NEXT_PROTOCOL, n.TLS_CLIENT_JA3, n.TLS_SERVER_NOT_AFTER}
        assert not invisible & set(b)
    finally:
        t.shutdown(3)
