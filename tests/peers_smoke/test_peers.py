# The client models make every field Optional and watch is untyped; asserts cover the Nones.
# mypy: disable-error-code="union-attr,no-untyped-call"
"""The Go-built peers are real: kube-apiserver serves the official Python client, RBAC is
enforced, the status subresource and watch behave like a cluster's, and helm runs."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.peers import KubeApi, helm_env

pytestmark = pytest.mark.peers

POD_IP = "10.244.7.23"


@pytest.fixture
def admin(kube_api: KubeApi) -> Iterator[client.CoreV1Api]:
    api = kube_api.api_client()
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


@pytest.fixture
def namespace(admin: client.CoreV1Api) -> Iterator[str]:
    name = f"pw-smoke-{uuid.uuid4().hex[:8]}"
    admin.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        # No namespace controller runs, so it stays Terminating; the name is unique anyway.
        admin.delete_namespace(name)


def _pod(name: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "smoke"}),
        spec=client.V1PodSpec(
            node_name="node-a", containers=[client.V1Container(name="c", image="registry.invalid/none:1")]
        ),
    )


def _set_pod_ip(admin: client.CoreV1Api, ns: str, name: str, ip: str) -> client.V1Pod:
    body = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    pod: client.V1Pod = admin.patch_namespaced_pod_status(name, ns, body)
    return pod


def test_server_reports_pinned_version_and_real_readyz(kube_api: KubeApi) -> None:
    api = kube_api.api_client()
    try:
        info = client.VersionApi(api).get_code()
        assert info.git_version == "v1.36.3"
        assert kube_api.server.startswith("https://127.0.0.1:")
        assert (kube_api.data_dir / "etcd").is_dir()
    finally:
        api.close()


def test_pod_status_changes_only_through_status_subresource(admin: client.CoreV1Api, namespace: str) -> None:
    created = admin.create_namespaced_pod(namespace, _pod("web"))
    assert created.status.pod_ip is None
    assert created.metadata.uid

    # A status change through the main resource is silently dropped, as on a real cluster.
    admin.patch_namespaced_pod("web", namespace, {"status": {"podIP": "10.9.9.9"}})
    assert admin.read_namespaced_pod("web", namespace).status.pod_ip is None

    patched = _set_pod_ip(admin, namespace, "web", POD_IP)
    assert patched.status.pod_ip == POD_IP
    got = admin.read_namespaced_pod("web", namespace)
    assert got.status.pod_ip == POD_IP
    assert [p.ip for p in got.status.pod_ips] == [POD_IP]
    assert got.status.phase == "Running"
    assert got.spec.node_name == "node-a"


def test_list_then_watch_delivers_status_update_and_delete(admin: client.CoreV1Api, namespace: str) -> None:
    admin.create_namespaced_pod(namespace, _pod("db"))
    listed = admin.list_namespaced_pod(namespace)
    assert [p.metadata.name for p in listed.items] == ["db"]
    rv = listed.metadata.resource_version

    _set_pod_ip(admin, namespace, "db", POD_IP)
    admin.delete_namespaced_pod("db", namespace, grace_period_seconds=0)

    seen: list[tuple[str, str | None]] = []
    w = watch.Watch()
    for event in w.stream(admin.list_namespaced_pod, namespace, resource_version=rv, timeout_seconds=10):
        seen.append((event["type"], event["object"].status.pod_ip))
        if event["type"] == "DELETED":
            w.stop()
    assert ("MODIFIED", POD_IP) in seen
    assert seen[-1][0] == "DELETED"
    assert admin.list_namespaced_pod(namespace).items == []


def _forbidden(fn: Callable[..., object], *args: object, **kwargs: object) -> bool:
    try:
        fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 403:
            return True
        raise
    return False


def test_non_admin_is_forbidden_until_cluster_role_grants_read(
    kube_api: KubeApi, admin: client.CoreV1Api, namespace: str
) -> None:
    admin.create_namespaced_pod(namespace, _pod("api"))
    suffix = uuid.uuid4().hex[:8]
    group = f"podwire-readers-{suffix}"
    reader_api = kube_api.api_client(kube_api.kubeconfig_for(f"agent-{suffix}", [group]))
    reader = client.CoreV1Api(reader_api)
    rbac_api = kube_api.api_client()
    rbac = client.RbacAuthorizationV1Api(rbac_api)
    role = f"pw-pod-reader-{suffix}"
    try:
        assert _forbidden(reader.list_pod_for_all_namespaces)
        assert _forbidden(reader.read_namespaced_pod, "api", namespace)

        rbac.create_cluster_role(
            client.V1ClusterRole(
                metadata=client.V1ObjectMeta(name=role),
                rules=[
                    client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"])
                ],
            )
        )
        rbac.create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=role),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    client.RbacV1Subject(kind="Group", name=group, api_group="rbac.authorization.k8s.io")
                ],
            )
        )
        # The RBAC authorizer learns of new bindings through its informer: poll briefly.
        deadline = time.monotonic() + 15
        while _forbidden(reader.list_pod_for_all_namespaces):
            assert time.monotonic() < deadline, "ClusterRoleBinding never took effect"
            time.sleep(0.2)

        names = {p.metadata.name for p in reader.list_namespaced_pod(namespace).items}
        assert names == {"api"}
        assert reader.read_namespaced_pod("api", namespace).metadata.name == "api"
        events = list(
            watch.Watch().stream(
                reader.list_namespaced_pod, namespace, resource_version="0", timeout_seconds=2
            )
        )
        assert [e["object"].metadata.name for e in events] == ["api"]
        # Read-only: writes and other resources stay forbidden.
        assert _forbidden(reader.delete_namespaced_pod, "api", namespace)
        assert _forbidden(reader.list_namespaced_secret, namespace)
    finally:
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                delete(role)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        reader_api.close()
        rbac_api.close()


def test_helm_version_is_pinned_release(helm_bin: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(helm_bin), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=helm_env(tmp_path),
    ).stdout
    assert out.startswith("v3.22.0"), out
