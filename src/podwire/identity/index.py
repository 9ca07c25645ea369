"""The time-aware identity index: IP -> who held it, and since when.

Writers (the Kubernetes watch threads, the inventory loader) call `set`/`remove` under one lock.
The reader (the capture thread) never takes the lock: `resolve` does one dict hit on the
common path.  Writers only ever *replace* values in the reader-visible dicts (`_now`,
`_spans`) with new immutable objects, and a dict get/set is atomic under the GIL, so a
reader sees either the old or the new identity, never a torn one.

Pod IPs are reused.  For every IP the index keeps the timeline of its *best* holder
(pod > service > node > hostNetwork pod) as non-overlapping spans, so a connection whose
event arrives late is still named by who held the address when it started.  Spans that
ended more than `history_s` ago are pruned, and each IP keeps at most `max_spans` of
them, so memory stays bounded under churn.
"""

from __future__ import annotations

import ipaddress
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from podwire.model import UNKNOWN_EXTERNAL, Identity, IdentityKind

NEG_INF = -math.inf
LEAVE_GRACE_S = 30.0
POS_INF = math.inf
# Missed IPv6 addresses -> their canonical spelling (a pure function of the text, so caching it
# changes no result): without it every lookup of an address no pod holds re-parses it.
CANON_CACHE_SIZE = 65_536

_intern = sys.intern


def rank(identity: Identity) -> int:
    """Precedence among holders of one IP: lower wins."""
    kind = identity.kind
    if kind is IdentityKind.POD:
        return 0
    if kind is IdentityKind.SERVICE:
        return 1
    if kind is IdentityKind.NODE:
        return 3 if identity.host_network else 2
    return 4


def make_identity(
    kind: IdentityKind,
    name: str,
    namespace: str | None = None,
    workload: str | None = None,
    workload_kind: str | None = None,
    node: str | None = None,
    host_network: bool = False,
) -> Identity:
    """An Identity with its repeated strings interned (namespaces, workloads and nodes repeat a lot)."""
    return Identity(
        kind=kind,
        name=name,
        namespace=_intern(namespace) if namespace is not None else None,
        workload=_intern(workload) if workload is not None else None,
        workload_kind=_intern(workload_kind) if workload_kind is not None else None,
        node=_intern(node) if node is not None else None,
        host_network=host_network,
    )


def canonical_ip(text: str) -> str:
    """The textual form capture produces (inet_ntop): IPv4 as is, IPv6 compressed lower case.

    Raises ValueError for anything that is not an IP address.
    """
    if ":" not in text:
        parts = text.split(".")
        if len(parts) == 4 and all(
            p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0") for p in parts
        ):
            return text
    return ipaddress.ip_address(text).compressed


class Fallback(Protocol):
    """Who an address is when no pod, service or node holds it (the external table)."""

    def resolve(self, address: str, at: float | None) -> Identity: ...


class _Unknown:
    def resolve(self, address: str, at: float | None) -> Identity:
        return UNKNOWN_EXTERNAL


class Span:
    """`identity` held the IP from `since` until `until` (inf: still holds it)."""

    __slots__ = ("identity", "key", "since", "until")

    def __init__(self, since: float, until: float, identity: Identity, key: str) -> None:
        self.since = since
        self.until = until
        self.identity = identity
        self.key = key

    def __repr__(self) -> str:
        return f"Span({self.since}, {self.until}, {self.identity!r}, {self.key!r})"


class _Holder:
    """Writer-side record of one source object (a pod, a service, a node, an inventory entry)."""

    __slots__ = ("addresses", "identity", "rank", "since")

    def __init__(self, identity: Identity, addresses: tuple[str, ...], since: float) -> None:
        self.identity = identity
        self.addresses = addresses
        self.rank = rank(identity)
        self.since = since


@dataclass(frozen=True, slots=True)
class IndexStats:
    keys: int
    addresses: int
    addresses_with_history: int
    spans: int
    sets: int
    removes: int
    pruned_spans: int
    lookups_missed: int  # no pod, service or node held the address (went to the external table)
    lookups_historical: int  # resolved from history rather than the current holder


class IdentityIndex:
    """IP -> identity over time.  Thread-safe for many writers and one or more lock-free readers."""

    def __init__(
        self,
        history_s: float = 3600.0,
        fallback: Fallback | None = None,
        clock: Callable[[], float] = time.time,
        max_spans: int = 16,
    ) -> None:
        if history_s <= 0:
            raise ValueError("history_s must be positive")
        self.history_s = history_s
        self.fallback: Fallback = fallback if fallback is not None else _Unknown()
        self._clock = clock
        self._max_spans = max(2, max_spans)
        self._lock = threading.Lock()
        # Reader-visible.  _now: the best current holder of each IP.  _spans: only for IPs whose
        # best holder changed at least once (or that have none now but had one within history).
        self._now: dict[str, Identity] = {}
        self._spans: dict[str, tuple[Span, ...]] = {}
        # Writer-only.
        self._keys: dict[str, _Holder] = {}
        self._ip_keys: dict[str, str | list[str]] = {}  # IP -> key(s) holding it now
        self._current: dict[str, Span] = {}  # IP -> open span of its best holder
        self._last_prune = clock()
        self._sets = 0
        self._removes = 0
        self._pruned = 0
        self.lookups_missed = 0
        self.lookups_historical = 0
        self._canon: dict[str, str] = {}  # bounded by CANON_CACHE_SIZE (cleared when full)

    # ---- reading (capture thread; no lock) ------------------------------------------------

    def resolve(self, address: str, at: float | None = None) -> Identity:
        """Who held `address` at time `at` (unix seconds; None = now)."""
        ident = self._now.get(address)
        if ident is not None and (at is None or address not in self._spans):
            return ident
        return self._resolve_slow(address, at, ident)

    def _resolve_slow(self, address: str, at: float | None, ident: Identity | None) -> Identity:
        spans = self._spans.get(address)
        if spans is not None and at is not None:
            found = _pick(spans, at)
            if found is not None:
                if found is not ident:
                    self.lookups_historical += 1
                return found
        if ident is not None:
            return ident
        if ":" in address and spans is None:
            # Same address, other spelling (e.g. upper-case or uncompressed IPv6).
            canon = self._canon.get(address)
            if canon is None:
                try:
                    canon = ipaddress.ip_address(address).compressed
                except ValueError:
                    canon = address
                if canon == address:
                    canon = address  # the same object, not a second copy (the cache holds 65,536)
                if len(self._canon) >= CANON_CACHE_SIZE:
                    self._canon = {}  # bounded: start over rather than track recency
                self._canon[address] = canon
            if canon != address:
                return self.resolve(canon, at)
        self.lookups_missed += 1
        return self.fallback.resolve(address, at)

    def holder(self, address: str, at: float | None = None) -> Identity | None:
        """Like resolve, but None where no pod, service or node held the address."""
        ident = self._now.get(address)
        spans = self._spans.get(address)
        if spans is not None and at is not None:
            return _pick(spans, at)
        return ident

    def get(self, key: str) -> tuple[Identity, tuple[str, ...]] | None:
        """The identity and addresses a source object holds now."""
        with self._lock:
            holder = self._keys.get(key)
            return (holder.identity, holder.addresses) if holder is not None else None

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def history(self, address: str) -> tuple[Span, ...]:
        """The timeline of `address` (oldest first), including the open span of its current holder."""
        with self._lock:
            spans = self._spans.get(address)
            if spans is not None:
                return spans
            cur = self._current.get(address)
            return (cur,) if cur is not None else ()

    def __len__(self) -> int:
        return len(self._now)

    def __contains__(self, address: object) -> bool:
        return address in self._now

    # ---- writing (source threads; short critical sections) --------------------------------

    def set(self, key: str, addresses: Iterable[str], identity: Identity, at: float | None = None) -> None:
        """Source object `key` now holds exactly `addresses` as `identity` (replacing what it held)."""
        now = self._clock() if at is None else at
        addrs = tuple(dict.fromkeys(addresses))
        with self._lock:
            self._sets += 1
            old = self._keys.get(key)
            if old is not None and old.identity == identity and old.addresses == addrs:
                return
            if old is not None:
                for ip in old.addresses:
                    if ip not in addrs:
                        self._drop_key(ip, key)
            since = old.since if old is not None else now
            holder = _Holder(identity, addrs, since)
            self._keys[key] = holder
            for ip in addrs:
                if old is None or ip not in old.addresses:
                    self._add_key(ip, key)
            touched = set(addrs)
            if old is not None:
                touched.update(old.addresses)
            for ip in touched:
                self._refresh(ip, now)
            self._maybe_prune(now)

    def set_many(self, items: Iterable[tuple[str, Iterable[str], Identity]], at: float | None = None) -> None:
        for key, addresses, identity in items:
            self.set(key, addresses, identity, at)

    def remove(self, key: str, at: float | None = None) -> bool:
        """Source object `key` is gone; its addresses stay in history until pruned."""
        now = self._clock() if at is None else at
        with self._lock:
            old = self._keys.pop(key, None)
            if old is None:
                return False
            self._removes += 1
            for ip in old.addresses:
                self._drop_key(ip, key)
            for ip in old.addresses:
                self._refresh(ip, now)
            self._maybe_prune(now)
            return True

    def retain(self, keep: Callable[[str], bool], at: float | None = None) -> int:
        """Remove every key for which `keep(key)` is false (a relist's diff).  Returns the count."""
        with self._lock:
            gone = [k for k in self._keys if not keep(k)]
        for k in gone:
            self.remove(k, at)
        return len(gone)

    def _add_key(self, ip: str, key: str) -> None:
        cur = self._ip_keys.get(ip)
        if cur is None:
            self._ip_keys[ip] = key
        elif isinstance(cur, str):
            if cur != key:
                self._ip_keys[ip] = [cur, key]
        elif key not in cur:
            cur.append(key)

    def _drop_key(self, ip: str, key: str) -> None:
        cur = self._ip_keys.get(ip)
        if cur is None:
            return
        if isinstance(cur, str):
            if cur == key:
                del self._ip_keys[ip]
            return
        if key in cur:
            cur.remove(key)
        if len(cur) == 1:
            self._ip_keys[ip] = cur[0]

    def _best(self, ip: str) -> tuple[str, _Holder] | None:
        cur = self._ip_keys.get(ip)
        if cur is None:
            return None
        if isinstance(cur, str):
            return cur, self._keys[cur]
        best: tuple[str, _Holder] | None = None
        for k in cur:
            h = self._keys[k]
            # Lower rank wins; among equals, the newest holder (a stale one would have been removed).
            if best is None or (h.rank, -h.since) < (best[1].rank, -best[1].since):
                best = (k, h)
        return best

    def _refresh(self, ip: str, now: float) -> None:
        """Recompute the best holder of `ip` and extend its timeline if it changed."""
        best = self._best(ip)
        cur = self._current.get(ip)
        if best is not None and cur is not None and cur.key == best[0]:
            if cur.identity is not best[1].identity:
                # Same object, new facts (e.g. its owner became known): fix the open span in place
                # rather than inventing history.
                cur.identity = best[1].identity
                self._now[ip] = cur.identity
            return
        if best is None and cur is None:
            return
        spans = self._spans.get(ip)
        if spans is None:
            spans = (cur,) if cur is not None else ()
        if cur is not None:
            cur.until = now
            if cur.until <= cur.since:
                spans = spans[:-1]  # held for no time at all (e.g. two holders in one list)
        if best is not None:
            key, holder = best
            # The first holder we know of held it since it appeared; a successor from now on.
            since = holder.since if cur is None and not spans else now
            new = Span(since, POS_INF, holder.identity, key)
            self._current[ip] = new
            spans = (*spans, new)
        else:
            self._current.pop(ip, None)
        if len(spans) > self._max_spans:
            self._pruned += len(spans) - self._max_spans
            spans = spans[-self._max_spans :]
        if len(spans) <= 1 and best is not None:
            self._spans.pop(ip, None)  # a single current span needs no timeline
        else:
            self._spans[ip] = spans
        if best is not None:
            self._now[ip] = best[1].identity
        else:
            self._now.pop(ip, None)

    def _maybe_prune(self, now: float) -> None:
        if now - self._last_prune >= min(60.0, self.history_s / 10):
            self._prune_locked(now)

    def prune(self, now: float | None = None) -> int:
        """Drop spans that ended more than history_s ago.  Returns how many were dropped."""
        with self._lock:
            return self._prune_locked(self._clock() if now is None else now)

    def _prune_locked(self, now: float) -> int:
        self._last_prune = now
        horizon = now - self.history_s
        dropped = 0
        for ip, spans in list(self._spans.items()):
            if spans[0].until >= horizon:
                continue
            kept = tuple(s for s in spans if s.until >= horizon)
            dropped += len(spans) - len(kept)
            if not kept or (len(kept) == 1 and kept[0].until == POS_INF):
                del self._spans[ip]
            else:
                self._spans[ip] = kept
        self._pruned += dropped
        return dropped

    def stats(self) -> IndexStats:
        with self._lock:
            return IndexStats(
                keys=len(self._keys),
                addresses=len(self._now),
                addresses_with_history=len(self._spans),
                # Timelines end with their open span when the address is held: count it once.
                spans=len(self._current)
                + sum(len(s) - (s[-1].until == POS_INF) for s in self._spans.values()),
                sets=self._sets,
                removes=self._removes,
                pruned_spans=self._pruned,
                lookups_missed=self.lookups_missed,
                lookups_historical=self.lookups_historical,
            )

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._now))


def _pick(spans: tuple[Span, ...], at: float) -> Identity | None:
    """The span holding `at`; in a gap between holders, the nearer one in time."""
    if not spans:
        return None
    # Spans are few (bounded) and late events are usually recent: scan from the newest.
    after: Span | None = None
    for span in reversed(spans):
        if span.since <= at:
            if at < span.until:
                return span.identity
            if after is None:
                # Nobody holds it now.  An event stamped shortly after the last holder left is
                # still its own (deletes are seen late); long after, the address was free.
                return span.identity if at - span.until <= LEAVE_GRACE_S else None
            return span.identity if at - span.until <= after.since - at else after.identity
        after = span
    return spans[0].identity  # before anything we know of: the first holder
