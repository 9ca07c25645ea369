"""250 pods on one bridged node, created 25-50 at once while a real `podwire run` captures.

Every pod connects to a server pod at once after it appears, and once more when all exist; one pod in
ten is deleted 0 ms after its last connection closed.  The agent's /metrics must count every
connection of every pod exactly (the pod created last too), with no false `timeout` (a deleted pod's
last connection must not turn into an unanswered SYN), and the node namespace must hold one packet
socket however many pods it has.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec

from .bridged import (
    BridgedPod,
    EdgeKey,
    PodFactory,
    Server,
    connection_counts,
    exchange,
    metric_total,
    packet_sockets,
    scrape,
    wait_until,
)
from .two_node import Agents

pytestmark = [pytest.mark.live, pytest.mark.timeout(400)]

PODS = 250
BURSTS = (25, 50, 40, 35, 50, 50)  # pods created at once, in this order
FIRST_CONNECTIONS = 2  # each pod, right after its burst was created
SERVER_PORT = 8080
REPLY = 300
DELETE_EVERY = 10  # one pod in ten (not the last one) is deleted 0 ms after its last close
SYN_TIMEOUT_S = 3.0  # short: a lost close would show up as a false timeout while the test waits
SETTLE_S = 5.0  # at most this long for the agent to report a burst's interfaces (it never blocks)

SPEC = ClusterSpec(nodes=(NodeSpec("node-a", (PodSpec("srv", namespace="load", workload="srv"),)),))


@dataclass(frozen=True)
class ScaleRun:
    made: dict[EdgeKey, int] = field(repr=False)
    counted: dict[EdgeKey, int] = field(repr=False)
    last_pod: str
    deleted: list[str]
    packet_sockets: int
    kernel_drops: float
    exit_code: int
    log: str = field(repr=False)


@pytest.fixture(scope="module")
def scale_run(
    module_cluster_factory: Callable[[ClusterSpec], Cluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScaleRun]:
    assert sum(BURSTS) == PODS
    cluster = module_cluster_factory(SPEC)
    node = cluster.node("node-a")
    srv = cluster.pod("srv")
    tmp = tmp_path_factory.mktemp("scale")
    pods = PodFactory(cluster, node)
    planned = pods.plan(f"c{i:03d}" for i in range(PODS))
    inventory = pods.inventory(tmp / "inventory.yaml")
    server = Server(srv.netns, srv.ipv4, SERVER_PORT, REPLY)
    agents = Agents()
    made: Counter[EdgeKey] = Counter()

    def connect(pod: BridgedPod, times: int, delete_after: bool = False) -> None:
        for _ in range(times):
            exchange(pod.netns, server)
        if delete_after:
            pods.delete(pod)  # 0 ms after the last close
        made[(pod.name, "srv", SERVER_PORT, "closed")] += times  # one writer per pod at a time

    log = tmp / "agent.log"
    try:
        env = {"PODWIRE_LOG_FORMAT": "json", "PODWIRE_SYN_TIMEOUT_S": str(SYN_TIMEOUT_S)}
        agents.start(cluster, "node-a", env, inventory, log)
        agents.wait_ready()
        port = agents.ports["node-a"]
        with ThreadPoolExecutor(8) as pool:
            start = 0
            for size in BURSTS:
                burst = planned[start : start + size]
                start += size
                pods.create(burst)  # the whole burst at once...
                # ...then, once the agent says it captures them (a pod's containers start after its
                # network is set up; the issue allows a second), every new pod talks at once
                wait_until(lambda n=start: interfaces(port) >= 1 + n, timeout=SETTLE_S)
                list(pool.map(lambda p: connect(p, FIRST_CONNECTIONS), burst))
            sockets = packet_sockets(node.netns)
            deleted = [p for i, p in enumerate(planned) if i % DELETE_EVERY == DELETE_EVERY // 2]
            gone = {p.name for p in deleted}
            list(pool.map(lambda p: connect(p, 1, p.name in gone), planned))
        expected = dict(made)
        assert sum(expected.values()) == PODS * (FIRST_CONNECTIONS + 1)

        def counted_all() -> bool:
            counts = connection_counts(scrape(port))
            return sum(counts.values()) >= sum(expected.values())

        wait_until(counted_all, timeout=30)
        # past the SYN timeout: a lost close would now be a false timeout
        time.sleep(SYN_TIMEOUT_S + 2.5)
        text = scrape(port)
        counted = connection_counts(text)
        drops = metric_total(text, "podwire_agent_kernel_drops_total")
    finally:
        codes = agents.stop()
        server.close()
    yield ScaleRun(
        expected,
        counted,
        planned[-1].name,
        sorted(gone),
        sockets,
        drops,
        codes[0],
        log.read_text(errors="replace"),
    )


def test_every_connection_of_250_pods_created_in_bursts_is_counted(scale_run: ScaleRun) -> None:
    run = scale_run
    complete = sum(1 for k, v in run.made.items() if run.counted.get(k, 0) == v)
    summary = (
        f"{complete} of {PODS} pods counted exactly;"
        f" {sum(run.counted.values())} of {sum(run.made.values())} connections"
    )
    timeouts = {k: v for k, v in run.counted.items() if k[3] == "timeout"}
    assert not timeouts, f"{summary}; false timeouts: {timeouts}"
    last = (run.last_pod, "srv", SERVER_PORT, "closed")
    assert run.counted.get(last) == run.made[last], f"{summary}; the pod created last"
    lost_deleted = {
        name: run.counted.get((name, "srv", SERVER_PORT, "closed"), 0)
        for name in run.deleted
        if run.counted.get((name, "srv", SERVER_PORT, "closed"), 0) != FIRST_CONNECTIONS + 1
    }
    assert not lost_deleted, (
        f"pods deleted 0 ms after their last close lost connections: {lost_deleted}; {summary}"
    )
    missing = {k: (v, run.counted.get(k, 0)) for k, v in run.made.items() if run.counted.get(k, 0) != v}
    assert not missing, (
        f"{len(missing)} of {PODS} pods miscounted (made, counted): {_head(missing)}; {summary}"
    )
    assert run.counted == run.made
    assert run.kernel_drops == 0
    assert run.exit_code == 0, run.log[-2000:]


def test_one_packet_socket_for_the_node_namespace_however_many_pods(scale_run: ScaleRun) -> None:
    assert scale_run.packet_sockets == 1


def interfaces(port: int) -> float:
    return metric_total(scrape(port), "podwire_agent_interfaces")


def _head(d: dict[EdgeKey, tuple[int, int]], n: int = 8) -> str:
    return json.dumps({"/".join(map(str, k)): v for k, v in list(d.items())[:n]})
