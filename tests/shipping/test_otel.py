"""otel/: the builder manifest pins one release and builds exactly the components the
configs use (less the two the module proxy refuses); every config passes the real
`otelcol-podwire validate`; the two configs using refused components are validated with
stand-ins of the same shape and their own keys checked against the documented schema."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.peers  # the Go-built otelcol-podwire

REPO = Path(__file__).resolve().parents[2]
OTEL = REPO / "otel"
MANIFEST = OTEL / "builder-config.yaml"
CONFIGS = sorted(p for p in OTEL.glob("*.yaml") if p.name != "builder-config.yaml")
# Refused by the Go module proxy at v0.162..v0.165 (otel/README.md).
REFUSED = {"exporters": {"loadbalancing"}, "connectors": {"servicegraph"}}
STRUCTURAL = {"agent.yaml", "gateway-servicegraph.yaml"}
# In the distribution for troubleshooting (debug) and HTTP-only networks (otlp_http).
EXTRAS = {"exporters": {"debug", "otlp_http"}}
KINDS = ("receivers", "processors", "exporters", "connectors")

# Documented keys of the refused components (contrib config.schema.yaml of each; cited in
# otel/README.md). Nested dicts are key trees; None is a leaf.
LOADBALANCING_KEYS: dict[str, Any] = {
    "routing_key": None,
    "routing_attributes": None,
    "protocol": {"otlp": "otlp_grpc"},  # checked by validating it as an otlp_grpc exporter
    "resolver": {
        "static": {"hostnames": None},
        "dns": {"hostname": None, "port": None, "interval": None, "timeout": None},
        "k8s": {"service": None, "ports": None, "timeout": None, "return_hostnames": None},
        "aws_cloud_map": None,
    },
    "timeout": None,
    "retry_on_failure": None,
    "sending_queue": None,
}
SERVICEGRAPH_KEYS: dict[str, Any] = {
    "latency_histogram_buckets": None,
    "exponential_histogram_max_size": None,
    "dimensions": None,
    "store": {"ttl": None, "max_items": None},
    "cache_loop": None,
    "store_expiration_loop": None,
    "virtual_node_peer_attributes": None,
    "virtual_node_extra_label": None,
    "metrics_flush_interval": None,
    "metrics_timestamp_offset": None,
    "database_name_attributes": None,
}


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def _used_types(path: Path) -> dict[str, set[str]]:
    doc = yaml.safe_load(path.read_text())
    return {k: {_type(c) for c in doc.get(k) or {}} for k in KINDS}


def _built_types(otelcol: Path) -> dict[str, set[str]]:
    out = subprocess.run([otelcol, "components"], capture_output=True, text=True, check=True).stdout
    doc = yaml.safe_load(out)
    return {k: {c["name"] for c in doc.get(k) or []} for k in KINDS}


def _validate(otelcol: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([otelcol, "validate", f"--config={config}"], capture_output=True, text=True)


def test_manifest_pins_one_release() -> None:
    doc = yaml.safe_load(MANIFEST.read_text())
    versions = set()
    for kind in ("receivers", "processors", "exporters", "connectors", "extensions"):
        for mod in doc.get(kind) or []:
            versions.add(mod["gomod"].split()[1])
    assert versions == {"v0.165.0"}
    assert {m["gomod"].split()[1] for m in doc["providers"]} == {"v1.71.0"}  # stable confmap of v0.165
    script = (REPO / "tools" / "peers" / "build-otelcol.sh").read_text()
    assert 'OTELCOL_VERSION="v0.165.0"' in script


def test_distribution_has_exactly_the_components_the_configs_use(otelcol_bin: Path) -> None:
    used: dict[str, set[str]] = {k: set() for k in KINDS}
    for cfg in CONFIGS:
        for k, types in _used_types(cfg).items():
            used[k] |= types
    built = _built_types(otelcol_bin)
    for k in KINDS:
        assert built[k] == (used[k] - REFUSED.get(k, set())) | EXTRAS.get(k, set()), k


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name not in STRUCTURAL], ids=lambda p: p.name)
def test_config_passes_otelcol_validate(otelcol_bin: Path, config: Path) -> None:
    proc = _validate(otelcol_bin, config)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_rejects_a_misspelled_key(otelcol_bin: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load((OTEL / "gateway.yaml").read_text())
    doc["processors"]["batch"]["send_batch_sise"] = 10
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = _validate(otelcol_bin, bad)
    assert proc.returncode != 0
    assert "send_batch_sise" in proc.stdout + proc.stderr


def _check_keys(section: dict, schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key, value in section.items():
        if key not in schema:
            problems.append(f"{where}.{key}: not a documented key")
        elif isinstance(schema[key], dict) and isinstance(value, dict):
            problems += _check_keys(value, schema[key], f"{where}.{key}")
    return problems


def _stand_in_loadbalancing(doc: dict) -> list[str]:
    """Replace each loadbalancing exporter by an otlp_grpc exporter built from its
    protocol.otlp block; return key problems of the loadbalancing blocks."""
    problems = []
    for cid in [c for c in doc["exporters"] if _type(c) == "loadbalancing"]:
        lb = doc["exporters"].pop(cid)
        problems += _check_keys(lb, LOADBALANCING_KEYS, cid)
        assert lb["routing_key"] == "traceID"
        resolver = lb["resolver"]
        host = (
            resolver["dns"]["hostname"] + ":" + str(resolver["dns"].get("port", 4317))
            if "dns" in resolver
            else resolver["static"]["hostnames"][0]
        )
        stand_in = copy.deepcopy(lb["protocol"]["otlp"])
        stand_in["endpoint"] = host
        new_id = "otlp_grpc/standin_" + cid.replace("/", "_")
        doc["exporters"][new_id] = stand_in
        for p in doc["service"]["pipelines"].values():
            p["exporters"] = [new_id if e == cid else e for e in p.get("exporters", [])]
    return problems


def _stand_in_servicegraph(doc: dict) -> list[str]:
    problems = []
    for cid in [c for c in doc.get("connectors") or {} if _type(c) == "servicegraph"]:
        problems += _check_keys(doc["connectors"].pop(cid), SERVICEGRAPH_KEYS, cid)
        new_id = "span_metrics/standin_" + cid.replace("/", "_")
        doc["connectors"][new_id] = {}
        for p in doc["service"]["pipelines"].values():
            for side in ("receivers", "exporters"):
                p[side] = [new_id if e == cid else e for e in p.get(side, [])]
    return problems


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_config_with_refused_component_validates_with_a_stand_in(
    otelcol_bin: Path, tmp_path: Path, name: str
) -> None:
    text = (OTEL / name).read_text()
    doc = yaml.safe_load(text)
    problems = _stand_in_loadbalancing(doc) + _stand_in_servicegraph(doc)
    assert problems == []
    assert _used_types_from(doc)["exporters"].isdisjoint({"loadbalancing"})
    out = tmp_path / name
    out.write_text(yaml.safe_dump(doc))
    proc = _validate(otelcol_bin, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _used_types_from(doc: dict) -> dict[str, set[str]]:
    return {k: {_type(c) for c in doc.get(k) or {}} for k in KINDS}


def test_structural_check_catches_an_undocumented_key() -> None:
    doc = yaml.safe_load((OTEL / "agent.yaml").read_text())
    doc["exporters"]["loadbalancing"]["resolver"]["dns"]["hostnme"] = "x"
    assert _stand_in_loadbalancing(doc) == ["loadbalancing.resolver.dns.hostnme: not a documented key"]


def test_agent_routes_traces_by_trace_id_and_gateway_feeds_prometheus_and_tempo() -> None:
    agent = yaml.safe_load((OTEL / "agent.yaml").read_text())
    assert agent["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    for pipeline in agent["service"]["pipelines"].values():
        assert pipeline["processors"] == ["memory_limiter", "batch"]  # limiter first
    gw = yaml.safe_load((OTEL / "gateway.yaml").read_text())
    assert gw["service"]["pipelines"]["metrics"]["exporters"] == ["prometheus"]
    assert "otlp_grpc/tempo" in gw["service"]["pipelines"]["traces"]["exporters"]
    rw = yaml.safe_load((OTEL / "gateway-remote-write.yaml").read_text())
    assert rw["service"]["pipelines"]["metrics"]["exporters"] == ["prometheus_remote_write"]


def test_readme_cites_a_reference_for_every_component_type() -> None:
    readme = (OTEL / "README.md").read_text()
    types = set()
    for cfg in CONFIGS:
        for k, ts in _used_types(cfg).items():
            types |= ts
    for t in types:
        assert re.search(rf"^\| `{t}`", readme, re.M), f"{t} has no row in otel/README.md"
