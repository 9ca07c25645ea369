"""The demo's own end-to-end check, as a user runs it: `podwire demo --duration 50 --no-tui`.

Its final table must show exactly the refused, reset and external connections the traffic
generator made (the generator's counts are in its "traffic stopped" log line), and the busiest
edge must grow in every 5 s report: a capture that stops after a while fails here.  Its long-lived
connection (loadgen to db, through 3% random loss) shows its bytes rising while it is open, an RTT
and retransmits, and its exact bytes once closed (socket stats).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (network namespaces)"),
    pytest.mark.timeout(240),
]

DURATION_S = 50
_EDGE = re.compile(
    r"^t=(?P<t>\d+) edge (?P<client>.+?) -> (?P<server>.+?):(?P<port>\d+) open=(?P<open>\d+) "
    r"conns=(?P<conns>\d+) closed=(?P<closed>\d+) reset=(?P<reset>\d+) refused=(?P<refused>\d+) "
    r"timeout=(?P<timeout>\d+) bytes_c2s=(?P<bytes_c2s>\d+) bytes_s2c=(?P<bytes_s2c>\d+) .*"
    r"rtt_ms=(?P<rtt_ms>\S+) retransmits=(?P<retransmits>\d+)$"
)


@dataclass(frozen=True)
class Edge:
    t: int
    client: str
    server: str
    port: int
    conns: int
    closed: int
    reset: int
    refused: int
    timeout: int
    open: int
    bytes_c2s: int
    bytes_s2c: int
    rtt_ms: str
    retransmits: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.client, self.server, self.port)


def _parse(lines: list[str]) -> list[Edge]:
    out = []
    for line in lines:
        m = _EDGE.match(line)
        if m:
            d = m.groupdict()
            out.append(
                Edge(
                    int(d["t"]),
                    d["client"],
                    d["server"],
                    int(d["port"]),
                    *(int(d[k]) for k in ("conns", "closed", "reset", "refused", "timeout", "open")),
                    int(d["bytes_c2s"]),
                    int(d["bytes_s2c"]),
                    d["rtt_ms"],
                    int(d["retransmits"]),
                )
            )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_table_equals_what_its_traffic_generator_made() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "podwire",
            "demo",
            "--duration",
            str(DURATION_S),
            "--no-tui",
            "--listen",
            f"127.0.0.1:{_free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.splitlines()
    assert "final:" in out, done.stdout[-2000:]
    cut = out.index("final:")
    reports = _parse(out[:cut])
    final = {e.key: e for e in _parse(out[cut + 1 :])}
    stopped = [json.loads(line) for line in done.stderr.splitlines() if '"traffic stopped"' in line]
    assert len(stopped) == 1, done.stderr[-2000:]
    made: dict[str, int] = stopped[0]["counts"]  # "kind/outcome" -> connections the client made
    errors = {k: v for k, v in made.items() if k.endswith("/error")}
    assert not errors, f"the traffic generator itself failed: {errors}"

    loadgen = {key: e for key, e in final.items() if key[0] == "tools/loadgen"}
    refused = [e for e in loadgen.values() if e.refused]
    assert [e.server for e in refused] == ["shop/api"], loadgen
    assert refused[0].refused == made["refused/refused"] > 0
    reset = loadgen[("tools/loadgen", "shop/api", 8080)]
    assert reset.reset == made["reset/reset"] > 0
    external = [e for e in loadgen.values() if "partner-api" in e.server]
    assert len(external) == 1, loadgen
    assert external[0].closed == made["external/closed"] > 0
    assert not [e for e in final.values() if e.timeout], "false timeouts"

    busiest = max(final.values(), key=lambda e: e.conns).key
    times = sorted({e.t for e in reports})
    assert len(times) >= DURATION_S // 5 - 2, f"too few reports: {times}"
    series = [next((e.conns for e in reports if e.t == t and e.key == busiest), 0) for t in times]
    stalled = [(times[i], a, b) for i, (a, b) in enumerate(itertools.pairwise(series)) if b <= a]
    assert not stalled, f"busiest edge {busiest} stopped growing (t, before, after): {stalled}; {series}"

    # socket stats: the long-lived connection, open the whole run, over the lossy path to db
    from podwire.demo.traffic import LONG_LIVED_RATE, TrafficPlan

    long_key = ("tools/loadgen", "shop/db", 5432)
    while_open = [e for e in reports if e.key == long_key and e.open == 1 and e.conns == 0]
    rising = [e.bytes_c2s for e in while_open]
    assert len(set(rising)) >= 3 and rising == sorted(rising), f"bytes while open: {rising}"
    assert all(e.rtt_ms != "-" for e in while_open[1:]), while_open
    done = final[long_key]
    assert (done.open, done.conns, done.closed) == (0, 1, 1), done
    # exact at close: "HOLD\n", then k pings of a fixed size each answered by a 5-byte "PONG\n"
    ping = len(b"PING ") + int(LONG_LIVED_RATE * TrafficPlan().long_lived_ping_s) + 1
    pings = done.bytes_s2c // 5
    assert pings >= 3 and (done.bytes_c2s, done.bytes_s2c) == (5 + pings * ping, 5 * pings), done
    assert done.retransmits > 0, done  # 3% of its data segments dropped on the way to db
