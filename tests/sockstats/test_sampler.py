"""The sampler on a real mini-cluster node: pods found from their veths' netnsids, dumped from
inside their namespaces, a pod namespace that vanishes mid-round skipped and counted, and one the
sampler may not enter (EPERM) counted as denied, not as vanished."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from podwire.demo.cluster import Cluster, call_in_netns, netns_path
from podwire.model import StatsRound
from podwire.sockstats.sampler import (
    SKIP_DENIED,
    SKIP_FAILED,
    SKIP_NOT_FOUND,
    SKIP_VANISHED,
    NodeTarget,
    Sampler,
)
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


def test_without_named_namespaces_a_pod_is_found_through_its_process(
    two_pod_cluster: Cluster, tmp_path: Path
) -> None:
    """The hostPID way: no namespace file under the netns directory (an empty one here), so the
    server pod is found through a process of its sandbox (/proc/<pid>/ns/net); the client pod, with
    no process, is not found and counted."""
    cluster = two_pod_cluster
    node = cluster.nodes[0]
    client, server = cluster.pod("client"), cluster.pod("server")
    sandbox = subprocess.Popen(["ip", "netns", "exec", server.netns, "sleep", "120"])
    lsock = listener(cluster, server, port=8080)
    c = client_socket(cluster, client)
    c.connect((server.ipv4, 8080))
    s, _ = lsock.accept()
    rounds: list[StatsRound] = []
    # the node's own namespace by its full path: only pods are looked up in the (empty) directory
    target = NodeTarget(
        str(netns_path(node.netns)), rounds.append, netns_dir=str(tmp_path), include=cluster.host_veth_pattern
    )
    sampler = Sampler([target], interval_s=60)
    try:
        c.sendall(b"x" * 4321)
        assert len(s.recv(8192)) > 0
        deadline = time.monotonic() + 20
        while True:  # (wait for `ip netns exec` to have entered the namespace and run sleep)
            sampler.sample_once()
            theirs = [x for x in rounds[-1].samples if x.point == server.host_ifindex and x.lport == 8080]
            if (theirs and theirs[0].bytes_received == 4321) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert theirs and theirs[0].local_listens and theirs[0].bytes_received == 4321, rounds[-1]
        assert {x.point for x in rounds[-1].samples} == {server.host_ifindex}
        assert sampler.stats.skipped.get(SKIP_NOT_FOUND, 0) >= 1  # the client pod: no file, no process
    finally:
        sampler.close()
        sandbox.kill()
        sandbox.wait()
        for x in (c, s, lsock):
            x.close()


def test_a_namespace_removed_in_the_middle_of_its_dump_is_not_fatal(
    two_pod_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod is deleted while its dump is between two netlink reads: its namespace file goes and
    its sockets close.  The open sock_diag socket holds the namespace, so the dump ends normally
    (with what is left) and counts as a dump; the next round no longer finds the pod."""
    from podwire.sockstats import diag
    from podwire.sockstats import sampler as sampler_module

    cluster = two_pod_cluster
    node = cluster.nodes[0]
    ghost = f"{cluster.prefix}-node-a-ghost"
    pyroute2_netns.create(ghost)
    held: list[socket.socket] = []
    try:

        def add_ghost_veth() -> None:
            with IPRoute() as ipr:
                ipr.link(
                    "add",
                    ifname=f"{cluster.prefix}h98",
                    kind="veth",
                    peer={"ifname": "g0", "net_ns_fd": ghost},
                )

        call_in_netns(node.netns, add_ghost_veth)

        def connections() -> list[socket.socket]:  # enough for several netlink reads
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            lsock = socket.socket()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(512)
            out = [lsock]
            for _ in range(200):
                c = socket.create_connection(lsock.getsockname())
                out += [c, lsock.accept()[0]]
            return out

        held += call_in_netns(ghost, connections)
        ghost_ino = os.stat(f"/run/netns/{ghost}").st_ino
        removed: list[int] = []  # messages of the ghost's dump read before it was removed

        class RemovedMidDump(diag.DiagDump):
            def __init__(self, one_walk: bool = True) -> None:
                super().__init__(one_walk)  # (made inside the namespace it dumps)
                self.ghost = _own_netns() == ghost_ino

            def _dump(self, mtype: int, body: bytes) -> Iterator[tuple[bytearray, int, int]]:
                for n, found in enumerate(super()._dump(mtype, body)):
                    if self.ghost and mtype == diag.TCPDIAG_GETSOCK and n == 1 and not removed:
                        pyroute2_netns.remove(ghost)  # the pod is deleted: file gone, sockets closed
                        for x in held:
                            x.close()
                        removed.append(n)
                    yield found

        monkeypatch.setattr(sampler_module, "DiagDump", RemovedMidDump)
        rounds: list[StatsRound] = []
        target = NodeTarget(node.netns, rounds.append, include=cluster.host_veth_pattern)
        sampler = Sampler([target], interval_s=60)
        home = _own_netns()
        sampler.sample_once()
        assert removed == [1], "the ghost was dumped and removed in the middle"
        assert not os.path.exists(f"/run/netns/{ghost}")
        assert sampler.stats.dumps == 3 and sampler.stats.skipped == {}  # its dump ended normally
        assert _own_netns() == home
        assert {x.point for x in rounds[-1].samples} <= {p.host_ifindex for p in cluster.pods}
        # later rounds: the pod is gone (its veth may outlive it briefly: then it is not found)
        sampler.sample_once()
        assert sampler.stats.dumps == 5 and set(sampler.stats.skipped) <= {SKIP_NOT_FOUND}
        assert sampler.failed is None and _own_netns() == home
        sampler.close()
    finally:
        if os.path.exists(f"/run/netns/{ghost}"):
            pyroute2_netns.remove(ghost)
        for x in held:
            x.close()


def test_a_round_holds_at_most_max_sockets_and_counts_the_rest(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    lsock = listener(cluster, server, port=8080)
    socks = []
    for _ in range(3):  # 3 connections: 3 sockets in each pod
        c = client_socket(cluster, client)
        c.connect((server.ipv4, 8080))
        socks += [c, lsock.accept()[0]]
    rounds: list[StatsRound] = []
    target = NodeTarget(cluster.nodes[0].netns, rounds.append, include=cluster.host_veth_pattern)
    sampler = Sampler([target], interval_s=60, max_sockets=4)
    try:
        sampler.sample_once()
        assert len(rounds[-1].samples) == 4 and sampler.stats.sockets == 4
        assert sampler.stats.sockets_dropped == 2
    finally:
        sampler.close()
        for x in (*socks, lsock):
            x.close()


def test_a_truncated_dump_counts_as_failed_not_as_a_pod_gone(
    two_pod_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from podwire.sockstats import sampler as sampler_mod
    from podwire.sockstats.diag import DiagError

    class Truncated(sampler_mod.DiagDump):
        def listening(self) -> frozenset[int]:
            raise DiagError(errno.EBADMSG, "truncated sock_diag message")

    monkeypatch.setattr(sampler_mod, "DiagDump", Truncated)
    rounds: list[StatsRound] = []
    target = NodeTarget(
        two_pod_cluster.nodes[0].netns, rounds.append, include=two_pod_cluster.host_veth_pattern
    )
    sampler = Sampler([target], interval_s=60)
    try:
        sampler.sample_once()
        assert sampler.stats.skipped == {SKIP_FAILED: 2} and sampler.stats.dumps == 0
        assert _own_netns() == os.stat("/proc/self/ns/net").st_ino  # back home all the same
    finally:
        sampler.close()
