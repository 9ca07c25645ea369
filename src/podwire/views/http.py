"""The one HTTP listener: /healthz, /readyz, /metrics, /nodegraph/..., /tlsparser/... and /.

Routes are registered before start; each handler gets the parsed query and returns a Response.

Hardened (issue 14): one selector thread accepts and reads request heads with deadlines (a
request head must arrive within `request_timeout_s`, an idle keep-alive connection is closed after
`idle_timeout_s`); complete requests go to a fixed pool of worker threads.  At most
`max_connections` are held: at the cap, the connection idle the longest is closed to make room
(counted), so a flood of idle clients can neither use the process's file descriptors (which
capture needs for its sockets and rings) nor keep /healthz from answering.  The backlog is a real
one, and the `Server` header carries no version.
"""

from __future__ import annotations

import contextlib
import queue
import resource
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from podwire import log

_log = log.get("podwire.http")

Query = Mapping[str, Sequence[str]]

SERVER_HEADER = "podwire"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Query], Response]
PrefixHandler = Callable[[str, Query], Response]


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode())


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The listener's bounds (settings http_*)."""

    max_connections: int = 256
    request_timeout_s: float = 10.0  # the request head must arrive within this; also the write deadline
    idle_timeout_s: float = 30.0  # keep-alive connection with no request in flight
    backlog: int = 128
    workers: int = 4
    max_head_bytes: int = 16_384

    @classmethod
    def from_settings(cls, settings: Any) -> HttpLimits:
        return cls(
            max_connections=settings.http_max_connections,
            request_timeout_s=settings.http_request_timeout_s,
            idle_timeout_s=settings.http_idle_timeout_s,
            backlog=settings.http_backlog,
            workers=settings.http_workers,
        )


@dataclass(slots=True)
class HttpStats:
    accepted: int = 0
    requests: int = 0
    evicted_at_cap: int = 0  # idle connections closed to make room for a new one
    refused_at_cap: int = 0  # new connections closed: every slot had a request in flight
    timed_out: int = 0  # request head too slow, or idle keep-alive
    bad_requests: int = 0
    accept_errors: int = 0  # EMFILE/ENFILE and the like


class _Conn:
    __slots__ = ("buf", "busy", "since", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.since = now  # when it became idle, or when its current request head began
        self.busy = False


class HttpServer:
    """A small HTTP/1.1 server bound to one address, serving registered GET routes."""

    def __init__(self, host: str, port: int, limits: HttpLimits | None = None) -> None:
        self._routes: dict[str, Handler] = {}
        self._prefix_routes: list[tuple[str, PrefixHandler]] = []
        self._host, self._port = host, port
        self.limits = limits or HttpLimits()
        self.stats = HttpStats()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._conns: dict[int, _Conn] = {}  # fd -> conn; touched by the selector thread only
        # conns back from the workers (keep-alive or not): only the selector thread closes or re-arms
        self._returns: queue.SimpleQueue[tuple[_Conn, bool]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()

    def route(self, path: str, handler: Handler) -> None:
        """An exact path."""
        self._routes[path] = handler

    def route_prefix(self, prefix: str, handler: PrefixHandler) -> None:
        """Every path under `prefix` (ending in '/'); the handler gets the rest of the path."""
        self._prefix_routes.append((prefix, handler))

    def _find(self, path: str) -> Handler | None:
        handler = self._routes.get(path)
        if handler is None:
            for prefix, candidate in self._prefix_routes:
                if path.startswith(prefix):
                    rest = urllib.parse.unquote(path[len(prefix) :])
                    return lambda query: candidate(rest, query)
        return handler

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when 0 was asked for)."""
        if self._sock is None:
            return self._host, self._port
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self.limits.backlog)
        sock.setblocking(False)
        self._sock = sock
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="podwire-http-worker")
        self._thread = threading.Thread(target=self._loop, name="podwire-http", daemon=True)
        self._thread.start()
        _log.info("http_listening", address=f"{self.address[0]}:{self.address[1]}")

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._thread = None

    # --- the selector thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._sock is not None
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=0.25):
                    if key.fileobj is self._sock:
                        self._accept(sel)
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._read(sel, key.data)
                self._take_back(sel)
                self._expire(sel, time.monotonic())
        except Exception:  # a listener bug: log it; the agent's health check then fails
            _log.exception("http_loop_failed")
        finally:
            for conn in list(self._conns.values()):
                self._close(sel, conn)
            sel.close()
            self._sock.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._sock is not None
        for _ in range(64):  # drain a burst, but keep serving the others
            try:
                sock, _addr = self._sock.accept()
            except BlockingIOError:
                return
            except OSError:  # EMFILE, ENFILE, ECONNABORTED: count it, try again next round
                self.stats.accept_errors += 1
                return
            now = time.monotonic()
            self.stats.accepted += 1
            if len(self._conns) >= self.limits.max_connections and not self._evict_idlest(sel):
                self.stats.refused_at_cap += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, now)
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)

    def _evict_idlest(self, sel: selectors.BaseSelector) -> bool:
        idle = [c for c in self._conns.values() if not c.busy]
        if not idle:
            return False
        self._close(sel, min(idle, key=lambda c: c.since))
        self.stats.evicted_at_cap += 1
        return True

    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sel, conn)
            return
        if not conn.buf:
            conn.since = time.monotonic()  # a request head begins: the request deadline runs from here
        conn.buf += data
        if conn.buf.find(b"\r\n\r\n") < 0 and len(conn.buf) > self.limits.max_head_bytes:
            self._reply_and_close(sel, conn, 431)
            return
        self._read_buffered(sel, conn)

    def _reply_and_close(self, sel: selectors.BaseSelector, conn: _Conn, status: int) -> None:
        self.stats.bad_requests += 1
        with contextlib.suppress(OSError):
            conn.sock.send(_head(status, "text/plain; charset=utf-8", 0, keep_alive=False))
        self._close(sel, conn)

    def _take_back(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                conn, keep_alive = self._returns.get_nowait()
            except queue.Empty:
                return
            if not keep_alive or self._stopping.is_set():
                self._close(sel, conn)
                continue
            conn.busy = False
            conn.since = time.monotonic()
            sel.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.buf:  # a pipelined request already buffered: serve it without waiting for bytes
                self._read_buffered(sel, conn)

    def _read_buffered(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(conn.buf[:end])
        del conn.buf[: end + 4]
        request = _parse_head(head)
        if request is None:
            self._reply_and_close(sel, conn, 400)
            return
        sel.unregister(conn.sock)
        conn.busy = True
        assert self._pool is not None
        self._pool.submit(self._serve, conn, *request)

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        request_deadline = now - self.limits.request_timeout_s
        idle_deadline = now - self.limits.idle_timeout_s
        for conn in list(self._conns.values()):
            if conn.busy:
                continue
            if conn.since < (request_deadline if conn.buf else idle_deadline):
                self.stats.timed_out += 1
                self._close(sel, conn)

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(conn.sock)
        conn.sock.close()

    # --- worker threads ----------------------------------------------------------------------------

    def _serve(self, conn: _Conn, method: str, target: str, keep_alive: bool) -> None:
        self.stats.requests += 1
        url = urllib.parse.urlsplit(target)
        if method not in ("GET", "HEAD"):
            response = text("method not allowed\n", 405)
            keep_alive = False
        else:
            handler = self._find(url.path)
            if handler is None:
                response = text("not found\n", 404)
            else:
                try:
                    response = handler(urllib.parse.parse_qs(url.query))
                except Exception:  # a view bug must not kill the listener
                    _log.exception("http_handler_failed", path=url.path)
                    response = text("internal error\n", 500)
        body = b"" if method == "HEAD" else response.body
        try:
            conn.sock.settimeout(self.limits.request_timeout_s)  # the write deadline
            head = _head(
                response.status, response.content_type, len(response.body), keep_alive, response.headers
            )
            conn.sock.sendall(head + body)
            conn.sock.setblocking(False)
        except OSError:
            keep_alive = False
        self._returns.put((conn, keep_alive))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")


def _parse_head(head: bytes) -> tuple[str, str, bool] | None:
    """Request line and the one header that matters: (method, target, keep-alive)."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        return None
    keep_alive = version == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lowered = name.strip().lower()
        if lowered == "connection":
            keep_alive = value.strip().lower() != "close" and (
                keep_alive or value.strip().lower() == "keep-alive"
            )
        elif lowered in ("content-length", "transfer-encoding") and value.strip() not in ("", "0"):
            keep_alive = False  # a body we do not read: close after answering
    return method, target, keep_alive


def _head(
    status: int, content_type: str, length: int, keep_alive: bool, extra: Sequence[tuple[str, str]] = ()
) -> bytes:
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"Server: {SERVER_HEADER}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in extra)
        + f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (containerd's default soft limit is 1024):
    capture's sockets and rings must never wait on fds.  Returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def metrics_route(
    server: HttpServer, render: Callable[[], bytes], content_type: str, path: str = "/metrics"
) -> None:
    """Serve what telemetry renders (`Telemetry.metrics_text`) on the one listener."""
    server.route(path, lambda _q: Response(200, render(), content_type))


def health_routes(server: HttpServer, ready: Callable[[], bool]) -> None:
    """/healthz is the process being alive; /readyz waits for capture and identity to be ready."""
    server.route("/healthz", lambda _q: text("ok\n"))
    server.route("/readyz", lambda _q: text("ready\n") if ready() else text("not ready\n", 503))
