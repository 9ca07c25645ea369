"""The sampler on a real mini-cluster node: pods found from their veths' netnsids, dumped from
inside their namespaces, and a pod namespace that vanishes mid-round skipped and counted."""

from __future__ import annotations

import os
import socket
import time

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from podwire.demo.cluster import Cluster, call_in_netns
from podwire.model import StatsRound
from podwire.sockstats.sampler import SKIP_VANISHED, NodeTarget, Sampler
from tests.live.harness import client_socket, listener


def _own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_pods_are_found_by_netnsid_and_a_vanished_one_is_skipped_and_counted(
    two_pod_cluster: Cluster,
) -> None:
    cluster = two_pod_cluster
    node = cluster.nodes[0]
    client, server = cluster.pod("client"), cluster.pod("server")
    lsock = listener(cluster, server, port=8080)
    c = client_socket(cluster, client)
    c.connect((server.ipv4, 8080))
    s, _ = lsock.accept()
    c.sendall(b"x" * 5000)
    s.recv(5000)
    # a third "pod" whose namespace will vanish between discovery and its dump
    ghost = f"{cluster.prefix}-node-a-ghost"
    pyroute2_netns.create(ghost)
    rounds: list[StatsRound] = []
    try:

        def add_ghost_veth() -> None:
            with IPRoute() as ipr:
                ipr.link(
                    "add",
                    ifname=f"{cluster.prefix}h99",
                    kind="veth",
                    peer={"ifname": "g0", "net_ns_fd": ghost},
                )

        call_in_netns(node.netns, add_ghost_veth)
        target = NodeTarget(node.netns, rounds.append, include=cluster.host_veth_pattern)
        sampler = Sampler([target], interval_s=60)
        home = _own_netns()
        sampler.sample_once()
        assert sampler.stats.dumps == 3 and sampler.stats.skipped == {}
        assert target.finder is not None
        find = target.finder.find

        def find_then_vanish(wanted: set[int]) -> dict[int, str]:
            found = find(wanted)
            if os.path.exists(f"/run/netns/{ghost}"):
                pyroute2_netns.remove(ghost)  # the pod is deleted now, before its dump
            return found

        target.finder.find = find_then_vanish  # type: ignore[method-assign]
        sampler.sample_once()
        assert sampler.stats.skipped == {SKIP_VANISHED: 1}
        assert sampler.stats.dumps == 3 + 2  # the others were still dumped
        assert _own_netns() == home  # back in our own namespace
        last = rounds[-1].samples
        points = {x.point for x in last}
        assert points == {client.host_ifindex, server.host_ifindex}
        mine = next(x for x in last if x.point == client.host_ifindex and x.rport == 8080)
        assert mine.local == socket.inet_aton(client.ipv4) and not mine.local_listens
        assert mine.bytes_acked == 5001  # the SYN counts on the client's end
        theirs = next(x for x in last if x.point == server.host_ifindex and x.lport == 8080)
        assert theirs.local_listens and theirs.bytes_received == 5000
        # a later round no longer sees it: nothing more is skipped
        time.sleep(0.1)
        sampler.sample_once()
        assert sampler.stats.skipped.get(SKIP_VANISHED) == 1  # (its veth may outlive it briefly: not_found)
        sampler.close()
    finally:
        if os.path.exists(f"/run/netns/{ghost}"):
            pyroute2_netns.remove(ghost)
        for x in (c, s, lsock):
            x.close()
