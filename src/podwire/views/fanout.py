"""Cluster-wide view for small clusters: one agent asks its peer agents and merges their edges.

Peers come from a static list (`views_peers`) and/or the Kubernetes API (pods matching
`views_peer_selector` in `views_peer_namespace`, re-listed at most every `PEER_CACHE_S`).  Each
peer's `/nodegraph/connections` (its own store only: no recursion) is fetched with at most
`views_fanout_concurrency` requests in flight and `views_peer_timeout_s` each; a peer that fails
or is too slow is reported and the answer is flagged `partial`.  Each agent stored only what it
counts (the metrics' exactly-once rule), so the merge is a sum.

For small clusters: every query touches every agent.  At scale, the metrics in Prometheus are the
map (the dashboards), not this.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from podwire import log
from podwire.views.nodegraph import EdgeItem

_log = log.get("podwire.views")

PEER_CACHE_S = 10.0
MAX_PEER_BYTES = 16 * 1024 * 1024  # a peer's answer larger than this is refused (its store is bounded)


@dataclass(frozen=True, slots=True)
class PeerResult:
    peer: str
    ok: bool
    seconds: float
    error: str | None = None
    value: Any = None  # what `parse` made of the peer's JSON

    def status(self) -> dict[str, Any]:
        return {"peer": self.peer, "ok": self.ok, "seconds": round(self.seconds, 3), "error": self.error}


class KubePeers:
    """Peer agents from the Kubernetes API: running pods matching a label selector."""

    def __init__(
        self, selector: str, namespace: str, port: int, kubeconfig: str | None, own_node: str | None
    ) -> None:
        self._selector, self._namespace, self._port = selector, namespace, port
        self._kubeconfig, self._own_node = kubeconfig, own_node
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[str, ...]] | None = None
        self._api: Any = None

    def __call__(self, timeout_s: float) -> tuple[str, ...]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < PEER_CACHE_S:
                return self._cached[1]
            if self._api is None:
                from kubernetes import client

                from podwire.identity.kube import load_client

                self._api = client.CoreV1Api(load_client(self._kubeconfig))
            pods = self._api.list_namespaced_pod(
                self._namespace, label_selector=self._selector, _request_timeout=timeout_s
            )
            peers = []
            for pod in pods.items:
                ip = pod.status.pod_ip if pod.status else None
                if not ip or (pod.status.phase or "") != "Running":
                    continue
                if self._own_node and pod.spec and pod.spec.node_name == self._own_node:
                    continue  # this agent answers for its own node from its own store
                peers.append(f"[{ip}]:{self._port}" if ":" in ip else f"{ip}:{self._port}")
            self._cached = (time.monotonic(), tuple(sorted(peers)))
            return self._cached[1]


class FanOut:
    """Asks peers in parallel, bounded, with a deadline each."""

    def __init__(
        self,
        static_peers: Sequence[str],
        discover: Callable[[float], Sequence[str]] | None,
        timeout_s: float,
        concurrency: int,
        max_peers: int,
    ) -> None:
        self._static = tuple(static_peers)
        self._discover = discover
        self.timeout_s = timeout_s
        self._concurrency = concurrency
        self._max_peers = max_peers

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self._discover is not None

    def peers(self) -> tuple[list[str], str | None]:
        """(peers, discovery error)."""
        peers = list(self._static)
        error = None
        if self._discover is not None:
            try:
                peers += [p for p in self._discover(self.timeout_s) if p not in peers]
            except Exception as exc:  # the API down: answer with what we have, flagged
                error = (
                    f"peer discovery failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                )
        if len(peers) > self._max_peers:
            error = f"{len(peers)} peers, asked the first {self._max_peers} (views_max_peers)"
            peers = peers[: self._max_peers]
        return peers, error

    def ask(
        self,
        peers: Sequence[str],
        path: str,
        query: dict[str, str],
        parse: Callable[[Any], Any],
    ) -> list[PeerResult]:
        if not peers:
            return []
        qs = urllib.parse.urlencode(query)
        # an overall deadline too: a peer trickling bytes must not hold the answer past its turn
        rounds = -(-len(peers) // self._concurrency)
        deadline = rounds * self.timeout_s + 0.5
        pool = ThreadPoolExecutor(min(self._concurrency, len(peers)), thread_name_prefix="podwire-fanout")
        try:
            futures = [pool.submit(self._one, p, f"http://{p}{path}?{qs}", parse) for p in peers]
            wait(futures, timeout=deadline)
            return [
                f.result() if f.done() else PeerResult(peer, False, deadline, error="timed out (overall)")
                for peer, f in zip(peers, futures, strict=True)
            ]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, peer: str, url: str, parse: Callable[[Any], Any]) -> PeerResult:
        start = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 (http to a peer)
                data = resp.read(MAX_PEER_BYTES + 1)
                if len(data) > MAX_PEER_BYTES:
                    raise ValueError("answer too large")
                if time.monotonic() - start > self.timeout_s:
                    raise TimeoutError("timed out")
            return PeerResult(peer, True, time.monotonic() - start, value=parse(json.loads(data)))
        except Exception as exc:  # any failure of one peer: flagged, never raised
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _log.debug("peer_failed", peer=peer, error=detail)
            return PeerResult(peer, False, time.monotonic() - start, error=detail)


def items_from_json(body: Any) -> tuple[EdgeItem, ...]:
    if not isinstance(body, list):
        raise ValueError("expected a JSON list of edges")
    return tuple(EdgeItem.from_json(item) for item in body)
