"""Real TLS in network namespaces: openssl s_server and nginx serve a certificate this test made;
curl and openssl s_client connect with TLS 1.2 / 1.3, ALPN h2 / http/1.1, with and without SNI.

The same traffic is seen twice: by podwire's live capture (kernel filter -> ring -> decoder tap ->
assembler -> records) and by tcpdump, whose pcap goes through `podwire replay` and through tshark
(the independent JA3/JA3S oracle).  Every `tls` field is checked in both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podwire import agent
from podwire.agent import CollectingSink, Pipeline, tls_assembler
from podwire.capture.live import LiveCapture
from podwire.config import Settings
from podwire.identity import build_service
from podwire.model import ConnectionRecord, Side
from podwire.tracker.tracker import Tracker
from tests.capture.nets import Pods, in_ns, pods_namespace, wait_port
from tests.tls.handshakes import NOT_AFTER, make_cert

pytestmark = pytest.mark.live

SNI = "web.podwire.test"
NOT_AFTER_TEXT = NOT_AFTER.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Case:
    name: str
    port: int  # server port: 8443 s_server, 8444 nginx
    argv: list[str]  # the client, run in the node namespace
    expect: dict[str, object]


@dataclass
class Net:
    pods: Pods
    server_ip: str
    cert_file: Path
    key_file: Path
    work: Path


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with tempfile.TemporaryDirectory(prefix="pwtls") as tmp, _net(Path(tmp)) as made:
        yield made


@contextlib.contextmanager
def _net(work: Path) -> Iterator[Net]:
    os.chmod(work, 0o755)  # nginx workers run unprivileged (pytest's tmp_path is 0700)
    cert = make_cert()
    cert_file, key_file = cert.write(work)
    os.chmod(key_file, 0o644)
    with pods_namespace(1) as pods:
        server = pods.pods[0]
        pods.start(
            server,
            "openssl", "s_server", "-quiet", "-www", "-accept", f"{pods.pod_ip(0)}:8443",
            "-cert", str(cert_file), "-key", str(key_file), "-alpn", "http/1.1",
        )  # fmt: skip
        (work / "www").mkdir()
        (work / "www" / "big").write_bytes(os.urandom(8 << 20))
        (work / "www" / "index.html").write_bytes(b"hello")
        conf = textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {work}/nginx.pid;
            error_log {work}/error.log;
            events {{ worker_connections 64; }}
            http {{
              access_log off;
              client_body_temp_path {work}/body;
              server {{
                listen {pods.pod_ip(0)}:8444 ssl http2;
                ssl_certificate {cert_file};
                ssl_certificate_key {key_file};
                ssl_protocols TLSv1.2 TLSv1.3;
                location / {{ root {work}/www; }}
              }}
            }}
            """
        )
        (work / "nginx.conf").write_text(conf)
        pods.start(server, "nginx", "-e", f"{work}/error.log", "-p", str(work), "-c", f"{work}/nginx.conf")
        wait_port(pods.node, f"{pods.pod_ip(0)}:8443")
        wait_port(pods.node, f"{pods.pod_ip(0)}:8444")
        yield Net(pods, pods.pod_ip(0), cert_file, key_file, work)


def _curl(ip: str, port: int, *opts: str, path: str = "/") -> list[str]:
    return [
        "curl",
        "-sfk",
        "-o",
        "/dev/null",
        "--resolve",
        f"{SNI}:{port}:{ip}",
        *opts,
        f"https://{SNI}:{port}{path}",
    ]


def _s_client(ip: str, port: int, *opts: str) -> list[str]:
    return ["openssl", "s_client", "-connect", f"{ip}:{port}", *opts]


def cases(ip: str) -> list[Case]:
    cert = {
        "certificate_not_after": NOT_AFTER_TEXT,
        "certificate_subject": f"CN={SNI}",
        "certificate_issuer": "O=podwire test CA",
    }
    no_cert = dict.fromkeys(cert)
    return [
        Case(
            "curl TLS 1.2 http/1.1 SNI -> s_server",
            8443,
            _curl(ip, 8443, "--tlsv1.2", "--tls-max", "1.2", "--http1.1"),
            {"server_name": SNI, "version": "TLS 1.2", "alpn": "http/1.1", **cert},
        ),
        Case(
            "curl TLS 1.3 h2 SNI -> nginx",
            8444,
            _curl(ip, 8444, "--tlsv1.3", "--http2"),
            {"server_name": SNI, "version": "TLS 1.3", "alpn": None, **no_cert},
        ),
        Case(
            "s_client TLS 1.2 h2 no SNI -> nginx",
            8444,
            _s_client(ip, 8444, "-tls1_2", "-noservername", "-alpn", "h2"),
            {"server_name": None, "version": "TLS 1.2", "alpn": "h2", **cert},
        ),
        Case(
            "s_client TLS 1.3 http/1.1 SNI -> s_server",
            8443,
            _s_client(ip, 8443, "-tls1_3", "-servername", "alt.podwire.test", "-alpn", "http/1.1"),
            {"server_name": "alt.podwire.test", "version": "TLS 1.3", "alpn": None, **no_cert},
        ),
    ]


class LiveTls:
    """podwire's live capture + tracker + TLS assembler in the node namespace, in a thread."""

    def __init__(self, pods: Pods, include: str | None = None) -> None:
        self.settings = Settings(
            netns=pods.node, interface_include=include or f"^{pods.host_ifs[0]}$", log_format="console"
        )
        self.capture = LiveCapture(self.settings)
        self.sink = CollectingSink()
        self.pipeline = Pipeline(
            Tracker(), build_service(self.settings), [self.sink], tls=tls_assembler(self.settings)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.error: BaseException | None = None
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.capture.poll(0.05)
                if batch is not None:
                    self.pipeline.feed(batch)
        except BaseException as exc:
            self.error = exc

    def server_records(self) -> int:
        return sum(1 for c in list(self.sink.connections) if c.record.observed_side is Side.SERVER)

    def wait_records(self, n: int, timeout: float = 10.0) -> None:
        """Until n connections (their last FIN through the ring and the tracker) have records."""
        deadline = time.monotonic() + timeout
        while self.server_records() < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> list[ConnectionRecord]:
        self._stop.set()
        self._thread.join(5)
        self.pipeline.finish(time.time())
        self.capture.close()
        assert self.error is None
        return [c.record for c in self.sink.connections if c.record.observed_side is Side.SERVER]


def _tshark_fingerprints(pcap: Path) -> dict[int, tuple[str, str]]:
    """client port -> (ja3, ja3s) as tshark computes them."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tls.handshake.type == 1 || tls.handshake.type == 2",
         "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport",
         "-e", "tls.handshake.ja3", "-e", "tls.handshake.ja3s"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        sport, dport, ja3, ja3s = [*line.split("\t"), "", "", ""][:4]
        if ja3:
            found.setdefault(int(sport), ["", ""])[0] = ja3
        if ja3s:
            found.setdefault(int(dport), ["", ""])[1] = ja3s.split(",")[0]  # HRR + ServerHello: the last
    return {port: (a, b) for port, (a, b) in found.items()}


def _run_client(pods: Pods, argv: list[str]) -> None:
    r = subprocess.run(in_ns(pods.node, *argv), input=b"Q\n", capture_output=True, timeout=30)
    assert r.returncode == 0, (argv, r.stderr[-500:])


def _replayed(pcap: Path) -> list[dict[str, Any]]:
    """`podwire replay`'s closed connections in the pcap (tcpdump may still be writing it)."""
    out = io.StringIO()
    assert agent.replay(Settings(log_format="console"), str(pcap), "jsonl", out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    return [row for row in rows if row["outcome"] != "open"]


def test_every_tls_field_live_and_replayed_and_ja3_equals_tshark(net: Net) -> None:
    pods = net.pods
    pcap = net.work / "tls.pcap"
    dump = subprocess.Popen(
        in_ns(
            pods.node,
            "tcpdump",
            "-i",
            pods.host_ifs[0],
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
            str(pcap),
            "tcp",
        ),
        stderr=subprocess.PIPE,
    )
    live = LiveTls(pods)
    try:
        assert dump.stderr is not None and b"listening on" in dump.stderr.readline()
        for case in cases(net.server_ip):
            _run_client(pods, case.argv)
        live.wait_records(len(cases(net.server_ip)))
        deadline = time.monotonic() + 10  # and the pcap holds every connection to its close
        while len(_replayed(pcap)) < len(cases(net.server_ip)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        records = live.stop()
        dump.send_signal(signal.SIGINT)
        dump.wait(10)

    replayed = _replayed(pcap)
    oracle = _tshark_fingerprints(pcap)
    expected = cases(net.server_ip)
    assert len(replayed) == len(expected) and len(records) == len(expected)
    records.sort(key=lambda r: r.start_time or 0.0)
    for case, rec, row in zip(expected, records, replayed, strict=True):
        tls = row["tls"]
        assert tls is not None, case.name
        assert row["server"]["port"] == case.port
        for key, value in case.expect.items():
            assert tls[key] == value, (case.name, key, tls[key])
        assert tls["cipher"].startswith("TLS_") and "0x" not in tls["cipher"], case.name
        if tls["certificate_not_after"] is not None:
            assert tls["certificate_sans"] == ["web.podwire.test", "alt.podwire.test", "10.1.2.3"]
        port = row["client"]["port"]
        assert (tls["ja3"], tls["ja3s"]) == oracle[port], case.name  # the independent check
        assert tls["ja4"].startswith("t13" if "1_3" in " ".join(case.argv) or "1.3" in case.name else "t1")
        # the live path (kernel filter, ring, tap) shows the same facts as the full pcap
        assert rec.tls is not None, case.name
        assert rec.client.port == port
        assert (rec.tls.server_name, rec.tls.version, rec.tls.cipher, rec.tls.alpn) == (
            tls["server_name"], tls["version"], tls["cipher"], tls["alpn"],
        )  # fmt: skip
        assert (rec.tls.ja3, rec.tls.ja3s, rec.tls.ja4) == (tls["ja3"], tls["ja3s"], tls["ja4"])
        assert rec.tls.certificate_subject == tls["certificate_subject"]
        if tls["certificate_not_after"] is not None:
            assert rec.tls.certificate_not_after == NOT_AFTER.timestamp()


def test_bulk_tls_download_costs_the_kernel_filter_nothing(net: Net) -> None:
    """8 MiB over HTTPS: thousands of segments on the wire, a handful of frames reach user space."""
    pods = net.pods
    live = LiveTls(pods)
    try:  # the capture's filter is in place once constructed
        before = live.capture.stats().packets
        _run_client(pods, _curl(net.server_ip, 8444, "--tlsv1.3", "--http1.1", path="/big"))
        live.wait_records(1)
        passed = live.capture.stats().packets - before
        tap = live.capture._decoder.tls
        assert tap is not None
    finally:
        records = live.stop()
    assert len(records) == 1 and records[0].tls is not None
    assert (records[0].bytes_server_to_client or 0) > 8 << 20
    # SYN, SYN-ACK, FINs (and their ACK-less twins), ClientHello, ServerHello flight: never the data
    assert passed <= 12, passed
    assert tap.passed <= 3
