"""The sampler on a real mini-cluster node: pods found from their veths' netnsids, dumped from
inside their namespaces, a pod namespace that vanishes mid-round skipped and counted, and one the
sampler may not enter (EPERM) counted as denied, not as vanished."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import threading
import time
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from podwire.demo.cluster import Cluster, call_in_netns
from podwire.model import StatsRound
from podwire.sockstats.sampler import SKIP_DENIED, SKIP_VANISHED, NodeTarget, Sampler
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


_CAP_SYS_ADMIN = 21
_CAPGET_CAPSET = {"x86_64": (125, 126), "aarch64": (90, 91)}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _set_sys_admin(on: bool) -> None:
    """Raise or lower CAP_SYS_ADMIN in this thread's effective set (capabilities are per thread: the
    rest of the process keeps its own; it stays in the permitted set, so it can be raised again)."""
    capget, capset = _CAPGET_CAPSET[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (_CapData * 2)()
    if libc.syscall(capget, ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    if on:
        data[0].effective |= 1 << _CAP_SYS_ADMIN
    else:
        data[0].effective &= ~(1 << _CAP_SYS_ADMIN)
    if libc.syscall(capset, ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _in_a_thread(fn: Callable[[], None]) -> None:
    """fn() in a thread of its own, as the agent's sampler worker (its errors re-raised here)."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    assert not t.is_alive()
    if errors:
        raise errors[0]


def test_a_pod_the_sampler_may_not_enter_is_counted_as_denied_not_vanished(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    node = cluster.nodes[0]
    rounds: list[StatsRound] = []
    target = NodeTarget(node.netns, rounds.append, include=cluster.host_veth_pattern)
    sampler = Sampler([target], interval_s=60)

    def worker() -> None:  # one thread, as the agent's sampler (its netlink sockets are per thread)
        try:
            sampler.sample_once()  # set up in the node's namespace with every capability
            assert sampler.stats.dumps == 2 and sampler.stats.skipped == {}
            home = _own_netns()
            _set_sys_admin(False)  # setns(2) into each pod's namespace now fails with EPERM
            try:
                sampler.sample_once()
            finally:
                _set_sys_admin(True)
            assert sampler.stats.skipped == {SKIP_DENIED: 2}  # both pods, as denied, not vanished
            assert sampler.stats.dumps == 2 and sampler.stats.rounds == 2 and rounds[-1].samples == []
            assert _own_netns() == home
            sampler.sample_once()  # with the capability back, both are dumped again
            assert sampler.stats.dumps == 4 and sampler.stats.skipped == {SKIP_DENIED: 2}
        finally:
            sampler.close()

    _in_a_thread(worker)
