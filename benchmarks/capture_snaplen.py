"""Ring bytes with TLS on: the staged kernel filter (one accept length per kind of frame) against
the single libpcap program it replaced (one `ret #snaplen` for every frame), on the same traffic.

    .venv/bin/python benchmarks/capture_snaplen.py [--connections 300]   (root)

A pod runs nginx configured as Debian ships it (sendfile, tcp_nopush: TCP_CORK while it sends), a
1 MiB file over HTTP/1.0 (the server closes after the response), and `openssl s_server -www`
(HTTPS: a handshake, a status page, close).  curl fetches from the node namespace.  Two
TPACKET_V3 rings on the pod's veth, one per program, read as the agent reads, see the same
frames; each reports frames, bytes captured (the snap lengths' effect) and bytes of the ring used
(blk_len: frames + headers).  The filter's CPU is shown as instructions run per kind of frame (the
classic-BPF interpreter of the tests; the kernel JIT-compiles the same program).  Prints a table
and writes benchmarks/results/capture_snaplen.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.*

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import raw  # noqa: E402
from tests.capture.bpfvm import run  # noqa: E402
from tests.capture.nets import Pods, in_ns, pods_namespace, wait_port  # noqa: E402
from tests.tls.handshakes import make_cert  # noqa: E402
from tests.tls.test_snaplen_live import OPTIONS, Frame, _recorder, _single_accept_program  # noqa: E402

from podwire.capture import netns  # noqa: E402
from podwire.capture.afpacket import RingSocket  # noqa: E402
from podwire.capture.bpf import compile_program  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def instructions() -> dict[str, tuple[int, int]]:
    """Instructions run per kind of frame: (single program, staged)."""
    eth, v4 = Ether(), IP(src="10.0.0.1", dst="10.0.0.2")
    frames = {
        "data segment (rejected)": eth / v4 / TCP(flags="PA") / (b"\x17\x03\x03" + b"x" * 1445),
        "bare ACK (rejected)": eth / v4 / TCP(flags="A"),
        "SYN": eth / v4 / TCP(flags="S"),
        "ClientHello": eth / v4 / TCP(flags="PA") / (b"\x16\x03\x01\x02\x00\x01" + b"h" * 500),
    }
    old, new = _single_accept_program().instructions, compile_program(OPTIONS).instructions
    out = {}
    for name, pkt in frames.items():
        a: list[int] = []
        b: list[int] = []
        run(old, raw(pkt), steps=a)
        run(new, raw(pkt), steps=b)
        out[name] = (a[0], b[0])
    return out


@contextlib.contextmanager
def _nginx(pods: Pods, work: Path, ip: str, body: bytes) -> Iterator[None]:
    """nginx as Debian ships it: sendfile on, tcp_nopush on (TCP_CORK while it sends a response)."""
    (work / "www").mkdir()
    (work / "www" / "file").write_bytes(body)
    os.chmod(work, 0o755)
    conf = f"""
    worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/error.log;
    events {{ worker_connections 256; }}
    http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {work}/body;
      server {{ listen {ip}:8080; location / {{ root {work}/www; }} }} }}
    """
    (work / "nginx.conf").write_text(conf)
    proc = pods.start(
        pods.pods[0], "nginx", "-e", f"{work}/error.log", "-p", str(work), "-c", f"{work}/nginx.conf"
    )
    try:
        wait_port(pods.node, f"{ip}:8080")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=300, help="per workload (HTTP, HTTPS)")
    ap.add_argument("--size", type=int, default=1 << 20, help="bytes of the HTTP file")
    args = ap.parse_args()
    n = args.connections
    tmp = tempfile.TemporaryDirectory(prefix="pwsnap")
    work = Path(tmp.name)
    cert_file, key_file = make_cert().write(work)
    with pods_namespace(1) as pods:
        ip = pods.pod_ip(0)
        pods.start(
            pods.pods[0], "openssl", "s_server", "-quiet", "-www", "-accept", f"{ip}:8443",
            "-cert", str(cert_file), "-key", str(key_file),
        )  # fmt: skip
        wait_port(pods.node, f"{ip}:8443")
        with _nginx(pods, work, ip, os.urandom(args.size)):
            with netns.inside(pods.node):
                veth = socket.if_nametoindex(pods.host_ifs[0])
                rings = {
                    "single": RingSocket(_single_accept_program(), blocks=64, retire_ms=5, ifindex=veth),
                    "staged": RingSocket(compile_program(OPTIONS), blocks=64, retire_ms=5, ifindex=veth),
                }
            frames: dict[str, list[Frame]] = {k: [] for k in rings}
            decoders = {k: {1: _recorder(frames[k])} for k in rings}
            urls = [f"http://{ip}:8080/file"] * n + [f"https://{ip}:8443/"] * n
            for i in range(0, len(urls), 50):
                batch = urls[i : i + 50]
                curl = subprocess.Popen(
                    in_ns(
                        pods.node,
                        "curl",
                        "-sfk",
                        "--http1.0",
                        *(a for u in batch for a in ("-o", os.devnull, u)),
                    )
                )
                while curl.poll() is None:  # read as the agent does: blocks retire every 5 ms
                    for k, ring in rings.items():
                        ring.drain(decoders[k], [])
                    time.sleep(0.005)
                assert curl.returncode == 0, curl.returncode
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(frames["single"]) != len(frames["staged"]):
                for k, ring in rings.items():
                    ring.drain(decoders[k], [])
                time.sleep(0.05)
            time.sleep(0.2)  # the last blocks retire (5 ms); then one more read
            for k, ring in rings.items():
                ring.drain(decoders[k], [])
            kernel = {k: ring.read_stats() for k, ring in rings.items()}
            ring_bytes = {k: ring.ring_bytes for k, ring in rings.items()}
            for ring in rings.values():
                ring.close()
    tmp.cleanup()
    conns = 2 * n
    result: dict[str, object] = {"connections": conns, "loadavg": os.getloadavg()[0]}
    print(f"{conns} connections ({n} HTTP/1.0 of {args.size} B, {n} HTTPS s_server -www), TLS on")
    print(f"{'program':8} {'frames':>7} {'captured B':>11} {'ring B':>10} {'ring B/conn':>12} {'drops':>6}")
    for k in ("single", "staged"):
        fs = frames[k]
        captured = sum(f.captured for f in fs)
        result[k] = {
            "frames": len(fs),
            "captured_bytes": captured,
            "ring_bytes": ring_bytes[k],
            "ring_bytes_per_connection": ring_bytes[k] / conns,
            "kernel_drops": kernel[k][1],
        }
        print(
            f"{k:8} {len(fs):7d} {captured:11d} {ring_bytes[k]:10d} "
            f"{ring_bytes[k] / conns:12.0f} {kernel[k][1]:6d}"
        )
    same = [(f.wire, f.flags) for f in frames["single"]] == [(f.wire, f.flags) for f in frames["staged"]]
    result["same_frames"] = same
    print(f"same frames passed by both: {same}")
    steps = instructions()
    result["instructions"] = steps
    for name, (a, b) in steps.items():
        print(f"filter instructions, {name:24}: {a:3d} -> {b:3d}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "capture_snaplen.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
