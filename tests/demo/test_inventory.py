"""The demo's inventory YAML names every address of a real cluster, and the identity reader accepts it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from podwire.demo.cluster import Cluster, ClusterSpec
from podwire.demo.inventory import inventory_for, write_inventory
from podwire.demo.traffic import demo_spec
from podwire.identity import inventory as reader

pytestmark = pytest.mark.live


def test_inventory_lists_every_pod_service_and_node_address(
    two_node_cluster: Cluster, tmp_path: Path
) -> None:
    c = two_node_cluster
    path = write_inventory(c, tmp_path / "inventory.yaml")
    doc = yaml.safe_load(path.read_text())
    assert set(doc) == {"pods", "services", "nodes", "external"}
    pods = {p["name"]: p for p in doc["pods"]}
    assert set(pods) == {"client-a", "server-a", "client-b", "server-b"}
    b = pods["client-b"]
    assert b == {
        "ip": c.pod("client-b").ipv4,
        "ips": [c.pod("client-b").ipv4, c.pod("client-b").ipv6],
        "namespace": "batch",
        "name": "client-b",
        "workload": "report",
        "workload_kind": "CronJob",
        "node": "node-b",
    }
    assert doc["services"] == [
        {"ip": "10.96.0.10", "ips": ["10.96.0.10", "fd00:96::a"], "namespace": "shop", "name": "server-a"}
    ]
    node_a = c.node("node-a")
    assert {
        "ip": node_a.ipv4,
        "ips": [node_a.ipv4, node_a.ipv6, node_a.gateway_v4, node_a.gateway_v6],
        "name": "node-a",
    } in doc["nodes"]
    assert {"cidr": "0.0.0.0/0", "name": "internet"} in doc["external"]


def test_identity_reader_names_every_cluster_address_from_the_demo_inventory(
    two_node_cluster: Cluster,
) -> None:
    c = two_node_cluster
    text = inventory_for(c, external=[("203.0.113.0/24", "partner-api")]).to_yaml()
    inv = reader.parse(text, "demo")
    by_address = {ip: e.identity for e in inv.entries for ip in e.addresses}
    for pod in c.pods:
        for ip in (pod.ipv4, pod.ipv6):
            assert by_address[ip].name == pod.name
    assert by_address["10.96.0.10"].name == "server-a"
    assert by_address[c.node("node-b").gateway_v4].name == "node-b"
    assert inv.external == (("203.0.113.0/24", "partner-api"),)


def test_inventory_of_a_one_node_cluster_names_the_node_by_its_bridge(two_pod_cluster: Cluster) -> None:
    doc = yaml.safe_load(inventory_for(two_pod_cluster).to_yaml())
    node = two_pod_cluster.nodes[0]
    assert doc["nodes"] == [
        {"ip": node.gateway_v4, "ips": [node.gateway_v4, node.gateway_v6], "name": "node-a"}
    ]
    assert doc["services"] == []


def test_demo_inventory_names_the_external_host_before_the_internet(
    cluster_factory: Callable[[ClusterSpec], Cluster],
) -> None:
    c = cluster_factory(demo_spec())
    inv = reader.parse(inventory_for(c).to_yaml(), "demo")
    assert inv.external == (
        ("203.0.113.0/24", "partner-api"),
        ("2001:db8:113::/64", "partner-api"),
        ("0.0.0.0/0", "internet"),
        ("::/0", "internet"),
    )
