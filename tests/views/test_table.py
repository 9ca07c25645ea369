"""The demo's edge table: counts each connection once, tracks open ones, stays bounded."""

from __future__ import annotations

import io

import msgspec

from podwire.model import Outcome, Side
from podwire.telemetry.metrics import counts_here
from podwire.views.table import EdgeTable, write_plain
from tests.telemetry.factory import named, opened_for, pod, record
from tests.telemetry.test_metrics_progress import progress_of


def _table(max_edges: int = 500) -> EdgeTable:
    return EdgeTable(lambda c: counts_here(c.record.observed_side, c.client), counts_here, max_edges)


def test_a_same_node_connection_seen_on_both_veths_counts_once() -> None:
    table = _table()
    web, api = pod("web"), pod("api")
    rec = record()
    table.on_connection(named(rec, web, api))
    table.on_connection(named(record(side=Side.SERVER, client_isn=rec.client_isn), web, api))
    (row,) = table.snapshot()
    assert (row.client, row.server, row.total) == ("shop/web", "shop/api", 1)
    assert (row.bytes_c2s, row.bytes_s2c) == (1000, 5000)


def test_open_connections_are_shown_until_they_close() -> None:
    table = _table()
    web, api = pod("web"), pod("api")
    rec = record()
    table.on_opened(opened_for(rec), web, api)
    assert [r.active for r in table.snapshot()] == [1]
    table.on_connection(named(rec, web, api))
    (row,) = table.snapshot()
    assert (row.active, row.outcomes) == (0, {Outcome.CLOSED: 1})


def test_edges_are_bounded_and_evictions_counted() -> None:
    table = _table(max_edges=3)
    for i in range(5):
        table.on_connection(named(record(), pod(f"c{i}"), pod("api")))
    assert len(table.snapshot()) == 3 and table.evicted == 2


def test_plain_lines_carry_every_column() -> None:
    table = _table()
    table.on_connection(named(record(), pod("web"), pod("api")))
    out = io.StringIO()
    write_plain(table.snapshot(), out, 0.0)
    line = out.getvalue().strip()
    assert line.startswith("t=0 edge shop/web -> shop/api:8080 open=0 conns=1 closed=1")
    assert "bytes_c2s=1000 bytes_s2c=5000" in line


def test_both_ends_with_the_same_point_number_count_progress_once() -> None:
    """The demo's two nodes feed one table: both ends of a long connection can share a point number.
    The server's record arriving first must not take the client's progress (bytes were doubled)."""
    table = _table()
    web, db = pod("web"), pod("db")
    rec_c = record(point=5, c2s=9_000, s2c=70)
    rec_s = msgspec.structs.replace(rec_c, observed_side=Side.SERVER)
    table.on_opened(opened_for(rec_c), web, db)
    table.on_progress(progress_of(rec_c, 8_000, 60), web, db)
    table.on_progress(progress_of(rec_s, 8_000, 60), web, db)
    table.on_connection(named(rec_s, web, db))
    table.on_connection(named(rec_c, web, db))
    (row,) = table.snapshot()
    assert (row.total, row.bytes_c2s, row.bytes_s2c) == (1, 9_000, 70)
