"""TLS API: recent TLS connections from the views' store, k8spacket-compatible where fields map.

k8spacket v2 (internal/modules/tlsparser: injector.go, o11y/o11y_handler.go, model) serves
`/tlsparser/api/data` (a list of TLSConnection: `id`, `src`, `srcName`, `srcNamespace`, `dst`,
`dstName`, `dstPort`, `domain`, `usedTLSVersion`, `usedCipherSuite`, `lastSeen`; `from`/`to` in
epoch ms on `lastSeen`) and `/tlsparser/api/data/{id}` (TLSDetails: `id`, `domain`, `dst`, `port`,
`clientTLSVersions`, `clientCipherSuites`, `usedTLSVersion`, `usedCipherSuite`, `certificate`
{`notBefore`, `notAfter`, `serverChain`, `lastScrape`}).  podwire adds `dstNamespace`, `alpn`,
`ja3`, `ja3s`, `ja4`, `certificateNotAfter`, `deprecated` to the list and the whole record to the
details.  One item per connection (k8spacket kept one per src/dst pair).  `clientCipherSuites` is
the offer's IANA names in the client's order (GREASE left out, unknown codes as hex, as
`clientTLSVersions`); `serverChain` is the
leaf's subject and issuer (only the leaf is parsed); `lastScrape` is null (the certificate comes
from the handshake, not a scrape).

Ids are `<agent>-<n>`, unique across agents, so a details request fans out and the agent that
holds the id answers.
"""

from __future__ import annotations

from typing import Any

from podwire.model import TlsInfo
from podwire.views import nodegraph as ng
from podwire.views.records import record_json, rfc3339, tls_json
from podwire.views.store import Stored


def _ms_time(t: float) -> str:
    return ng.rfc3339_ms(t)


def connection_json(entry: Stored, agent: str) -> dict[str, Any]:
    tls = entry.conn.record.tls
    assert tls is not None
    return {
        "id": f"{agent}-{entry.id}",
        "src": entry.source.id,
        "srcName": entry.source.name,
        "srcNamespace": entry.source.namespace,
        "dst": entry.target.id,
        "dstName": entry.target.name,
        "dstNamespace": entry.target.namespace,
        "dstPort": entry.conn.record.server.port,
        "domain": tls.server_name or "",
        "usedTLSVersion": tls.version or "",
        "usedCipherSuite": tls.cipher or "",
        "alpn": tls.alpn,
        "ja3": tls.ja3,
        "ja3s": tls.ja3s,
        "ja4": tls.ja4,
        "certificateNotAfter": rfc3339(tls.certificate_not_after),
        "deprecated": tls.deprecated,
        "lastSeen": _ms_time(entry.last_seen),
    }


def details_json(entry: Stored, agent: str) -> dict[str, Any]:
    tls: TlsInfo | None = entry.conn.record.tls
    assert tls is not None
    chain = "; ".join(
        f"{k}: {v}"
        for k, v in (("subject", tls.certificate_subject), ("issuer", tls.certificate_issuer))
        if v
    )
    return {
        "id": f"{agent}-{entry.id}",
        "domain": tls.server_name or "",
        "dst": entry.target.id,
        "port": entry.conn.record.server.port,
        "clientTLSVersions": list(tls.client_versions),
        "clientCipherSuites": list(tls.client_ciphers),
        "usedTLSVersion": tls.version or "",
        "usedCipherSuite": tls.cipher or "",
        "certificate": {
            "notBefore": rfc3339(tls.certificate_not_before),
            "notAfter": rfc3339(tls.certificate_not_after),
            "serverChain": chain,
            "lastScrape": None,
        },
        "tls": tls_json(tls),
        "connection": record_json(entry.conn),
    }


def parse_id(text: str) -> tuple[str, int] | None:
    agent, sep, number = text.rpartition("-")
    if not sep or not agent or not number.isdigit() or len(text) > 200:
        return None
    return agent, int(number)
