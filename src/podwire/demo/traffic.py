"""Real servers and clients for the demo, all started inside pods and owned by the Cluster.

    loadgen --curl/python--> frontend (nginx :80) --proxy--> Service shop/api 10.96.0.20:80
            --DNAT--> api (Python http.server :8080) --TCP--> db (Python :5432)

The Python client also makes refused connections (a closed port), reset connections (SO_LINGER 0),
IPv6 requests and one long-lived connection, and writes one JSON line per connection it made
(`TrafficLedgerEntry`), so tests can compare what the agent saw with what the programs did.

The Python programs are this module's own commands: `python -m podwire.demo.traffic api|db|client ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from podwire import log
from podwire.demo.cluster import (
    Cluster,
    ClusterError,
    ClusterSpec,
    External,
    ExternalSpec,
    NodeSpec,
    Pod,
    PodSpec,
    ServiceSpec,
    nft_in_netns,
)

_log = log.get("podwire.demo.traffic")

API_PORT = 8080
DB_PORT = 5432
CLOSED_PORT = 9  # nothing listens there: connections are refused
STATIC_SMALL = 512
STATIC_LARGE = 256 * 1024
LONG_LIVED_RATE = 256 * 1024  # bytes/s the long-lived connection uploads with its pings
_LEDGER_KEEP = 10_000


# ---------------------------------------------------------------- the demo's cluster and plan


def demo_spec(nodes: int = 2) -> ClusterSpec:
    """Four pods in namespaces shop/tools on two nodes (or one), the api Service, partner-api outside."""
    a = (
        PodSpec("frontend-7d9f-x2k", "shop", "frontend", "Deployment"),
        PodSpec("loadgen-5c8b-q4t", "tools", "loadgen", "Deployment"),
    )
    b = (PodSpec("api-6f4d-p9z", "shop", "api", "Deployment"), PodSpec("db-0", "shop", "db", "StatefulSet"))
    node_specs = (
        (NodeSpec("node-a", a), NodeSpec("node-b", b)) if nodes >= 2 else (NodeSpec("node-a", a + b),)
    )
    service = ServiceSpec("api", "shop", "10.96.0.20", 80, "api-6f4d-p9z", API_PORT, ipv6="fd00:96::20")
    return ClusterSpec(nodes=node_specs, services=(service,), externals=(ExternalSpec("partner-api"),))


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """Which pod plays which part, and how fast the clients go. Defaults match demo_spec()."""

    frontend: str = "frontend-7d9f-x2k"
    api: str = "api-6f4d-p9z"
    db: str = "db-0"
    client: str = "loadgen-5c8b-q4t"
    api_service: str | None = "api"  # nginx proxies through this Service's ClusterIP (None: the api pod)
    external: str | None = "partner-api"  # an external host the client also calls (None: none)
    curl_rate_per_s: float = 4.0
    client_rate_per_s: float = 4.0
    long_lived_ping_s: float = 2.0
    # nftables drops this share of data segments arriving at db (no netem on our kernels): socket
    # stats then show retransmits and a longer RTT on the edges to db (0: no loss)
    db_loss_percent: int = 3

    def start(self, cluster: Cluster, ready_timeout_s: float = 15.0) -> RunningTraffic:
        """Start servers, wait until they listen, then clients. A server that fails raises ClusterError."""
        running = RunningTraffic(cluster, self)
        try:
            running._start(ready_timeout_s)
        except BaseException:
            running.stop()
            raise
        return running


@dataclass(frozen=True, slots=True)
class TrafficLedgerEntry:
    """One connection the Python client made, as the client itself saw it."""

    kind: str  # http6 | static | refused | reset | long | external
    client: tuple[str, int]
    server: tuple[str, int]
    outcome: str  # closed | refused | reset | open | error
    sent: int
    received: int
    start: float
    end: float

    @classmethod
    def from_json(cls, text: str) -> TrafficLedgerEntry:
        d = json.loads(text)
        return cls(
            str(d["kind"]),
            (str(d["client"][0]), int(d["client"][1])),
            (str(d["server"][0]), int(d["server"][1])),
            str(d["outcome"]),
            int(d["sent"]),
            int(d["received"]),
            float(d["start"]),
            float(d["end"]),
        )


class RunningTraffic:
    """The live traffic of a TrafficPlan: its processes (owned by the Cluster) and the client's ledger."""

    def __init__(self, cluster: Cluster, plan: TrafficPlan) -> None:
        self.cluster = cluster
        self.plan = plan
        self.workdir = cluster.workdir() / "traffic"
        self.processes: dict[str, subprocess.Popen[Any]] = {}
        self._ledger: deque[TrafficLedgerEntry] = deque(maxlen=_LEDGER_KEEP)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------ start

    def _start(self, ready_timeout_s: float) -> None:
        c, plan = self.cluster, self.plan
        self.workdir.mkdir(parents=True, exist_ok=True)
        frontend, api, db = c.pod(plan.frontend), c.pod(plan.api), c.pod(plan.db)
        if plan.api_service is not None:
            svc = c.service(plan.api_service)
            upstream = f"{svc.ip}:{svc.port}"
        else:
            upstream = f"{api.ipv4}:{API_PORT}"
        py = [sys.executable, "-m", "podwire.demo.traffic"]
        ext: External | None = c.external(plan.external) if plan.external else None
        if ext is not None:
            self._spawn("partner", ext.name, [*py, "api", "--port", str(API_PORT)])
        self._spawn("db", db, [*py, "db", "--port", str(DB_PORT)])
        if plan.db_loss_percent:
            nft_in_netns(db.netns, db_loss_rules(plan.db_loss_percent))
        self._spawn("api", api, [*py, "api", "--port", str(API_PORT), "--db", f"{db.ipv4}:{DB_PORT}"])
        conf = write_nginx_config(self.workdir / "nginx", upstream)
        self._spawn("nginx", frontend, ["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"])
        servers = [("db", db.ipv4, DB_PORT), ("api", api.ipv4, API_PORT), ("nginx", frontend.ipv4, 80)]
        if ext is not None:
            servers.append(("partner", ext.ipv4, API_PORT))
        for name, address, port in servers:
            self._wait_listening(name, address, port, ready_timeout_s)

        rate = f"{max(1, round(plan.curl_rate_per_s * 60))}/m"
        url = f"http://{frontend.ipv4}/?i=[1-100000000]"
        self._spawn(
            "curl",
            plan.client,
            ["curl", "-s", "--rate", rate, "-H", "Connection: close", url],
            stdout=subprocess.DEVNULL,
        )
        client = self._spawn(
            "client",
            plan.client,
            [
                *py,
                "client",
                "--frontend",
                frontend.ipv4,
                "--frontend6",
                frontend.ipv6,
                "--api",
                f"{api.ipv4}:{API_PORT}",
                "--db",
                f"{db.ipv6}:{DB_PORT}",
                "--closed",
                f"{api.ipv4}:{CLOSED_PORT}",
                "--rate",
                str(plan.client_rate_per_s),
                "--ping",
                str(plan.long_lived_ping_s),
                *(["--external", f"{ext.ipv4}:{API_PORT}"] if ext is not None else []),
            ],
            stdout=subprocess.PIPE,
        )
        assert client.stdout is not None
        self._reader = threading.Thread(target=self._read_ledger, args=(client.stdout,), daemon=True)
        self._reader.start()
        _log.info("traffic started", processes=sorted(self.processes))

    def _spawn(self, name: str, pod: Pod | str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        err: IO[bytes] = (self.workdir / f"{name}.log").open("ab")
        with err:
            proc = self.cluster.run(pod, argv, stderr=err, **kw)
        self.processes[name] = proc
        return proc

    def _wait_listening(self, name: str, address: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with status {proc.returncode}: {self._log_tail(name)}")
            try:
                hosts: list[Pod | External] = [*self.cluster.pods, *self.cluster.externals]
                host = next(h for h in hosts if address in (h.ipv4, h.ipv6))
                if self.cluster.call(host, _listening, port):
                    return
                raise ConnectionRefusedError(f"nothing listens on port {port} yet")
            except OSError:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{name} is not listening on {address}:{port} after {timeout}s"
                    ) from None
                time.sleep(0.05)

    def _log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-400:].strip()
        return ""

    def _read_ledger(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                entry = TrafficLedgerEntry.from_json(line.decode())
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # a torn line at exit: skip, never raise
            with self._lock:
                self._ledger.append(entry)
                self._counts[(entry.kind, entry.outcome)] += 1

    # ------------------------------------------------------------ observe and stop

    def ledger(self) -> list[TrafficLedgerEntry]:
        """The client's connections so far (the last 10,000)."""
        with self._lock:
            return list(self._ledger)

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, outcome) -> how many the Python client made."""
        with self._lock:
            return dict(self._counts)

    def run_for(self, duration_s: float | None, stop: threading.Event | None = None) -> None:
        """Block until duration_s passes (None: forever), `stop` is set, or a server dies."""
        stop = stop or threading.Event()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set():
            for name in ("db", "api", "nginx", "partner"):
                if name in self.processes and self.processes[name].poll() is not None:
                    raise ClusterError(f"{name} died: {self._log_tail(name)}")
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                return
            stop.wait(left)

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop clients first (so their last connections finish), then servers. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for group in (("curl", "client"), ("nginx", "api", "db", "partner")):
            procs = [self.processes[n] for n in group if n in self.processes]
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        _log.info("traffic stopped", counts={f"{k}/{o}": n for (k, o), n in sorted(self.counts().items())})


def db_loss_rules(percent: int) -> str:
    """Random loss of data segments towards db (handshakes and closes pass: the counts stay exact
    and the demo's timing too)."""
    return (
        "table inet podwire_demo_loss {\n"
        "  chain input {\n"
        "    type filter hook input priority 0;\n"
        f"    tcp dport {DB_PORT} tcp flags & (fin | syn | rst) == 0 numgen random mod 100 < {percent} drop\n"
        "  }\n"
        "}\n"
    )


def _listening(port: int) -> bool:
    """Is a TCP socket listening on `port` in this thread's netns?  Read from /proc rather than
    probed with connect(): a probe would show up in the agent's table as refused connections."""
    for table in ("tcp", "tcp6"):
        with open(f"/proc/thread-self/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    return True
    return False


def write_nginx_config(directory: Path, upstream: str) -> Path:
    """A minimal nginx config in `directory`: :80 on IPv4 and IPv6, / proxied to upstream, /static/ files."""
    directory.mkdir(parents=True, exist_ok=True)
    static = directory / "static"
    static.mkdir(exist_ok=True)
    (static / "small").write_bytes(b"s" * STATIC_SMALL)
    (static / "large").write_bytes(b"L" * STATIC_LARGE)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / sub).mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
user root;
pid {directory}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log {directory}/access.log;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  server {{
    listen 80;
    listen [::]:80;
    location /static/ {{ root {directory}; }}
    location /healthz {{ return 200 "ok\\n"; }}
    location / {{ proxy_pass http://{upstream}; proxy_connect_timeout 2s; }}
  }}
}}
"""
    )
    return conf


# ---------------------------------------------------------------- the programs (run inside pods)


class _DualStackHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and hang-ups are part of the demo traffic, not errors

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def serve_api(port: int, db: tuple[str, int] | None) -> None:
    """GET / asks the db for 2 KiB and answers with it (no db: "ok"); GET /bytes/N answers N bytes."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            if self.path.startswith("/bytes/"):
                body = b"b" * min(int(self.path.rsplit("/", 1)[1] or 0), 64 << 20)
            elif db is None:
                body = b"ok\n"
            else:
                try:
                    with socket.create_connection(db, timeout=3) as sock:
                        sock.sendall(b"GET 2048\n")
                        body = _read_to_eof(sock)
                except OSError as exc:
                    self.send_error(502, f"db: {exc}")
                    return
            with contextlib.suppress(ConnectionError):  # the client's reset connections hang up early
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with _DualStackHTTPServer(("::", port), Handler) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()


def serve_db(port: int) -> None:
    """Line protocol: "GET n" -> n bytes, then the server closes; "HOLD" -> answer each "PING" until EOF."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            first = self.rfile.readline().strip()
            if first.startswith(b"GET "):
                self.wfile.write(b"d" * min(int(first[4:] or 0), 64 << 20))
            elif first == b"HOLD":
                for _line in self.rfile:
                    self.wfile.write(b"PONG\n")

    class Server(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass

    with Server(("::", port), Handler) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class _Client:
    """The Python client: one action per tick, cycling; one long-lived connection beside them."""

    ACTIONS = ("http6", "static", "refused", "http6", "reset", "external")

    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args = args
        self.out = out
        self.stop = threading.Event()
        self.write_lock = threading.Lock()

    def record(
        self,
        kind: str,
        sock: socket.socket | None,
        server: tuple[str, int],
        outcome: str,
        sent: int,
        received: int,
        start: float,
        local: tuple[str, int] | None = None,
    ) -> None:
        if local is None:
            local = ("", 0)
            if sock is not None:
                with contextlib.suppress(OSError):
                    name = sock.getsockname()
                    local = (str(name[0]), int(name[1]))
        line = json.dumps(
            {
                "kind": kind,
                "client": list(local),
                "server": list(server),
                "outcome": outcome,
                "sent": sent,
                "received": received,
                "start": start,
                "end": time.time(),
            }
        )
        with self.write_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def http(self, kind: str, host: str, path: str) -> None:
        start = time.time()
        conn = http.client.HTTPConnection(host, 80, timeout=5)
        request = f"GET {path} HTTP/1.1\r\nHost: frontend\r\nConnection: close\r\n\r\n".encode()
        sock: socket.socket | None = None
        try:
            conn.connect()
            sock = conn.sock
            assert sock is not None
            local = sock.getsockname()
            sock.sendall(request)
            received = len(_read_to_eof(sock))
            self.record(kind, sock, (host, 80), "closed", len(request), received, start, (local[0], local[1]))
        except OSError:
            self.record(kind, sock, (host, 80), "error", 0, 0, start)
        finally:
            conn.close()

    def external(self) -> None:
        host, port = _split_hostport(self.args.external)
        start = time.time()
        request = b"GET /bytes/1500 HTTP/1.0\r\n\r\n"
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                name = sock.getsockname()
                sock.sendall(request)
                received = len(_read_to_eof(sock))
            local = (str(name[0]), int(name[1]))
            self.record("external", None, (host, port), "closed", len(request), received, start, local)
        except OSError:
            self.record("external", None, (host, port), "error", 0, 0, start)

    def refused(self) -> None:
        host, port = _split_hostport(self.args.closed)
        start = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            try:
                sock.connect((host, port))
                outcome = "closed"
            except ConnectionRefusedError:
                outcome = "refused"
            except OSError:
                outcome = "error"
            self.record("refused", sock, (host, port), outcome, 0, 0, start)

    def reset(self) -> None:
        host, port = _split_hostport(self.args.api)
        start = time.time()
        request = b"GET /bytes/200000 HTTP/1.0\r\n\r\n"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect((host, port))
            local = sock.getsockname()
            sock.sendall(request)
            received = len(sock.recv(4096))
            # SO_LINGER {on, 0}: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            self.record(
                "reset", None, (host, port), "reset", len(request), received, start, (local[0], local[1])
            )
        except OSError:
            self.record("reset", sock, (host, port), "error", 0, 0, start)
        finally:
            sock.close()

    def long_lived(self) -> None:
        host, port = _split_hostport(self.args.db)
        while not self.stop.is_set():
            start = time.time()
            sent = received = 0
            local: tuple[str, int] = ("", 0)
            try:
                with socket.create_connection((host, port), timeout=5) as sock:
                    name = sock.getsockname()
                    local = (str(name[0]), int(name[1]))
                    sock.sendall(b"HOLD\n")
                    sent += 5
                    ping = b"PING " + b"p" * int(LONG_LIVED_RATE * self.args.ping) + b"\n"
                    while not self.stop.wait(self.args.ping):
                        sock.sendall(ping)
                        sent += len(ping)
                        reply = sock.recv(64)
                        if not reply:
                            raise ConnectionResetError("db closed the long-lived connection")
                        received += len(reply)
                    sock.shutdown(socket.SHUT_WR)
                    received += len(_read_to_eof(sock))
                self.record("long", None, (host, port), "closed", sent, received, start, local)
            except OSError:
                self.record("long", None, (host, port), "error", sent, received, start, local)
                self.stop.wait(1)

    def run(self) -> None:
        threading.Thread(target=self.long_lived, daemon=True).start()
        period = 1.0 / self.args.rate
        tick = 0
        while not self.stop.is_set():
            action = self.ACTIONS[tick % len(self.ACTIONS)]
            if action == "http6":
                self.http("http6", self.args.frontend6, "/")
            elif action == "static":
                self.http("static", self.args.frontend, "/static/large" if tick % 2 else "/static/small")
            elif action == "refused":
                self.refused()
            elif action == "external":
                if self.args.external:
                    self.external()
            else:
                self.reset()
            tick += 1
            self.stop.wait(period)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podwire.demo.traffic")
    sub = parser.add_subparsers(dest="role", required=True)
    api = sub.add_parser("api")
    api.add_argument("--port", type=int, default=API_PORT)
    api.add_argument("--db", metavar="HOST:PORT")
    db = sub.add_parser("db")
    db.add_argument("--port", type=int, default=DB_PORT)
    client = sub.add_parser("client")
    for flag in ("--frontend", "--frontend6", "--api", "--db", "--closed"):
        client.add_argument(flag, required=True)
    client.add_argument("--rate", type=float, default=4.0)
    client.add_argument("--ping", type=float, default=2.0)
    client.add_argument("--external", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    if args.role == "api":
        serve_api(args.port, _split_hostport(args.db) if args.db else None)
    elif args.role == "db":
        serve_db(args.port)
    else:
        runner = _Client(args, sys.stdout)
        signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
        runner.run()
        time.sleep(0.2)  # let the long-lived connection record its close
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
