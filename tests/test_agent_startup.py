"""`podwire run` checks what it needs before capture starts: one line, exit 2, nothing left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capture sockets, netns)")

PODWIRE = [sys.executable, "-m", "podwire", "run", "--kube", "off", "--otlp", "off", "--log-level", "info"]


def run(*args: str, prefix: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
    start = time.monotonic()
    out = subprocess.run(
        [*prefix, *PODWIRE, *args], capture_output=True, text=True, timeout=60, env=env, cwd="/"
    )
    return out, time.monotonic() - start


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("podwire: "), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    # Nothing started: no capture, no listener, no exporter ran before the check failed.
    assert "capturing interface" not in out.stdout and "http_listening" not in out.stdout
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_taken_listen_port_is_one_line_before_capture() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out, _ = run("--listen", f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in one_line(out)


def test_a_listen_address_that_is_not_local_is_one_line() -> None:
    out, _ = run("--listen", "192.0.2.77:9477")  # TEST-NET-1: never ours
    assert "cannot listen on 192.0.2.77:9477: Cannot assign requested address" in one_line(out)


def test_a_missing_namespace_is_one_line_and_is_not_created() -> None:
    name = "pwc" + os.urandom(3).hex() + "missing"
    port = free_port()
    out, _ = run("--netns", name, "--listen", f"127.0.0.1:{port}")
    assert f"network namespace '{name}' does not exist" in one_line(out)
    assert not os.path.exists(f"/var/run/netns/{name}")
    socket.create_server(("127.0.0.1", port)).close()  # the port was never kept


def test_without_cap_net_raw_it_refuses_with_one_line() -> None:
    # Root, but without CAP_NET_RAW in any set: what a pod without the capability gets.
    drop = ("setpriv", "--inh-caps=-net_raw", "--ambient-caps=-net_raw", "--bounding-set=-net_raw", "--")
    probe = subprocess.run(
        [*drop, sys.executable, "-c", "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)"],
        capture_output=True,
    )
    assert probe.returncode != 0  # the drop took: no packet socket for this process
    out, _ = run("--listen", f"127.0.0.1:{free_port()}", prefix=drop)
    assert "CAP_NET_RAW" in one_line(out)
