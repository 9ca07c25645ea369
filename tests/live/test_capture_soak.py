"""A real `podwire run` captures a bridged node for over a minute while the bridge keeps changing.

Two client pods connect to a server pod without pause (real sockets, exact bytes) while the test
turns STP on and off (with a short forward delay, so ports really go listening -> learning ->
forwarding), changes port costs, priorities, learning and hairpin flags, changes MTUs, flaps a
non-pod bridge port, moves a veth between namespaces, and adds a pod the way a CNI does (veth made in
the node namespace, its peer moved into the pod).  Every one of these sends bridge-family link
messages about pod ports.  The agent's /metrics must grow on every edge in every interval, and in
the end equal exactly what the clients made, per edge.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec

from .bridged import (
    BridgedPod,
    EdgeKey,
    PodFactory,
    Server,
    bridge_cmd,
    connection_counts,
    exchange,
    ip,
    metric_total,
    scrape,
    wait_until,
)
from .two_node import Agents, agents

pytestmark = [pytest.mark.live, pytest.mark.timeout(240)]
__all__ = ["agents"]  # the fixture

SOAK_S = 66.0  # >= 60 s of capture under bridge changes
INTERVAL_S = 6.0  # the counts must grow on every steady edge in every interval
EVENT_EVERY_S = 1.5
WEB_PORT, BATCH_PORT = 8080, 9000

SPEC = ClusterSpec(
    nodes=(
        NodeSpec(
            "node-a",
            (
                PodSpec("client-1", namespace="shop", workload="web"),
                PodSpec("client-2", namespace="shop", workload="batch", workload_kind="CronJob"),
                PodSpec("server", namespace="shop", workload="api", workload_kind="StatefulSet"),
            ),
        ),
    ),
)


class Clients:
    """Client threads, each making whole connections back to back and counting what it made."""

    def __init__(self) -> None:
        self.made: Counter[EdgeKey] = Counter()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, netns: str, server: Server, key: EdgeKey, pause_s: float = 0.08) -> None:
        def loop() -> None:
            try:
                while not self.stop.is_set():
                    exchange(netns, server)
                    with self._lock:
                        self.made[key] += 1
                    self.stop.wait(pause_s)
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self._threads.append(t)

    def finish(self) -> dict[EdgeKey, int]:
        self.stop.set()
        for t in self._threads:
            t.join(60)
        if self.errors:
            raise self.errors[0]
        with self._lock:
            return dict(self.made)


class BridgeChurn:
    """Bridge and link changes in the node namespace, one every EVENT_EVERY_S, in a thread."""

    def __init__(self, cluster: Cluster, late_pod: Callable[[], None]) -> None:
        node = cluster.node("node-a")
        ns, br, p = node.netns, node.bridge, cluster.prefix
        h1, h2, hs = (cluster.pod(n).host_ifname for n in ("client-1", "client-2", "server"))
        self.spare = f"{p}-node-a-spare"  # a namespace veths are moved to and from (teardown removes it)
        # a non-pod bridge port: a veth with both ends in the node namespace (no dummy module here)
        dummy, v0, v1 = f"{p}d0", f"{p}m0", f"{p}m1"
        ip(ns, "link", "add", dummy, "type", "veth", "peer", "name", f"{p}d1")
        ip(ns, "link", "set", dummy, "master", br)
        ip(ns, "link", "set", f"{p}d1", "up")
        ip(ns, "link", "set", dummy, "up")
        ip(ns, "link", "add", v0, "type", "veth", "peer", "name", v1)
        subprocess_ok(["ip", "netns", "add", self.spare])

        def link(*argv: str) -> Callable[[], None]:
            return lambda: ip(ns, *argv)

        def port(*argv: str) -> Callable[[], None]:
            return lambda: bridge_cmd(ns, "link", "set", *argv)

        def brset(*argv: str) -> Callable[[], None]:
            return lambda: ip(ns, "link", "set", br, "type", "bridge", *argv)

        self.steps: list[tuple[str, Callable[[], None]]] = [
            ("forward delay 2 s", brset("forward_delay", "200")),
            ("STP on", brset("stp_state", "1")),
            ("cost 7", port("dev", h1, "cost", "7")),
            ("priority 5", port("dev", h2, "priority", "5")),
            ("non-pod port down", link("link", "set", dummy, "down")),
            ("pod veth MTU 9000", link("link", "set", h1, "mtu", "9000")),
            ("non-pod port up (listening -> learning -> forwarding)", link("link", "set", dummy, "up")),
            ("bridge MTU 1400", link("link", "set", br, "mtu", "1400")),
            ("veth peer moved out", link("link", "set", v1, "netns", self.spare)),
            ("cost 11", port("dev", hs, "cost", "11")),
            ("a pod added CNI-style (peer moved in) under STP", late_pod),
            ("pod veth MTU 1500", link("link", "set", h1, "mtu", "1500")),
            ("veth moved out", link("link", "set", v0, "netns", self.spare)),
            ("veth moved back", lambda: ip(self.spare, "link", "set", v0, "netns", ns)),
            ("veth peer moved back", lambda: ip(self.spare, "link", "set", v1, "netns", ns)),
            ("STP off", brset("stp_state", "0")),
            ("port state forwarding", port("dev", h2, "state", "3")),
            ("learning off", port("dev", h1, "learning", "off")),
            ("hairpin on", port("dev", hs, "hairpin", "on")),
            ("learning on", port("dev", h1, "learning", "on")),
            ("hairpin off", port("dev", hs, "hairpin", "off")),
            ("bridge MTU 1500", link("link", "set", br, "mtu", "1500")),
            ("forward delay 4 s", brset("forward_delay", "400")),
            ("STP on again", brset("stp_state", "1")),
            ("cost 3", port("dev", h2, "cost", "3")),
            ("non-pod port down", link("link", "set", dummy, "down")),
            ("non-pod port up", link("link", "set", dummy, "up")),
            ("pod veth alias", link("link", "set", h2, "alias", "pod veth")),
            ("STP off again", brset("stp_state", "0")),
        ]
        self.done: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        i = 0
        while not self.stop.wait(EVENT_EVERY_S):
            name, step = self.steps[i % len(self.steps)]
            if i >= len(self.steps) and name.startswith("a pod added"):
                i += 1
                continue  # once
            try:
                step()
                self.done.append(name)
            except Exception as exc:
                self.errors.append(f"{name}: {exc}")
            i += 1

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)


def subprocess_ok(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def add_pod_cni_style(cluster: Cluster, pod: BridgedPod) -> None:
    """As the bridge CNI plugin does: both veth ends made in the node namespace, the pod end moved
    into the pod's namespace and renamed eth0, then the host end put on the bridge and up."""
    node = cluster.node("node-a")
    tmp = pod.host_ifname + "p"
    subprocess_ok(["ip", "netns", "add", pod.netns])
    ip(node.netns, "link", "add", pod.host_ifname, "type", "veth", "peer", "name", tmp)
    ip(node.netns, "link", "set", tmp, "netns", pod.netns)
    ip(pod.netns, "link", "set", tmp, "name", "eth0")
    ip(pod.netns, "addr", "add", f"{pod.ipv4}/24", "dev", "eth0")
    ip(pod.netns, "link", "set", "lo", "up")
    ip(pod.netns, "link", "set", "eth0", "up")
    ip(pod.netns, "route", "add", "default", "via", node.gateway_v4)
    ip(node.netns, "link", "set", pod.host_ifname, "master", node.bridge)
    ip(node.netns, "link", "set", pod.host_ifname, "up")


def port_forwarding(netns: str, ifname: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", netns, "-d", "-j", "link", "show", "dev", ifname],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        return False
    info = json.loads(out.stdout)[0].get("linkinfo", {}).get("info_slave_data", {})
    return bool(info.get("state") == "forwarding")


def test_a_minute_of_bridge_changes_loses_no_connection(
    cluster_factory: Callable[[ClusterSpec], Cluster], agents: Agents, tmp_path: Path
) -> None:
    cluster = cluster_factory(SPEC)
    node = cluster.node("node-a")
    c1, c2, srv = (cluster.pod(n) for n in ("client-1", "client-2", "server"))
    factory = PodFactory(cluster, node, namespace="shop")
    (late,) = factory.plan(["late"])
    inventory = factory.inventory(tmp_path / "inventory.yaml")
    web = Server(srv.netns, srv.ipv4, WEB_PORT, 700)
    batch = Server(srv.netns, srv.ipv4, BATCH_PORT, 90_000)
    clients = Clients()
    web_key: EdgeKey = ("web", "api", WEB_PORT, "closed")
    batch_key: EdgeKey = ("batch", "api", BATCH_PORT, "closed")
    late_key: EdgeKey = ("late", "api", WEB_PORT, "closed")

    def late_pod() -> None:
        add_pod_cni_style(cluster, late)
        # under STP the new port listens and learns first (2 x forward delay) before it forwards
        assert wait_until(lambda: port_forwarding(node.netns, late.host_ifname), timeout=20)
        clients.start(late.netns, web, late_key)

    churn = BridgeChurn(cluster, late_pod)
    try:
        env = {"PODWIRE_LOG_FORMAT": "json"}
        agents.start(cluster, "node-a", env, inventory, tmp_path / "agent.log")
        agents.wait_ready()
        port = agents.ports["node-a"]
        clients.start(c1.netns, web, web_key)
        clients.start(c2.netns, batch, batch_key)
        churn.start()
        snapshots: list[dict[EdgeKey, int]] = []
        end = time.monotonic() + SOAK_S
        while time.monotonic() < end:
            time.sleep(INTERVAL_S)
            snapshots.append(connection_counts(scrape(port)))
        churn.finish()
        made = clients.finish()
        wait_until(lambda: connection_counts(scrape(port)) == made, timeout=20)
        time.sleep(1.5)  # one more round: nothing counted twice, nothing turned into a timeout later
        text = scrape(port)
        final = connection_counts(text)
        kernel_drops = metric_total(text, "podwire_agent_kernel_drops_total")
    finally:
        churn.finish()
        clients.stop.set()
        web.close()
        batch.close()
    assert not churn.errors, churn.errors
    assert "a pod added CNI-style (peer moved in) under STP" in churn.done
    assert len(churn.done) >= 30, churn.done
    stalled = [
        (i, key, before.get(key, 0), after.get(key, 0))
        for key in (web_key, batch_key)
        for i, (before, after) in enumerate(zip([{}, *snapshots], snapshots, strict=False))
        if after.get(key, 0) <= before.get(key, 0)
    ]
    assert not stalled, f"counts stopped growing (interval, edge, before, after): {stalled}"
    assert made[late_key] > 0 and made[web_key] > 100 and made[batch_key] > 100, made
    assert final == made
    assert kernel_drops == 0
    assert agents.stop() == [0], (tmp_path / "agent.log").read_text()[-2000:]
