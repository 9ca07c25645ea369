"""Names for addresses outside the cluster: a CIDR table, then names learned from DNS answers.

Never a blocking lookup: the CIDR table is in memory, DNS names come from answers the capture
already sniffed.  The CIDR match is per prefix length, longest first, one dict probe per length
in use; repeated addresses hit a bounded result cache (which keeps the catch-all's answer too).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from podwire.model import UNKNOWN_EXTERNAL, DnsAnswer, Identity, IdentityKind

_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


class CidrError(ValueError):
    """A CIDR table entry is not valid; the message names it."""


@dataclass(frozen=True, slots=True)
class ExternalStats:
    cidr_hits: int
    dns_hits: int
    unknown: int
    dns_names: int
    dns_learned: int
    dns_evicted: int
    cidrs: int


def external_identity(name: str) -> Identity:
    return Identity(kind=IdentityKind.EXTERNAL, name=sys.intern(name))


class CidrTable:
    """CIDR -> name; the narrowest (longest) matching prefix wins.  IPv4 and IPv6 kept apart."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        # version -> [(prefixlen, mask, {network int: Identity})], longest prefix first
        self._v4: list[tuple[int, int, dict[int, Identity]]] = []
        self._v6: list[tuple[int, int, dict[int, Identity]]] = []
        self._count = 0
        for cidr, name in entries:
            self.add(cidr, name)

    def add(self, cidr: str, name: str) -> None:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise CidrError(f"CIDR {cidr!r} ({name}): {exc}") from None
        if not name or not name.strip():
            raise CidrError(f"CIDR {cidr!r}: empty name")
        table = self._v4 if net.version == 4 else self._v6
        bits = net.max_prefixlen
        mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
        for plen, _mask, nets in table:
            if plen == net.prefixlen:
                if int(net.network_address) not in nets:
                    self._count += 1
                nets[int(net.network_address)] = external_identity(name.strip())
                return
        table.append((net.prefixlen, mask, {int(net.network_address): external_identity(name.strip())}))
        table.sort(key=lambda t: -t[0])
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def lookup(self, address: str, default: bool = True) -> Identity | None:
        """The narrowest named network holding `address`; None if none does (or not an IP).

        `default=False` leaves out a catch-all entry (0.0.0.0/0, ::/0)."""
        try:
            if ":" in address:
                table = self._v6
                if not table:
                    return None  # nothing named in this family: no need to parse the address
                value = _from_bytes(_inet_pton(socket.AF_INET6, address), "big")
            else:
                table = self._v4
                if not table:
                    return None
                value = _from_bytes(_inet_pton(socket.AF_INET, address), "big")
        except OSError:
            return None
        for plen, mask, nets in table:
            if plen == 0 and not default:
                break  # the catch-all is the caller's last resort (it is sorted last)
            hit = nets.get(value & mask)
            if hit is not None:
                return hit
        return None


class _Learned:
    __slots__ = ("expires", "identity")

    def __init__(self, identity: Identity, expires: float) -> None:
        self.identity = identity
        self.expires = expires


class ExternalNames:
    """CIDR table, then DNS-learned names, then a catch-all CIDR, then `external`.

    A configured network (e.g. `203.0.113.0/24: partner-api`) beats a learned DNS name: the user
    chose that name, and it keeps edge cardinality low.  A catch-all (`0.0.0.0/0: internet`) does
    not: it names only what no DNS answer named, so learned names stay visible beside it.
    """

    def __init__(
        self,
        cidrs: Iterable[tuple[str, str]] = (),
        dns: bool = True,
        max_dns_names: int = 65_536,
        min_ttl_s: float = 30.0,
        max_ttl_s: float = 86_400.0,
        cache_size: int = 65_536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cidrs = CidrTable(cidrs)
        self.dns_enabled = dns
        self._max_dns = max(1, max_dns_names)
        # Answers with tiny TTLs (CDNs hand out 5-60 s) still name the connections that follow them.
        self._min_ttl = min_ttl_s
        self._max_ttl = max_ttl_s
        self._cache_size = max(16, cache_size)
        self._clock = clock
        self._dns: OrderedDict[str, _Learned] = OrderedDict()  # address -> name, LRU order
        # Several capture threads may learn at once; lookups read without it (single dict gets).
        self._learn_lock = threading.Lock()
        # address -> (narrowest configured network, catch-all), both None where none matches;
        # bounded by cache_size (cleared when full)
        self._cidr_cache: dict[str, tuple[Identity | None, Identity | None]] = {}
        self._names: dict[str, Identity] = {}  # interned identities of learned names
        self.cidr_hits = 0
        self.dns_hits = 0
        self.unknown = 0
        self.dns_learned = 0
        self.dns_evicted = 0

    def add_cidr(self, cidr: str, name: str) -> None:
        self.cidrs.add(cidr, name)
        self._cidr_cache = {}

    def resolve(self, address: str, at: float | None = None) -> Identity:
        catch_all: Identity | None = None
        if self.cidrs:  # with no table (the default) there is nothing to cache
            cached = self._cidr_cache.get(address)
            if cached is None:
                network = self.cidrs.lookup(address, default=False)
                cached = (network, None if network is not None else self.cidrs.lookup(address))
                if len(self._cidr_cache) >= self._cache_size:
                    self._cidr_cache = {}  # bounded: start over rather than track recency
                self._cidr_cache[address] = cached
            network, catch_all = cached
            if network is not None:
                self.cidr_hits += 1
                return network
        learned = self._dns.get(address)
        if learned is not None:
            when = self._clock() if at is None else at
            if when <= learned.expires:
                self.dns_hits += 1
                return learned.identity
        if catch_all is not None:
            self.cidr_hits += 1
            return catch_all
        self.unknown += 1
        return UNKNOWN_EXTERNAL

    def learn(self, answers: Iterable[DnsAnswer]) -> int:
        """Remember names from sniffed DNS answers; returns how many were taken."""
        if not self.dns_enabled:
            return 0
        with self._learn_lock:
            return self._learn(answers)

    def _learn(self, answers: Iterable[DnsAnswer]) -> int:
        taken = 0
        dns = self._dns
        for ans in answers:
            name = ans.name.rstrip(".").lower()
            if not name or not ans.address:
                continue
            ident = self._names.get(name)
            if ident is None:
                if len(self._names) >= self._max_dns * 2:
                    self._names = {}
                ident = self._names[name] = external_identity(name)
            ttl = min(max(float(ans.ttl), self._min_ttl), self._max_ttl)
            old = dns.get(ans.address)
            expires = ans.ts + ttl
            if old is not None:
                # Keep the later expiry; a newer answer also renames the address.
                old.identity = ident
                old.expires = max(old.expires, expires)
                dns.move_to_end(ans.address)
            else:
                dns[ans.address] = _Learned(ident, expires)
                if len(dns) > self._max_dns:
                    self._evict()
            taken += 1
        self.dns_learned += taken
        return taken

    def _evict(self) -> None:
        """Over the bound: drop the least recently learned (insertion order tracks answer time)."""
        dns = self._dns
        while len(dns) > self._max_dns:
            dns.popitem(last=False)
            self.dns_evicted += 1

    def stats(self) -> ExternalStats:
        return ExternalStats(
            cidr_hits=self.cidr_hits,
            dns_hits=self.dns_hits,
            unknown=self.unknown,
            dns_names=len(self._dns),
            dns_learned=self.dns_learned,
            dns_evicted=self.dns_evicted,
            cidrs=len(self.cidrs),
        )
