"""`podwire replay` against tshark, an independent oracle, on a pcap of real curl and http.server traffic.

tcpdump records everything on the client's veth (no filter); replay must agree with
`tshark -z conv,tcp` on the set of connections and their start and end, and with tshark's
per-stream payload sums on the bytes each way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podwire.demo.cluster import Cluster

from .harness import client_socket, listener, rst_close

pytestmark = pytest.mark.live


def _wait_until_written(pcap: Path, quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """tcpdump may lag behind on a busy machine, and SIGINT drops what it has not read yet."""
    deadline = time.monotonic() + limit_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = pcap.stat().st_size
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def _tshark(*args: str) -> str:
    return subprocess.run(["tshark", *args], capture_output=True, text=True, check=True, timeout=120).stdout


def _conversations(pcap: Path) -> dict[tuple[tuple[str, int], tuple[str, int]], tuple[float, float]]:
    """conv,tcp -> {(endpoint, endpoint) sorted: (relative start, duration)}."""
    out: dict[tuple[tuple[str, int], tuple[str, int]], tuple[float, float]] = {}
    for line in _tshark("-r", str(pcap), "-q", "-z", "conv,tcp").splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[1] != "<->":
            continue
        a_host, _, a_port = parts[0].rpartition(":")
        b_host, _, b_port = parts[2].rpartition(":")
        key = tuple(sorted([(a_host, int(a_port)), (b_host, int(b_port))]))
        out[key] = (float(parts[-2]), float(parts[-1]))  # type: ignore[index]
    return out


def _payload_by_direction(pcap: Path) -> dict[tuple[str, int, str, int], int]:
    """Sum of TCP payload per (src, sport, dst, dport), retransmissions excluded."""
    sums: dict[tuple[str, int, str, int], int] = {}
    text = _tshark(
        "-r",
        str(pcap),
        "-Y",
        "tcp && !tcp.analysis.retransmission",
        "-T",
        "fields",
        "-e",
        "ip.src",
        "-e",
        "tcp.srcport",
        "-e",
        "ip.dst",
        "-e",
        "tcp.dstport",
        "-e",
        "tcp.len",
    )
    for line in text.splitlines():
        src, sport, dst, dport, length = line.split("\t")
        key = (src, int(sport), dst, int(dport))
        sums[key] = sums.get(key, 0) + int(length)
    return sums


def test_replay_agrees_with_tshark_on_connections_times_and_bytes(
    two_pod_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = two_pod_cluster
    client, server = cluster.pod("client"), cluster.pod("server")
    www = cluster.workdir() / "www"
    www.mkdir()
    for i, size in enumerate([0, 1, 1000, 65_536, 1_000_003]):
        (www / f"f{i}").write_bytes(b"z" * size)
    pcap = cluster.workdir() / "capture.pcap"
    node = cluster.node("node-a")
    dump = cluster.run(
        node, ["tcpdump", "-i", client.host_ifname, "-U", "-n", "-w", str(pcap)], stderr=subprocess.PIPE
    )
    http = cluster.run(
        server,
        [sys.executable, "-m", "http.server", "8000", "--bind", server.ipv4, "--directory", str(www)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert dump.stderr is not None
        assert b"listening on" in dump.stderr.readline()
        deadline = time.monotonic() + 10
        while (
            cluster.run(client, ["curl", "-sf", "-o", "/dev/null", f"http://{server.ipv4}:8000/f0"]).wait()
            != 0
        ):
            assert time.monotonic() < deadline, "http.server did not come up"
            time.sleep(0.1)
        for i in range(5):
            for _ in range(3):
                assert (
                    cluster.run(
                        client, ["curl", "-sf", "-o", "/dev/null", f"http://{server.ipv4}:8000/f{i}"]
                    ).wait()
                    == 0
                )
        assert cluster.run(client, ["curl", "-s", "-o", "/dev/null", f"http://{server.ipv4}:9/"]).wait() != 0
        lsock = listener(cluster, server)
        s = client_socket(cluster, client)
        s.connect((server.ipv4, lsock.getsockname()[1]))
        conn, _ = lsock.accept()
        s.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        rst_close(s)
        conn.close()
        lsock.close()
        _wait_until_written(pcap)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
        http.terminate()
        http.wait(10)

    out = subprocess.run(
        [sys.executable, "-m", "podwire", "replay", str(pcap), "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    first_ts = float(_tshark("-r", str(pcap), "-c", "1", "-T", "fields", "-e", "frame.time_epoch").strip())
    convs = _conversations(pcap)
    payload = _payload_by_direction(pcap)

    def key(r: dict) -> tuple:
        return tuple(
            sorted(
                [(r["client"]["address"], r["client"]["port"]), (r["server"]["address"], r["server"]["port"])]
            )
        )

    assert {key(r) for r in records} == set(convs)
    assert len(records) == len(convs)
    by_outcome: dict[str, int] = {}
    for r in records:
        by_outcome[r["outcome"]] = by_outcome.get(r["outcome"], 0) + 1
    # 15 curls + the successful probe; the reset; refusals: port 9, plus probes before http.server listened
    assert by_outcome.pop("closed") == 16 and by_outcome.pop("reset") == 1
    assert by_outcome.pop("refused") >= 1 and not by_outcome
    for r in records:
        rel_start, duration = convs[key(r)]
        # the connection starts with its SYN, the first packet tshark saw of it
        assert r["start_time"] - first_ts == pytest.approx(rel_start, abs=2e-6)
        # tshark's end also counts the final ACK after the last FIN/RST: ours ends at the FIN/RST
        # (tshark prints the duration to 0.1 ms)
        assert r["end_time"] <= first_ts + rel_start + duration + 1e-4
        assert first_ts + rel_start + duration - r["end_time"] < 0.05
        c, s_ = r["client"], r["server"]
        assert r["bytes_client_to_server"] == payload.get(
            (c["address"], c["port"], s_["address"], s_["port"]), 0
        )
        assert r["bytes_server_to_client"] == payload.get(
            (s_["address"], s_["port"], c["address"], c["port"]), 0
        )
