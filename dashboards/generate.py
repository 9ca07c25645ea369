#!/usr/bin/env python3
"""Generate podwire's Grafana dashboards (dashboards/*.json) and their copies inside the
Helm chart (helm/podwire/dashboards/, rendered as ConfigMaps for Grafana's sidecar); also
copy alerts/podwire-rules.yaml and the gateway collector configs into helm/podwire/files/
(a chart can only read files inside itself).

    python3 dashboards/generate.py          # write
    python3 dashboards/generate.py --check  # exit 1 if any file is stale

Every query uses only the Prometheus names in src/podwire/telemetry/names.py
(tests/shipping/test_dashboards.py checks each expression with a PromQL parser and runs
them against a real Prometheus). Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIRS = (ROOT / "dashboards", ROOT / "helm" / "podwire" / "dashboards")

SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
EDGE = "client_namespace, client_workload, server_namespace, server_workload"

Json = dict[str, Any]


# --- building blocks ---------------------------------------------------------------------------


def target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, table: bool = False
) -> Json:
    t: Json = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update(instant=True, range=False)
    else:
        t.update(range=True)
    if table:
        t["format"] = "table"
    return t


def timeseries(title: str, targets: list[Json], unit: str, *, stack: bool = False, desc: str = "") -> Json:
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10 if stack else 0,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                    "spanNulls": False,
                    "showPoints": "never",
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, expr: str, unit: str, *, desc: str = "", thresholds: list[Json] | None = None) -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {
                    "mode": "absolute",
                    "steps": thresholds or [{"color": "green", "value": None}],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(panels: list[Json]) -> list[Json]:
    """Assign ids and grid positions: rows take a full line; others flow in their `w`."""
    x = y = 0
    line_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w = p.pop("_w", 24 if p["type"] == "row" else 12)
        h = p.pop("_h", 1 if p["type"] == "row" else 8)
        if p["type"] == "row" or x + w > 24:
            y += line_h
            x = 0
            line_h = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            y += h
            x = 0
            line_h = 0
    return panels


def sized(panel: Json, w: int, h: int = 8) -> Json:
    panel["_w"], panel["_h"] = w, h
    return panel


def datasource_var() -> Json:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def query_var(name: str, label: str, query: str, regex: str = "", *, multi: bool = True) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {
            "query": query,
            "refId": f"{name}-query",
            "qryType": 3 if query.startswith("query_result") else 1,
        },
        "definition": query,
        "regex": regex,
        "refresh": 2,  # on time range change: workloads come and go
        "sort": 1,
        "includeAll": multi,
        "allValue": ".*",
        "multi": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
        "options": [],
        "hide": 0,
    }


def namespace_var() -> Json:
    """Namespaces on either end of a connection (a client-only namespace counts too)."""
    either = " or ".join(
        f'label_replace(podwire_tcp_connections_total, "ns", "$1", "{side}_namespace", "(.+)")'
        for side in ("client", "server")
    )
    return query_var(
        "namespace", "Namespace", f"query_result(count by (ns) ({either}))", regex='/ns="([^"]+)"/'
    )


def dashboard(uid: str, title: str, description: str, panels: list[Json], variables: list[Json]) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["podwire"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "tags": ["podwire"],
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
                "title": "podwire",
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": [datasource_var(), *variables]},
        "panels": layout(panels),
    }


# --- 1. service map ----------------------------------------------------------------------------


def _edge_ids(inner: str) -> str:
    """Add source, target and id labels (namespace/workload) for Grafana's node graph.

    An end without a namespace (an external, a node) is its bare name: label_join would write
    "/partner-api", so the leading "/" is cut."""
    joined = (
        "label_join(label_join("
        f"{inner}, "
        '"source", "/", "client_namespace", "client_workload"), '
        '"target", "/", "server_namespace", "server_workload")'
    )
    trimmed = (
        f'label_replace(label_replace({joined}, "source", "$1", "source", "/(.*)"), '
        '"target", "$1", "target", "/(.*)")'
    )
    return f'label_join({trimmed}, "id", " > ", "source", "target")'


def _ns_either(metric: str, extra: str = "") -> str:
    """Series of `metric` where either end is in the selected namespaces."""
    sep = ", " if extra else ""
    return (
        f'sum by ({EDGE}) (rate({metric}{{client_namespace=~"$namespace"{sep}{extra}}}[{RATE}])) '
        f'or sum by ({EDGE}) (rate({metric}{{server_namespace=~"$namespace"{sep}{extra}}}[{RATE}]))'
    )


def service_map() -> Json:
    conns = _ns_either("podwire_tcp_connections_total")
    bytes_ = _ns_either("podwire_tcp_bytes_total")
    # Failed like the service graph (traces_service_graph_request_failed_total): refused, timed
    # out or reset, over the connections that ended (still-open ones are no request yet).
    ended = _ns_either("podwire_tcp_connections_total", 'outcome!="open"')
    fails = _ns_either("podwire_tcp_connections_total", 'outcome=~"refused|timeout|reset"')
    ratio = f"(({fails}) or ({ended}) * 0) / ({ended})"
    node_graph = {
        "type": "nodeGraph",
        "title": "Service map (workloads, rates at the end of the time range)",
        "description": (
            "Edges: connections/s (main), bytes/s both ways (secondary) and the failed ratio "
            "(details: refused, timed out or reset, as the service graph counts them). Rates over "
            "$__rate_interval at the end of the time range. Nodes are the workloads (an external "
            "or a node by its name); a node's stats sum its incoming edges."
        ),
        "datasource": DS,
        "targets": [
            target(_edge_ids(f"({conns})"), ref="A", instant=True, table=True),
            target(_edge_ids(f"({bytes_})"), ref="B", instant=True, table=True),
            target(_edge_ids(ratio), ref="C", instant=True, table=True),
        ],
        # One frame with id/source/target/mainstat/secondarystat: Grafana's node graph takes
        # a frame with a `source` field as edges and derives the nodes from it.
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #A": "mainstat",
                        "Value #B": "secondarystat",
                        "Value #C": "detail__failure_ratio",
                    },
                    "indexByName": {},
                },
            },
        ],
        "fieldConfig": {
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "mainstat"},
                    "properties": [{"id": "unit", "value": "conn/s"}],
                },
                {
                    "matcher": {"id": "byName", "options": "secondarystat"},
                    "properties": [{"id": "unit", "value": "B/s"}],
                },
                {
                    "matcher": {"id": "byName", "options": "detail__failure_ratio"},
                    "properties": [{"id": "displayName", "value": "failed ratio (refused, timeout, reset)"}],
                },
            ],
        },
        "options": {"nodes": {}, "edges": {"mainStatUnit": "conn/s", "secondaryStatUnit": "B/s"}},
    }
    edges_table = {
        "type": "table",
        "title": "Edges",
        "description": "One row per client workload -> server workload.",
        "datasource": DS,
        "targets": [
            target(f"({conns})", ref="A", instant=True, table=True),
            target(f"({bytes_})", ref="B", instant=True, table=True),
            target(ratio, ref="C", instant=True, table=True),
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #A": "connections/s",
                        "Value #B": "bytes/s",
                        "Value #C": "failed ratio",
                    },
                    "indexByName": {},
                },
            },
        ],
        "fieldConfig": {
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "bytes/s"},
                    "properties": [{"id": "unit", "value": "Bps"}],
                },
                {
                    "matcher": {"id": "byName", "options": "failed ratio"},
                    "properties": [{"id": "unit", "value": "percentunit"}],
                },
            ],
        },
        "options": {"showHeader": True, "sortBy": [{"displayName": "connections/s", "desc": True}]},
    }

    def sg_rate(metric: str) -> str:
        # either end in the selected namespaces
        return " or ".join(
            f'sum by (client, server) (rate({metric}{{{side}_service_namespace=~"$namespace"}}[{RATE}]))'
            for side in ("client", "server")
        )

    sg_requests = sg_rate("traces_service_graph_request_total")
    sg_failed = sg_rate("traces_service_graph_request_failed_total")
    sg_p90 = (
        "histogram_quantile(0.9, sum by (client, server, le) ("
        f'rate(traces_service_graph_request_server_seconds_bucket{{server_service_namespace=~"$namespace"}}[{RATE}])))'
    )
    # Grafana's Service Graph table (span metrics of SERVER spans, one row per server and port)
    server_sel = 'span_kind="SPAN_KIND_SERVER", span_name=~"tcp accept ($namespace)/.*"'
    sm_calls = f"sum by (span_name) (rate(traces_spanmetrics_calls_total{{{server_sel}}}[{RATE}]))"
    sm_errors = (
        "sum by (span_name) (rate(traces_spanmetrics_calls_total"
        f'{{{server_sel}, status_code="STATUS_CODE_ERROR"}}[{RATE}]))'
    )
    sm_p90 = (
        "histogram_quantile(0.9, sum by (span_name, le) "
        f"(rate(traces_spanmetrics_latency_bucket{{{server_sel}}}[{RATE}])))"
    )
    servers_table = {
        "type": "table",
        "title": "Servers (span metrics, as Grafana's Service Graph table)",
        "description": (
            "One row per server workload and port (SERVER span name): connections/s, the failed "
            "ratio (refused, timed out, reset) and the p90 connection duration, from the "
            "traces_spanmetrics_* series podwire counts in the agent."
        ),
        "datasource": DS,
        "targets": [
            target(sm_calls, ref="A", instant=True, table=True),
            target(f"(({sm_errors}) or ({sm_calls}) * 0) / ({sm_calls})", ref="B", instant=True, table=True),
            target(sm_p90, ref="C", instant=True, table=True),
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #A": "connections/s",
                        "Value #B": "failed ratio",
                        "Value #C": "p90",
                    },
                    "indexByName": {},
                },
            },
        ],
        "fieldConfig": {
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "failed ratio"},
                    "properties": [{"id": "unit", "value": "percentunit"}],
                },
                {"matcher": {"id": "byName", "options": "p90"}, "properties": [{"id": "unit", "value": "s"}]},
            ],
        },
        "options": {"showHeader": True, "sortBy": [{"displayName": "connections/s", "desc": True}]},
    }
    panels = [
        sized(node_graph, 24, 16),
        sized(edges_table, 24, 10),
        sized(servers_table, 24, 8),
        row("Tempo service-graph series (what Grafana's Tempo data source draws)"),
        sized(
            timeseries(
                "Requests/s by edge (traces_service_graph_request_total)",
                [target(sg_requests, "{{client}} > {{server}}")],
                "reqps",
                desc=(
                    "podwire writes Tempo's service-graph series itself (one TCP connection = one request), "
                    "so a Tempo data source whose serviceMap points at this Prometheus draws the same map."
                ),
            ),
            8,
        ),
        sized(
            timeseries("Failed requests/s by edge", [target(sg_failed, "{{client}} > {{server}}")], "reqps"),
            8,
        ),
        sized(
            timeseries(
                "p90 connection duration (server side)", [target(sg_p90, "{{client}} > {{server}}")], "s"
            ),
            8,
        ),
    ]
    ns = namespace_var()
    return dashboard(
        "podwire-service-map",
        "podwire / Service map",
        "Workload-to-workload TCP traffic seen by podwire: node graph, edge table and "
        "Tempo service-graph series.",
        panels,
        [ns],
    )


# --- 2. workload traffic -----------------------------------------------------------------------


def _side(role: str) -> tuple[str, str, str]:
    """(selector, peer grouping, peer legend) for the selected workload as `role`."""
    peer = "client" if role == "server" else "server"
    sel = f'{role}_namespace=~"$namespace", {role}_workload=~"$workload"'
    by = f"{peer}_namespace, {peer}_workload" + (", server_port" if peer == "server" else "")
    legend = f"{{{{{peer}_namespace}}}}/{{{{{peer}_workload}}}}" + (
        ":{{server_port}}" if peer == "server" else ""
    )
    return sel, by, legend


def _quantiles(metric: str, sel: str) -> list[Json]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
            f"p{int(q * 100)}",
            ref=ref,
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def _direction_panels(role: str) -> list[Json]:
    sel, by, legend = _side(role)
    peers = "clients" if role == "server" else "servers"
    return [
        row(f"As {role}: connections {'from its ' if role == 'server' else 'to its '}{peers}"),
        sized(
            timeseries(
                f"Connections/s by {peers[:-1]} and outcome",
                [
                    target(
                        f"sum by ({by}, outcome) (rate(podwire_tcp_connections_total{{{sel}}}[{RATE}]))",
                        f"{legend} {{{{outcome}}}}",
                    )
                ],
                "cps",
                stack=True,
            ),
            12,
        ),
        sized(
            timeseries(
                "Bytes/s each way",
                [
                    target(
                        f"sum by (direction) (rate(podwire_tcp_bytes_total{{{sel}}}[{RATE}]))",
                        "{{direction}}",
                    )
                ],
                "Bps",
                desc="client_to_server and server_to_client, from TCP sequence numbers at connection close.",
            ),
            12,
        ),
        sized(
            timeseries(
                "Connection duration percentiles",
                _quantiles("podwire_tcp_connection_duration_seconds", sel),
                "s",
            ),
            8,
        ),
        sized(
            timeseries(
                "Handshake (SYN to ACK) percentiles",
                _quantiles("podwire_tcp_handshake_duration_seconds", sel),
                "s",
            ),
            8,
        ),
        sized(
            timeseries(
                "Active connections",
                [target(f"sum by ({by}) (podwire_tcp_connections_active{{{sel}}})", legend)],
                "short",
                stack=True,
            ),
            8,
        ),
        sized(
            timeseries(
                "Failed attempts/s by reason",
                [
                    target(
                        f"sum by ({by}, reason) (rate(podwire_tcp_failures_total{{{sel}}}[{RATE}]))",
                        f"{legend} {{{{reason}}}}",
                    )
                ],
                "cps",
                stack=True,
                desc="refused: RST answered the SYN; timeout: SYN retransmits went unanswered.",
            ),
            12,
        ),
        sized(
            timeseries(
                "Resets/s by sender",
                [
                    target(
                        f"sum by ({by}, sender) (rate(podwire_tcp_resets_total{{{sel}}}[{RATE}]))",
                        f"{legend} sent by {{{{sender}}}}",
                    )
                ],
                "cps",
                stack=True,
            ),
            12,
        ),
    ]


def workload_traffic() -> Json:
    in_sel, _, _ = _side("server")
    out_sel, _, _ = _side("client")
    header = [
        sized(
            stat(
                "Inbound connections/s",
                f"sum(rate(podwire_tcp_connections_total{{{in_sel}}}[{RATE}]))",
                "cps",
            ),
            6,
            4,
        ),
        sized(
            stat(
                "Outbound connections/s",
                f"sum(rate(podwire_tcp_connections_total{{{out_sel}}}[{RATE}]))",
                "cps",
            ),
            6,
            4,
        ),
        sized(
            stat(
                "Inbound failed ratio",
                f"sum(rate(podwire_tcp_failures_total{{{in_sel}}}[{RATE}])) "
                f"/ sum(rate(podwire_tcp_connections_total{{{in_sel}}}[{RATE}]))",
                "percentunit",
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 0.01},
                    {"color": "red", "value": 0.05},
                ],
            ),
            6,
            4,
        ),
        sized(
            stat(
                "Outbound failed ratio",
                f"sum(rate(podwire_tcp_failures_total{{{out_sel}}}[{RATE}])) "
                f"/ sum(rate(podwire_tcp_connections_total{{{out_sel}}}[{RATE}]))",
                "percentunit",
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 0.01},
                    {"color": "red", "value": 0.05},
                ],
            ),
            6,
            4,
        ),
    ]
    ns = namespace_var()
    either = " or ".join(
        f'label_replace(podwire_tcp_connections_total{{{side}_namespace=~"$namespace"}}, '
        f'"wl", "$1", "{side}_workload", "(.+)")'
        for side in ("client", "server")
    )
    wl = query_var("workload", "Workload", f"query_result(count by (wl) ({either}))", regex='/wl="([^"]+)"/')
    return dashboard(
        "podwire-workload-traffic",
        "podwire / Workload traffic",
        "TCP connections of the selected workloads, inbound (as server) and outbound (as client).",
        header + _direction_panels("server") + _direction_panels("client"),
        [ns, wl],
    )


# --- 3. agent health ---------------------------------------------------------------------------


def agent_health() -> Json:
    sel = 'job=~"$job", instance=~"$instance"'
    by = "instance"

    def ts(title: str, expr: str, unit: str, legend: str = "{{instance}}", desc: str = "") -> Json:
        return timeseries(title, [target(expr, legend)], unit, desc=desc)

    panels = [
        sized(stat("Agents up", f"sum(up{{{sel}}})", "short"), 6, 4),
        sized(
            stat(
                "Kernel drops/s (all agents)",
                f"sum(rate(podwire_agent_kernel_drops_total{{{sel}}}[{RATE}]))",
                "pps",
                thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 0.001}],
            ),
            6,
            4,
        ),
        sized(stat("Tracked connections", f"sum(podwire_agent_tracker_entries{{{sel}}})", "short"), 6, 4),
        sized(stat("Interfaces captured", f"sum(podwire_agent_interfaces{{{sel}}})", "short"), 6, 4),
        row("Capture"),
        sized(
            ts(
                "Packets/s read", f"sum by ({by}) (rate(podwire_agent_packets_total{{{sel}}}[{RATE}]))", "pps"
            ),
            8,
        ),
        sized(
            ts(
                "Kernel drops/s",
                f"sum by ({by}) (rate(podwire_agent_kernel_drops_total{{{sel}}}[{RATE}]))",
                "pps",
                desc="Frames the kernel dropped because the capture ring was full: counts are incomplete.",
            ),
            8,
        ),
        sized(
            ts(
                "Decode errors/s",
                f"sum by ({by}) (rate(podwire_agent_decode_errors_total{{{sel}}}[{RATE}]))",
                "pps",
            ),
            8,
        ),
        row("Tracker and identity"),
        sized(
            ts(
                "Connection table entries", f"sum by ({by}) (podwire_agent_tracker_entries{{{sel}}})", "short"
            ),
            8,
        ),
        sized(
            ts(
                "Evictions/s",
                f"sum by ({by}) (rate(podwire_agent_tracker_evictions_total{{{sel}}}[{RATE}]))",
                "ops",
                desc="Entries dropped because the table was full (max_connections / max_half_open).",
            ),
            8,
        ),
        sized(
            ts(
                "Tracker anomalies/s by kind",
                f"sum by ({by}, kind) (rate(podwire_agent_tracker_anomalies_total{{{sel}}}[{RATE}]))",
                "ops",
                legend="{{instance}} {{kind}}",
            ),
            8,
        ),
        sized(
            ts(
                "Identity misses/s",
                f"sum by ({by}) (rate(podwire_agent_identity_misses_total{{{sel}}}[{RATE}]))",
                "ops",
                desc="Connection ends whose IP no pod, service, node or CIDR name matched.",
            ),
            8,
        ),
        sized(ts("Edge series held", f"sum by ({by}) (podwire_agent_series{{{sel}}})", "short"), 8),
        sized(
            ts(
                "Series dropped/s (cardinality cap)",
                f"sum by ({by}) (rate(podwire_agent_series_dropped_total{{{sel}}}[{RATE}]))",
                "ops",
            ),
            8,
        ),
        row("Export"),
        sized(
            ts(
                "Export failures/s by signal",
                f"sum by ({by}, signal) (rate(podwire_agent_export_failures_total{{{sel}}}[{RATE}]))",
                "ops",
                legend="{{instance}} {{signal}}",
            ),
            12,
        ),
        sized(
            ts(
                "Items dropped before export/s",
                f"sum by ({by}, signal, reason) (rate(podwire_agent_export_dropped_total{{{sel}}}[{RATE}]))",
                "ops",
                legend="{{instance}} {{signal}} {{reason}}",
            ),
            12,
        ),
    ]
    job = query_var("job", "Job", "label_values(podwire_agent_packets_total, job)")
    instance = query_var(
        "instance", "Agent", 'label_values(podwire_agent_packets_total{job=~"$job"}, instance)'
    )
    return dashboard(
        "podwire-agent-health",
        "podwire / Agent health",
        "podwire agents' own metrics: capture, kernel drops, connection table, identity and export.",
        panels,
        [job, instance],
    )


# --- 4. TLS ------------------------------------------------------------------------------------


def _table(title: str, expr: str, unit: str, desc: str, rename: dict[str, str]) -> Json:
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [target(expr, instant=True, table=True)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"showHeader": True, "sortBy": [{"displayName": "Value", "desc": False}]},
        "transformations": [
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": rename},
            }
        ],
    }


def tls() -> Json:
    ns = '{client_namespace=~"$namespace"}'
    sns = '{server_namespace=~"$namespace"}'
    hs = "podwire_tls_handshakes_total"
    days_left = (
        "(max by (server_namespace, server_workload, tls_server_name) "
        f"(podwire_tls_certificate_not_after_seconds{sns}) - time()) / 86400"
    )
    header = [
        sized(stat("TLS handshakes/s", f"sum(rate({hs}{ns}[{RATE}]))", "cps"), 6, 4),
        sized(
            stat(
                "Deprecated TLS handshakes/s",
                f"sum(rate(podwire_tls_deprecated_handshakes_total{ns}[{RATE}])) or vector(0)",
                "cps",
                desc="Handshakes that chose SSL 3.0, TLS 1.0 or TLS 1.1.",
                thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 0.000001}],
            ),
            6,
            4,
        ),
        sized(
            stat(
                "Certificates expiring within 14 days",
                f"count(({days_left}) < 14) or vector(0)",
                "none",
                thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
            ),
            6,
            4,
        ),
        sized(
            stat("Soonest certificate expiry", f"min({days_left})", "d"),
            6,
            4,
        ),
    ]
    panels = [
        *header,
        row("Versions and ciphers"),
        timeseries(
            "Handshakes/s by version",
            [target(f"sum by (tls_version) (rate({hs}{ns}[{RATE}]))", "{{tls_version}}")],
            "cps",
            stack=True,
        ),
        timeseries(
            "Handshakes/s by cipher",
            [target(f"sum by (tls_cipher) (rate({hs}{ns}[{RATE}]))", "{{tls_cipher}}")],
            "cps",
            stack=True,
        ),
        row("Who talks TLS to whom"),
        sized(
            _table(
                "Handshakes by client, server, SNI, version and cipher",
                f"sum by ({EDGE}, tls_server_name, tls_version, tls_cipher) (increase({hs}{ns}[$__range]))",
                "none",
                "Handshakes over the time range.  tls_server_name is the SNI (empty: the client sent none).",
                {
                    "client_namespace": "client ns",
                    "client_workload": "client",
                    "server_namespace": "server ns",
                    "server_workload": "server",
                    "tls_server_name": "SNI",
                    "tls_version": "version",
                    "tls_cipher": "cipher",
                    "Value": "handshakes",
                },
            ),
            24,
            10,
        ),
        sized(
            _table(
                "Days to certificate expiry",
                days_left,
                "d",
                "Leaf certificate notAfter minus now, per server name (TLS <= 1.2 handshakes show "
                "the certificate; TLS 1.3 encrypts it).",
                {
                    "server_namespace": "server ns",
                    "server_workload": "server",
                    "tls_server_name": "server name",
                    "Value": "days left",
                },
            ),
            24,
            8,
        ),
    ]
    return dashboard(
        "podwire-tls",
        "podwire / TLS",
        "Who talks TLS to whom, with which versions and ciphers, and when the certificates expire "
        "(from clear-text handshakes; nothing is decrypted).",
        panels,
        [namespace_var()],
    )


DASHBOARDS = {
    "podwire-service-map.json": service_map,
    "podwire-workload-traffic.json": workload_traffic,
    "podwire-agent-health.json": agent_health,
    "podwire-tls.json": tls,
}


# Files the chart embeds verbatim: source -> copy.
CHART_COPIES = {
    ROOT / "alerts" / "podwire-rules.yaml": ROOT / "helm" / "podwire" / "files" / "podwire-rules.yaml",
    ROOT / "otel" / "gateway.yaml": ROOT / "helm" / "podwire" / "files" / "gateway.yaml",
    ROOT / "otel" / "gateway-remote-write.yaml": ROOT
    / "helm"
    / "podwire"
    / "files"
    / "gateway-remote-write.yaml",
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        for out in OUT_DIRS:
            path = out / name
            if check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path.relative_to(ROOT)))
            else:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for src, dst in CHART_COPIES.items():
        if check:
            if not dst.exists() or dst.read_text() != src.read_text():
                stale.append(str(dst.relative_to(ROOT)))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text())
    if stale:
        print("stale (run python3 dashboards/generate.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
