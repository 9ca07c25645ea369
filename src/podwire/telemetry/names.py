"""Every metric, attribute and span name podwire emits, defined once.

The Prometheus names in the comments are a contract: dashboards, alerts and users'
queries are written against them.  They are what opentelemetry-exporter-prometheus (our
/metrics) and the collector's prometheus exporter really produce, checked by
tests/telemetry/test_export.py against Debian's Prometheus: OTel `a.b.c` -> `a_b_c`; the unit
is appended when the name lacks it (s -> _seconds, By -> _bytes, {annotations} -> nothing);
counters get `_total`; histograms `_bucket`/`_sum`/`_count`; up-down counters are gauges.
Attribute keys: dots become underscores (client.workload -> client_workload).
"""

from __future__ import annotations

from typing import Final

METER_NAME: Final = "podwire"

# --- edge instruments ------------------------------------------------------------
TCP_CONNECTIONS: Final = "podwire.tcp.connections"  # podwire_tcp_connections_total{outcome}
TCP_BYTES: Final = "podwire.tcp.bytes"  # podwire_tcp_bytes_total{direction}
TCP_CONNECTION_DURATION: Final = "podwire.tcp.connection.duration"  # podwire_tcp_connection_duration_seconds
TCP_HANDSHAKE_DURATION: Final = "podwire.tcp.handshake.duration"  # podwire_tcp_handshake_duration_seconds
TCP_FAILURES: Final = "podwire.tcp.failures"  # podwire_tcp_failures_total{reason}
TCP_RESETS: Final = "podwire.tcp.resets"  # podwire_tcp_resets_total{sender}
TCP_CONNECTIONS_ACTIVE: Final = "podwire.tcp.connections.active"  # podwire_tcp_connections_active (gauge)
# from socket stats (sock_diag), per edge:
# podwire_tcp_rtt_seconds (histogram): smoothed RTT, one observation per connection per sample
TCP_RTT: Final = "podwire.tcp.rtt"
TCP_MIN_RTT: Final = "podwire.tcp.min_rtt"  # podwire_tcp_min_rtt_seconds (gauge): lowest seen on the edge
TCP_RETRANSMITS: Final = "podwire.tcp.retransmits"  # podwire_tcp_retransmits_total: segments retransmitted
# podwire_tcp_connections_retransmitting_total: connections that retransmitted at least once
TCP_CONNECTIONS_RETRANSMITTING: Final = "podwire.tcp.connections.retransmitting"

# --- TLS instruments (from clear-text handshakes) -------------------------------------
# Edge labels client_workload, client_namespace, server_workload, server_namespace (no kinds, no port), plus:
# podwire_tls_handshakes_total{tls_server_name,tls_version,tls_cipher}
TLS_HANDSHAKES: Final = "podwire.tls.handshakes"
# podwire_tls_deprecated_handshakes_total{tls_version}: SSL 3.0, TLS 1.0, TLS 1.1 chosen
TLS_DEPRECATED_HANDSHAKES: Final = "podwire.tls.deprecated.handshakes"
# podwire_tls_certificate_not_after_seconds{tls_server_name}: unix s; server_workload, server_namespace
TLS_CERTIFICATE_NOT_AFTER: Final = "podwire.tls.certificate.not_after"
# TLS metric attributes (Prometheus: tls_server_name, tls_version, tls_cipher)
TLS_ATTR_SERVER_NAME: Final = "tls.server_name"  # SNI; for the certificate gauge the SNI, else its first SAN
TLS_ATTR_VERSION: Final = "tls.version"  # "TLS 1.2", as Wireshark writes it
TLS_ATTR_CIPHER: Final = "tls.cipher"  # IANA name
TLS_NONE: Final = ""  # no SNI / not visible

# --- Tempo service-graph series (names exactly as Tempo's processor writes them) ----
SG_REQUEST: Final = "traces_service_graph_request"  # traces_service_graph_request_total
SG_REQUEST_FAILED: Final = "traces_service_graph_request_failed"  # traces_service_graph_request_failed_total
SG_REQUEST_SERVER_SECONDS: Final = "traces_service_graph_request_server_seconds"  # histogram, unchanged
SG_REQUEST_CLIENT_SECONDS: Final = "traces_service_graph_request_client_seconds"  # histogram, unchanged

# --- Tempo span-metrics series, read by Grafana's Service Graph table (names and labels exactly as
# Tempo's span-metrics processor writes them; Grafana's Tempo data source queries these) ------------
# traces_spanmetrics_calls_total{service,span_name,span_kind,status_code}
SM_CALLS: Final = "traces_spanmetrics_calls"
# traces_spanmetrics_latency_bucket: histogram in seconds with no unit suffix (UNIT_NONE), like Tempo's
SM_LATENCY: Final = "traces_spanmetrics_latency"

# --- agent self-metrics ----------------------------------------------------------
AGENT_PACKETS: Final = "podwire.agent.packets"  # podwire_agent_packets_total
AGENT_KERNEL_DROPS: Final = "podwire.agent.kernel.drops"  # podwire_agent_kernel_drops_total
AGENT_DECODE_ERRORS: Final = "podwire.agent.decode.errors"  # podwire_agent_decode_errors_total
AGENT_INTERFACES: Final = "podwire.agent.interfaces"  # podwire_agent_interfaces
# podwire_agent_interface_removals_total{reason}: pod interfaces no longer captured, and why
AGENT_INTERFACE_REMOVALS: Final = "podwire.agent.interface.removals"
AGENT_TRACKER_ENTRIES: Final = "podwire.agent.tracker.entries"  # podwire_agent_tracker_entries
AGENT_TRACKER_EVICTIONS: Final = "podwire.agent.tracker.evictions"  # podwire_agent_tracker_evictions_total
# podwire_agent_tracker_anomalies_total{kind}
AGENT_TRACKER_ANOMALIES: Final = "podwire.agent.tracker.anomalies"
AGENT_IDENTITY_MISSES: Final = "podwire.agent.identity.misses"  # podwire_agent_identity_misses_total
# podwire_agent_service_backends_total{result}: found | not_found | failed | unavailable
AGENT_SERVICE_BACKENDS: Final = "podwire.agent.service.backends"
AGENT_SERIES: Final = "podwire.agent.series"  # podwire_agent_series (edge label sets held)
AGENT_SERIES_DROPPED: Final = "podwire.agent.series.dropped"  # podwire_agent_series_dropped_total (cap hit)
AGENT_EXPORT_FAILURES: Final = "podwire.agent.export.failures"  # podwire_agent_export_failures_total{signal}
# podwire_agent_export_dropped_total{signal,reason}: spans dropped (queue full) or lost (export failed)
AGENT_EXPORT_DROPPED: Final = "podwire.agent.export.dropped"
# socket stats: podwire_agent_sockstats_dumps_total, ..._dump_duration_seconds_total (wall time),
# ..._sockets (seen in the last round), ..._pods_skipped_total{reason}, ..._dropped_total
# podwire_agent_tls_errors_total{reason}: handshakes not parsed or given up
AGENT_TLS_ERRORS: Final = "podwire.agent.tls.errors"
# podwire_agent_tls_probe_failures_total{reason}: certificate probes that failed (PODWIRE_TLS_PROBE)
AGENT_TLS_PROBE_FAILURES: Final = "podwire.agent.tls.probe.failures"
TLS_ERROR_REASONS: Final = (
    "malformed",
    "truncated",
    "oversize",
    "certificate",
    "gap",
    "incomplete",
    "late",
    "not_handshake",
    "evicted",
)
AGENT_SOCKSTATS_DUMPS: Final = "podwire.agent.sockstats.dumps"
AGENT_SOCKSTATS_DUMP_DURATION: Final = "podwire.agent.sockstats.dump.duration"
AGENT_SOCKSTATS_SOCKETS: Final = "podwire.agent.sockstats.sockets"
AGENT_SOCKSTATS_SKIPPED: Final = "podwire.agent.sockstats.pods.skipped"
AGENT_SOCKSTATS_DROPPED: Final = "podwire.agent.sockstats.dropped"  # sockets over the bound, rounds not fed
AGENT_VIEWS_CONNECTIONS: Final = "podwire.agent.views.connections"  # podwire_agent_views_connections (gauge)
# podwire_agent_views_evictions_total{reason=age|size|edges}
AGENT_VIEWS_EVICTIONS: Final = "podwire.agent.views.evictions"
# podwire_agent_http_connections_closed_total{reason}: closed or refused by the listener
AGENT_HTTP_CLOSED: Final = "podwire.agent.http.connections.closed"
# DNS answers not used for naming: podwire_agent_dns_rejected_total{reason=untrusted|unsolicited}
AGENT_DNS_REJECTED: Final = "podwire.agent.dns.rejected"
DNS_REJECT_REASONS: Final = ("untrusted", "unsolicited")
VIEWS_EVICTION_REASONS: Final = ("age", "size", "edges")
HTTP_CLOSE_REASONS: Final = ("idlest_at_cap", "refused_at_cap", "timeout", "bad_request", "accept_error")

# --- edge attributes (Prometheus: dots become underscores) ---------------------------
CLIENT_WORKLOAD: Final = "client.workload"
CLIENT_WORKLOAD_KIND: Final = "client.workload.kind"
CLIENT_NAMESPACE: Final = "client.namespace"
CLIENT_POD: Final = "client.pod"  # off by default (cardinality)
CLIENT_PORT: Final = "client.port"  # off by default (cardinality)
SERVER_WORKLOAD: Final = "server.workload"
SERVER_WORKLOAD_KIND: Final = "server.workload.kind"
SERVER_NAMESPACE: Final = "server.namespace"
SERVER_POD: Final = "server.pod"  # off by default (cardinality)
SERVER_PORT: Final = "server.port"
SERVER_SERVICE: Final = "server.service"  # the Service a backend was reached through (absent if none)
OUTCOME: Final = "outcome"  # closed | reset | refused | timeout
DIRECTION: Final = "direction"  # client_to_server | server_to_client
REASON: Final = "reason"  # refused | timeout (failures); deleted | not_veth | ... (interface removals)
SENDER: Final = "sender"  # client | server | both
CLIENT_SENDER: Final = "client"  # retransmits{sender}: which end retransmitted
SERVER_SENDER: Final = "server"
CLIENT_TO_SERVER: Final = "client_to_server"
SERVER_TO_CLIENT: Final = "server_to_client"

# --- service-graph labels ----------------------------------------------------------
SG_CLIENT: Final = "client"
SG_SERVER: Final = "server"
SG_CONNECTION_TYPE: Final = "connection_type"
SG_CLIENT_NAMESPACE: Final = "client_service_namespace"
SG_SERVER_NAMESPACE: Final = "server_service_namespace"

# --- span-metrics labels and their values (Tempo's) ---------------------------------------
SM_SERVICE: Final = "service"
SM_SPAN_NAME: Final = "span_name"
SM_SPAN_KIND: Final = "span_kind"
SM_STATUS_CODE: Final = "status_code"
SM_KIND_CLIENT: Final = "SPAN_KIND_CLIENT"
SM_KIND_SERVER: Final = "SPAN_KIND_SERVER"
SM_STATUS_UNSET: Final = "STATUS_CODE_UNSET"
SM_STATUS_ERROR: Final = "STATUS_CODE_ERROR"

# --- values of edge attributes -----------------------------------------------------
OVERFLOW: Final = "overflow"  # every label of the edge that collects connections past max_series
UNKNOWN: Final = "unknown"  # resets whose sender is not known
SIGNAL: Final = "signal"  # metrics | traces (export self-metrics)
KIND: Final = "kind"  # tracker anomaly kind
RESULT: Final = "result"  # service-backend lookups
SIGNAL_METRICS: Final = "metrics"
SIGNAL_TRACES: Final = "traces"
DROP_QUEUE_FULL: Final = "queue_full"  # export.dropped{reason}
DROP_EXPORT_FAILED: Final = "export_failed"
VIRTUAL_NODE: Final = "virtual_node"  # Tempo's connection_type for an edge with an uninstrumented end

# --- units (UCUM, as OTel wants; the Prometheus exporters turn s -> _seconds, By -> _bytes and
# drop {annotations}) ------------------------------------------------------------------
UNIT_SECONDS: Final = "s"
UNIT_NONE: Final = ""  # for a name that must stay as Tempo writes it (traces_spanmetrics_latency: seconds)
UNIT_BYTES: Final = "By"
UNIT_CONNECTIONS: Final = "{connection}"
UNIT_REQUESTS: Final = "{request}"
UNIT_CALLS: Final = "{call}"
UNIT_PACKETS: Final = "{packet}"
UNIT_ERRORS: Final = "{error}"
UNIT_INTERFACES: Final = "{interface}"
UNIT_ENTRIES: Final = "{entry}"
UNIT_EVENTS: Final = "{event}"
UNIT_SERIES: Final = "{series}"
UNIT_ITEMS: Final = "{item}"  # spans or metric exports
UNIT_SEGMENTS: Final = "{segment}"
UNIT_SOCKETS: Final = "{socket}"
UNIT_PODS: Final = "{pod}"
UNIT_DUMPS: Final = "{dump}"

# --- histogram buckets (upper bounds, seconds) --------------------------------------
# Connection durations (podwire_tcp_connection_duration_seconds, both service-graph histograms and
# the span-metrics latency): a health check lasts 100 us on one node, a database pool's connection
# hours.  Tempo's own rule, prometheus.ExponentialBuckets(start, 2, count), started 1000x below
# Tempo's default (0.1 s, which put every millisecond connection in the first bucket):
# ExponentialBuckets(0.0001, 2, 28) = 100 us .. 3.7 h.  Each bucket spans a factor of 2, so a
# histogram_quantile() is within 2x of the true value.  PODWIRE_DURATION_BUCKETS overrides them.
DURATION_BUCKETS: Final = tuple(round(0.0001 * 2**k, 10) for k in range(28))
# A handshake on one node takes tens of microseconds; SYN retransmits add 1 s, 3 s.
HANDSHAKE_DURATION_BUCKETS: Final = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# Smoothed RTT: tens of microseconds on a node, milliseconds across zones, a second when lossy.
RTT_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0,
)  # fmt: skip

# --- spans ---------------------------------------------------------------------------
TRACER_NAME: Final = "podwire"
# Span names: "tcp connect <ns>/<server>:<port>" (CLIENT), "tcp accept <ns>/<server>:<port>" (SERVER);
# bounded like the edges (spans.py explains why the two kinds differ).
SPAN_NAME_PREFIX: Final = "tcp"
SPAN_VERB_CLIENT: Final = "connect"
SPAN_VERB_SERVER: Final = "accept"
# semantic-convention span attributes
CLIENT_ADDRESS: Final = "client.address"
SERVER_ADDRESS: Final = "server.address"
NETWORK_TRANSPORT: Final = "network.transport"
NETWORK_TYPE: Final = "network.type"
PEER_SERVICE: Final = "peer.service"
# podwire's own span attributes
SPAN_OUTCOME: Final = "podwire.outcome"
SPAN_CLOSE_INITIATOR: Final = "podwire.close_initiator"
SPAN_BYTES_C2S: Final = "podwire.bytes.client_to_server"
SPAN_BYTES_S2C: Final = "podwire.bytes.server_to_client"
SPAN_HANDSHAKE_RTT: Final = "podwire.handshake.rtt"  # seconds
SPAN_RTT: Final = "podwire.rtt"  # seconds, smoothed, at the last socket-stats sample
SPAN_MIN_RTT: Final = "podwire.min_rtt"  # seconds
SPAN_RETRANSMITS: Final = "podwire.retransmits"  # segments
SPAN_STARTED_BEFORE_CAPTURE: Final = "podwire.started_before_capture"
SPAN_CLIENT_GUESSED: Final = "podwire.client_guessed"
SPAN_PEER_WORKLOAD: Final = "podwire.peer.workload"
SPAN_PEER_KIND: Final = "podwire.peer.kind"  # pod | service | node | external
# TLS span attributes (semantic conventions `tls.*`; JA4 has none, so podwire's own)
TLS_SERVER_NAME: Final = "tls.client.server_name"
TLS_PROTOCOL_NAME: Final = "tls.protocol.name"  # "tls" | "ssl"
TLS_PROTOCOL_VERSION: Final = "tls.protocol.version"  # "1.2", "1.3", "3.0" (semantic conventions)
TLS_CIPHER: Final = "tls.cipher"  # IANA name
TLS_NEXT_PROTOCOL: Final = "tls.next_protocol"  # ALPN the server chose
TLS_CLIENT_JA3: Final = "tls.client.ja3"
TLS_SERVER_JA3S: Final = "tls.server.ja3s"
TLS_CLIENT_JA4: Final = "podwire.tls.client.ja4"
TLS_SERVER_NOT_AFTER: Final = "tls.server.not_after"  # RFC 3339 UTC
TLS_SERVER_SUBJECT: Final = "tls.server.subject"
TLS_SERVER_ISSUER: Final = "tls.server.issuer"
# resource attributes (semantic conventions)
SERVICE_NAME: Final = "service.name"
SERVICE_NAMESPACE: Final = "service.namespace"
K8S_NAMESPACE_NAME: Final = "k8s.namespace.name"
K8S_POD_NAME: Final = "k8s.pod.name"
K8S_NODE_NAME: Final = "k8s.node.name"
# owner kind -> resource attribute naming the workload
K8S_WORKLOAD_ATTRIBUTE: Final = {
    "Deployment": "k8s.deployment.name",
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "ReplicaSet": "k8s.replicaset.name",
    "Job": "k8s.job.name",
    "CronJob": "k8s.cronjob.name",
}
