"""Connection records as users see them: one JSON object per line, or a text table.

The JSON field names are a contract (issue 2/3): keep them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, TextIO

import msgspec

from podwire.identity.naming import identity_json
from podwire.model import Endpoint, Identity, IdentityKind, NamedConnection, TlsInfo


def _end(
    endpoint: Endpoint, identity: Identity, workloads: dict[Identity, dict[str, Any]] | None
) -> dict[str, Any]:
    if workloads is None:
        return {"address": endpoint.address, "port": endpoint.port, "workload": identity_json(identity)}
    # one JSON object per identity for a whole file (replay): identities repeat
    workload = workloads.get(identity)
    if workload is None:
        workload = workloads[identity] = identity_json(identity)
    return {"address": endpoint.address, "port": endpoint.port, "workload": workload}


def rfc3339(unix_s: float | None) -> str | None:
    """`2031-05-17T12:30:00Z` (UTC, whole seconds: certificates have no finer time)."""
    if unix_s is None:
        return None
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tls_json(tls: TlsInfo | None) -> dict[str, Any] | None:
    """The record's `tls` object (null when the connection showed no TLS handshake)."""
    if tls is None:
        return None
    return {
        "server_name": tls.server_name,
        "version": tls.version,
        "cipher": tls.cipher,
        "alpn": tls.alpn,
        "ja3": tls.ja3,
        "ja3s": tls.ja3s,
        "ja4": tls.ja4,
        "certificate_not_after": rfc3339(tls.certificate_not_after),
        "certificate_subject": tls.certificate_subject,
        "certificate_issuer": tls.certificate_issuer,
        "certificate_not_before": rfc3339(tls.certificate_not_before),
        "certificate_sans": list(tls.certificate_sans),
        "client_alpn": list(tls.client_alpn),
        "client_versions": list(tls.client_versions),
        "client_ciphers": list(tls.client_ciphers),
    }


def record_json(
    conn: NamedConnection, workloads: dict[Identity, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The record's JSON object; `workloads` (identity -> its JSON object, filled as it goes) lets
    records written together share their workload objects (they must not be changed then)."""
    r = conn.record
    # rounded inline, not by a helper: six calls per record were ~5% of a replay (py-spy)
    start, end, duration = r.start_time, r.end_time, r.duration_s
    rtt, srtt, min_rtt = r.handshake_rtt_s, r.rtt_s, r.min_rtt_s
    return {
        "client": _end(r.client, conn.client, workloads),
        "server": _end(r.server, conn.server, workloads),
        "network_type": r.network_type,
        "start_time": None if start is None else round(start, 6),
        "end_time": None if end is None else round(end, 6),
        "duration_s": None if duration is None else round(duration, 6),
        "outcome": str(r.outcome),
        "close_initiator": None if r.close_initiator is None else str(r.close_initiator),
        "bytes_client_to_server": r.bytes_client_to_server,
        "bytes_server_to_client": r.bytes_server_to_client,
        "handshake_rtt_s": None if rtt is None else round(rtt, 7),
        "rtt_s": None if srtt is None else round(srtt, 7),
        "min_rtt_s": None if min_rtt is None else round(min_rtt, 7),
        "retransmits": r.retransmits,
        "started_before_capture": r.started_before_capture,
        "client_guessed": r.client_guessed,
        "observed_side": None if r.observed_side is None else str(r.observed_side),
        "tls": tls_json(r.tls),
    }


_encode = msgspec.json.Encoder().encode  # ~5x json.dumps on these dicts (issue 13's replay profile)
_LINES_PER_WRITE = 1024  # one write per block of lines, not one per record


def write_jsonl(conns: Iterable[NamedConnection], out: TextIO) -> int:
    n = 0
    block: list[bytes] = []
    workloads: dict[Identity, dict[str, Any]] = {}
    for conn in conns:
        block.append(_encode(record_json(conn, workloads)))
        n += 1
        if len(block) >= _LINES_PER_WRITE:
            out.write(b"\n".join(block).decode() + "\n")
            block.clear()
    if block:
        out.write(b"\n".join(block).decode() + "\n")
    return n


def _who(endpoint: Endpoint, identity: Identity) -> str:
    if identity.kind is IdentityKind.POD:
        return f"{identity.namespace}/{identity.workload_name}"
    if identity.kind is IdentityKind.EXTERNAL and identity.name == "external":
        return endpoint.address
    return identity.name


def _num(value: float | int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


TABLE_HEADER = (
    "client",
    "server",
    "port",
    "outcome",
    "closed_by",
    "c->s bytes",
    "s->c bytes",
    "duration_s",
    "rtt_ms",
)


def table_row(conn: NamedConnection) -> tuple[str, ...]:
    r = conn.record
    return (
        _who(r.client, conn.client),
        _who(r.server, conn.server),
        str(r.server.port),
        str(r.outcome),
        "-" if r.close_initiator is None else str(r.close_initiator),
        _num(r.bytes_client_to_server),
        _num(r.bytes_server_to_client),
        _num(r.duration_s, "{:.6f}"),
        _num(None if r.handshake_rtt_s is None else r.handshake_rtt_s * 1000, "{:.3f}"),
    )


def write_table(conns: Iterable[NamedConnection], out: TextIO) -> int:
    rows = [table_row(c) for c in conns]
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(TABLE_HEADER)
    ]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(line.format(*TABLE_HEADER).rstrip() + "\n")
    for row in rows:
        out.write(line.format(*row).rstrip() + "\n")
    return len(rows)
