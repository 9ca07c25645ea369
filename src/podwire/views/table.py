"""The demo's live table: one row per edge (client workload -> server workload:port).

`EdgeTable` is a Sink fed from the capture thread; the renderer reads a snapshot under a lock.
Only connections that count (exactly once, same rule as the metrics) are aggregated.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from podwire.model import (
    ConnectionOpened,
    ConnectionProgress,
    Endpoint,
    Identity,
    IdentityKind,
    NamedConnection,
    Outcome,
    Side,
)

MAX_EDGES = 500
MAX_OPEN = 65_536  # open connections whose progress the table remembers


def label(identity: Identity, address: str) -> str:
    if identity.kind is IdentityKind.POD:
        via = f" via svc {identity.service}" if identity.service is not None else ""
        return f"{identity.namespace}/{identity.workload_name}{via}"
    if identity.kind is IdentityKind.SERVICE:
        return f"svc {identity.namespace}/{identity.name}"
    if identity.kind is IdentityKind.EXTERNAL and identity.name == "external":
        return address
    return f"{identity.kind} {identity.name}"


@dataclass(slots=True)
class EdgeRow:
    client: str
    server: str
    port: int
    outcomes: dict[str, int] = field(default_factory=dict)
    bytes_c2s: int = 0
    bytes_s2c: int = 0
    duration_sum: float = 0.0
    duration_n: int = 0
    duration_max: float = 0.0
    updated: float = 0.0
    active: int = 0  # opened (SYN-ACK seen), not yet closed
    rtt_s: float | None = None  # smoothed RTT at the latest socket-stats sample
    retransmits: int = 0

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


class EdgeTable:
    """Aggregates named connections per edge, bounded to MAX_EDGES (least recently updated evicted)."""

    def __init__(
        self,
        counts: Callable[[NamedConnection], bool],
        counts_opened: Callable[[Side | None, Identity], bool],
        max_edges: int = MAX_EDGES,
    ) -> None:
        self._counts = counts
        self._counts_opened = counts_opened
        self._rows: dict[tuple[str, str, int], EdgeRow] = {}
        self._lock = threading.Lock()
        self._max = max_edges
        self.evicted = 0
        self.started = time.time()
        # open connection -> [c2s, s2c, retransmits] already added from progress (socket stats)
        # keyed with the observed side: both ends of one connection can share a point number when
        # several captures feed one table (the demo's nodes)
        self._reported: dict[
            tuple[Side | None, int, Endpoint, Endpoint, int | None, int | None], list[int]
        ] = {}

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None:
        if not self._counts_opened(event.observed_side, client):
            return
        key = (label(client, event.client.address), label(server, event.server.address), event.server.port)
        with self._lock:
            self._row(key).active += 1

    def _row(self, key: tuple[str, str, int]) -> EdgeRow:
        row = self._rows.pop(key, None)
        if row is None:
            row = EdgeRow(*key)
            if len(self._rows) >= self._max:
                del self._rows[next(iter(self._rows))]
                self.evicted += 1
        self._rows[key] = row  # most recently updated last
        row.updated = time.time()
        return row

    def on_progress(self, event: ConnectionProgress, client: Identity, server: Identity) -> None:
        """Bytes while open (the close adds the rest), RTT, and each end's own retransmits."""
        key = (label(client, event.client.address), label(server, event.server.address), event.server.port)
        pkey = (
            event.observed_side,
            event.point,
            event.client,
            event.server,
            event.client_isn,
            event.server_isn,
        )
        with self._lock:
            row = self._row(key)
            done = self._reported.get(pkey)
            if done is None:
                if len(self._reported) >= MAX_OPEN:
                    del self._reported[next(iter(self._reported))]
                done = self._reported[pkey] = [0, 0, 0]
            if event.retransmits > done[2]:
                row.retransmits += event.retransmits - done[2]
                done[2] = event.retransmits
            if not self._counts_opened(event.observed_side, client):
                return
            row.bytes_c2s += max(0, event.bytes_client_to_server - done[0])
            row.bytes_s2c += max(0, event.bytes_server_to_client - done[1])
            done[0] = max(done[0], event.bytes_client_to_server)
            done[1] = max(done[1], event.bytes_server_to_client)
            row.rtt_s = event.rtt_s

    def on_connection(self, conn: NamedConnection) -> None:
        r = conn.record
        done: list[int] | None = None
        if self._reported:
            with self._lock:
                pkey = (r.observed_side, r.point, r.client, r.server, r.client_isn, r.server_isn)
                done = self._reported.pop(pkey, None)
        if not self._counts(conn):
            return
        key = (label(conn.client, r.client.address), label(conn.server, r.server.address), r.server.port)
        with self._lock:
            row = self._row(key)
            if r.server_isn is not None and not r.started_before_capture and row.active > 0:
                row.active -= 1  # it was counted open at its SYN-ACK
            outcome = str(r.outcome)
            row.outcomes[outcome] = row.outcomes.get(outcome, 0) + 1
            row.bytes_c2s += max(0, (r.bytes_client_to_server or 0) - (done[0] if done else 0))
            row.bytes_s2c += max(0, (r.bytes_server_to_client or 0) - (done[1] if done else 0))
            if r.retransmits and r.retransmits > (done[2] if done else 0):
                row.retransmits += r.retransmits - (done[2] if done else 0)
            if r.duration_s is not None:
                row.duration_sum += r.duration_s
                row.duration_n += 1
                row.duration_max = max(row.duration_max, r.duration_s)

    def snapshot(self) -> list[EdgeRow]:
        with self._lock:
            rows = [dataclasses.replace(r, outcomes=dict(r.outcomes)) for r in self._rows.values()]
        rows.sort(key=lambda r: (r.client, r.server, r.port))
        return rows


COLUMNS = (
    "client",
    "server",
    "port",
    "open",
    "conns",
    "closed",
    "reset",
    "refused",
    "timeout",
    "c->s bytes",
    "s->c bytes",
    "avg dur s",
    "max dur s",
    "rtt ms",
    "retx",
)


def row_cells(row: EdgeRow) -> tuple[str, ...]:
    avg = row.duration_sum / row.duration_n if row.duration_n else None
    return (
        row.client,
        row.server,
        str(row.port),
        str(row.active),
        str(row.total),
        str(row.outcomes.get(Outcome.CLOSED, 0)),
        str(row.outcomes.get(Outcome.RESET, 0)),
        str(row.outcomes.get(Outcome.REFUSED, 0)),
        str(row.outcomes.get(Outcome.TIMEOUT, 0)),
        f"{row.bytes_c2s:,}",
        f"{row.bytes_s2c:,}",
        "-" if avg is None else f"{avg:.4f}",
        "-" if not row.duration_n else f"{row.duration_max:.4f}",
        "-" if row.rtt_s is None else f"{row.rtt_s * 1000:.2f}",
        str(row.retransmits),
    )


def render_rich(rows: list[EdgeRow], title: str) -> object:
    from rich.table import Table

    table = Table(title=title, expand=False)
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row_cells(row))
    return table


def write_plain(rows: list[EdgeRow], out: TextIO, now: float) -> None:
    """One line per edge, for scripts (`--no-tui`)."""
    for row in rows:
        cells = dict(zip(COLUMNS, row_cells(row), strict=True))
        out.write(
            f"t={now:.0f} edge {cells['client']} -> {cells['server']}:{cells['port']} "
            f"open={cells['open']} conns={cells['conns']} closed={cells['closed']} reset={cells['reset']} "
            f"refused={cells['refused']} timeout={cells['timeout']} "
            f"bytes_c2s={row.bytes_c2s} bytes_s2c={row.bytes_s2c} avg_dur_s={cells['avg dur s']} "
            f"rtt_ms={cells['rtt ms']} retransmits={row.retransmits}\n"
        )
    out.flush()
