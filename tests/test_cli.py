"""The command line: bad input gets one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, Ether
from scapy.utils import wrpcap

from tests.pcaps import CLIENT, SERVER, one_connection

PODWIRE = [sys.executable, "-m", "podwire"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
    full_env.update(env or {})
    return subprocess.run(
        [*PODWIRE, *args], capture_output=True, text=True, timeout=60, env=full_env, cwd="/"
    )


def _one_clean_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("podwire: ")
    return lines[0]


def test_replay_of_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = _run("replay", str(tmp_path / "nope.pcap"))
    assert out.returncode == 2
    assert "nope.pcap" in _one_clean_line(out.stderr)


def test_replay_of_a_garbage_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture file at all" * 10)
    out = _run("replay", str(bad))
    assert out.returncode == 2
    assert "bad.pcap" in _one_clean_line(out.stderr)


def test_replay_of_a_pcap_without_tcp_prints_no_records(tmp_path: Path) -> None:
    path = tmp_path / "udp.pcap"
    wrpcap(str(path), [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"x"] * 3)
    out = _run("replay", str(path), "--log-level", "error")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""


def test_replay_prints_one_record_per_connection_with_exact_bytes(tmp_path: Path) -> None:
    c, s = CLIENT, SERVER
    path = tmp_path / "one.pcap"
    one_connection(path, up=100, down=250)
    out = _run("replay", str(path), "--format", "jsonl", "--log-level", "error")
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert record["client"]["address"] == c and record["server"]["port"] == 80
    assert record["bytes_client_to_server"] == 100 and record["bytes_server_to_client"] == 250
    assert record["outcome"] == "closed" and record["close_initiator"] == "server"
    assert record["handshake_rtt_s"] == pytest.approx(0.01)
    assert record["duration_s"] == pytest.approx(0.05)
    # socket stats exist only live: replay leaves them null
    assert (record["rtt_s"], record["min_rtt_s"], record["retransmits"]) == (None, None, None)
    assert record["client"]["workload"] == {"kind": "external", "name": "external"}
    table = _run("replay", str(path), "--format", "table", "--log-level", "error")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["client", "server", "port", "outcome"]
    assert row.split()[:6] == [c, s, "80", "closed", "server", "100"]


def test_replay_names_both_ends_from_an_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        "pods: [{ip: 10.0.0.1, namespace: shop, name: web-1, workload: web, workload_kind: Deployment}]\n"
        "external: [{cidr: 10.0.0.0/24, name: lab}]\n"
    )
    pkts = [
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S", seq=1),
        Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=40000, flags="RA", seq=0, ack=2),
    ]
    path = tmp_path / "refused.pcap"
    wrpcap(str(path), pkts)
    out = _run("replay", str(path), "--inventory", str(inv), "--log-level", "error")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["outcome"] == "refused"
    assert record["client"]["workload"] == {
        "kind": "pod",
        "namespace": "shop",
        "name": "web-1",
        "workload": "web",
        "workload_kind": "Deployment",
    }
    assert record["server"]["workload"] == {"kind": "external", "name": "lab"}


def test_a_broken_inventory_is_one_line_naming_the_entry(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text("pods: [{ip: 10.0.0.999, namespace: shop, name: web-1}]\n")
    pcap = tmp_path / "empty.pcap"
    wrpcap(str(pcap), [])
    out = _run("replay", str(pcap), "--inventory", str(inv))
    assert out.returncode == 2
    line = _one_clean_line(out.stderr)
    assert "10.0.0.999" in line


def test_bad_settings_are_refused_one_line_each() -> None:
    out = _run("run", env={"PODWIRE_MAX_CONNECTIONS": "-1", "PODWIRE_BOGUS": "1"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in out.stderr
    assert any("PODWIRE_BOGUS" in line for line in lines)
    assert any("PODWIRE_MAX_CONNECTIONS" in line for line in lines)


def _main_as_nobody(args: list[str]) -> tuple[int, str]:
    """Run podwire's main() in a forked child that dropped to uid/gid 65534; return (status, stderr).

    The interpreter may live where uid 65534 cannot read (e.g. under /root), so everything the
    commands import is imported before the fork.
    """
    import importlib

    for module in (
        "podwire.cli",
        "podwire.agent",
        "podwire.demo.main",
        "podwire.demo.cluster",
        "podwire.demo.traffic",
        "podwire.demo.inventory",
        "podwire.capture.live",
        "podwire.identity",
        "podwire.telemetry.export",
        "podwire.views.http",
        "podwire.views.table",
        "rich.live",
        "rich.console",
    ):
        importlib.import_module(module)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            os.dup2(write_fd, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            from podwire.cli import main

            code = main(args)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        err = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.parametrize("command", [["demo", "--duration", "1", "--no-tui"], ["run", "--kube", "off"]])
def test_without_root_the_commands_refuse_with_one_line(command: list[str]) -> None:
    code, err = _main_as_nobody([*command, "--log-level", "error"])
    assert code == 2, err
    assert "root" in _one_clean_line(err).lower()


# --- issue 14: every setting the adversarial run broke exits 2 with one line naming the key -----


def _deep_inventory(tmp_path: Path) -> str:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 100_000)
    return str(path)


def _not_pem(tmp_path: Path) -> str:
    path = tmp_path / "ca.txt"
    path.write_text("not a certificate\n")
    return str(path)


REFUSED: list[tuple[dict[str, str], str]] = [
    ({"PODWIRE_RING_BLOCK_KIB": "1048576"}, "PODWIRE_RING_BLOCK_KIB"),
    ({"PODWIRE_RING_BLOCKS": "100000000"}, "PODWIRE_RING_BLOCKS"),
    ({"PODWIRE_RING_RETIRE_MS": "99999999999"}, "PODWIRE_RING_RETIRE_MS"),
    ({"PODWIRE_RING_BLOCK_KIB": "16384", "PODWIRE_RING_BLOCKS": "64"}, "PODWIRE_RING_MEMORY_MIB"),
    ({"PODWIRE_RING_MEMORY_MIB": "1000000"}, "PODWIRE_RING_MEMORY_MIB"),
    ({"PODWIRE_INTERFACE_INCLUDE": "("}, "PODWIRE_INTERFACE_INCLUDE"),
    ({"PODWIRE_INTERFACE_EXCLUDE": "[a-"}, "PODWIRE_INTERFACE_EXCLUDE"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "lzma"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent"}, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "::::not a url"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x:1"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_INSECURE": "perhaps"}, "OTEL_EXPORTER_OTLP_INSECURE"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "1e12"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ({"PODWIRE_NODE_NAME": ""}, "PODWIRE_NODE_NAME"),
    ({"PODWIRE_NODE_NAME": "node-a\nnode-b"}, "PODWIRE_NODE_NAME"),
    ({"PODWIRE_INVENTORY": ""}, "PODWIRE_INVENTORY"),
    ({"PODWIRE_EXTERNAL_CIDRS": "10.0.0.0/8=a,10.0.0.0/8=b"}, "PODWIRE_EXTERNAL_CIDRS"),
    ({"PODWIRE_MAX_CONNECTIONS": "10000000000"}, "PODWIRE_MAX_CONNECTIONS"),
    ({"PODWIRE_SYN_TIMEOUT_S": "nan"}, "PODWIRE_SYN_TIMEOUT_S"),
    ({"PODWIRE_IDENTITY_HISTORY_S": "inf"}, "PODWIRE_IDENTITY_HISTORY_S"),
    ({"PODWIRE_INVENTORY": "/dev/zero"}, "/dev/zero"),
]


@pytest.mark.parametrize(("env", "key"), REFUSED, ids=[f"{k}={next(iter(e.values()))!r}" for e, k in REFUSED])
def test_run_refuses_a_bad_setting_before_anything_starts(env: dict[str, str], key: str) -> None:
    out = _run("run", "--kube", "off", "--listen", "127.0.0.1:0", env=env)
    assert out.returncode == 2, out.stderr
    line = _one_clean_line(out.stderr)
    assert key in line


@pytest.mark.parametrize("make", [_deep_inventory, _not_pem])
def test_run_refuses_a_bad_file_with_one_line(tmp_path: Path, make: Callable[[Path], str]) -> None:
    path = make(tmp_path)
    key = "PODWIRE_INVENTORY" if make is _deep_inventory else "OTEL_EXPORTER_OTLP_CERTIFICATE"
    out = _run("run", "--kube", "off", "--listen", "127.0.0.1:0", env={key: path})
    assert out.returncode == 2, out.stderr
    line = _one_clean_line(out.stderr)
    assert path in line
    if make is _deep_inventory:
        assert "nest" in line  # "nested too deep" or the parser's "maximum nesting depth"


def test_a_signal_endpoint_with_otlp_off_warns_once_and_runs() -> None:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
    full_env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://127.0.0.1:4317"
    # capture no interface: this test is about the warning, not the host's veths
    full_env["PODWIRE_INTERFACE_INCLUDE"] = "^$"
    proc = subprocess.Popen(
        [*PODWIRE, "run", "--kube", "off", "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd="/",
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "agent_started" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    lines += rest.splitlines()
    warnings = [json.loads(line) for line in lines if "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in line]
    assert len(warnings) == 1, lines
    assert warnings[0]["level"] == "warning" and "OTLP export is off" in warnings[0]["problem"]
    assert proc.returncode == 0, lines
