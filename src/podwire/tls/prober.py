"""Optional (off by default) TLS 1.3 certificate prober: TLS 1.3 encrypts the certificate, so
the agent may fetch the leaf itself from the server's address and port, with the SNI it saw.

Bounded everywhere: at most `concurrency` probes run at once (worker threads) and at most
`4 * concurrency` wait; a target (address, port, SNI) is probed at most once per `ttl_s`, success
or failure, and the cache holds at most `max_targets` targets (the oldest go first).  Every
failure (refused, timeout, handshake, bad certificate, queue full) is counted by reason.

Its own connections are recognised: each probe socket is bound to its local port *before* it
connects and that (address, port) is remembered, so the capture's records of the probe (the
agent talking to the server) are dropped by the pipeline (`owns`) and never counted as workload
traffic.  (k8spacket dials servers itself, and its dials show up as the node's connections.)

`lookup` never blocks the capture thread: it answers from the cache or schedules a probe; the
next connection to the same target gets the certificate.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from podwire.capture import netns
from podwire.tls.certificate import CertificateFacts, parse_der

Target = tuple[str, int, str | None]  # server address, port, SNI


@dataclass(frozen=True, slots=True)
class ProberLimits:
    concurrency: int = 4
    timeout_s: float = 3.0
    ttl_s: float = 3600.0
    max_targets: int = 4096


class CertificateProber:
    def __init__(
        self,
        limits: ProberLimits,
        namespace: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._netns = namespace
        self._clock = clock
        self._pool = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="podwire-tls-probe")
        self._lock = threading.Lock()
        self._cache: OrderedDict[Target, tuple[float, CertificateFacts | None]] = OrderedDict()
        self._pending = 0
        self._own: OrderedDict[tuple[str, int], float] = OrderedDict()  # our local endpoints
        self.failures: dict[str, int] = {}
        self.probes = 0
        self.own_dropped = 0  # records of our own probes that the pipeline dropped
        self._closed = False

    # ---- capture thread ------------------------------------------------------------------------

    def lookup(self, address: str, port: int, server_name: str | None) -> CertificateFacts | None:
        """The cached leaf for the target (None if unknown yet or failed); schedules a probe if due."""
        target = (address, port, server_name)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(target)
            if hit is not None and hit[0] > now:
                return hit[1]
            if self._closed:
                return None
            if self._pending >= 4 * self.limits.concurrency:
                self._fail("queue_full")
                return None
            # claim the target for ttl_s now, so one probe runs per target however many connections ask
            self._remember(target, now + self.limits.ttl_s, None)
            self._pending += 1
        self._pool.submit(self._probe, target)
        return None

    def owns(self, address: str, port: int) -> bool:
        """Is (address, port) the local end of one of our probes?  (Called per record.)"""
        if not self._own:
            return False
        with self._lock:
            return (address, port) in self._own

    # ---- worker threads ------------------------------------------------------------------------

    def _remember(self, target: Target, expires: float, facts: CertificateFacts | None) -> None:
        self._cache[target] = (expires, facts)
        self._cache.move_to_end(target)
        while len(self._cache) > self.limits.max_targets:
            self._cache.popitem(last=False)

    def _fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def _probe(self, target: Target) -> None:
        address, port, server_name = target
        facts: CertificateFacts | None = None
        reason: str | None = None
        try:
            der = self._fetch(address, port, server_name)
            facts = parse_der(der) if der else None
            if facts is None:
                reason = "no_certificate"
        except TimeoutError:
            reason = "timeout"
        except ConnectionRefusedError:
            reason = "refused"
        except ssl.SSLError:
            reason = "handshake"
        except OSError:
            reason = "network"
        except ValueError:
            reason = "certificate"
        except Exception:  # cryptography's errors on a hostile certificate are not one type
            reason = "certificate"
        with self._lock:
            self._pending -= 1
            self.probes += 1
            if reason is not None:
                self._fail(reason)
            self._remember(target, self._clock() + self.limits.ttl_s, facts)

    def _fetch(self, address: str, port: int, server_name: str | None) -> bytes | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with netns.inside(self._netns):
            sock = socket.socket(family, socket.SOCK_STREAM)
            route = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # The source address the route gives (a UDP connect sends nothing), then bind to it and
            # remember (address, port) *before* the SYN: the capture may report the connection
            # opened before connect() returns.
            with route:
                route.connect((address, port))
                local = route.getsockname()[0]
            sock.settimeout(self.limits.timeout_s)
            sock.bind((local, 0))
            with self._lock:
                self._own[(local, sock.getsockname()[1])] = self._clock()
                while len(self._own) > 4 * self.limits.max_targets:
                    self._own.popitem(last=False)
            sock.connect((address, port))
            # We only read the certificate: no verification (expired or self-signed ones are what
            # we want to report), nothing sent after the handshake.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
                return tls.getpeercert(binary_form=True)
        finally:
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
