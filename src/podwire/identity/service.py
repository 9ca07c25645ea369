"""The identity service the agent wires in: index + external names + inventory + Kubernetes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from podwire import log
from podwire.config import ConfigError, Settings
from podwire.identity import inventory as inventory_mod
from podwire.identity.external import CidrError, ExternalNames, ExternalStats
from podwire.identity.index import IdentityIndex, IndexStats
from podwire.identity.kube import KubeConfigError, KubeSource, KubeStats, in_cluster, load_client
from podwire.identity.kubestore import KubeStore
from podwire.identity.naming import name_connection
from podwire.model import ConnectionRecord, DnsAnswer, Identity, NamedConnection

_log = log.get("podwire.identity")


@dataclass(frozen=True, slots=True)
class IdentityStats:
    ready: bool
    index: IndexStats
    external: ExternalStats
    kube: KubeStats | None
    inventory_entries: int


class IdentityService:
    """Resolves addresses for the pipeline (`resolve` is the index's own, lock-free method)."""

    def __init__(
        self,
        index: IdentityIndex,
        external: ExternalNames,
        kube: KubeSource | None = None,
        inventory: inventory_mod.Inventory | None = None,
    ) -> None:
        self.index = index
        self.external = external
        self.kube = kube
        self.inventory = inventory
        # Bound once: the capture thread calls this per connection end; no extra call layer.
        self.resolve: Callable[[str, float | None], Identity] = index.resolve
        self._started = False

    @property
    def ready(self) -> bool:
        """True once every configured source has its first full view (for /readyz)."""
        return self.kube is None or self.kube.ready

    def learn_dns(self, answers: Iterable[DnsAnswer]) -> None:
        if answers:
            self.external.learn(answers)

    def name(self, record: ConnectionRecord) -> NamedConnection:
        return name_connection(self, record)

    def start(self) -> None:
        if self.kube is not None and not self._started:
            self.kube.start()
        self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        if self.kube is not None and self._started:
            self.kube.stop(timeout)
        self._started = False

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready; raises KubeAccessError when RBAC forbids a needed kind."""
        if self.kube is None:
            return True
        return self.kube.wait_ready(timeout)

    def stats(self) -> IdentityStats:
        return IdentityStats(
            ready=self.ready,
            index=self.index.stats(),
            external=self.external.stats(),
            kube=self.kube.stats() if self.kube is not None else None,
            inventory_entries=len(self.inventory.entries) if self.inventory is not None else 0,
        )


def kube_wanted(settings: Settings) -> bool:
    if settings.kube == "off":
        return False
    if settings.kube == "on":
        return True
    return bool(settings.kubeconfig) or in_cluster()


def build_service(
    settings: Settings,
    *,
    api_client: Any = None,
    clock: Callable[[], float] = time.time,
) -> IdentityService:
    """The resolver for `settings`: inventory (if any), external CIDRs, Kubernetes (per `kube`).

    Bad input raises ConfigError with one line per problem.  Nothing connects until start().
    """
    inv: inventory_mod.Inventory | None = None
    if settings.inventory:
        inv = inventory_mod.load(settings.inventory)
    cidrs: list[tuple[str, str]] = list(inv.external) if inv is not None else []
    cidrs += list(settings.external_cidrs)  # settings after the file: they win for the same CIDR
    try:
        external = ExternalNames(cidrs, dns=settings.dns_names, clock=clock)
    except CidrError as exc:
        raise ConfigError([f"bad external CIDR: {exc}"]) from None
    index = IdentityIndex(history_s=settings.identity_history_s, fallback=external, clock=clock)
    if inv is not None:
        inv.apply(index)
        _log.info("inventory_loaded", file=inv.source, entries=len(inv.entries), cidrs=len(inv.external))
    kube: KubeSource | None = None
    if api_client is not None or kube_wanted(settings):
        if api_client is None:
            try:
                api_client = load_client(settings.kubeconfig)
            except KubeConfigError as exc:
                raise ConfigError([str(exc)]) from None
        kube = KubeSource(KubeStore(index), api_client, clock=clock)
    return IdentityService(index, external, kube, inv)


build = build_service
