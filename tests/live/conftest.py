"""Fixtures that build network-namespace mini-clusters and always tear them down.

cluster_factory(spec) -> built Cluster (torn down after the test, pass or fail)
module_cluster_factory the same, torn down after the test module
two_pod_cluster       one node "node-a": pods "client" and "server"
two_node_cluster      "node-a": "client-a", "server-a"; "node-b": "client-b", "server-b";
                      Service default/server-a 10.96.0.10:80 and [fd00:96::a]:80 -> server-a:8080

Other test directories reuse these with `from tests.live.conftest import *` in their conftest.py.
At session end, any namespace or state file left by a cluster this session built fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from podwire.demo.cluster import (
    Cluster,
    ClusterSpec,
    NodeSpec,
    PodSpec,
    ServiceSpec,
    created_prefixes,
    leftovers,
)

__all__ = [
    "TWO_NODE_SPEC",
    "TWO_POD_SPEC",
    "cluster_factory",
    "module_cluster_factory",
    "pytest_sessionfinish",
    "two_node_cluster",
    "two_pod_cluster",
]

TWO_POD_SPEC = ClusterSpec(
    nodes=(
        NodeSpec(
            "node-a",
            (
                PodSpec("client", namespace="shop", workload="frontend", workload_kind="Deployment"),
                PodSpec("server", namespace="shop", workload="api", workload_kind="StatefulSet"),
            ),
        ),
    ),
)

TWO_NODE_SPEC = ClusterSpec(
    nodes=(
        NodeSpec(
            "node-a",
            (
                PodSpec("client-a", namespace="shop", workload="frontend", workload_kind="Deployment"),
                PodSpec("server-a", namespace="shop", workload="api", workload_kind="Deployment"),
            ),
        ),
        NodeSpec(
            "node-b",
            (
                PodSpec("client-b", namespace="batch", workload="report", workload_kind="CronJob"),
                PodSpec("server-b", namespace="shop", workload="db", workload_kind="StatefulSet"),
            ),
        ),
    ),
    services=(ServiceSpec("server-a", "shop", "10.96.0.10", 80, "server-a", 8080, ipv6="fd00:96::a"),),
)


def _factory() -> Iterator[Callable[[ClusterSpec], Cluster]]:
    if os.geteuid() != 0:
        pytest.skip("live cluster tests need root (network namespaces)")
    built: list[Cluster] = []

    def make(spec: ClusterSpec) -> Cluster:
        cluster = Cluster(spec)
        built.append(cluster)  # before build: a half-built cluster is torn down too
        return cluster.build()

    try:
        yield make
    finally:
        for cluster in reversed(built):
            cluster.teardown()


@pytest.fixture
def cluster_factory() -> Iterator[Callable[[ClusterSpec], Cluster]]:
    """Build clusters for one test; each is torn down when the test ends, pass or fail."""
    yield from _factory()


@pytest.fixture(scope="module")
def module_cluster_factory() -> Iterator[Callable[[ClusterSpec], Cluster]]:
    """The same, shared by a test module (build once, many tests); torn down after the module."""
    yield from _factory()


@pytest.fixture
def two_pod_cluster(cluster_factory: Callable[[ClusterSpec], Cluster]) -> Cluster:
    return cluster_factory(TWO_POD_SPEC)


@pytest.fixture
def two_node_cluster(cluster_factory: Callable[[ClusterSpec], Cluster]) -> Cluster:
    return cluster_factory(TWO_NODE_SPEC)


_checked: list[bool] = []  # conftests importing this hook share it: check once


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _checked:
        return
    _checked.append(True)
    left = leftovers(created_prefixes())
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "mini-cluster leftovers after the session: " + ", ".join(left)
        if reporter is not None:
            reporter.write_line("\n" + message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
