"""Synthetic podwire series (OpenMetrics text) built from the names.py contract, for
backfilling a real Prometheus with `promtool tsdb create-blocks-from openmetrics`.

Four edges: shop/frontend -> shop/cart:8080 (10% refused), shop/frontend ->
shop/catalog:9090 (healthy), ops/prober -> shop/cart:8080 (resets), shop/frontend -> partner-api:443
(an external, no namespace); two agents.
"""

from __future__ import annotations

from pathlib import Path

from tests.shipping.promql_names import load_contract

STEP_S = 15
EDGES = (
    # client ns, client workload, kind, server ns, server workload, kind, port, conn/s, fail ratio, resets/s
    ("shop", "frontend", "Deployment", "shop", "cart", "Deployment", "8080", 2.0, 0.1, 0.0),
    ("shop", "frontend", "Deployment", "shop", "catalog", "StatefulSet", "9090", 1.0, 0.0, 0.0),
    ("ops", "prober", "CronJob", "shop", "cart", "Deployment", "8080", 0.5, 0.0, 0.2),
    # an external has no namespace: the node graph must call it "partner-api", not "/partner-api"
    ("shop", "frontend", "Deployment", "", "partner-api", "external", "443", 0.5, 0.0, 0.0),
)
AGENTS = ("10.0.0.1:9477", "10.0.0.2:9477")
# The labels names.py's comments give these self-metrics.
AGENT_EXTRA_LABELS = {
    "podwire_agent_tracker_anomalies_total": {"kind": "out_of_window"},
    "podwire_agent_export_failures_total": {"signal": "metrics"},
    "podwire_agent_tls_errors_total": {"reason": "malformed"},
    "podwire_agent_export_dropped_total": {"signal": "traces", "reason": "queue_full"},
}


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in d.items()) + "}"


def openmetrics(start_s: int, minutes: int) -> str:
    """Every series in the contract, one sample per STEP_S for `minutes`, ending '# EOF'."""
    contract = load_contract()
    families: dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]] = {}

    def add(family: str, kind: str, sample: str, labels: dict[str, str], per_s: float) -> None:
        families.setdefault(family, (kind, []))[1].append((sample, labels, per_s))

    span_rates: dict[tuple[str, str, str, str], float] = {}
    for e in EDGES:
        cns, cwl, ckind, sns, swl, skind, port, rate, fail, resets = e
        edge = {
            "client_namespace": cns,
            "client_workload": cwl,
            "client_workload_kind": ckind,
            "server_namespace": sns,
            "server_workload": swl,
            "server_workload_kind": skind,
            "server_port": port,
        }
        c = "podwire_tcp_connections"
        add(c, "counter", c + "_total", {**edge, "outcome": "closed"}, rate * (1 - fail) - resets)
        add(c, "counter", c + "_total", {**edge, "outcome": "refused"}, rate * fail)
        add(c, "counter", c + "_total", {**edge, "outcome": "reset"}, resets)
        add(
            "podwire_tcp_failures",
            "counter",
            "podwire_tcp_failures_total",
            {**edge, "reason": "refused"},
            rate * fail,
        )
        add("podwire_tcp_resets", "counter", "podwire_tcp_resets_total", {**edge, "sender": "server"}, resets)
        for d, per in (("client_to_server", 300.0), ("server_to_client", 9000.0)):
            add(
                "podwire_tcp_bytes",
                "counter",
                "podwire_tcp_bytes_total",
                {**edge, "direction": d},
                rate * per,
            )
        add("podwire_tcp_connections_active", "gauge", "podwire_tcp_connections_active", edge, 3.0)
        # socket stats, as the names.py contract lists them
        add("podwire_tcp_min_rtt_seconds", "gauge", "podwire_tcp_min_rtt_seconds", edge, 0.0004)
        for name in ("podwire_tcp_retransmits_total", "podwire_tcp_connections_retransmitting_total"):
            add(name.removesuffix("_total"), "counter", name, {**edge, "sender": "client"}, rate * fail)
        for fam, buckets in (
            ("podwire_tcp_connection_duration_seconds", (0.01, 0.1, 1.0, 10.0)),
            ("podwire_tcp_handshake_duration_seconds", (0.0001, 0.001, 0.01)),
            ("podwire_tcp_rtt_seconds", (0.0001, 0.001, 0.01)),  # a histogram: one per sample
        ):
            for i, le in enumerate(buckets):
                share = (i + 1) / len(buckets)
                add(fam, "histogram", fam + "_bucket", {**edge, "le": str(le)}, rate * share)
            add(fam, "histogram", fam + "_bucket", {**edge, "le": "+Inf"}, rate)
            add(fam, "histogram", fam + "_sum", edge, rate * buckets[-1] / 2)
            add(fam, "histogram", fam + "_count", edge, rate)
        sg = {
            "client": cwl,
            "server": swl,
            "connection_type": "",
            "client_service_namespace": cns,
            "server_service_namespace": sns,
        }
        add("traces_service_graph_request", "counter", "traces_service_graph_request_total", sg, rate)
        add(
            "traces_service_graph_request_failed",
            "counter",
            "traces_service_graph_request_failed_total",
            sg,
            rate * fail + resets,
        )
        for fam in (
            "traces_service_graph_request_server_seconds",
            "traces_service_graph_request_client_seconds",
        ):
            for le in ("0.1", "0.4", "1.6", "+Inf"):
                add(fam, "histogram", fam + "_bucket", {**sg, "le": le}, rate)
            add(fam, "histogram", fam + "_sum", sg, rate * 0.05)
            add(fam, "histogram", fam + "_count", sg, rate)

        # span metrics: a CLIENT and a SERVER span per connection (Grafana's Service Graph table);
        # two clients of one server share its SERVER series: summed below
        for kind, service, verb in (
            ("SPAN_KIND_CLIENT", cwl, "connect"),
            ("SPAN_KIND_SERVER", swl, "accept"),
        ):
            name = f"tcp {verb} {sns + '/' if sns else ''}{swl}:{port}"
            for status, per in (
                ("STATUS_CODE_UNSET", rate * (1 - fail) - resets),
                ("STATUS_CODE_ERROR", rate * fail + resets),
            ):
                key = (service, name, kind, status)
                span_rates[key] = span_rates.get(key, 0.0) + per

    for (service, name, kind, status), per in span_rates.items():
        labels = {"service": service, "span_name": name, "span_kind": kind, "status_code": status}
        add("traces_spanmetrics_calls", "counter", "traces_spanmetrics_calls_total", labels, per)
        fam = "traces_spanmetrics_latency"
        for le in ("0.0016", "0.0032", "0.0064", "+Inf"):
            add(fam, "histogram", fam + "_bucket", {**labels, "le": le}, per)
        add(fam, "histogram", fam + "_sum", labels, per * 0.001)
        add(fam, "histogram", fam + "_count", labels, per)

    # TLS: frontend -> cart speaks TLS 1.3; prober -> cart still TLS 1.0; cart's certificate
    # expires in 10 days (the expiry alert's case), catalog's in a year.
    for e, version, cipher, sni in (
        (EDGES[0], "TLS 1.3", "TLS_AES_128_GCM_SHA256", "cart.shop.svc"),
        (EDGES[2], "TLS 1.0", "TLS_RSA_WITH_AES_128_CBC_SHA", "cart.shop.svc"),
        (EDGES[1], "TLS 1.2", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "catalog.shop.svc"),
    ):
        cns, cwl, _, sns, swl, _, _, rate, _, _ = e
        ends = {
            "client_namespace": cns,
            "client_workload": cwl,
            "server_namespace": sns,
            "server_workload": swl,
        }
        tls = {"tls_server_name": sni, "tls_version": version, "tls_cipher": cipher}
        add("podwire_tls_handshakes", "counter", "podwire_tls_handshakes_total", {**ends, **tls}, rate)
        if version == "TLS 1.0":
            add(
                "podwire_tls_deprecated_handshakes",
                "counter",
                "podwire_tls_deprecated_handshakes_total",
                {**ends, "tls_version": version},
                rate,
            )
        days = 10 if swl == "cart" else 365
        add(
            "podwire_tls_certificate_not_after_seconds",
            "gauge",
            "podwire_tls_certificate_not_after_seconds",
            {"server_namespace": sns, "server_workload": swl, "tls_server_name": sni},
            start_s + days * 86400.0,
        )

    for name in sorted(contract.series):
        if not name.startswith("podwire_agent_"):
            continue
        family = name.removesuffix("_total")
        kind = "counter" if name.endswith("_total") else "gauge"
        for i, inst in enumerate(AGENTS):
            labels = {"job": "podwire", "instance": inst, **AGENT_EXTRA_LABELS.get(name, {})}
            # agent 2 drops packets in the kernel; every other counter ticks on both
            per_s = 0.5 if name != "podwire_agent_kernel_drops_total" else (0.0 if i == 0 else 2.0)
            add(family, kind, name, labels, per_s if kind == "counter" else 100.0)
    for inst in AGENTS:
        add("up", "gauge", "up", {"job": "podwire", "instance": inst}, 1.0)

    missing = contract.series - {s for _, (_, rows) in families.items() for s, _, _ in rows}
    assert not missing, f"no synthetic data for {sorted(missing)}"

    lines: list[str] = []
    steps = minutes * 60 // STEP_S
    for family, (kind, rows) in families.items():
        lines.append(f"# TYPE {family} {kind}")
        for sample, labels, per_s in rows:
            for k in range(steps + 1):
                t = start_s + k * STEP_S
                value = per_s * k * STEP_S if kind in ("counter", "histogram") else per_s
                lines.append(f"{sample}{_labels(labels)} {value:g} {t}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def write(path: Path, start_s: int, minutes: int) -> Path:
    path.write_text(openmetrics(start_s, minutes))
    return path
