"""TLS metrics through the real Prometheus exposition: names, labels and values."""

from __future__ import annotations

import dataclasses

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from podwire.config import Settings
from podwire.model import NamedConnection, Side, TlsInfo
from podwire.telemetry.export import Telemetry
from podwire.telemetry.tlsmetrics import TlsMetricsSink
from tests.telemetry.factory import external, pod, record

TLS12 = TlsInfo(
    server_name="api.shop.test",
    version="TLS 1.2",
    cipher="TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    certificate_not_after=1_900_000_000.0,
    certificate_sans=("api.shop.test",),
)
TLS10 = TlsInfo(
    server_name="old.shop.test", version="TLS 1.0", cipher="TLS_RSA_WITH_AES_128_CBC_SHA", deprecated=True
)
OFFER_ONLY = TlsInfo(server_name="x.test")  # ClientHello seen, no ServerHello: not a handshake


def conn(tls: TlsInfo | None, side: Side | None = Side.CLIENT, client=None, server=None) -> NamedConnection:  # type: ignore[no-untyped-def]
    rec = msgspec.structs.replace(record(side=side), tls=tls)
    return NamedConnection(rec, client or pod("frontend"), server or pod("api"))


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name.startswith(("podwire_tls", "podwire_agent_tls")):
                out[
                    (
                        s.name,
                        tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance"))),
                    )
                ] = s.value
    return out


def test_handshakes_deprecated_and_certificate_expiry_on_metrics() -> None:
    t = Telemetry(Settings(otlp="off", node_name="node-a"), {})
    try:
        sinks = t.sinks
        for c in (
            conn(TLS12),
            conn(TLS12),
            conn(TLS10),
            conn(OFFER_ONLY),
            conn(None),
            conn(TLS12, side=Side.SERVER),  # the client's node counts it, not the server's
        ):
            for sink in sinks:
                sink.on_connection(c)
        got = samples(t.metrics_text())
    finally:
        t.shutdown(2.0)
    ends = (("client_namespace", "shop"), ("client_workload", "frontend"))
    server = (("server_namespace", "shop"), ("server_workload", "api"))
    hs12 = tuple(sorted((*ends, *server, ("tls_server_name", "api.shop.test"), ("tls_version", "TLS 1.2"),
                         ("tls_cipher", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"))))  # fmt: skip
    hs10 = tuple(sorted((*ends, *server, ("tls_server_name", "old.shop.test"), ("tls_version", "TLS 1.0"),
                         ("tls_cipher", "TLS_RSA_WITH_AES_128_CBC_SHA"))))  # fmt: skip
    assert got[("podwire_tls_handshakes_total", hs12)] == 2
    assert got[("podwire_tls_handshakes_total", hs10)] == 1
    assert sum(v for (name, _), v in got.items() if name == "podwire_tls_handshakes_total") == 3
    dep = tuple(sorted((*ends, *server, ("tls_version", "TLS 1.0"))))
    assert got[("podwire_tls_deprecated_handshakes_total", dep)] == 1
    cert = tuple(sorted((*server, ("tls_server_name", "api.shop.test"))))
    assert got[("podwire_tls_certificate_not_after_seconds", cert)] == 1_900_000_000.0


def test_series_are_bounded_and_overflow_is_counted() -> None:
    sink = TlsMetricsSink(max_series=2)
    for i in range(5):
        tls = dataclasses.replace(TLS12, server_name=f"s{i}.test")
        sink.on_connection(conn(tls, client=external(f"e{i}")))
    metrics = {m.name: m for m in sink.produce()}
    points = metrics["podwire.tls.handshakes"].data.data_points
    assert len(points) == 3  # two real label sets + the overflow one
    assert sum(p.value for p in points) == 5
    assert len(metrics["podwire.tls.certificate.not_after"].data.data_points) == 2
    assert sink.dropped == 3 + 3


def test_tls_self_metrics_sum_the_sources_with_every_reason_from_the_start() -> None:
    from podwire.telemetry import names as n
    from podwire.telemetry.metrics import AgentSnapshot

    t = Telemetry(Settings(otlp="off", node_name="node-a"), {})
    try:
        t.add_source(lambda: AgentSnapshot(tls_errors={"malformed": 2, "gap": 1}))
        t.add_source(lambda: AgentSnapshot(tls_errors={"malformed": 1}, tls_probe_failures={"timeout": 4}))
        got = samples(t.metrics_text())
    finally:
        t.shutdown(2.0)
    errors = {
        dict(labels)["reason"]: v
        for (name, labels), v in got.items()
        if name == "podwire_agent_tls_errors_total"
    }
    assert errors == {**dict.fromkeys(n.TLS_ERROR_REASONS, 0.0), "malformed": 3.0, "gap": 1.0}
    probes = {
        dict(labels)["reason"]: v
        for (name, labels), v in got.items()
        if name == "podwire_agent_tls_probe_failures_total"
    }
    assert probes == {"timeout": 4.0}
