"""The store half of the Kubernetes source, without an API server: objects -> index entries,
owner walks, and a relist diffed against the index (test_kube.py runs both halves for real)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from podwire.identity import slim
from podwire.identity.index import IdentityIndex
from podwire.identity.kube import ObjectStore
from podwire.identity.kubestore import BAD_OBJECT, KubeStore
from podwire.model import IdentityKind


def obj(kind: str, doc: dict[str, Any]) -> Any:
    """A slim object, decoded as the watch stream's decoder does."""
    line = json.dumps({"type": "ADDED", "object": doc}).encode()
    return slim.event_decoder(kind).decode(line).object


def pod(
    name: str, ip: str, *, owner: tuple[str, str] | None = None, phase: str = "Running", **spec: Any
) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": "u-" + name}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    status = {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
    return obj("pods", {"metadata": meta, "spec": {"nodeName": "n1", **spec}, "status": status})


def owned(kind: str, name: str, top: tuple[str, str] | None) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": "u-" + name}
    if top is not None:
        meta["ownerReferences"] = [{"kind": top[0], "name": top[1], "controller": True}]
    return obj(kind, {"metadata": meta})


def named(index: IdentityIndex, ip: str) -> tuple[str | None, str | None]:
    ident = index.resolve(ip, None)
    return ident.workload, ident.workload_kind


def pods(index: IdentityIndex) -> list[str]:
    return sorted(k for k in index.keys() if k.startswith("pod/"))  # noqa: SIM118 - a method


class Bad:
    """Counts malformed objects as the store reports them (the Reflector's on_bad)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_is_the_object_store_the_reflector_feeds() -> None:
    store: ObjectStore = KubeStore(IdentityIndex())
    bad = Bad()
    store.replace("pods", iter(()), 0.0, bad)
    assert bad.count == 0


def test_a_pod_waits_for_its_replicaset_then_is_renamed_after_the_deployment() -> None:
    index = IdentityIndex()
    store = KubeStore(index)
    store.apply("pods", "ADDED", pod("web-x1", "10.1.0.5", owner=("ReplicaSet", "web-rs")), 1.0)
    assert named(index, "10.1.0.5") == ("web-rs", "ReplicaSet")  # owner not seen yet
    store.apply("replicasets", "ADDED", owned("replicasets", "web-rs", ("Deployment", "web")), 2.0)
    assert named(index, "10.1.0.5") == ("web", "Deployment")
    store.apply("pods", "DELETED", pod("web-x1", "10.1.0.5", owner=("ReplicaSet", "web-rs")), 3.0)
    assert index.resolve("10.1.0.5", None).kind is not IdentityKind.POD


def test_a_finished_pod_releases_its_ip_and_a_host_network_pod_names_the_node() -> None:
    index = IdentityIndex()
    store = KubeStore(index)
    store.apply("pods", "ADDED", pod("batch-1", "10.1.0.6", phase="Succeeded"), 1.0)
    assert index.get("pod/u-batch-1") is None
    store.apply("pods", "ADDED", pod("proxy", "192.0.2.10", hostNetwork=True), 1.0)
    ident = index.resolve("192.0.2.10", None)
    assert (ident.kind, ident.name, ident.host_network) == (IdentityKind.NODE, "n1", True)


def test_a_relist_drops_what_the_list_no_longer_holds_and_counts_bad_objects() -> None:
    index = IdentityIndex()
    store = KubeStore(index)
    bad = Bad()
    store.replace("pods", [pod("a", "10.1.0.1"), pod("b", "10.1.0.2")], 1.0, bad)
    assert bad.count == 0
    svc = obj(
        "services",
        {"metadata": {"name": "db", "namespace": "shop", "uid": "s1"}, "spec": {"clusterIP": "10.96.0.9"}},
    )
    store.apply("services", "ADDED", svc, 1.0)
    # b deleted during a gap, c created, and one whose IPv6 address is malformed
    store.replace("pods", [pod("a", "10.1.0.1"), pod("c", "10.1.0.3"), pod("z", "fd00::1::2")], 2.0, bad)
    assert bad.count == 1
    assert pods(index) == ["pod/u-a", "pod/u-c"]
    assert index.get("svc/s1") is not None  # a pod list never drops services
    with pytest.raises(BAD_OBJECT):
        store.apply("pods", "MODIFIED", pod("z", "fd00::1::2"), 3.0)


def test_a_list_that_breaks_off_keeps_what_it_applied_and_drops_nothing() -> None:
    index = IdentityIndex()
    store = KubeStore(index)
    bad = Bad()
    store.replace("pods", [pod("a", "10.1.0.1"), pod("b", "10.1.0.2")], 1.0, bad)

    def broken() -> Any:
        yield pod("c", "10.1.0.3")
        yield pod("z", "zz::zz")
        raise ConnectionResetError("list cut")

    with pytest.raises(ConnectionResetError):
        store.replace("pods", broken(), 2.0, bad)
    assert pods(index) == ["pod/u-a", "pod/u-b", "pod/u-c"]
    assert bad.count == 1  # counted as it was skipped, though the list never finished


def test_a_replicaset_relist_renames_pods_that_were_waiting_for_it() -> None:
    index = IdentityIndex()
    store = KubeStore(index)
    store.apply("pods", "ADDED", pod("api-q", "10.1.0.7", owner=("ReplicaSet", "api-7f9")), 1.0)
    store.replace("replicasets", [owned("replicasets", "api-7f9", ("Deployment", "api"))], 2.0, Bad())
    assert named(index, "10.1.0.7") == ("api", "Deployment")
    store.apply("pods", "ADDED", pod("cron-1", "10.1.0.8", owner=("Job", "nightly-123")), 3.0)
    store.replace("jobs", [owned("jobs", "nightly-123", ("CronJob", "nightly"))], 4.0, Bad())
    assert named(index, "10.1.0.8") == ("nightly", "CronJob")


def test_pods_deleted_during_a_watch_gap_stop_waiting_for_an_owner_that_never_comes() -> None:
    index = IdentityIndex()
    store = KubeStore(index)
    for i in range(100):  # their ReplicaSet is never seen (e.g. the RBAC does not grant it)
        store.apply("pods", "ADDED", pod(f"web-{i}", f"10.2.0.{i}", owner=("ReplicaSet", "web-rs")), 1.0)
    store.apply("pods", "ADDED", pod("db-0", "10.3.0.1", owner=("ReplicaSet", "db-rs")), 1.0)
    # all but db-0 deleted while the watch was down: the relist settles it
    store.replace("pods", [pod("db-0", "10.3.0.1", owner=("ReplicaSet", "db-rs"))], 2.0, Bad())
    assert pods(index) == ["pod/u-db-0"]
    assert store._pending == {"rs:shop/db-rs": {"pod/u-db-0"}}  # nothing left of the 100 deleted
    assert store._pending_of == {"pod/u-db-0": "rs:shop/db-rs"}
    store.apply("replicasets", "ADDED", owned("replicasets", "db-rs", ("Deployment", "db")), 3.0)
    assert named(index, "10.3.0.1") == ("db", "Deployment")  # the one still waiting is renamed
