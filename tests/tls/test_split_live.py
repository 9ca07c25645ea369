"""A ClientHello larger than one segment, live: which cases the stateless kernel filter handles.

The client (Python's ssl over a real socket in the node namespace) offers eleven long ALPN names,
so its ClientHello is ~2.8 KB (as large as a post-quantum key share makes Chrome's or OpenSSL
3.5's), to openssl s_server in a pod.  The same traffic goes to tcpdump, whose pcap is replayed.

  1. written at once: the sender's GSO hands AF_PACKET one 2.8 KB frame at the veth -> parsed live;
  2. written in two sends: the second segment does not start a record, the filter drops it ->
     live shows the ServerHello's facts and the SNI (whole in the first segment), no JA3/JA4 or
     offer, and `incomplete` counts the unfinished hello;
  3. written at once to a second pod whose veth has gso_max_size 1,500 (MSS-sized segments, what
     a NIC without GRO, or whose GRO did not merge them, delivers) -> the same as 2.
Replay sees every segment and parses all three whole.  README "Known limits" says the same.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podwire import agent
from podwire.config import Settings
from podwire.model import ConnectionRecord, Side
from tests.capture.nets import Pods, in_ns, pods_namespace, wait_port
from tests.tls.handshakes import make_cert
from tests.tls.test_tls_live import LiveTls

pytestmark = pytest.mark.live

SNI = "big.podwire.test"
CLIENT = textwrap.dedent(
    """
    import socket, ssl, sys, time
    host, mode = sys.argv[1], sys.argv[2]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([chr(97 + i) * 250 for i in range(10)] + ["http/1.1"])
    sock = socket.create_connection((host, 8443), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname=sys.argv[3])
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    if mode == "two":
        sock.sendall(hello[:700])
        time.sleep(0.05)  # a second skb: the rest goes out as its own segment
        sock.sendall(hello[700:])
    else:
        sock.sendall(hello)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                sock.sendall(data)
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("server closed")
            inc.write(chunk)
    sock.sendall(out.read())
    print(len(hello), tls.version())
    sock.close()
    """
)


@pytest.fixture(scope="module")
def pods() -> Iterator[Pods]:
    """Two pods, each with an s_server; pod 1's host veth segments at MSS (gso_max_size 1500)."""
    with tempfile.TemporaryDirectory(prefix="pwsplit") as tmp, pods_namespace(2) as made:
        cert_file, key_file = make_cert().write(Path(tmp))
        # the sender builds no frame larger than 1,500 bytes for this veth: MSS-sized segments
        subprocess.run(
            ["ip", "-n", made.node, "link", "set", made.host_ifs[1], "gso_max_size", "1500"], check=True
        )
        for i in (0, 1):
            ip = made.pod_ip(i)
            made.start(
                made.pods[i], "openssl", "s_server", "-quiet", "-accept", f"{ip}:8443",
                "-cert", str(cert_file), "-key", str(key_file), "-alpn", "http/1.1",
            )  # fmt: skip
            wait_port(made.node, f"{ip}:8443")
        yield made


def _records(live: LiveTls) -> list[ConnectionRecord]:
    conns = list(live.sink.connections)
    return [c.record for c in conns if c.record.observed_side is Side.SERVER and c.record.server.port == 8443]


def _client(pods: Pods, pod: int, mode: str) -> None:
    r = subprocess.run(
        in_ns(pods.node, "python3", "-c", CLIENT, pods.pod_ip(pod), mode, SNI),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-500:]
    size, version = r.stdout.split()
    assert int(size) > 2 * 1448 - 100 and version == "TLSv1.3"  # more than one segment's worth


def _replay(work: Path) -> list[dict[str, Any]]:
    """The `tls` of each connection `podwire replay` finds in the two pcaps (with a ClientHello)."""
    found = []
    for i in (0, 1):
        out = io.StringIO()
        assert agent.replay(Settings(log_format="console"), str(work / f"{i}.pcap"), "jsonl", out) == 0
        rows = [json.loads(line)["tls"] for line in out.getvalue().splitlines()]
        found += [tls for tls in rows if tls is not None and tls["server_name"] is not None]
    return found


def test_a_hello_larger_than_a_segment_live_whole_or_counted_and_always_in_replay(
    pods: Pods, tmp_path: Path
) -> None:
    work = tmp_path
    dumps = []
    for i, veth in enumerate(pods.host_ifs):
        dump = subprocess.Popen(
            in_ns(pods.node, "tcpdump", "-i", veth, "--immediate-mode", "-U", "-n", "-s", "0",
                  "-w", str(work / f"{i}.pcap"), "tcp port 8443"),
            stderr=subprocess.PIPE,
        )  # fmt: skip
        dumps.append(dump)
        assert dump.stderr is not None and b"listening on" in dump.stderr.readline()
    live = LiveTls(pods, include=f"^({pods.host_ifs[0]}|{pods.host_ifs[1]})$")
    try:
        for n, (pod, mode) in enumerate(((0, "one"), (0, "two"), (1, "one")), start=1):
            _client(pods, pod, mode)
            deadline = time.monotonic() + 10
            while len(_records(live)) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(_records(live)) == n, (pod, mode)
        stats = live.pipeline.tls.stats if live.pipeline.tls is not None else None
        deadline = time.monotonic() + 10  # tcpdump has written all three hellos
        while len(replayed := _replay(work)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        records = sorted(_records(live), key=lambda r: r.start_time or 0.0)
        live.stop()
        for dump in dumps:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)

    whole, two_sends, gso_off = (r.tls for r in records)
    # 1. one GSO frame: every client fact
    assert whole is not None and whole.server_name == SNI and len(whole.client_alpn) == 11
    assert whole.ja3 is not None and whole.ja4 is not None
    # 2, 3. the continuation never reached user space: the server's facts, the SNI (its extension
    # came whole in the first segment), no fingerprint of the cut offer; counted
    for lost in (two_sends, gso_off):
        assert lost is not None and lost.version == "TLS 1.3" and lost.cipher is not None
        assert (lost.server_name, lost.ja3, lost.ja4, lost.client_alpn) == (SNI, None, None, ())
    assert stats is not None and stats.incomplete == 2 and stats.client_hellos == 1

    # replay sees every segment: all three whole, with the live fingerprint
    assert len(replayed) == 3
    for tls in replayed:
        assert tls["server_name"] == SNI and len(tls["client_alpn"]) == 11
        assert (tls["ja3"], tls["ja4"]) == (whole.ja3, whole.ja4)
