"""The static inventory YAML describing a built mini-cluster (the shape `identity/inventory.py` reads).

    pods:     [{ip, ips, namespace, name, workload, workload_kind, node}]   ips: IPv4 and IPv6
    services: [{ip, ips, namespace, name}]
    nodes:    [{ip, ips, name}]      wire addresses and the bridge (pod gateway) addresses
    external: [{cidr, name}]

`ip` is the first address and `ips` all of them (the reader accepts both; extra keys are allowed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from podwire.demo.cluster import Cluster

DEFAULT_EXTERNAL: tuple[tuple[str, str], ...] = (("0.0.0.0/0", "internet"), ("::/0", "internet"))


@dataclass(frozen=True, slots=True)
class PodEntry:
    ips: tuple[str, ...]
    namespace: str
    name: str
    workload: str
    workload_kind: str
    node: str


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    ips: tuple[str, ...]
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class NodeEntry:
    ips: tuple[str, ...]
    name: str


@dataclass(frozen=True, slots=True)
class ExternalEntry:
    cidr: str
    name: str


@dataclass(frozen=True, slots=True)
class Inventory:
    pods: tuple[PodEntry, ...]
    services: tuple[ServiceEntry, ...]
    nodes: tuple[NodeEntry, ...]
    external: tuple[ExternalEntry, ...]

    def to_yaml(self) -> str:
        doc = {
            "pods": [
                {
                    "ip": p.ips[0],
                    "ips": list(p.ips),
                    "namespace": p.namespace,
                    "name": p.name,
                    "workload": p.workload,
                    "workload_kind": p.workload_kind,
                    "node": p.node,
                }
                for p in self.pods
            ],
            "services": [
                {"ip": s.ips[0], "ips": list(s.ips), "namespace": s.namespace, "name": s.name}
                for s in self.services
            ],
            "nodes": [{"ip": n.ips[0], "ips": list(n.ips), "name": n.name} for n in self.nodes],
            "external": [{"cidr": e.cidr, "name": e.name} for e in self.external],
        }
        text: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        return text


def inventory_for(cluster: Cluster, external: Iterable[tuple[str, str]] | None = None) -> Inventory:
    """Every pod, service and node address of a built cluster, plus (cidr, name) externals.

    external=None: the cluster's external hosts' CIDRs, then 0.0.0.0/0 and ::/0 as "internet".
    """
    if external is None:
        own = [(cidr, e.name) for e in cluster.externals for cidr in (e.cidr_v4, e.cidr_v6)]
        external = (*own, *DEFAULT_EXTERNAL)
    pods = tuple(
        PodEntry((p.ipv4, p.ipv6), p.namespace, p.name, p.workload, p.workload_kind, p.node)
        for p in cluster.pods
    )
    services = tuple(
        ServiceEntry(tuple(ip for ip in (s.ip, s.ipv6) if ip), s.namespace, s.name) for s in cluster.services
    )
    nodes = tuple(
        NodeEntry(tuple(ip for ip in (n.ipv4, n.ipv6, n.gateway_v4, n.gateway_v6) if ip), n.name)
        for n in cluster.nodes
    )
    return Inventory(pods, services, nodes, tuple(ExternalEntry(c, n) for c, n in external))


def write_inventory(
    cluster: Cluster, path: str | Path, external: Iterable[tuple[str, str]] | None = None
) -> Path:
    """Write the cluster's inventory YAML to `path` (atomically) and return the path."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(inventory_for(cluster, external).to_yaml(), encoding="utf-8")
    tmp.replace(target)
    return target
