"""A views-only agent process for the fan-out test: its own store, fed with given connections, served
by the real listener and the real Views (fan-out included).  `python -m tests.views.peer_agent SPEC`.

SPEC (JSON): {"edges": [[client_workload, server_workload, side, count, c2s, s2c, duration(, sni)], ...],
"delay_s": seconds before /nodegraph/connections answers, "fail": answer 500 there,
"peers": "host:port,...", "timeout_s": per-peer timeout}.  Prints "PORT <n>" when listening.
"""

from __future__ import annotations

import json
import sys
import time

import msgspec

from podwire.config import Settings, parse_peers
from podwire.model import Side, TlsInfo
from podwire.views.api import Views
from podwire.views.http import HttpServer, Query, Response
from podwire.views.store import ConnectionStore
from tests.telemetry.factory import named, pod, record


def main(spec_text: str) -> None:
    spec = json.loads(spec_text)
    store = ConnectionStore()
    for client, server, side, count, c2s, s2c, duration, *sni in spec.get("edges", []):
        for _ in range(count):
            rec = record(side=Side(side), c2s=c2s, s2c=s2c, duration=duration, start=time.time() - duration)
            if sni:  # a TLS connection
                rec = msgspec.structs.replace(rec, tls=TlsInfo(server_name=sni[0], version="TLS 1.3"))
            store.on_connection(named(rec, pod(client), pod(server)))
    settings = Settings(
        views_peers=parse_peers(spec.get("peers", "")), views_peer_timeout_s=spec.get("timeout_s", 2.0)
    )
    views = Views.from_settings(settings, store)
    server = HttpServer("127.0.0.1", 0)
    views.register(server)
    local = views.connections

    def connections(query: Query) -> Response:
        time.sleep(spec.get("delay_s", 0.0))
        if spec.get("fail"):
            raise RuntimeError("this peer is broken on purpose")
        return local(query)

    server.route("/nodegraph/connections", connections)
    server.start()
    print("PORT", server.address[1], flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1])
