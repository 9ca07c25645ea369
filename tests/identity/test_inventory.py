"""The static inventory: the documented shape loads; every broken file or entry is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from podwire.config import ConfigError, Settings
from podwire.identity import build_service, inventory
from podwire.identity.inventory import InventoryError, load, parse
from podwire.model import DnsAnswer, IdentityKind

GOOD = textwrap.dedent(
    """\
    pods:
      - {ip: 10.1.0.5, namespace: shop, name: frontend-7d9f-x2k, workload: frontend,
         workload_kind: Deployment, node: node-a, color: blue}
      - {ip: 10.1.0.6, namespace: shop, name: payments-0, workload: payments, workload_kind: StatefulSet}
      - {ip: 10.1.0.7, namespace: shop, name: debug}
      - {ips: [10.1.0.8, "fd00::8"], namespace: shop, name: dual-1, workload: dual, workload_kind: DaemonSet}
      - {ip: 192.168.1.10, name: kube-proxy-x, namespace: kube-system, host_network: true, node: node-a}
    services: [{ip: 10.96.0.20, namespace: shop, name: payments}]
    nodes:    [{ip: 192.168.1.10, name: node-a}, {ip: 192.168.1.11, name: node-b}]
    external: [{cidr: 203.0.113.0/24, name: partner-api}, {cidr: 0.0.0.0/0, name: internet}]
    owner: demo   # extra top-level keys are allowed
    """
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inventory.yaml"
    p.write_text(text)
    return p


def test_documented_shape_names_every_kind(tmp_path):
    service = build_service(Settings(inventory=str(write(tmp_path, GOOD)), kube="off"))
    r = service.resolve
    fe = r("10.1.0.5", None)
    assert (fe.kind, fe.namespace, fe.name, fe.workload, fe.workload_kind, fe.node) == (
        IdentityKind.POD,
        "shop",
        "frontend-7d9f-x2k",
        "frontend",
        "Deployment",
        "node-a",
    )
    assert (r("10.1.0.6", None).workload, r("10.1.0.6", None).workload_kind) == ("payments", "StatefulSet")
    bare = r("10.1.0.7", None)
    assert (bare.workload, bare.workload_kind) == ("debug", "Pod")  # a bare pod is its own workload
    assert r("fd00::8", None).workload == "dual" and r("10.1.0.8", None).workload == "dual"
    svc = r("10.96.0.20", None)
    assert (svc.kind, svc.namespace, svc.name) == (IdentityKind.SERVICE, "shop", "payments")
    node = r("192.168.1.10", None)
    assert (node.kind, node.name, node.host_network) == (IdentityKind.NODE, "node-a", False)
    assert r("203.0.113.77", None).name == "partner-api"
    assert r("8.8.8.8", None).name == "internet"
    assert service.ready  # a static source is ready at once
    assert service.stats().inventory_entries == 8  # 5 pods, 1 service, 2 nodes (externals are CIDRs)


def test_settings_cidrs_override_the_file_and_learned_dns_names_only_fill_gaps(tmp_path):
    text = "external: [{cidr: 203.0.113.0/24, name: partner-api}]\n"
    service = build_service(
        Settings(
            inventory=str(write(tmp_path, text)),
            kube="off",
            external_cidrs=(("203.0.113.0/24", "partner-from-flags"),),
        )
    )
    service.learn_dns([DnsAnswer(1.0, "api.stripe.example", "198.51.100.4", 300)])
    assert service.resolve("203.0.113.1", None).name == "partner-from-flags"
    assert service.resolve("198.51.100.4", 2.0).name == "api.stripe.example"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pods: [{ip: 10.1.0.300, namespace: a, name: web-1}]",
            "pods[0] (web-1): ip '10.1.0.300' is not an IP address",
        ),
        ("pods: [{namespace: a, name: web-1}]", "pods[0] (web-1): missing 'ip'"),
        ("pods: [{ip: 10.1.0.1, name: web-1}]", "pods[0] (web-1): missing 'namespace'"),
        ("pods: [{ip: 10.1.0.1, namespace: a}]", "pods[0]: missing 'name'"),
        (
            "pods: [{ip: 10.1.0.1, namespace: a, name: w, workload_kind: Deploymnet}]",
            "pods[0] (w): workload_kind 'Deploymnet' is not one of Deployment",
        ),
        (
            "services: [{ip: 10.96.0.1, namespace: a, name: s}, 7]",
            "services[1]: expected a mapping; got a number",
        ),
        ("nodes: {ip: 1.2.3.4, name: n}", "nodes: expected a list of entries; got a mapping"),
        (
            "external: [{cidr: 10.0.0.0/33, name: office}]",
            "external[0] (office): cidr '10.0.0.0/33' is not a network",
        ),
        ("external: [{cidr: 10.0.0.0/8}]", "external[0]: missing 'name'"),
        (
            "pods: [{ip: 10.1.0.1, namespace: a, name: x}, {ip: 10.1.0.1, namespace: a, name: y}]",
            "pods[1] (y): ip 10.1.0.1 is already used by pods[0] (x)",
        ),
        (
            "pods: [{ip: 10.1.0.1, namespace: a, name: h, host_network: yes-please}]",
            "pods[0] (h): 'host_network'",
        ),
        ("- just\n- a list\n", "expected a mapping with pods, services, nodes, external; got a list"),
        ("pods: [{ip: 10.1.0.1, namespace: a, name: x}\nservices: [", "not valid YAML at line 2"),
    ],
)
def test_bad_entry_is_one_line_naming_it(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load(path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert "\n" not in problems[0]
    assert problems[0].startswith(f"inventory {path}: ")
    assert expected in problems[0]
    assert isinstance(info.value, ConfigError)  # the CLI prints ConfigErrors as lines, no traceback


def test_several_bad_entries_give_one_line_each():
    with pytest.raises(InventoryError) as info:
        parse("pods: [{ip: x, namespace: a, name: p}]\nnodes: [{ip: 1.2.3.4}]\n", "f.yaml")
    assert info.value.problems == [
        "inventory f.yaml: pods[0] (p): ip 'x' is not an IP address",
        "inventory f.yaml: nodes[0]: missing 'name'",
    ]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InventoryError, match=r"^inventory .*nope\.yaml: cannot read it: No such file"):
        load(tmp_path / "nope.yaml")
    assert load(write(tmp_path, "")).entries == ()


def test_cli_replay_with_a_broken_inventory_prints_one_line_and_no_traceback(tmp_path):
    from scapy.utils import wrpcap

    pcap = tmp_path / "empty.pcap"
    wrpcap(str(pcap), [])
    inv = write(tmp_path, "pods: [{ip: 10.1.0.1, namespace: shop, name: web-1, workload_kind: Deploymnet}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "podwire", "replay", str(pcap), "--inventory", str(inv)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("podwire:")]
    assert lines == [
        f"podwire: inventory {inv}: pods[0] (web-1): workload_kind 'Deploymnet' is not one of "
        "Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, Pod"
    ]


def test_a_device_or_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(tmp_path), str(fifo)):
        with pytest.raises(inventory.InventoryError) as info:
            inventory.load(path)
        (problem,) = info.value.problems
        assert problem.startswith(f"inventory {path}: ")


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    for text in ("[" * 100_000, "{a: " * 100_000, "pods: " + "[" * 50_000):
        path = tmp_path / "deep.yaml"
        path.write_text(text)
        with pytest.raises(inventory.InventoryError) as info:
            inventory.load(path)
        (problem,) = info.value.problems
        assert "\n" not in problem


def test_a_file_past_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("pods: []\n" + "#" * 2000 + "\n")
    monkeypatch.setattr(inventory, "MAX_INVENTORY_BYTES", 1024)
    with pytest.raises(inventory.InventoryError) as info:
        inventory.load(path)
    assert "larger than" in info.value.problems[0]


_BIG_CHILD = r"""
import sys
from podwire.identity.inventory import load

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

load(sys.argv[2])  # warm up: imports and the parser, on a small file
base = status("VmRSS")
inv = load(sys.argv[1])
print(len(inv.entries), status("VmHWM") - base)
"""


def test_a_large_inventory_is_read_in_bounded_memory(tmp_path: Path) -> None:
    n = 20_000
    big, small = tmp_path / "big.yaml", tmp_path / "small.yaml"
    rows = (
        f"  - {{ip: 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}, namespace: ns{i % 50}, name: pod-{i}, "
        f"workload: wl{i % 500}, workload_kind: Deployment, node: node-{i % 100}}}\n"
        for i in range(n)
    )
    big.write_text("pods:\n" + "".join(rows))
    small.write_text("pods:\n  - {ip: 10.9.0.1, namespace: a, name: b}\n")
    out = subprocess.run(
        [sys.executable, "-c", _BIG_CHILD, str(big), str(small)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    count, grown = map(int, out.stdout.split())
    assert count == n
    # the whole-document tree took ~9 KB per entry (877 MB for 100,000); now the entries kept
    assert grown / n <= 2048, f"{grown / n:.0f} bytes per entry at the peak"


def test_more_entries_than_the_limit_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inventory, "MAX_INVENTORY_ENTRIES", 3)
    text = "pods:\n" + "".join(f"  - {{ip: 10.0.0.{i}, namespace: a, name: p{i}}}\n" for i in range(1, 5))
    with pytest.raises(inventory.InventoryError) as info:
        inventory.parse(text, "x.yaml")
    assert info.value.problems == ["inventory x.yaml: more than 3 entries (the limit)"]
    assert len(inventory.parse(text.rsplit("  -", 1)[0], "x.yaml").entries) == 3
