"""Every metric, attribute and span name podwire emits, defined once.

The Prometheus names in the comments are a contract: dashboards, alerts and users'
queries are written against them (OTel `a.b.c` -> Prometheus `a_b_c`, plus `_total`
for counters and the unit suffix `_seconds`/`_bytes` where the name lacks it).
"""

from __future__ import annotations

from typing import Final

METER_NAME: Final = "podwire"

# --- edge instruments ------------------------------------------------------------
TCP_CONNECTIONS: Final = "podwire.tcp.connections"  # podwire_tcp_connections_total{outcome}
TCP_BYTES: Final = "podwire.tcp.bytes"  # podwire_tcp_bytes_total{direction}
TCP_CONNECTION_DURATION: Final = "podwire.tcp.connection.duration"  # ..._seconds_bucket
TCP_HANDSHAKE_DURATION: Final = "podwire.tcp.handshake.duration"  # ..._seconds_bucket
TCP_FAILURES: Final = "podwire.tcp.failures"  # podwire_tcp_failures_total{reason}
TCP_RESETS: Final = "podwire.tcp.resets"  # podwire_tcp_resets_total{sender}
TCP_CONNECTIONS_ACTIVE: Final = "podwire.tcp.connections.active"  # podwire_tcp_connections_active

# --- Tempo service-graph series (names exactly as Tempo's processor writes them) ----
SG_REQUEST: Final = "traces_service_graph_request"  # ..._total
SG_REQUEST_FAILED: Final = "traces_service_graph_request_failed"  # ..._total
SG_REQUEST_SERVER_SECONDS: Final = "traces_service_graph_request_server_seconds"
SG_REQUEST_CLIENT_SECONDS: Final = "traces_service_graph_request_client_seconds"

# --- agent self-metrics ----------------------------------------------------------
AGENT_PACKETS: Final = "podwire.agent.packets"  # podwire_agent_packets_total
AGENT_KERNEL_DROPS: Final = "podwire.agent.kernel.drops"  # podwire_agent_kernel_drops_total
AGENT_DECODE_ERRORS: Final = "podwire.agent.decode.errors"  # podwire_agent_decode_errors_total
AGENT_INTERFACES: Final = "podwire.agent.interfaces"  # podwire_agent_interfaces
AGENT_TRACKER_ENTRIES: Final = "podwire.agent.tracker.entries"  # podwire_agent_tracker_entries
AGENT_TRACKER_EVICTIONS: Final = "podwire.agent.tracker.evictions"  # ..._evictions_total
AGENT_TRACKER_ANOMALIES: Final = "podwire.agent.tracker.anomalies"  # ..._anomalies_total{kind}
AGENT_IDENTITY_MISSES: Final = "podwire.agent.identity.misses"  # ..._misses_total
AGENT_SERIES_DROPPED: Final = "podwire.agent.series.dropped"  # ..._dropped_total (cardinality cap)
AGENT_EXPORT_FAILURES: Final = "podwire.agent.export.failures"  # ..._failures_total{signal}
AGENT_EXPORT_DROPPED: Final = "podwire.agent.export.dropped"  # ..._dropped_total{signal}

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
OUTCOME: Final = "outcome"  # closed | reset | refused | timeout
DIRECTION: Final = "direction"  # client_to_server | server_to_client
REASON: Final = "reason"  # refused | timeout
SENDER: Final = "sender"  # client | server | both
CLIENT_TO_SERVER: Final = "client_to_server"
SERVER_TO_CLIENT: Final = "server_to_client"

# --- service-graph labels ----------------------------------------------------------
SG_CLIENT: Final = "client"
SG_SERVER: Final = "server"
SG_CONNECTION_TYPE: Final = "connection_type"
SG_CLIENT_NAMESPACE: Final = "client_service_namespace"
SG_SERVER_NAMESPACE: Final = "server_service_namespace"
