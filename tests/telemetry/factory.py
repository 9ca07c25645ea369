"""Real ConnectionRecord / ConnectionOpened / Identity values for telemetry tests."""

from __future__ import annotations

import itertools
import random

from podwire.model import (
    CloseInitiator,
    ConnectionOpened,
    ConnectionRecord,
    Endpoint,
    Identity,
    IdentityKind,
    NamedConnection,
    Outcome,
    Side,
)

_ports = itertools.count(40000)
T0 = 1_764_400_000.0  # a fixed unix time: spans and points are checked exactly


def pod(
    workload: str, ns: str = "shop", kind: str = "Deployment", name: str | None = None, node: str = "node-a"
) -> Identity:
    return Identity(
        IdentityKind.POD, name or f"{workload}-7d9f-x{random.randrange(100, 999)}", ns, workload, kind, node
    )


def external(name: str = "internet") -> Identity:
    return Identity(IdentityKind.EXTERNAL, name)


def service(name: str, ns: str = "shop") -> Identity:
    return Identity(IdentityKind.SERVICE, name, ns)


def host_pod(workload: str, ns: str = "kube-system") -> Identity:
    return Identity(
        IdentityKind.POD, f"{workload}-node-a", ns, workload, "DaemonSet", "node-a", host_network=True
    )


def record(
    outcome: Outcome = Outcome.CLOSED,
    side: Side | None = Side.CLIENT,
    *,
    client_ip: str = "10.244.1.10",
    server_ip: str = "10.244.2.20",
    client_port: int | None = None,
    server_port: int = 8080,
    start: float = T0,
    duration: float | None = 0.25,
    c2s: int | None = 1000,
    s2c: int | None = 5000,
    rtt: float | None = 0.0004,
    initiator: CloseInitiator | None = CloseInitiator.CLIENT,
    client_isn: int | None = None,
    server_isn: int | None = None,
    point: int = 7,
    network_type: str = "ipv4",
) -> ConnectionRecord:
    failed = outcome in (Outcome.REFUSED, Outcome.TIMEOUT)
    if client_isn is None:
        client_isn = random.getrandbits(32)
    if server_isn is None and not failed:
        server_isn = random.getrandbits(32)
    return ConnectionRecord(
        point=point,
        client=Endpoint(client_ip, client_port or next(_ports)),
        server=Endpoint(server_ip, server_port),
        network_type=network_type,
        start_time=start,
        end_time=None if duration is None else start + duration,
        duration_s=duration,
        outcome=outcome,
        close_initiator=None if failed or outcome is Outcome.OPEN else initiator,
        bytes_client_to_server=None if failed else c2s,
        bytes_server_to_client=None if failed else s2c,
        handshake_rtt_s=None if failed else rtt,
        started_before_capture=False,
        client_guessed=False,
        client_isn=client_isn,
        server_isn=None if failed else server_isn,
        observed_side=side,
    )


def opened_for(rec: ConnectionRecord) -> ConnectionOpened:
    assert rec.start_time is not None and rec.client_isn is not None and rec.server_isn is not None
    return ConnectionOpened(
        rec.point,
        rec.client,
        rec.server,
        rec.start_time,
        rec.handshake_rtt_s,
        rec.client_isn,
        rec.server_isn,
        rec.observed_side,
    )


def named(rec: ConnectionRecord, client: Identity, server: Identity) -> NamedConnection:
    return NamedConnection(rec, client, server)
