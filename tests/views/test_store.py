"""The views' store: exactly-once intake, bounds by age and size (every eviction counted), open counters."""

from __future__ import annotations

import tracemalloc

from podwire.model import Outcome, Side
from podwire.views import nodegraph as ng
from podwire.views.store import ConnectionStore, StoreLimits, node_of
from tests.telemetry.factory import external, host_pod, named, opened_for, pod, record, service


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_only_what_this_agent_counts_is_stored() -> None:
    store = ConnectionStore(clock=Clock())
    web, db = pod("web"), pod("db")
    store.on_connection(named(record(side=Side.CLIENT), web, db))  # the client's veth: counts
    store.on_connection(named(record(side=Side.SERVER), web, db))  # the same, seen at the server: not
    store.on_connection(named(record(side=Side.SERVER), external(), db))  # no client-side record exists
    store.on_connection(named(record(side=Side.SERVER), host_pod("kubelet"), db))  # hostNetwork client
    store.on_connection(named(record(side=None), web, db))  # a replay: counts
    assert len(store) == 4


def test_age_and_size_bounds_evict_the_oldest_and_count_it() -> None:
    clock = Clock()
    store = ConnectionStore(StoreLimits(window_s=60, max_connections=100, max_edges=10), clock=clock)
    web, db = pod("web"), pod("db")
    for _ in range(150):
        store.on_connection(named(record(), web, db))
    assert len(store) == 100 and store.stats.evicted_size == 50
    first_kept = store.snapshot()[0][0].id
    assert first_kept == 51
    clock.t += 61
    assert store.snapshot()[0] == [] and store.stats.evicted_age == 100
    assert store.get(first_kept) is None


def test_a_flood_of_distinct_connections_and_edges_keeps_the_store_at_its_bound() -> None:
    limits = StoreLimits(window_s=3600, max_connections=500, max_edges=50)
    store = ConnectionStore(limits, clock=Clock())
    client = pod("scanner")
    tracemalloc.start()
    try:
        for i in range(6_000):
            server = pod(f"target-{i}")  # a new workload each time: a new edge each time
            rec = record(
                server_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", client_port=1024 + i % 60000
            )
            store.on_opened(opened_for(rec), client, server)  # never closed: the open counters fill up
            if i % 2:
                store.on_connection(named(rec, client, server))
            if i == 3_000:
                half = tracemalloc.get_traced_memory()[0]
        full = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    entries, open_now = store.snapshot()
    assert len(entries) == limits.max_connections
    assert len(open_now) <= limits.max_edges
    assert store.stats.evicted_size == 3_000 - limits.max_connections
    assert store.stats.edges_evicted >= 6_000 - limits.max_edges - 3_000
    assert full < half * 1.2, (half, full)  # the second half of the flood did not grow memory


def test_open_counters_go_up_at_the_syn_ack_and_down_at_the_close() -> None:
    store = ConnectionStore(clock=Clock())
    web, db = pod("web"), pod("db")
    recs = [record() for _ in range(3)]
    for rec in recs:
        store.on_opened(opened_for(rec), web, db)
    assert [c for _, _, c in store.snapshot()[1]] == [3]
    store.on_connection(named(recs[0], web, db))
    (item,) = ng.edge_items(*store.snapshot(), ng.Filter())
    assert (item.open, item.closed, item.established) == (2, 1, 3)


def test_nodes_are_workloads_services_and_peers() -> None:
    from podwire.model import UNKNOWN_EXTERNAL, Endpoint

    e = Endpoint("203.0.113.9", 443)
    assert node_of(pod("web", ns="shop"), e).id == "shop/web"
    assert node_of(pod("web", ns="shop", name="web-1"), e) == node_of(pod("web", ns="shop", name="web-2"), e)
    assert node_of(service("api"), e).id == "svc:shop/api"
    assert node_of(UNKNOWN_EXTERNAL, e).id == "ip:203.0.113.9"
    assert node_of(external("github.com"), e).id == "external:github.com"


def test_the_unnamed_external_peer_is_a_node_per_address_also_when_cached() -> None:
    from podwire.model import UNKNOWN_EXTERNAL

    store = ConnectionStore(clock=Clock())
    web = pod("web")
    for address in ("203.0.113.9", "198.51.100.7", "203.0.113.9"):
        store.on_connection(named(record(server_ip=address), web, UNKNOWN_EXTERNAL))
    items = ng.edge_items(*store.snapshot(), ng.Filter())
    assert sorted((i.target.id, i.closed) for i in items) == [("ip:198.51.100.7", 1), ("ip:203.0.113.9", 2)]


def test_outcomes_bytes_and_durations_per_edge() -> None:
    store = ConnectionStore(clock=Clock())
    web, db = pod("web"), pod("db", kind="StatefulSet")
    store.on_connection(named(record(duration=0.5, c2s=100, s2c=1000), web, db))
    store.on_connection(named(record(duration=1.5, c2s=300, s2c=3000), web, db))
    store.on_connection(named(record(Outcome.REFUSED), web, db))
    store.on_connection(named(record(Outcome.RESET, duration=0.1, c2s=0, s2c=0), web, db))
    (item,) = ng.edge_items(*store.snapshot(), ng.Filter())
    assert (item.established, item.closed, item.failed, item.refused, item.reset) == (3, 2, 2, 1, 1)
    assert (item.bytes_sent, item.bytes_received) == (400, 4000)
    assert item.duration_max == 1.5 and abs(item.duration_sum - 2.1) < 1e-9 and item.duration_count == 3
