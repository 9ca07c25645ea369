"""The views' routes on the one listener: the Node Graph API, an edge's recent connections, the page.

/nodegraph/api/health                 200 (Grafana's Node Graph API data source checks it)
/nodegraph/connections                this agent's edges (k8spacket's items; always local)
/nodegraph/api/graph/fields           ?stats-type=connection|bytes|duration
/nodegraph/api/graph/data             ?stats-type, namespace, include, exclude, from, to: the graph,
                                      cluster-wide when peers are configured (`partial`, `peers`)
/nodegraph/api/edge                   ?source=ID&target=ID[&limit][&local=1]: an edge's recent connections
/tlsparser/api/data                   ?from, to (+ namespace, include, exclude): recent TLS connections
/tlsparser/api/data/{id}              one TLS connection's details (views/tlsapi.py)
/                                     the built-in live map (views/static/index.html)
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from podwire.views import nodegraph as ng
from podwire.views import tlsapi
from podwire.views.fanout import FanOut, KubePeers, PeerResult, items_from_json
from podwire.views.http import HttpServer, Query, Response, text
from podwire.views.records import record_json
from podwire.views.store import ConnectionStore, Stored

JSON = "application/json"
MAX_EDGE_CONNECTIONS = 200


def json_response(body: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(body, separators=(",", ":")).encode(), JSON)


def connection_json(entry: Stored) -> dict[str, Any]:
    out = record_json(entry.conn)
    out["id"] = entry.id
    out["source"] = entry.source.id
    out["target"] = entry.target.id
    return out


def _guard(handler: Callable[[Query], Response]) -> Callable[[Query], Response]:
    def guarded(query: Query) -> Response:
        try:
            return handler(query)
        except ng.QueryError as exc:
            return json_response({"error": str(exc)}, 400)

    return guarded


class Views:
    """Everything behind the views' routes: the local store and, optionally, the peers."""

    def __init__(self, store: ConnectionStore, fanout: FanOut | None = None) -> None:
        self.store = store
        self.fanout = fanout

    @classmethod
    def from_settings(cls, settings: Any, store: ConnectionStore) -> Views:
        discover = None
        if settings.views_peer_selector:
            discover = KubePeers(
                settings.views_peer_selector,
                settings.views_peer_namespace,
                settings.views_peer_port or settings.listen[1],
                settings.kubeconfig,
                settings.node_name,
            )
        fanout = FanOut(
            settings.views_peers,
            discover,
            settings.views_peer_timeout_s,
            settings.views_fanout_concurrency,
            settings.views_max_peers,
        )
        return cls(store, fanout if fanout.enabled else None)

    def register(self, server: HttpServer) -> None:
        server.route("/nodegraph/api/health", lambda _q: text("OK\n"))
        server.route("/nodegraph/connections", _guard(self.connections))
        server.route("/nodegraph/api/graph/fields", _guard(self.fields))
        server.route("/nodegraph/api/graph/data", _guard(self.data))
        server.route("/nodegraph/api/edge", _guard(self.edge))
        server.route("/tlsparser/api/data", _guard(self.tls_list))
        server.route("/tlsparser/api/data/", _guard(self.tls_list))
        server.route_prefix(
            "/tlsparser/api/data/", lambda rest, q: _guard(lambda q2: self.tls_details(rest, q2))(q)
        )
        server.route("/", lambda _q: self.page())
        server.route("/index.html", lambda _q: self.page())

    # --- handlers ------------------------------------------------------------------------------

    def local_items(self, flt: ng.Filter) -> list[ng.EdgeItem]:
        entries, open_now = self.store.snapshot()
        return ng.edge_items(entries, open_now, flt)

    def connections(self, query: Query) -> Response:
        return json_response([item.to_json() for item in self.local_items(ng.Filter.from_query(query))])

    def fields(self, query: Query) -> Response:
        return json_response(ng.fields(ng.stats_type(query)))

    def _ask_peers(
        self, path: str, query: dict[str, str], parse: Callable[[Any], Any]
    ) -> tuple[list[PeerResult], str | None]:
        if self.fanout is None:
            return [], None
        peers, error = self.fanout.peers()
        return self.fanout.ask(peers, path, query, parse), error

    def data(self, query: Query) -> Response:
        mode = ng.stats_type(query)
        flt = ng.Filter.from_query(query)
        results, error = self._ask_peers("/nodegraph/connections", flt.query_string(), items_from_json)
        items = ng.merge([self.local_items(flt), *(r.value for r in results if r.ok)])
        limits = self.store.limits
        span = flt.span_s(self.store.now(), limits.window_s, self.store.started)
        body = ng.graph(items, mode, span)
        body["partial"] = error is not None or any(not r.ok for r in results)
        body["peers"] = [r.status() for r in results]
        if error is not None:
            body["error"] = error
        body["span_s"] = round(span, 3)
        return json_response(body)

    def edge(self, query: Query) -> Response:
        source, target = _one(query, "source"), _one(query, "target")
        if not source or not target:
            raise ng.QueryError("source and target are required")
        limit = _limit(query)
        flt = ng.Filter.from_query(query)
        local = [
            connection_json(e)
            for e in self.store.snapshot()[0]
            if e.source.id == source and e.target.id == target and flt.time_passes(e.last_seen)
        ]
        results: list[PeerResult] = []
        error = None
        if _one(query, "local") != "1":
            peer_query = {
                **flt.query_string(),
                "source": source,
                "target": target,
                "limit": str(limit),
                "local": "1",
            }
            results, error = self._ask_peers("/nodegraph/api/edge", peer_query, _connections_of)
        merged = local + [c for r in results if r.ok for c in r.value]
        merged.sort(key=lambda c: c.get("end_time") or 0.0, reverse=True)
        return json_response(
            {
                "source": source,
                "target": target,
                "connections": merged[:limit],
                "partial": error is not None or any(not r.ok for r in results),
                "peers": [r.status() for r in results],
            }
        )

    def tls_list(self, query: Query) -> Response:
        flt = ng.Filter.from_query(query)
        agent = self.store.instance
        local = [
            tlsapi.connection_json(e, agent)
            for e in self.store.snapshot()[0]
            if e.conn.record.tls is not None
            and flt.time_passes(e.last_seen)
            and flt.nodes_pass(e.source, e.target)
        ]
        results: list[PeerResult] = []
        error = None
        if _one(query, "local") != "1":
            results, error = self._ask_peers(
                "/tlsparser/api/data", {**flt.query_string(), "local": "1"}, _dicts
            )
        merged = local + [c for r in results if r.ok for c in r.value]
        merged.sort(key=lambda c: str(c.get("lastSeen", "")), reverse=True)
        partial = error is not None or any(not r.ok for r in results)
        # k8spacket answers a bare list: the partial flag travels in a header
        return Response(
            200,
            json.dumps(merged, separators=(",", ":")).encode(),
            JSON,
            (("X-Podwire-Partial", "true" if partial else "false"),),
        )

    def _tls_details_route(self, id_text: str, query: Query) -> Response:
        return _guard(lambda q: self.tls_details(id_text, q))(query)

    def tls_details(self, id_text: str, query: Query) -> Response:
        parsed = tlsapi.parse_id(id_text)
        if parsed is None:
            raise ng.QueryError("expected an id like 'a1b2c3d4-17'")
        agent, number = parsed
        if agent == self.store.instance:
            entry = self.store.get(number)
            if entry is None or entry.conn.record.tls is None:
                return json_response({"error": "no such TLS connection (evicted, or never seen)"}, 404)
            return json_response(tlsapi.details_json(entry, agent))
        if _one(query, "local") == "1":
            return json_response({"error": "not this agent's id"}, 404)
        path = "/tlsparser/api/data/" + urllib.parse.quote(id_text)
        results, _ = self._ask_peers(path, {"local": "1"}, _detail)
        for r in results:
            if r.ok and r.value is not None:
                return json_response(r.value)
        return json_response(
            {"error": "no agent holds this TLS connection", "peers": [r.status() for r in results]}, 404
        )

    def page(self) -> Response:
        body = resources.files("podwire.views").joinpath("static/index.html").read_bytes()
        return Response(200, body, "text/html; charset=utf-8")


def _one(query: Mapping[str, Sequence[str]], key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


def _limit(query: Mapping[str, Sequence[str]]) -> int:
    text_ = _one(query, "limit") or "50"
    try:
        value = int(text_)
    except ValueError:
        raise ng.QueryError("limit: expected an integer") from None
    if not 1 <= value <= MAX_EDGE_CONNECTIONS:
        raise ng.QueryError(f"limit: 1 to {MAX_EDGE_CONNECTIONS}")
    return value


def _dicts(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, list):
        raise ValueError("expected a JSON list")
    return [c for c in body if isinstance(c, dict)]


def _detail(body: Any) -> dict[str, Any] | None:
    return body if isinstance(body, dict) and "id" in body else None


def _connections_of(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("connections"), list):
        raise ValueError("expected {'connections': [...]}")
    return [c for c in body["connections"] if isinstance(c, dict)]
