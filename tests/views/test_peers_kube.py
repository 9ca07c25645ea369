"""Peer agents found in a real kube-apiserver: running pods matching the label selector, this node's
own agent left out, pending pods and other labels ignored; an unreachable API flags the answer."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from podwire.views.fanout import FanOut, KubePeers

SELECTOR = "app.kubernetes.io/name=podwire"


@pytest.fixture
def namespace(kube_api: Any) -> Iterator[tuple[Any, str]]:
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    api = kube_api.api_client()
    core: Any = k8s.CoreV1Api(api)
    name = f"podwire-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield core, name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)
        api.close()


def _pod(core: Any, ns: str, name: str, labels: dict[str, str], node: str, ip: str | None) -> None:
    spec = {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/none:1"}]}
    meta = {"name": name, "labels": labels}
    core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    if ip is not None:  # what a kubelet does once the pod runs
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        core.patch_namespaced_pod_status(name, ns, {"status": status})


def test_peers_are_the_running_agents_on_other_nodes(kube_api: Any, namespace: tuple[Any, str]) -> None:
    core, ns = namespace
    agent = {"app.kubernetes.io/name": "podwire"}
    _pod(core, ns, "podwire-a", agent, "node-a", "10.244.0.5")  # this agent
    _pod(core, ns, "podwire-b", agent, "node-b", "10.244.1.5")
    _pod(core, ns, "podwire-c", agent, "node-c", "fd00:244::5")
    _pod(core, ns, "podwire-d", agent, "node-d", None)  # pending: no IP yet
    _pod(core, ns, "other", {"app.kubernetes.io/name": "nginx"}, "node-b", "10.244.1.9")
    discover = KubePeers(SELECTOR, ns, 9477, str(kube_api.admin_kubeconfig), "node-a")
    assert discover(5.0) == ("10.244.1.5:9477", "[fd00:244::5]:9477")
    fanout = FanOut((), discover, 2.0, 4, 64)
    assert fanout.peers() == (["10.244.1.5:9477", "[fd00:244::5]:9477"], None)


def test_an_unreachable_api_is_reported_not_raised(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: x, context: {cluster: x, user: x}}]\nusers: [{name: x, user: {token: t}}]\n"
    )
    fanout = FanOut(("127.0.0.1:1",), KubePeers(SELECTOR, "podwire", 9477, str(kubeconfig), None), 1.0, 4, 64)
    peers, error = fanout.peers()
    assert peers == ["127.0.0.1:1"]  # the static peers still answer
    assert error is not None and error.startswith("peer discovery failed: ")
