"""helm/podwire with the real helm (tests/peers.py's helm_bin) and the real kube-apiserver
(kube_api): lint, render default and full values, create every rendered core object on the
API server (dry-run for the full values, strict field validation), check the security
context, the RBAC verbs (and what the ServiceAccount can really do, by SubjectAccessReview),
the schema rejecting wrong types, every agent setting reaching the container as PODWIRE_*,
and the embedded alerts/dashboards/gateway config being the shipped ones."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from podwire import config as podwire_config
from tests.peers import KubeApi, helm_env

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "podwire"
FULL = CHART / "ci" / "full-values.yaml"
KUBE_VERSION = "1.36.3"  # the kube-apiserver tests/peers.py builds
NAMESPACE = "podwire"
READ_ONLY_RULES = [
    {"apiGroups": [""], "resources": ["pods", "services", "nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator: no CRDs on the test server


@pytest.fixture(scope="module")
def helm(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    env = helm_env(tmp_path_factory.mktemp("helm-home"))

    def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([helm_bin, *map(str, args)], capture_output=True, text=True, env=env)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return run


def _render(helm, *values: str, release: str = "pw") -> list[dict[str, Any]]:
    out = helm("template", release, CHART, "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *values)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def default_objects(helm) -> list[dict[str, Any]]:
    return _render(helm)


@pytest.fixture(scope="module")
def full_objects(helm) -> list[dict[str, Any]]:
    return _render(helm, "-f", str(FULL))


def _one(objs: list[dict], kind: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


def _agent_env(objs: list[dict]) -> dict[str, dict]:
    (container,) = _one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


# --- lint and schema -------------------------------------------------------------------------


def test_helm_lint_passes_for_default_and_full_values(helm) -> None:
    for extra in ([], ["-f", str(FULL)]):
        proc = helm("lint", CHART, "--strict", *extra)
        assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("agent.maxConnections=many", "/agent/maxConnections"),
        ("agent.vethOnly=maybe", "/agent/vethOnly"),
        ("agent.spanSampleRatio=2", "/agent/spanSampleRatio"),
        ("agent.kube=sometimes", "/agent/kube"),
        ("agent.listenPort=70000", "/agent/listenPort"),
        ("agent.maxConnectoins=5", "maxConnectoins"),  # a typo is an error, not a silent no-op
        ("securityContext.privileged=true", "/securityContext/privileged"),
    ],
)
def test_schema_rejects_wrong_types_and_values(helm, setting: str, complaint: str) -> None:
    proc = helm("lint", CHART, "--set", setting, check=False)
    assert proc.returncode != 0
    assert complaint in proc.stdout + proc.stderr


# --- rendered objects ---------------------------------------------------------------------------


def test_default_render_has_the_agent_objects(default_objects: list[dict]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",  # one per dashboard (four)
        "ConfigMap",
        "ConfigMap",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceAccount",
    ]
    for cm in [o for o in default_objects if o["kind"] == "ConfigMap"]:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (name,) = cm["data"]
        assert json.loads(cm["data"][name]) == json.loads((REPO / "dashboards" / name).read_text())


@pytest.mark.parametrize("values", ["default", "full"])
def test_security_context_is_not_privileged_and_adds_only_needed_capabilities(
    values: str, default_objects: list[dict], full_objects: list[dict]
) -> None:
    objs = default_objects if values == "default" else full_objects
    pod = _one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert "privileged: true" not in yaml.safe_dump_all(objs)
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["hostNetwork"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["limits"] and c["resources"]["requests"]
    if values == "default":
        assert sc["capabilities"]["add"] == ["NET_RAW"]
        assert pod["hostPID"] is False
        assert "priorityClassName" not in pod
    else:  # serviceBackends on: ctnetlink needs NET_ADMIN; socketStats on with hostPID: setns and
        # /proc/<pid>/ns need SYS_ADMIN, SYS_PTRACE and the host PID namespace
        assert sc["capabilities"]["add"] == ["NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
        assert pod["hostPID"] is True
        assert pod["priorityClassName"] == "system-node-critical"


def test_socket_stats_alone_add_only_sys_admin_and_the_cni_netns_mount(helm) -> None:
    objs = _render(helm, "--set", "socketStats.enabled=true")
    pod = _one(objs, "DaemonSet")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["securityContext"]["capabilities"]["add"] == ["NET_RAW", "SYS_ADMIN"]
    assert pod["hostPID"] is False  # namespaces come from CNI's /run/netns, not from processes
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "netns"]
    assert mount == {
        "name": "netns",
        "mountPath": "/run/netns",
        "readOnly": True,
        "mountPropagation": "HostToContainer",
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == "netns"]
    assert volume["hostPath"]["path"] == "/run/netns"
    env = {k: e.get("value") for k, e in _agent_env(objs).items()}
    assert (env["PODWIRE_SOCKSTATS"], env["PODWIRE_SOCKSTATS_INTERVAL_S"]) == ("true", "10")
    assert env["PODWIRE_NETNS_DIR"] == "/run/netns"
    # off by default: no mount either
    default = _one(_render(helm), "DaemonSet")["spec"]["template"]["spec"]
    assert all(v["name"] != "netns" for v in default["volumes"])


def test_cluster_role_is_read_only_on_exactly_five_resources(full_objects: list[dict]) -> None:
    role = _one(full_objects, "ClusterRole")
    assert role["rules"] == READ_ONLY_RULES
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "list", "watch"}


def test_every_agent_setting_reaches_the_container_as_podwire_env(full_objects: list[dict]) -> None:
    env = _agent_env(full_objects)
    known = {podwire_config.env_name(f) for f in podwire_config._FIELDS}
    podwire_vars = {k for k in env if k.startswith("PODWIRE_")}
    # the agent refuses unknown PODWIRE_* variables, and every setting is configurable
    assert podwire_vars == known
    values = yaml.safe_load(FULL.read_text())["agent"]
    literal = {k: e.get("value") for k, e in env.items()}
    assert literal["PODWIRE_LISTEN"] == f"$(POD_IP):{values['listenPort']}"
    assert env["PODWIRE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert literal["PODWIRE_EXTERNAL_CIDRS"] == "10.96.0.0/12=cluster-services,0.0.0.0/0=internet"
    assert literal["PODWIRE_SYN_TIMEOUT_S"] == "10.5"
    assert literal["PODWIRE_MAX_CONNECTIONS"] == "100000"
    assert literal["PODWIRE_SPAN_SAMPLE_RATIO"] == "0.25"
    assert literal["PODWIRE_VETH_ONLY"] == "false"
    assert literal["PODWIRE_SERVICE_BACKENDS"] == "true"  # with NET_ADMIN (the capabilities test)
    assert literal["PODWIRE_SOCKSTATS"] == "true"  # with SYS_ADMIN (the capabilities test)
    assert literal["PODWIRE_SOCKSTATS_INTERVAL_S"] == "5"
    assert literal["PODWIRE_INVENTORY"] == "/etc/podwire/inventory.yaml"
    assert literal["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-agent.observability.svc:4317"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "otlp-auth",
        "key": "headers",
    }
    # and the agent's own parser accepts every value the chart renders (POD_IP expanded)
    resolved = {
        k: v.replace("$(POD_IP)", "10.0.0.7") for k, v in literal.items() if k.startswith("PODWIRE_") and v
    }
    resolved["PODWIRE_NODE_NAME"] = "node-a"
    settings = podwire_config.load(env=resolved)
    assert settings.listen == ("10.0.0.7", 9478)
    assert settings.max_connections == 100000
    assert settings.external_cidrs == (("10.96.0.0/12", "cluster-services"), ("0.0.0.0/0", "internet"))


def test_default_env_parses_with_the_agent_settings_loader(default_objects: list[dict]) -> None:
    env = _agent_env(default_objects)
    resolved = {
        k: e["value"].replace("$(POD_IP)", "10.0.0.7")
        for k, e in env.items()
        if k.startswith("PODWIRE_") and "value" in e
    }
    settings = podwire_config.load(env=resolved)
    assert settings.interface_exclude == podwire_config.Settings().interface_exclude
    assert settings.kube == "on"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env  # no collector configured, no export


def test_prometheus_rule_is_the_plain_rule_file_with_job_and_runbook_prefix(
    full_objects: list[dict], promtool: Path, tmp_path: Path
) -> None:
    rule = _one(full_objects, "PrometheusRule")
    plain = yaml.safe_load((REPO / "alerts" / "podwire-rules.yaml").read_text())
    for group in plain["groups"]:
        for r in group["rules"]:
            r["annotations"]["runbook_url"] = (
                "https://git.example.com/podwire/blob/main/" + r["annotations"]["runbook_url"]
            )
    assert rule["spec"] == plain
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    proc = subprocess.run(
        [promtool, "check", "rules", tmp_path / "rules.yaml"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_monitor_scrapes_the_agents_as_the_alerts_job(full_objects: list[dict]) -> None:
    sm = _one(full_objects, "ServiceMonitor")
    svc = next(
        o
        for o in full_objects
        if o["kind"] == "Service"
        and o["spec"].get("clusterIP") == "None"
        and o["spec"]["selector"].get("app.kubernetes.io/component") == "agent"
    )
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == svc["spec"]["ports"][0]["name"] and ep["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "podwire"} in ep["relabelings"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_gateway_config_passes_otelcol_validate_with_the_rendered_env(
    full_objects: list[dict], otelcol_bin: Path, tmp_path: Path
) -> None:
    cm = next(
        o for o in full_objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-gateway")
    )
    assert (
        cm["data"]["config.yaml"].strip() == (REPO / "otel" / "gateway-remote-write.yaml").read_text().strip()
    )
    dep = _one(full_objects, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PROMETHEUS_REMOTE_WRITE_URL"] == "http://prometheus.monitoring.svc:9090/api/v1/write"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(cm["data"]["config.yaml"])
    import os

    proc = subprocess.run(
        [otelcol_bin, "validate", f"--config={cfg}"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the agents then export to the chart's gateway only when no endpoint is given
    assert _agent_env(full_objects)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://otel-agent")


def test_agents_export_to_the_in_chart_gateway_by_default_when_it_is_enabled(helm) -> None:
    objs = _render(helm, "--set", "gateway.enabled=true")
    assert (
        _agent_env(objs)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        == f"http://pw-podwire-gateway.{NAMESPACE}.svc:4317"
    )
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-gateway"))
    assert cm["data"]["config.yaml"].strip() == (REPO / "otel" / "gateway.yaml").read_text().strip()


# --- against the real kube-apiserver -----------------------------------------------------------


@pytest.fixture(scope="module")
def api(kube_api: KubeApi) -> Iterator[Any]:
    from kubernetes import client, dynamic

    api_client = kube_api.api_client()
    core = client.CoreV1Api(api_client)
    made = []
    for ns in (NAMESPACE, "monitoring"):
        with contextlib.suppress(client.ApiException):
            core.create_namespace({"metadata": {"name": ns}})
            made.append(ns)
    try:
        yield dynamic.DynamicClient(api_client)
    finally:
        api_client.close()


def _apply(dyn: Any, objs: list[dict], *, dry_run: bool) -> list[str]:
    """Create each core object (strict field validation); return 'Kind/name' created."""
    done = []
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        params = [("fieldValidation", "Strict")]
        if dry_run:
            params.append(("dryRun", "All"))
        res.create(
            body=obj,
            namespace=obj["metadata"].get("namespace") if res.namespaced else None,
            query_params=params,
        )
        done.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return done


def test_full_values_objects_pass_server_side_dry_run(api: Any, full_objects: list[dict]) -> None:
    done = _apply(api, full_objects, dry_run=True)
    assert sorted(d.split("/")[0] for d in done) == sorted(
        o["kind"] for o in full_objects if o["kind"] not in CRD_KINDS
    )


def test_default_objects_are_created_and_the_service_account_can_only_read(
    api: Any, helm, kube_api: KubeApi
) -> None:
    from kubernetes import client

    release = f"pw{uuid.uuid4().hex[:6]}"
    objs = _render(helm, release=release)
    created = _apply(api, objs, dry_run=False)
    assert f"DaemonSet/{release}-podwire" in created
    api_client = kube_api.api_client()
    try:
        authz = client.AuthorizationV1Api(api_client)
        user = f"system:serviceaccount:{NAMESPACE}:{release}-podwire"

        def allowed(verb: str, resource: str, group: str = "") -> bool:
            review = authz.create_subject_access_review(
                {
                    "spec": {
                        "user": user,
                        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
                        "resourceAttributes": {"verb": verb, "resource": resource, "group": group},
                    }
                }
            )
            return bool(review.status.allowed)

        for verb in ("get", "list", "watch"):
            assert allowed(verb, "pods")
            assert allowed(verb, "services")
            assert allowed(verb, "nodes")
            assert allowed(verb, "replicasets", "apps")
            assert allowed(verb, "jobs", "batch")
        assert not allowed("create", "pods")
        assert not allowed("delete", "pods")
        assert not allowed("list", "secrets")
        assert not allowed("list", "deployments", "apps")
        assert not allowed("patch", "nodes")
    finally:
        api_client.close()


def test_helm_install_server_dry_run_prints_notes_with_next_steps(helm, api: Any, kube_api: KubeApi) -> None:
    # A real `helm install --dry-run=server` against the test API server (its version
    # satisfies the chart's kubeVersion; server-side it checks every core object too).
    objs_notes = helm(
        "install",
        f"pw{uuid.uuid4().hex[:6]}",
        CHART,
        "--namespace",
        NAMESPACE,
        "--dry-run=server",
        "--kubeconfig",
        kube_api.admin_kubeconfig,
    ).stdout
    notes = objs_notes.split("NOTES:", 1)[1]
    assert "kubectl -n podwire get pods" in notes
    assert "No OTLP endpoint is set" in notes and "otlp.endpoint=" in notes
    assert "prometheusRule.enabled=true" in notes
    assert "grafana_dashboard=1" in notes


# --- listener security options (issue 14): loopback + kube-rbac-proxy, NetworkPolicy -----------

PROXY = ("--set", "listener.mode=proxy", "--set", "listener.proxy.clientCaSecret=podwire-client-ca")
NETPOL = (
    "--set",
    "listener.networkPolicy.enabled=true",
    "--set",
    "listener.networkPolicy.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
)


@pytest.fixture(scope="module")
def proxy_objects(helm) -> list[dict[str, Any]]:
    return _render(helm, *PROXY, *NETPOL)


def test_default_install_grants_only_net_raw_and_serves_no_auth_layer(default_objects: list[dict]) -> None:
    pod = _one(default_objects, "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert pod["hostPID"] is False
    kinds = {o["kind"] for o in default_objects}
    assert "NetworkPolicy" not in kinds
    assert [o["metadata"]["name"] for o in default_objects if o["kind"] == "ClusterRole"] == ["pw-podwire"]


def test_proxy_mode_puts_the_agent_on_loopback_behind_kube_rbac_proxy(
    helm, proxy_objects: list[dict]
) -> None:
    assert "1 chart(s) linted, 0 chart(s) failed" in helm("lint", CHART, "--strict", *PROXY, *NETPOL).stdout
    pod = _one(proxy_objects, "DaemonSet")["spec"]["template"]["spec"]
    agent, proxy = pod["containers"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["PODWIRE_LISTEN"] == "127.0.0.1:9479"
    assert podwire_config.load(env={"PODWIRE_LISTEN": env["PODWIRE_LISTEN"]}).listen == ("127.0.0.1", 9479)
    assert "ports" not in agent  # nothing of the agent's is reachable from outside the host
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["host"] == "127.0.0.1" and agent[probe]["httpGet"]["port"] == 9479
    assert agent["securityContext"]["capabilities"]["add"] == ["NET_RAW"]  # the proxy adds none
    assert proxy["name"] == "kube-rbac-proxy"
    assert proxy["args"] == [
        "--secure-listen-address=$(POD_IP):9477",
        "--upstream=http://127.0.0.1:9479/",
        "--client-ca-file=/etc/kube-rbac-proxy/ca.crt",
    ]
    assert proxy["ports"] == [{"name": "https", "containerPort": 9477, "protocol": "TCP"}]
    sc = proxy["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["client-ca"]["secret"]["secretName"] == "podwire-client-ca"
    svc = _one(proxy_objects, "Service")
    assert svc["spec"]["ports"] == [{"name": "https", "port": 9477, "targetPort": "https", "protocol": "TCP"}]
    roles = {o["metadata"]["name"]: o for o in proxy_objects if o["kind"] == "ClusterRole"}
    assert roles["pw-podwire-proxy"]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    assert roles["pw-podwire-reader"]["rules"][0]["verbs"] == ["get"]
    assert roles["pw-podwire"]["rules"] == READ_ONLY_RULES  # the agent's own role is unchanged


def test_network_policy_admits_only_the_listed_peers_to_the_listener(proxy_objects: list[dict]) -> None:
    policy = _one(proxy_objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (_one(proxy_objects, "DaemonSet")["spec"]["selector"]["matchLabels"])
    )
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9477, "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_proxy_and_network_policy_objects_pass_server_side_dry_run(
    api: Any, proxy_objects: list[dict]
) -> None:
    done = _apply(api, proxy_objects, dry_run=True)
    assert "NetworkPolicy/pw-podwire" in done
    assert {"ClusterRole/pw-podwire-proxy", "ClusterRole/pw-podwire-reader", "DaemonSet/pw-podwire"} <= set(
        done
    )
