"""The time-aware index: precedence, IP reuse and history, pruning, and lock-free reads."""

from __future__ import annotations

import math
import threading

from podwire.identity.external import ExternalNames
from podwire.identity.index import IdentityIndex, make_identity
from podwire.model import UNKNOWN_EXTERNAL, IdentityKind


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def pod(name: str, ns: str = "shop", workload: str = "frontend", kind: str = "Deployment"):
    return make_identity(
        IdentityKind.POD, name, namespace=ns, workload=workload, workload_kind=kind, node="n1"
    )


SVC = make_identity(IdentityKind.SERVICE, "payments", namespace="shop")
NODE = make_identity(IdentityKind.NODE, "node-a", node="node-a")
HOSTNET = make_identity(IdentityKind.NODE, "node-a", node="node-a", host_network=True)


def test_unknown_address_falls_back_to_external_and_counts_a_miss():
    index = IdentityIndex()
    assert index.resolve("203.0.113.9", None) is UNKNOWN_EXTERNAL
    assert index.stats().lookups_missed == 1


def test_pod_beats_service_beats_node_beats_external_cidr():
    ext = ExternalNames([("10.0.0.0/8", "corp")])
    index = IdentityIndex(fallback=ext)
    ip = "10.1.0.5"
    assert index.resolve(ip, None).name == "corp"
    index.set("node/a", [ip], NODE)
    assert index.resolve(ip, None) == NODE
    index.set("svc/a", [ip], SVC)
    assert index.resolve(ip, None) == SVC
    p = pod("frontend-1")
    index.set("pod/a", [ip], p)
    assert index.resolve(ip, None) == p
    index.remove("pod/a")
    assert index.resolve(ip, None) == SVC
    index.remove("svc/a")
    assert index.resolve(ip, None) == NODE


def test_node_object_beats_host_network_pod_on_the_same_address():
    index = IdentityIndex()
    index.set("pod/hn", ["192.168.1.10"], HOSTNET)
    assert index.resolve("192.168.1.10", None) is HOSTNET
    index.set("node/a", ["192.168.1.10"], NODE)
    assert index.resolve("192.168.1.10", None) is NODE
    index.remove("node/a")
    assert index.resolve("192.168.1.10", None) is HOSTNET


def test_reused_pod_ip_resolves_by_who_held_it_at_the_time():
    clock = Clock(1000.0)
    index = IdentityIndex(clock=clock)
    a, b = pod("old-1", workload="old"), pod("new-1", workload="new")
    index.set("pod/a", ["10.1.0.7"], a, at=math.inf * -1)  # listed at start: held since before
    clock.t = 2000.0
    index.remove("pod/a")  # deleted at 2000
    clock.t = 2100.0
    index.set("pod/b", ["10.1.0.7"], b)  # the IP reused at 2100
    assert index.resolve("10.1.0.7", None) == b
    assert index.resolve("10.1.0.7", 1500.0) == a  # a late event from A's time
    assert index.resolve("10.1.0.7", 2200.0) == b
    # In the gap the nearer holder wins: just after A left is still A, just before B came is B.
    assert index.resolve("10.1.0.7", 2010.0) == a
    assert index.resolve("10.1.0.7", 2090.0) == b
    assert index.stats().lookups_historical >= 2
    st = index.stats()
    assert (st.addresses, st.addresses_with_history, st.spans) == (1, 1, 2)


def test_deleted_pod_still_names_late_events_then_the_address_is_free():
    clock = Clock(1000.0)
    index = IdentityIndex(clock=clock)
    a = pod("gone-1")
    index.set("pod/a", ["10.1.0.8"], a)
    clock.t = 1100.0
    index.remove("pod/a")
    assert index.resolve("10.1.0.8", None) is UNKNOWN_EXTERNAL  # now: nobody
    assert index.resolve("10.1.0.8", 1050.0) == a  # during its life
    assert index.resolve("10.1.0.8", 1110.0) == a  # shortly after it left (delete seen late)
    assert index.resolve("10.1.0.8", 1500.0) is UNKNOWN_EXTERNAL  # long after: free address


def test_history_older_than_the_bound_is_pruned():
    clock = Clock(1000.0)
    index = IdentityIndex(history_s=100.0, clock=clock)
    a, b = pod("a-1"), pod("b-1")
    index.set("pod/a", ["10.1.0.9"], a)
    clock.t = 1010.0
    index.remove("pod/a")
    clock.t = 1020.0
    index.set("pod/b", ["10.1.0.9"], b)
    assert index.resolve("10.1.0.9", 1005.0) == a
    assert index.stats().addresses_with_history == 1
    dropped = index.prune(now=1200.0)
    assert dropped == 1
    assert index.stats().addresses_with_history == 0
    assert index.resolve("10.1.0.9", 1005.0) == b  # A's span is gone: only B is known
    # A free address whose only holder left long ago disappears entirely.
    index.remove("pod/b", at=1210.0)
    index.prune(now=1400.0)
    assert index.history("10.1.0.9") == ()
    assert index.resolve("10.1.0.9", 1215.0) is UNKNOWN_EXTERNAL


def test_history_per_address_is_bounded_under_churn():
    clock = Clock(0.0)
    index = IdentityIndex(history_s=1e9, clock=clock, max_spans=8)
    for i in range(100):
        clock.t = float(i)
        index.set(f"pod/{i}", ["10.2.0.1"], pod(f"p-{i}"))
        index.remove(f"pod/{i - 1}")
    spans = index.history("10.2.0.1")
    assert len(spans) == 8
    assert spans[-1].identity.name == "p-99"
    assert index.resolve("10.2.0.1", 97.5).name == "p-97"


def test_set_replaces_what_a_key_held_and_updates_in_place_keep_history_clean():
    clock = Clock(10.0)
    index = IdentityIndex(clock=clock)
    unresolved = pod("web-abc12-xyz", workload="web-abc12", kind="ReplicaSet")
    index.set("pod/w", ["10.3.0.1"], unresolved)
    clock.t = 20.0
    resolved = pod("web-abc12-xyz", workload="web", kind="Deployment")
    index.set("pod/w", ["10.3.0.1"], resolved)  # owner learned later: same pod, better name
    assert index.resolve("10.3.0.1", 12.0) == resolved
    assert len(index.history("10.3.0.1")) == 1
    # The key moves to another address: the old one is released.
    clock.t = 30.0
    index.set("pod/w", ["10.3.0.2"], resolved)
    assert "10.3.0.1" not in index
    assert index.resolve("10.3.0.2", None) == resolved


def test_dual_stack_addresses_and_other_ipv6_spellings_resolve():
    index = IdentityIndex()
    p = pod("ds-1")
    index.set("pod/ds", ["10.4.0.1", "fd00::1:5"], p)
    assert index.resolve("10.4.0.1", None) == p
    assert index.resolve("fd00::1:5", None) == p
    assert index.resolve("FD00:0:0:0:0:0:1:5", None) == p


def test_retain_removes_keys_missing_from_a_relist():
    index = IdentityIndex()
    for i in range(5):
        index.set(f"pod/{i}", [f"10.5.0.{i}"], pod(f"p-{i}"))
    index.set("svc/x", ["10.96.0.1"], SVC)
    gone = index.retain(lambda k: not k.startswith("pod/") or k in {"pod/1", "pod/3"})
    assert gone == 3
    assert sorted(index.keys()) == ["pod/1", "pod/3", "svc/x"]
    assert index.resolve("10.5.0.0", None) is UNKNOWN_EXTERNAL
    assert index.resolve("10.5.0.3", None).name == "p-3"


def test_readers_never_see_a_torn_or_missing_identity_during_writes():
    """A reader spinning on an address that is always held (by A or B) always gets A or B."""
    index = IdentityIndex()
    a, b = pod("a-1", workload="a"), pod("b-1", workload="b")
    index.set("pod/a", ["10.6.0.1"], a)
    stop = threading.Event()
    bad: list[object] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            index.set("pod/b", ["10.6.0.1"], b)  # same rank: newest holder wins
            index.remove("pod/b")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200_000):
            got = index.resolve("10.6.0.1", None)
            if got is not a and got is not b:
                bad.append(got)
    finally:
        stop.set()
        t.join()
    assert bad == []


def test_interning_shares_repeated_strings():
    ns, wl = "".join(["sh", "op"]), "".join(["fr", "ont"])
    x = make_identity(IdentityKind.POD, "p-1", namespace=ns, workload=wl)
    ns, wl = "".join(["sh", "op"]), "".join(["fr", "ont"])  # equal strings, other objects
    y = make_identity(IdentityKind.POD, "p-2", namespace=ns, workload=wl)
    assert x.namespace is y.namespace
    assert x.workload is y.workload


def test_missed_ipv6_spellings_are_parsed_once_into_a_bounded_cache(monkeypatch):
    import podwire.identity.index as index_module

    monkeypatch.setattr(index_module, "CANON_CACHE_SIZE", 8)
    ext = ExternalNames([("::/0", "internet6")])
    index = IdentityIndex(fallback=ext, clock=Clock(1000.0))
    p = pod("v6")
    index.set("pod/v6", ["fd00::1:5"], p, at=1000.0)
    for _ in range(3):  # repeated: answered from the cache, the same as the first time
        assert index.resolve("FD00:0:0:0:0:0:1:5", None) == p
        assert index.resolve("2001:db8::7", None).name == "internet6"
        assert index.resolve("not:an:address", None) is UNKNOWN_EXTERNAL
    assert index._canon["FD00:0:0:0:0:0:1:5"] == "fd00::1:5"
    assert index._canon["2001:db8::7"] == "2001:db8::7"
    for i in range(100):
        assert index.resolve(f"2001:db8::{i:x}", None).name == "internet6"
        assert len(index._canon) <= 8
    # a cached spelling still follows the index over time: the pod leaves, then the address is reused
    index.resolve("FD00:0:0:0:0:0:1:5", None)
    index.remove("pod/v6", at=2000.0)
    q = pod("v6-reused")
    index.set("pod/v6b", ["fd00::1:5"], q, at=3000.0)
    assert index.resolve("FD00:0:0:0:0:0:1:5", 1500.0) == p
    assert index.resolve("FD00:0:0:0:0:0:1:5", 3500.0) == q
