"""Wiring: packet source -> tracker -> identity -> sinks (telemetry, views).

`Pipeline` is the single-threaded core shared by live capture and pcap replay.
`Agent` owns the threads of `podwire run` and shuts them down with deadlines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import msgspec

from podwire import log
from podwire.config import ConfigError, Settings
from podwire.model import (
    Batch,
    ConnectionEvent,
    ConnectionOpened,
    ConnectionProgress,
    DnsAnswer,
    Endpoint,
    Identity,
    IdentityKind,
    NamedConnection,
    PacketSource,
    ProgressSink,
    Resolver,
    ServiceBackends,
    Sink,
    StatsRound,
    TlsInfo,
)
from podwire.tracker.tracker import Tracker, TrackerLimits

if TYPE_CHECKING:
    from podwire.identity.service import IdentityService
    from podwire.sockstats.conntrack import ConntrackBackends
    from podwire.sockstats.sampler import Sampler
    from podwire.telemetry.metrics import AgentSnapshot
    from podwire.tls.assembler import TlsAssembler
    from podwire.tls.prober import CertificateProber

_log = log.get("podwire.agent")

TICK_S = 1.0  # how often timers (SYN timeout, idle expiry) run
STATS_QUEUE = 4  # socket-stats rounds waiting for a capture thread


# Young-generation collections: once per this many new container objects (CPython's default is 700).
# The capture thread makes a batch of Segments per ring block (hundreds) that die together after
# the batch; a collection in the middle of a batch walks them all, so collect less often.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Start-up is over: collect once, then freeze what survived (modules, settings, the identity
    index, telemetry instruments) so the cyclic collector never walks it again.  Collections then
    cost per object the capture thread made since, not per object the process holds (measured:
    ~2 us per connection under churn).  Objects made later are collected as before, young ones
    every GC_YOUNG_THRESHOLD allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


_VIA_CACHE = 4096  # (backend identity, Service) pairs kept; both sets are small


class Pipeline:
    """Feeds segments to the tracker and hands every event, named, to the sinks.

    With `backends`, a server that is a Service is named by the backend its DNAT chose (the
    identity carries the Service in `service`), at the open and at the close alike.
    """

    def __init__(
        self,
        tracker: Tracker,
        resolver: Resolver,
        sinks: Sequence[Sink],
        learn_dns: Callable[[Sequence[DnsAnswer]], None] | None = None,
        tls: TlsAssembler | None = None,
        backends: ServiceBackends | None = None,
        prober: CertificateProber | None = None,
    ) -> None:
        self.tracker = tracker
        self.tls = tls  # joins handshake facts to records (None: TLS insight off)
        self.prober = prober  # TLS 1.3 certificates fetched by the agent (None: off, the default)
        self._resolve = resolver.resolve
        self._backends = backends
        self._via: dict[tuple[Identity, str], Identity] = {}
        self._sinks = tuple(sinks)
        # bound once: the dispatch loop runs per connection
        self._on_opened = tuple(sink.on_opened for sink in self._sinks)
        self._on_connection = tuple(sink.on_connection for sink in self._sinks)
        # progress is optional for a sink: decided here, once
        self._on_progress = tuple(
            p for p in (getattr(sink, "on_progress", None) for sink in self._sinks) if p is not None
        )
        self._learn_dns = learn_dns

    def feed(self, batch: Batch) -> None:
        if batch.dns and self._learn_dns is not None:
            self._learn_dns(batch.dns)
        if batch.tls and self.tls is not None:  # before the tracker: a record in this batch may need them
            self.tls.feed(batch.tls)
        # the whole batch through the tracker in one call, then its events in order
        events = self.tracker.feed_many(batch.segments)
        if events:
            self._dispatch(events)

    def feed_stats(self, stats: StatsRound) -> None:
        """A socket-stats round: progress of open connections (and those older than the agent)."""
        events = self.tracker.feed_stats(stats.ts, stats.samples)
        if events:
            self._dispatch(events)

    def tick(self, now: float) -> None:
        self._dispatch(self.tracker.expire(now))
        if self.tls is not None:
            self.tls.expire(now)

    def finish(self, now: float) -> None:
        self._dispatch(self.tracker.flush(now))

    def _dispatch(self, events: Sequence[ConnectionEvent]) -> None:
        name = self._name
        tls, prober = self.tls, self.prober
        for event in events:
            if prober is not None and prober.owns(event.client.address, event.client.port):
                prober.own_dropped += 1  # the prober's own connection: not workload traffic
                continue
            if isinstance(event, ConnectionOpened):
                client, server = name(event.client, event.server, event.client_isn, event.start_time)
                for on_opened in self._on_opened:
                    on_opened(event, client, server)
                continue
            if isinstance(event, ConnectionProgress):
                when = event.start_time if event.start_time is not None else event.ts
                client, server = name(event.client, event.server, event.client_isn, when)
                for on_progress in self._on_progress:
                    on_progress(event, client, server)
                continue
            if tls is not None:
                info = tls.take(event)
                if info is not None:
                    if (
                        prober is not None
                        and info.version == "TLS 1.3"
                        and info.certificate_not_after is None
                    ):
                        info = with_probed_certificate(prober, event.server, info)
                    event = msgspec.structs.replace(event, tls=info)
            # who held each address when the connection started (as identity.name_connection)
            at = event.start_time if event.start_time is not None else event.end_time
            client, server = name(event.client, event.server, event.client_isn, at)
            named = NamedConnection(event, client, server)
            for on_connection in self._on_connection:
                on_connection(named)

    def _name(
        self, client: Endpoint, server: Endpoint, client_isn: int | None, at: float | None
    ) -> tuple[Identity, Identity]:
        """Who held each address at `at`; a Service server becomes the backend its DNAT chose (with
        `backends`), carrying the Service, so opened, progress and closed events name one edge."""
        resolve = self._resolve
        named_client, named_server = resolve(client.address, at), resolve(server.address, at)
        if self._backends is None or named_server.kind is not IdentityKind.SERVICE:
            return named_client, named_server
        found = self._backends.backend(client, server, client_isn)
        if found is None:
            return named_client, named_server
        pod = resolve(found.address, at)
        if pod.kind is not IdentityKind.POD:
            return named_client, named_server  # DNATed somewhere we cannot name better than the Service
        key = (pod, named_server.name)
        via = self._via.get(key)
        if via is None:
            if len(self._via) >= _VIA_CACHE:
                self._via.clear()
            via = self._via[key] = msgspec.structs.replace(pod, service=named_server.name)
        return named_client, via


class CollectingSink:
    """Keeps named connections in arrival order (replay, tests)."""

    def __init__(self) -> None:
        self.connections: list[NamedConnection] = []

    def on_opened(self, event: ConnectionOpened, client: object, server: object) -> None:
        return

    def on_connection(self, conn: NamedConnection) -> None:
        self.connections.append(conn)


def drive(source: PacketSource, pipeline: Pipeline, clock: Callable[[], float] | None = None) -> None:
    """Run a finite source to its end. With no clock, capture time drives the timers (replay)."""
    last_tick = 0.0
    last_ts = 0.0
    while True:
        batch = source.poll(0.5)
        if batch is None:
            break
        pipeline.feed(batch)
        if batch.segments:
            last_ts = batch.segments[-1].ts
        now = clock() if clock is not None else last_ts
        if now - last_tick >= TICK_S:
            pipeline.tick(now)
            last_tick = now
    pipeline.finish(clock() if clock is not None else last_ts)


def replay(settings: Settings, path: str, fmt: str, out: TextIO) -> int:
    """`podwire replay`: the same decoder and tracker over a pcap/pcapng file."""
    from podwire.capture.pcap import PcapError, PcapSource
    from podwire.identity import build_service
    from podwire.views import records

    try:
        source = PcapSource(path, tls=settings.tls)
    except PcapError as exc:
        print(f"podwire: {exc}", file=sys.stderr)
        return 2
    resolver = build_service(settings)
    sink = CollectingSink()
    pipeline = Pipeline(
        Tracker(TrackerLimits.from_settings(settings), opened=False),  # replay prints finished connections
        resolver,
        [sink],
        resolver.learn_dns,
        tls_assembler(settings),
    )
    try:
        drive(source, pipeline)
    finally:
        source.close()
    conns = sorted(sink.connections, key=_sort_key)
    if fmt == "table":
        records.write_table(conns, out)
    else:
        records.write_jsonl(conns, out)
    _log.info(
        "replay_done",
        file=path,
        connections=len(conns),
        stats={k: getattr(source.stats, k) for k in source.stats.__slots__},
    )
    return 0


def with_probed_certificate(prober: CertificateProber, server: Endpoint, info: TlsInfo) -> TlsInfo:
    """A TLS 1.3 record's certificate fields from the prober's cache (a probe is scheduled on a miss)."""
    facts = prober.lookup(server.address, server.port, info.server_name)
    if facts is None:
        return info
    return dataclasses.replace(
        info,
        certificate_not_before=facts.not_before,
        certificate_not_after=facts.not_after,
        certificate_subject=facts.subject,
        certificate_issuer=facts.issuer,
        certificate_sans=facts.sans,
    )


def certificate_prober(settings: Settings) -> CertificateProber | None:
    """The TLS 1.3 certificate prober when PODWIRE_TLS_PROBE is on (it dials from `settings.netns`)."""
    if not (settings.tls and settings.tls_probe):
        return None
    from podwire.tls.prober import CertificateProber, ProberLimits

    return CertificateProber(
        ProberLimits(
            concurrency=settings.tls_probe_concurrency,
            timeout_s=settings.tls_probe_timeout_s,
            ttl_s=settings.tls_probe_ttl_s,
        ),
        namespace=settings.netns,
    )


def tls_assembler(settings: Settings) -> TlsAssembler | None:
    """The handshake reassembler when TLS insight is on (imported only then)."""
    if not settings.tls:
        return None
    from podwire.tls.assembler import TlsAssembler, TlsLimits

    return TlsAssembler(
        TlsLimits(
            max_connections=settings.tls_max_connections,
            max_handshake_bytes=settings.tls_max_handshake_kib * 1024,
            # a handshake's facts wait for the record at most as long as a quiet connection may live
            ttl_s=settings.idle_timeout_s,
        )
    )


def _sort_key(conn: NamedConnection) -> tuple[float, float]:
    r = conn.record
    start = r.start_time if r.start_time is not None else (r.end_time or 0.0)
    return (start, r.end_time or float("inf"))


class StartError(Exception):
    """The agent cannot start (not root, missing namespace, bad inventory): one line for the user."""


class LockedSink:
    """Serializes a sink shared by several capture threads (the demo runs one per simulated node)."""

    def __init__(self, sink: Sink, lock: threading.Lock) -> None:
        self._sink, self._lock = sink, lock
        self._progress: ProgressSink | None = sink if hasattr(sink, "on_progress") else None  # type: ignore[assignment]

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        with self._lock:
            self._sink.on_opened(event, client, server)

    def on_connection(self, conn: NamedConnection) -> None:
        with self._lock:
            self._sink.on_connection(conn)

    def on_progress(self, event: ConnectionProgress, client: Identity, server: Identity) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.on_progress(event, client, server)


def _check_capture_permission() -> None:
    """Fail first, and plainly, when this process may not open packet sockets."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        raise StartError(
            "capture needs root or CAP_NET_RAW (AF_PACKET sockets); run as root or grant the capability"
        ) from None


def _check_listen(host: str, port: int) -> None:
    """Bind the listen address once, as the listener will, so that a port already taken or an address
    that is not local fails before capture starts (the listener binds for real in Agent.start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def check_start(settings: Settings, namespaces: Sequence[str | None]) -> None:
    """Everything the agent needs, checked before anything starts: StartError with one line."""
    from podwire.capture import netns

    if len(namespaces) > settings.max_rings:  # one ring per namespace: kernel memory, outside any cgroup
        raise StartError(
            f"{len(namespaces)} capture rings of {settings.ring_bytes >> 20} MiB exceed the ring memory cap "
            f"PODWIRE_RING_MEMORY_MIB={settings.ring_memory_mib}"
        )
    _check_capture_permission()
    for ns in namespaces:
        try:
            netns.check(ns)
        except FileNotFoundError as exc:
            raise StartError(f"capture cannot start: {exc}") from None
    _check_listen(*settings.listen)


class NodeCapture:
    """One capture thread: a LiveCapture (in `settings.netns`) -> tracker -> named events -> sinks."""

    def __init__(self, settings: Settings, resolver: IdentityService, sinks: Sequence[Sink]) -> None:
        from podwire.capture.bpf import BpfError
        from podwire.capture.live import LiveCapture

        _check_capture_permission()
        try:
            self.capture = LiveCapture(settings)
        except PermissionError as exc:
            raise StartError(f"capture needs root or CAP_NET_RAW: {exc}") from None
        except (OSError, ValueError, BpfError) as exc:
            raise StartError(f"capture cannot start: {exc}") from None
        self.tracker = Tracker(TrackerLimits.from_settings(settings))
        self.backends: ConntrackBackends | None = None
        if settings.service_backends:
            from podwire.sockstats.conntrack import ConntrackBackends

            self.backends = ConntrackBackends(settings.netns)
        self.prober = certificate_prober(settings)
        self.pipeline = Pipeline(
            self.tracker,
            resolver,
            sinks,
            resolver.learn_dns,
            tls_assembler(settings),
            self.backends,
            self.prober,
        )
        self.failed: str | None = None
        self._stop = threading.Event()
        # socket-stats rounds from the sampler thread, fed to the tracker on this capture thread
        self._stats: deque[StatsRound] = deque()
        self.stats_rounds_dropped = 0
        name = f"podwire-capture-{settings.netns}" if settings.netns else "podwire-capture"
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    def start(self) -> None:
        self._thread.start()

    def snapshot(self) -> AgentSnapshot:
        from podwire.telemetry.metrics import AgentSnapshot  # run only: replay needs no OTel SDK

        cap, trk = self.capture.stats(), self.tracker.stats
        return AgentSnapshot(
            packets=cap.packets,
            kernel_drops=cap.kernel_drops,
            decode_errors=cap.decode_errors,
            interfaces=cap.interfaces,
            interface_removals=cap.interface_removals,
            dns_rejected=cap.dns_rejected,
            tracker_entries=trk.entries,
            tracker_evictions=sum(trk.evictions.values()),
            tracker_anomalies=dict(trk.anomalies),
            service_backends=self.backends.counts() if self.backends is not None else {},
            tls_errors=self.pipeline.tls.stats.failures() if self.pipeline.tls is not None else {},
            tls_probe_failures=dict(self.prober.failures) if self.prober is not None else {},
        )

    def deliver_stats(self, stats: StatsRound) -> None:
        """Sampler thread: queue a round (bounded: a stalled capture thread drops the oldest)."""
        if len(self._stats) >= STATS_QUEUE:
            try:
                self._stats.popleft()
                self.stats_rounds_dropped += 1
            except IndexError:  # the capture thread took them all meanwhile
                pass
        self._stats.append(stats)

    def _loop(self) -> None:
        poll, feed, tick = self.capture.poll, self.pipeline.feed, self.pipeline.tick
        rounds, feed_stats = self._stats, self.pipeline.feed_stats
        last_tick = time.time()
        try:
            while not self._stop.is_set():
                batch = poll(0.2)
                if batch is None:
                    break
                if batch.segments or batch.dns or batch.tls:  # a hello arrives in a batch of its own too
                    feed(batch)
                while rounds:  # after the batch: segments up to the sample are in the tracker
                    feed_stats(rounds.popleft())
                now = time.time()
                if now - last_tick >= TICK_S:
                    tick(now)
                    last_tick = now
            # Stopping: the block the kernel is still filling holds the last ~retire_ms of
            # connections (closed before SIGTERM); read it before the exporters flush.
            feed(self.capture.final())
        except Exception as exc:  # a bug, not traffic (traffic never raises): report, exit non-zero
            _log.exception("capture_loop_failed")
            self.failed = repr(exc)

    def stop(self, deadline: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self.capture.close()
        if self.prober is not None:
            self.prober.close()
        if self.backends is not None:
            self.backends.close()


class Agent:
    """`podwire run`: identity + telemetry + the HTTP listener + one capture thread per namespace.

    `netns_list` (simulations) runs one capture per named namespace; the default is one capture in
    `settings.netns` (None: the agent's own namespace, as on a real node).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        netns_list: Sequence[str | None] | None = None,
        extra_sinks: Sequence[Sink] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        from podwire.identity import build_service
        from podwire.telemetry.export import METRICS_CONTENT_TYPE, Telemetry
        from podwire.views.api import Views
        from podwire.views.http import HttpLimits, HttpServer, health_routes, metrics_route
        from podwire.views.store import ConnectionStore, StoreLimits

        self.settings = settings
        namespaces = list(netns_list) if netns_list is not None else [settings.netns]
        check_start(settings, namespaces)
        self.identity = build_service(settings)
        self.telemetry = Telemetry(settings, env)  # env: OTEL_* (None: the process's)
        self.store = ConnectionStore(StoreLimits.from_settings(settings))
        sinks: list[Sink] = [*self.telemetry.sinks, self.store, *extra_sinks]
        if len(namespaces) > 1:
            lock = threading.Lock()
            sinks = [LockedSink(s, lock) for s in sinks]
        self.captures: list[NodeCapture] = []
        try:
            for ns in namespaces:
                self.captures.append(NodeCapture(settings.replace(netns=ns), self.identity, sinks))
        except BaseException:  # leave nothing behind: sockets closed, exporters stopped
            for node in self.captures:
                node.capture.close()
            self.telemetry.shutdown(1.0)
            raise
        for node in self.captures:
            self.telemetry.add_source(node.snapshot)
        self.sampler: Sampler | None = None
        if settings.sockstats:
            from podwire.sockstats.sampler import NodeTarget, Sampler

            targets = [
                NodeTarget(
                    ns,
                    node.deliver_stats,
                    settings.netns_dir,
                    settings.interface_include,
                    settings.interface_exclude,
                )
                for ns, node in zip(namespaces, self.captures, strict=True)
            ]
            self.sampler = Sampler(targets, settings.sockstats_interval_s, settings.max_connections)
            self.telemetry.add_source(self._sockstats_snapshot)
        self.telemetry.add_source(self._identity_snapshot)
        self.telemetry.add_source(self._views_snapshot)
        self.http = HttpServer(*settings.listen, HttpLimits.from_settings(settings))
        health_routes(self.http, self.ready)
        metrics_route(self.http, self.telemetry.metrics_text, METRICS_CONTENT_TYPE)
        self.views = Views.from_settings(settings, self.store)
        self.views.register(self.http)

    def _views_snapshot(self) -> AgentSnapshot:
        from podwire.telemetry.metrics import AgentSnapshot

        v, h = self.store.stats, self.http.stats
        return AgentSnapshot(
            views_connections=len(self.store),
            views_evictions={"age": v.evicted_age, "size": v.evicted_size, "edges": v.edges_evicted},
            http_closed={
                "idlest_at_cap": h.evicted_at_cap,
                "refused_at_cap": h.refused_at_cap,
                "timeout": h.timed_out,
                "bad_request": h.bad_requests,
                "accept_error": h.accept_errors,
            },
        )

    def _identity_snapshot(self) -> AgentSnapshot:
        from podwire.telemetry.metrics import AgentSnapshot

        return AgentSnapshot(identity_misses=self.identity.stats().index.lookups_missed)

    def _sockstats_snapshot(self) -> AgentSnapshot:
        from podwire.telemetry.metrics import AgentSnapshot

        assert self.sampler is not None
        st = self.sampler.stats
        return AgentSnapshot(
            sockstats_dumps=st.dumps,
            sockstats_dump_seconds=st.dump_seconds,
            sockstats_sockets=st.sockets,
            sockstats_skipped=dict(st.skipped),
            sockstats_dropped=st.sockets_dropped + sum(c.stats_rounds_dropped for c in self.captures),
        )

    @property
    def failed(self) -> str | None:
        return next((c.failed for c in self.captures if c.failed is not None), None)

    def ready(self) -> bool:
        sampling = self.sampler is None or self.sampler.running
        return all(c.running for c in self.captures) and bool(self.identity.ready) and sampling

    def start(self) -> None:
        from podwire.views.http import raise_nofile_limit

        soft, hard = raise_nofile_limit()
        _log.info("open_files_limit", soft=soft, hard=hard)
        try:  # checked at construction; a race for the port still ends in one line
            self.http.start()
        except OSError as exc:
            host, port = self.settings.listen
            raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.identity.start()
        settle_heap()
        for node in self.captures:
            node.start()
        if self.sampler is not None:
            self.sampler.start()
        host, port = self.http.address
        _log.info("agent_started", listen=f"{host}:{port}", captures=len(self.captures))

    def stop(self, deadline_s: float = 5.0) -> None:
        """Stop capture, identity, export and the listener, within `deadline_s` overall."""
        deadline = time.monotonic() + deadline_s
        if self.sampler is not None:
            self.sampler.stop(deadline)
        for node in self.captures:
            node.stop(deadline)
        self.identity.stop(max(0.1, deadline - time.monotonic()))
        self.telemetry.shutdown(max(0.1, deadline - time.monotonic()))
        self.http.stop(max(0.1, deadline - time.monotonic()))
        _log.info("agent_stopped")


SHUTDOWN_DEADLINE_S = 5.0  # SIGTERM to exit, whatever the collector or the API server do
EXIT_MARGIN_S = 1.0  # of which the interpreter's own exit may take this much (thread joins, atexit)


class _StopFlag:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.at: float | None = None  # monotonic time of the first signal

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.at is None:
            self.at = time.monotonic()
        self.event.set()


def _exit_by(deadline: float, code: int) -> None:
    """Last resort: if the process is still here at `deadline` (a thread the interpreter joins at
    exit is stuck in a library call), leave now; everything worth keeping was flushed by stop()."""

    def hard_exit() -> None:
        with contextlib.suppress(Exception):
            _log.warning("shutdown_deadline_exceeded", action="exit now")
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), hard_exit)
    timer.daemon = True
    timer.start()


def run(settings: Settings) -> int:
    """`podwire run`: the node agent, until SIGTERM/SIGINT; exits within SHUTDOWN_DEADLINE_S of it."""
    from podwire.telemetry.export import ExportConfigError

    stop = _StopFlag()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent = Agent(settings)
    except (StartError, ConfigError, ExportConfigError) as exc:
        for line in str(exc).splitlines():
            print(f"podwire: {line}", file=sys.stderr)
        return 2
    try:
        agent.start()
    except StartError as exc:
        agent.stop(deadline_s=2.0)
        print(f"podwire: {exc}", file=sys.stderr)
        return 2
    code = 0
    try:
        while not stop.event.wait(0.5):
            if agent.failed is not None:
                code = 1
                break
    finally:
        began = stop.at if stop.at is not None else time.monotonic()
        deadline = began + SHUTDOWN_DEADLINE_S
        _exit_by(deadline - 0.2, code)
        agent.stop(deadline_s=max(0.5, deadline - EXIT_MARGIN_S - time.monotonic()))
    return code
