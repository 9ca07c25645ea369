"""Naming both ends of a connection, and the JSON form of an identity in records."""

from __future__ import annotations

from typing import Any

from podwire.model import ConnectionRecord, Identity, IdentityKind, NamedConnection, Resolver


def name_connection(resolver: Resolver, record: ConnectionRecord) -> NamedConnection:
    """Resolve client and server by who held the addresses when the connection started
    (its end, when the start was never seen)."""
    at = record.start_time if record.start_time is not None else record.end_time
    resolve = resolver.resolve
    return NamedConnection(record, resolve(record.client.address, at), resolve(record.server.address, at))


def identity_json(identity: Identity) -> dict[str, Any]:
    """`{"kind": "pod", "namespace", "name", "workload", "workload_kind"}` for pods (+ "service" when
    reached through a Service);
    `{"kind": "service"|"node"|"external", "name"}` (+ "namespace" for services) otherwise."""
    if identity.kind is IdentityKind.POD:
        pod: dict[str, Any] = {
            "kind": "pod",
            "namespace": identity.namespace,
            "name": identity.name,
            "workload": identity.workload or identity.name,
            "workload_kind": identity.workload_kind or "Pod",
        }
        if identity.service is not None:
            pod["service"] = identity.service  # reached through this Service (conntrack DNAT)
        return pod
    out: dict[str, Any] = {"kind": str(identity.kind), "name": identity.name}
    if identity.kind is IdentityKind.SERVICE and identity.namespace is not None:
        out["namespace"] = identity.namespace
    return out
