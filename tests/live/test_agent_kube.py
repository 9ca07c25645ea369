"""The whole agent under a real Kubernetes API names both ends of live connections by workload.

A real kube-apiserver (tests.peers) holds the objects; no controllers run, so the test creates
every owner itself and sets pod IPs through the status subresource, as the kubelet would.  The
API's pods carry the IPs of the mini-cluster's namespaced pods "client" and "server", so real
TCP connections between those namespaces must come out of the real `Agent` (capture in node-a's
namespace -> tracker -> Kubernetes identity -> telemetry) named by namespace and workload:

- through owner chains: Pod -> ReplicaSet -> Deployment and Pod -> Job -> CronJob.  The pods have
  no pod-template-hash label, so only walking the owners gives "frontend"/"nightly" (name
  guessing would give the ReplicaSet or Job);
- through pod IP reuse: the server's IPs pass from a StatefulSet pod to a CronJob's pod, and a
  connection that started before the switch is still named by the StatefulSet when it closes
  afterwards (names are looked up at the connection's start).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from podwire.agent import Agent, CollectingSink
from podwire.config import Settings
from podwire.demo.cluster import Cluster, Pod
from podwire.model import Identity, IdentityKind, NamedConnection, Outcome, Side
from tests.peers import KubeApi

from .harness import client_socket, listener, read_to_eof, send_all_and_count

pytestmark = [pytest.mark.live, pytest.mark.peers]

T = TypeVar("T")
WAIT_S = 60.0  # generous: 2 shared cores, a kube-apiserver and other engineers' builds
REPLY_FACTOR = 2  # the server answers twice the bytes it read: both directions are exact and distinct


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` and its last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {got!r})")
        time.sleep(0.05)


# ---- the API objects --------------------------------------------------------------------------


class Objects:
    """Creates namespaced objects through the official client; remembers pods to delete them."""

    def __init__(self, api: Any) -> None:
        # Any: the client takes plain dict bodies, which its typed signatures do not admit.
        self.core: Any = k8s.CoreV1Api(api)
        self.apps: Any = k8s.AppsV1Api(api)
        self.batch: Any = k8s.BatchV1Api(api)
        self.namespaces: list[str] = []
        self.pods: list[tuple[str, str]] = []

    def namespace(self, prefix: str) -> str:
        # Namespaces never finish deleting here (no namespace controller): always a new name.
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.namespaces.append(name)
        return name

    @staticmethod
    def _template(app: str, restart: str = "Always") -> dict[str, Any]:
        return {
            "metadata": {"labels": {"app": app}},
            "spec": {
                "containers": [{"name": "c", "image": "registry.invalid/none:1"}],
                "restartPolicy": restart,
            },
        }

    def deployment(self, ns: str, name: str) -> Any:
        spec = {"selector": {"matchLabels": {"app": name}}, "template": self._template(name)}
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}
        return self.apps.create_namespaced_deployment(ns, body)

    def replicaset(self, ns: str, name: str, app: str, owner: Any) -> Any:
        spec = {"selector": {"matchLabels": {"app": app}}, "template": self._template(app)}
        meta = {"name": name, "ownerReferences": [_ref(owner)]}
        body = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta, "spec": spec}
        return self.apps.create_namespaced_replica_set(ns, body)

    def statefulset(self, ns: str, name: str) -> Any:
        spec = {
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": self._template(name),
        }
        body = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec}
        return self.apps.create_namespaced_stateful_set(ns, body)

    def cronjob(self, ns: str, name: str) -> Any:
        spec = {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": self._template(name, "Never")}}}
        body = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name}, "spec": spec}
        return self.batch.create_namespaced_cron_job(ns, body)

    def job(self, ns: str, name: str, app: str, owner: Any) -> Any:
        spec = {
            "manualSelector": True,
            "selector": {"matchLabels": {"app": app}},
            "template": self._template(app, "Never"),
        }
        meta = {"name": name, "ownerReferences": [_ref(owner)]}
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}
        return self.batch.create_namespaced_job(ns, body)

    def pod(self, ns: str, name: str, owner: Any, ips: tuple[str, str]) -> None:
        """A pod on node-a, then its IPs through the status subresource (what a kubelet does)."""
        meta = {"name": name, "labels": {"app": owner.metadata.name}, "ownerReferences": [_ref(owner)]}
        spec = {"nodeName": "node-a", "containers": [{"name": "c", "image": "registry.invalid/none:1"}]}
        self.core.create_namespaced_pod(
            ns, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
        )
        self.pods.append((ns, name))
        status = {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
        self.core.patch_namespaced_pod_status(name, ns, {"status": status})

    def delete_pod(self, ns: str, name: str) -> None:
        self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)

    def cleanup(self) -> None:
        # Pods hold the mini-cluster's fixed IPs: leave none behind for later tests in the session.
        for ns, name in self.pods:
            with contextlib.suppress(ApiException):
                self.delete_pod(ns, name)
        for ns in self.namespaces:
            with contextlib.suppress(ApiException):
                self.core.delete_namespace(ns)  # stays Terminating; the name is unique


def _ref(owner: Any) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": True,
    }


@pytest.fixture
def objects(kube_api: KubeApi) -> Iterator[Objects]:
    api: Any = kube_api.api_client()
    made = Objects(api)
    try:
        yield made
    finally:
        made.cleanup()
        api.close()


# ---- real traffic between the pods --------------------------------------------------------------


class Server:
    """Listens in a pod; per connection reads to EOF, answers REPLY_FACTOR x the bytes, closes."""

    def __init__(self, cluster: Cluster, pod: Pod, ipv6: bool) -> None:
        self.sock = listener(cluster, pod, ipv6=ipv6)
        self.sock.settimeout(0.2)
        self.address = pod.ipv6 if ipv6 else pod.ipv4
        self.port: int = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                self.errors.append(exc)
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(WAIT_S)
                send_all_and_count(conn, REPLY_FACTOR * read_to_eof(conn))
            except OSError as exc:
                self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Conn:
    """One client connection from a pod: send `n` bytes, later finish (half-close, read the reply)."""

    def __init__(self, cluster: Cluster, pod: Pod, server: Server, n: int) -> None:
        self.n = n
        ipv6 = ":" in server.address
        self.client_address = pod.ipv6 if ipv6 else pod.ipv4
        self.sock = client_socket(cluster, pod, ipv6=ipv6)
        self.sock.settimeout(WAIT_S)
        self.sock.connect((server.address, server.port))
        self.port: int = self.sock.getsockname()[1]
        self.sent = send_all_and_count(self.sock, n)

    def finish(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
            got = read_to_eof(self.sock)
        finally:
            self.sock.close()
        assert got == REPLY_FACTOR * self.n, f"client read {got} bytes, server sent {REPLY_FACTOR * self.n}"


def exchange(cluster: Cluster, pod: Pod, server: Server, n: int) -> Conn:
    conn = Conn(cluster, pod, server, n)
    conn.finish()
    return conn


# ---- the test ----------------------------------------------------------------------------------


def _who(ident: Identity) -> tuple[IdentityKind, str, str | None, str | None, str | None]:
    return (ident.kind, ident.name, ident.namespace, ident.workload, ident.workload_kind)


def _metric_sum(body: str, metric: str, **labels: str) -> float:
    """Sum of the samples of `metric` whose labels include all of `labels`."""
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(metric + "{"):
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[: line.rindex("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_agent_names_both_ends_by_workload_through_owner_chains_and_pod_ip_reuse(
    two_pod_cluster: Cluster, kube_api: KubeApi, objects: Objects
) -> None:
    cluster = two_pod_cluster
    client_pod, server_pod = cluster.pod("client"), cluster.pod("server")
    client_ips = (client_pod.ipv4, client_pod.ipv6)
    server_ips = (server_pod.ipv4, server_pod.ipv6)

    # Before the agent starts (its first list): frontend (Deployment -> ReplicaSet -> Pod) holds the
    # client's IPs, db (StatefulSet -> Pod) the server's.
    web, data, batch = (
        objects.namespace("pw-web"),
        objects.namespace("pw-data"),
        objects.namespace("pw-batch"),
    )
    frontend = objects.deployment(web, "frontend")
    rs = objects.replicaset(web, "frontend-5d8f7c9b4", "frontend", frontend)
    objects.pod(web, "frontend-5d8f7c9b4-x2k9q", rs, client_ips)
    db = objects.statefulset(data, "db")
    objects.pod(data, "db-0", db, server_ips)

    sink = CollectingSink()
    settings = Settings(
        listen=("127.0.0.1", 0),
        log_format="console",
        kube="on",
        kubeconfig=str(kube_api.admin_kubeconfig),
        node_name="node-a",
        netns=cluster.node("node-a").netns,
        interface_include=cluster.host_veth_pattern,
        otlp="off",
    )
    agent = Agent(settings, extra_sinks=[sink])
    servers: list[Server] = []
    long_lived: Conn | None = None
    try:
        agent.start()
        wait_for(lambda: agent.ready() or agent.failed, "agent ready (kube synced, capture running)")
        assert agent.failed is None, agent.failed
        veths = {client_pod.host_ifname, server_pod.host_ifname}
        capture = agent.captures[0].capture
        wait_for(lambda: {i.name for i in capture.interfaces()} >= veths, f"capture rings on {veths}")
        resolve = agent.identity.resolve
        for ip in (*client_ips, *server_ips):  # the first list named them all
            assert resolve(ip, None).kind is IdentityKind.POD, (ip, resolve(ip, None))

        servers = [Server(cluster, server_pod, ipv6=False), Server(cluster, server_pod, ipv6=True)]
        v4, v6 = servers

        def client_records(conns: list[Conn]) -> list[NamedConnection] | None:
            """The client-side record of each of `conns` (in order), once all have arrived."""
            if agent.failed is not None:
                raise AssertionError(f"capture failed: {agent.failed}")
            by_port = {
                (c.record.client.address, c.record.client.port): c
                for c in list(sink.connections)
                if c.record.observed_side is Side.CLIENT
            }
            out = []
            for conn in conns:
                got = by_port.get((conn.client_address, conn.port))
                if got is None:
                    return None
                out.append(got)
            return out

        def check(named: NamedConnection, conn: Conn, server_who: tuple[Any, ...]) -> None:
            r = named.record
            assert r.outcome is Outcome.CLOSED, r
            assert (r.bytes_client_to_server, r.bytes_server_to_client) == (conn.n, REPLY_FACTOR * conn.n), r
            assert _who(named.client) == (
                IdentityKind.POD,
                "frontend-5d8f7c9b4-x2k9q",
                web,
                "frontend",
                "Deployment",
            ), named.client
            assert _who(named.server) == server_who, (named.server, r)

        db_who = (IdentityKind.POD, "db-0", data, "db", "StatefulSet")

        # One connection held open across the IP switch; then several short ones, both families.
        long_lived = Conn(cluster, client_pod, v4, 777)
        before = [exchange(cluster, client_pod, srv, 1000 + 37 * i) for i in range(3) for srv in (v4, v6)]
        for named, conn in zip(
            wait_for(lambda: client_records(before), "records of the db connections"), before, strict=True
        ):
            check(named, conn, db_who)
        assert {n.record.network_type for n in client_records(before) or []} == {"ipv4", "ipv6"}

        # IP reuse: db-0 goes; a CronJob's Job's pod (made after the agent's first sync: the watch
        # path) gets the very same IPs.
        objects.delete_pod(data, "db-0")
        wait_for(
            lambda: all(resolve(ip, None).kind is not IdentityKind.POD for ip in server_ips), "db-0 gone"
        )
        nightly = objects.cronjob(batch, "nightly")
        job = objects.job(batch, "nightly-29000000", "nightly", nightly)
        objects.pod(batch, "nightly-29000000-abcde", job, server_ips)
        nightly_who = (IdentityKind.POD, "nightly-29000000-abcde", batch, "nightly", "CronJob")
        wait_for(
            lambda: all(_who(resolve(ip, None)) == nightly_who for ip in server_ips),
            "the CronJob's pod holding db-0's IPs",
        )
        after = [exchange(cluster, client_pod, srv, 2000 + 11 * i) for i in range(2) for srv in (v4, v6)]
        for named, conn in zip(
            wait_for(lambda: client_records(after), "records after the switch"), after, strict=True
        ):
            check(named, conn, nightly_who)

        # The connection that started before the switch closes after it: still db's.
        long_lived.finish()
        (held,) = wait_for(lambda: client_records([long_lived]), "record of the long-lived connection")
        check(held, long_lived, db_who)
        assert held.record.start_time is not None and held.record.start_time < min(
            n.record.start_time or 0.0 for n in client_records(after) or []
        )
        assert not [e for s in servers for e in s.errors]

        # /metrics carries the workload names: each connection counted once (not once per veth).
        host, port = agent.http.address

        def metrics() -> str:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
                return str(resp.read().decode())

        edge = {"client_workload": "frontend", "client_namespace": web, "outcome": "closed"}
        want = {"db": (data, len(before) + 1), "nightly": (batch, len(after))}

        def counts() -> dict[str, float] | None:
            body = metrics()
            got = {
                name: _metric_sum(
                    body, "podwire_tcp_connections_total", server_workload=name, server_namespace=ns, **edge
                )
                for name, (ns, _) in want.items()
            }
            return got if got == {name: float(count) for name, (_, count) in want.items()} else None

        try:
            wait_for(counts, "podwire_tcp_connections_total by workload on /metrics", timeout=30)
        except AssertionError:
            lines = [ln for ln in metrics().splitlines() if ln.startswith("podwire_tcp_connections_total")]
            raise AssertionError("unexpected /metrics series:\n" + "\n".join(lines)) from None
        body = metrics()
        db_bytes = sum(c.n for c in before) + long_lived.n
        assert (
            _metric_sum(
                body,
                "podwire_tcp_bytes_total",
                client_workload="frontend",
                server_workload="db",
                direction="client_to_server",
            )
            == db_bytes
        )
    finally:
        if long_lived is not None:
            with contextlib.suppress(OSError):
                long_lived.sock.close()
        for srv in servers:
            srv.close()
        agent.stop(10.0)
