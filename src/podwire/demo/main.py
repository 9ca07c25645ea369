"""`podwire demo`: build the mini-cluster, run real traffic and one agent per simulated node, show the table.

Everything is torn down on exit, on Ctrl-C and on SIGTERM; a crashed demo's leftovers are removed by
the next start (`cluster.cleanup_stale`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping

from podwire import log
from podwire.config import ConfigError, Settings

_log = log.get("podwire.demo")

REFRESH_S = 1.0
PLAIN_EVERY_S = 5.0
# A demo runs minutes, not hours: export every 5 s unless OTEL_METRIC_EXPORT_INTERVAL says otherwise.
DEMO_EXPORT_INTERVAL_MS = "5000"


def otlp_env(endpoint: str | None, base: Mapping[str, str]) -> dict[str, str]:
    """The OTEL_* environment the demo's agent exports with: `--otlp-endpoint URL` sets
    OTEL_EXPORTER_OTLP_ENDPOINT; with any endpoint the metric interval defaults to 5 s.
    A bad URL raises ValueError (one line)."""
    env = dict(base)
    if endpoint is not None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--otlp-endpoint {endpoint!r}: expected http://HOST:PORT or https://HOST:PORT")
        try:
            url.port  # noqa: B018  (raises on a bad port)
        except ValueError as exc:
            raise ValueError(f"--otlp-endpoint {endpoint!r}: {exc}") from None
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    endpoints = [k for k in env if k.startswith("OTEL_EXPORTER_OTLP_") and k.endswith("ENDPOINT") and env[k]]
    if endpoints and "OTEL_METRIC_EXPORT_INTERVAL" not in env:
        env["OTEL_METRIC_EXPORT_INTERVAL"] = DEMO_EXPORT_INTERVAL_MS
    return env


def run(settings: Settings, duration: float | None, tui: bool, otlp_endpoint: str | None = None) -> int:
    from podwire.agent import Agent, StartError
    from podwire.demo import cluster as cl
    from podwire.demo import inventory, traffic
    from podwire.telemetry.metrics import counts_here
    from podwire.views import table as table_view

    try:
        env = otlp_env(otlp_endpoint, os.environ)
    except ValueError as exc:
        print(f"podwire: {exc}", file=sys.stderr)
        return 2
    try:
        cl.require_root()
    except cl.NotRootError as exc:
        print(f"podwire: {exc}", file=sys.stderr)
        return 2
    cl.exit_on_signals()
    stop = threading.Event()
    edges = table_view.EdgeTable(lambda c: counts_here(c.record.observed_side, c.client), counts_here)
    try:
        with cl.Cluster(traffic.demo_spec()) as cluster:
            inv = inventory.write_inventory(cluster, cluster.workdir() / "inventory.yaml")
            agent_settings = settings.replace(
                inventory=str(inv),
                kube="off",
                interface_include=cluster.host_veth_pattern,
                # short enough that the demo's unanswered SYNs show up while it runs
                syn_timeout_s=min(settings.syn_timeout_s, 5.0),
                # live bytes, RTT and retransmits of open connections (the long-lived one to db)
                sockstats=True,
                sockstats_interval_s=min(settings.sockstats_interval_s, 2.0),
            )
            agent = Agent(
                agent_settings, netns_list=[n.netns for n in cluster.nodes], extra_sinks=[edges], env=env
            )
            agent.start()
            try:
                running = traffic.TrafficPlan().start(cluster)
                try:
                    host, port = agent.http.address
                    title = f"podwire demo: {len(cluster.pods)} pods on {len(cluster.nodes)} nodes, http://{host}:{port}"
                    shown = f"[{host}]" if ":" in host else host
                    print(f"podwire demo: live service map at http://{shown}:{port}/", flush=True)
                    _show(edges, title, duration, tui, stop)
                finally:
                    running.stop()
            finally:
                agent.stop(deadline_s=5.0)
            _final(edges, title, tui)
    except KeyboardInterrupt:
        return 130
    except (cl.ClusterError, StartError, ConfigError) as exc:
        print(f"podwire: {exc}", file=sys.stderr)
        return 2
    return 0


def _show(edges: object, title: str, duration: float | None, tui: bool, stop: threading.Event) -> None:
    from podwire.views import table as table_view

    assert isinstance(edges, table_view.EdgeTable)
    end = None if duration is None else time.monotonic() + duration
    if tui:
        from rich.console import Console
        from rich.live import Live

        with Live(
            table_view.render_rich(edges.snapshot(), title),  # type: ignore[arg-type]
            console=Console(),
            refresh_per_second=4,
            screen=False,
        ) as live:
            while end is None or time.monotonic() < end:
                if stop.wait(REFRESH_S):
                    break
                live.update(table_view.render_rich(edges.snapshot(), title))  # type: ignore[arg-type]
        return
    print(title, flush=True)
    while end is None or time.monotonic() < end:
        left = PLAIN_EVERY_S if end is None else min(PLAIN_EVERY_S, max(0.0, end - time.monotonic()))
        if stop.wait(left):
            break
        table_view.write_plain(edges.snapshot(), sys.stdout, time.time())


def _final(edges: object, title: str, tui: bool) -> None:
    from podwire.views import table as table_view

    assert isinstance(edges, table_view.EdgeTable)
    if not tui:
        print("final:", flush=True)
        table_view.write_plain(edges.snapshot(), sys.stdout, time.time())
