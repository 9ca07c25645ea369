"""The one HTTP listener: /healthz, /readyz, /metrics, and later /nodegraph/..., /tlsparser/... and /.

Routes are registered before start; each handler gets the parsed query and returns a Response.
The server runs in its own daemon threads and never touches the capture thread.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from podwire import log

_log = log.get("podwire.http")

Query = Mapping[str, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Query], Response]


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode())


class HttpServer:
    """A small threaded HTTP server bound to one address, serving registered GET routes."""

    def __init__(self, host: str, port: int) -> None:
        self._routes: dict[str, Handler] = {}
        self._prefix_routes: list[tuple[str, Handler]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._host, self._port = host, port

    def route(self, path: str, handler: Handler) -> None:
        """Exact path, or a prefix when `path` ends with '/*'."""
        if path.endswith("/*"):
            self._prefix_routes.append((path[:-1], handler))
        else:
            self._routes[path] = handler

    def _find(self, path: str) -> Handler | None:
        handler = self._routes.get(path)
        if handler is None:
            for prefix, candidate in self._prefix_routes:
                if path.startswith(prefix):
                    return candidate
        return handler

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when 0 was asked for)."""
        if self._server is None:
            return self._host, self._port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        server_ref = self

        class _Handler(BaseHTTPRequestHandler):
            server_version = "podwire"

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                handler = server_ref._find(url.path)
                if handler is None:
                    response = text("not found\n", 404)
                else:
                    try:
                        response = handler(urllib.parse.parse_qs(url.query))
                    except Exception:  # a view bug must not kill the listener
                        _log.exception("http_handler_failed", path=url.path)
                        response = text("internal error\n", 500)
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def log_message(self, format: str, *args: object) -> None:
                return  # access logs would drown the agent's own

        family_host = self._host
        server_cls = ThreadingHTTPServer
        if ":" in family_host:
            import socket

            class _V6Server(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_cls = _V6Server
        server_cls.daemon_threads = True
        self._server = server_cls((self._host, self._port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="podwire-http", daemon=True)
        self._thread.start()
        _log.info("http_listening", address=f"{self.address[0]}:{self.address[1]}")

    def stop(self, timeout: float = 2.0) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None


def metrics_route(
    server: HttpServer, render: Callable[[], bytes], content_type: str, path: str = "/metrics"
) -> None:
    """Serve what telemetry renders (`Telemetry.metrics_text`) on the one listener."""
    server.route(path, lambda _q: Response(200, render(), content_type))


def health_routes(server: HttpServer, ready: Callable[[], bool]) -> None:
    """/healthz is the process being alive; /readyz waits for capture and identity to be ready."""
    server.route("/healthz", lambda _q: text("ok\n"))
    server.route("/readyz", lambda _q: text("ready\n") if ready() else text("not ready\n", 503))
