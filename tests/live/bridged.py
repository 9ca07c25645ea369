"""Black-box helpers for capture tests on a bridged node: pods added in bursts while a real
`podwire run` process captures, servers in pods, and the agent's counts read from its /metrics.

Pods added here live on the cluster's node bridge, named like the cluster's own (`<prefix>h<k>`
host veths, `<prefix>-<node>-<name>` namespaces), so the agent's interface pattern matches them and
the cluster's teardown removes them even when a test fails.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns as pyroute2_netns

from podwire.demo.cluster import Cluster, Node, call_in_netns
from podwire.demo.inventory import ExternalEntry, Inventory, NodeEntry, PodEntry

from .harness import read_to_eof, send_all_and_count

EdgeKey = tuple[str, str, int, str]  # client workload, server workload, server port, outcome


@dataclass(frozen=True, slots=True)
class BridgedPod:
    name: str  # also its workload in the inventory (one pod per workload: counts per pod)
    netns: str
    host_ifname: str
    ipv4: str


@dataclass
class PodFactory:
    """Adds pods to a built cluster's node bridge in bursts (a few `ip -batch` runs per burst)."""

    cluster: Cluster
    node: Node
    namespace: str = "load"
    pods: list[BridgedPod] = field(default_factory=list)
    _next: int = 0

    def plan(self, names: Iterable[str]) -> list[BridgedPod]:
        """Decide names and addresses (before the agent starts: its inventory names them)."""
        planned = []
        prefix = self.cluster.prefix
        node_index = self.cluster.nodes.index(self.node)
        first_ifindex = len(self.cluster.pods)
        first_host = 2 + len(self.node.pods)
        for name in names:
            k = self._next
            self._next += 1
            host = first_host + k
            if host > 254:
                raise ValueError("a node's /24 holds at most 253 pods")
            planned.append(
                BridgedPod(
                    name,
                    f"{prefix}-{self.node.name}-{name}",
                    f"{prefix}h{first_ifindex + k}",
                    f"10.244.{node_index}.{host}",
                )
            )
        self.pods += planned
        return planned

    def inventory(self, path: Path) -> Path:
        """Inventory YAML naming the cluster's own pods and every planned pod (its own workload)."""
        entries = [
            PodEntry((p.ipv4, p.ipv6), p.namespace, p.name, p.workload, p.workload_kind, p.node)
            for p in self.cluster.pods
        ]
        entries += [
            PodEntry((p.ipv4,), self.namespace, p.name, p.name, "Deployment", self.node.name)
            for p in self.pods
        ]
        nodes = [
            NodeEntry(tuple(ip for ip in (n.ipv4, n.ipv6, n.gateway_v4, n.gateway_v6) if ip), n.name)
            for n in self.cluster.nodes
        ]
        inv = Inventory(tuple(entries), (), tuple(nodes), (ExternalEntry("0.0.0.0/0", "internet"),))
        path.write_text(inv.to_yaml())
        return path

    def create(self, pods: list[BridgedPod]) -> None:
        """Create `pods` at once: namespaces, then every veth on the bridge, then each pod's side."""
        _ip_batch(None, [f"netns add {p.netns}" for p in pods])
        gw = self.node.gateway_v4
        lines = []
        for p in pods:
            lines += [
                f"link add {p.host_ifname} type veth peer name eth0 netns {p.netns}",
                f"link set {p.host_ifname} master {self.node.bridge}",
                f"link set {p.host_ifname} up",
            ]
        _ip_batch(self.node.netns, lines)
        procs = [
            _ip_batch_start(
                p.netns,
                [
                    "link set lo up",
                    f"addr add {p.ipv4}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {gw}",
                ],
            )
            for p in pods
        ]
        for proc, p in zip(procs, pods, strict=True):
            _finish(proc, f"setting up pod {p.name}")

    def delete(self, pod: BridgedPod) -> None:
        """Delete the pod's namespace (its veth pair dies with it), as a kubelet does."""
        pyroute2_netns.remove(pod.netns)


def _ip_batch_start(netns: str | None, lines: list[str]) -> subprocess.Popen[bytes]:
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(("\n".join(lines) + "\n").encode())
    proc.stdin.close()
    return proc


def _finish(proc: subprocess.Popen[bytes], what: str) -> None:
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.wait(60) != 0:
        raise RuntimeError(f"{what}: {err.decode().strip()}")


def _ip_batch(netns: str | None, lines: list[str]) -> None:
    _finish(_ip_batch_start(netns, lines), f"ip -batch in {netns}")


def ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True, timeout=30)


def bridge_cmd(netns: str, *argv: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "bridge", *argv], check=True, capture_output=True, timeout=30
    )


class Server:
    """A TCP server in a netns: reads each connection to EOF, answers `reply` bytes, closes.

    One thread per connection, so many clients at once never wait on each other."""

    def __init__(self, netns: str, address: str, port: int, reply: int) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(1024)
            return s

        self.sock = call_in_netns(netns, make)
        self.reply = reply
        self.address, self.port = address, port
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            read_to_eof(conn)
            send_all_and_count(conn, self.reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def client_socket_in(netns: str) -> socket.socket:
    return call_in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def exchange(netns: str, server: Server, up: int = 100) -> int:
    """One whole connection from `netns`: connect, send `up` bytes, half-close, read the answer to EOF,
    close.  Returns the bytes received (== server.reply, or the test's bookkeeping is wrong)."""
    for attempt in range(5):
        s = client_socket_in(netns)
        try:
            s.settimeout(30)
            s.connect((server.address, server.port))
            break
        except OSError as exc:
            s.close()
            # ARP got no answer (a burst of new pods' broadcasts can overflow the kernel's backlog):
            # the SYN never left the pod, so there is no connection to count; try again
            if exc.errno != errno.EHOSTUNREACH or attempt == 4:
                raise
    with s:
        send_all_and_count(s, up)
        s.shutdown(socket.SHUT_WR)
        got = read_to_eof(s)
    if got != server.reply:
        raise AssertionError(f"server answered {got} bytes, not {server.reply}")
    return got


# ---------------------------------------------------------------- the agent's /metrics


def scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text: str = r.read().decode()
    return text


def connection_counts(text: str) -> dict[EdgeKey, int]:
    """podwire_tcp_connections_total by (client workload, server workload, server port, outcome)."""
    out: dict[EdgeKey, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "podwire_tcp_connections_total":
                continue
            lab = sample.labels
            key = (lab["client_workload"], lab["server_workload"], int(lab["server_port"]), lab["outcome"])
            out[key] = out.get(key, 0) + int(sample.value)
    return out


def metric_total(text: str, name: str) -> float:
    """Sum of every sample called `name` (e.g. podwire_agent_kernel_drops_total)."""
    return sum(
        s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    )


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def packet_sockets(netns: str) -> int:
    """AF_PACKET sockets of the namespace (/proc/net/packet read from inside it)."""

    def count() -> int:
        with open("/proc/thread-self/net/packet") as f:
            return max(0, len(f.read().splitlines()) - 1)

    return call_in_netns(netns, count)
