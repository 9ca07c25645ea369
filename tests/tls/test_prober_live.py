"""The optional TLS 1.3 certificate prober, for real: openssl s_server (TLS 1.3 only) in a pod
namespace, curl from the node namespace, podwire's live capture + pipeline with the prober on.

The first TLS 1.3 connection has no certificate (encrypted) and schedules one probe; the second
gets the leaf from the cache.  The probe's own connection is seen by the capture but never reaches
the sinks.  A refused and a timed-out probe are counted by reason; the cache bounds re-probing.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podwire.agent import CollectingSink, Pipeline, certificate_prober, tls_assembler
from podwire.capture.live import LiveCapture
from podwire.config import Settings
from podwire.identity import build_service
from podwire.model import ConnectionRecord
from podwire.tracker.tracker import Tracker
from tests.capture.nets import Pods, in_ns, pods_namespace, wait_port
from tests.tls.handshakes import NOT_AFTER, make_cert

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def pods() -> Iterator[Pods]:
    with tempfile.TemporaryDirectory(prefix="pwprobe") as tmp, pods_namespace(1) as made:
        cert_file, key_file = make_cert().write(Path(tmp))
        os.chmod(key_file, 0o644)
        made.start(
            made.pods[0],
            "openssl", "s_server", "-quiet", "-www", "-tls1_3", "-accept", f"{made.pod_ip(0)}:8443",
            "-cert", str(cert_file), "-key", str(key_file),
        )  # fmt: skip
        wait_port(made.node, f"{made.pod_ip(0)}:8443")
        yield made


def _curl(pods: Pods) -> None:
    url = "https://web.podwire.test:8443/"
    argv = [
        "curl",
        "-sfk",
        "-o",
        "/dev/null",
        "--tlsv1.3",
        "--resolve",
        f"web.podwire.test:8443:{pods.pod_ip(0)}",
        url,
    ]
    subprocess.run(in_ns(pods.node, *argv), check=True, capture_output=True, timeout=30)


def test_prober_fills_tls13_certificates_and_its_own_connections_are_not_workload_traffic(pods: Pods) -> None:
    settings = Settings(
        netns=pods.node,
        interface_include=f"^{pods.host_ifs[0]}$",
        log_format="console",
        tls_probe=True,
        tls_probe_timeout_s=0.5,
    )
    assert certificate_prober(Settings()) is None  # off by default
    prober = certificate_prober(settings)
    assert prober is not None
    capture = LiveCapture(settings)
    sink = CollectingSink()
    pipeline = Pipeline(
        Tracker(), build_service(settings), [sink], tls=tls_assembler(settings), prober=prober
    )
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            batch = capture.poll(0.05)
            if batch is not None:
                pipeline.feed(batch)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        _curl(pods)  # TLS 1.3: no certificate on the wire; schedules the probe
        deadline = time.monotonic() + 10
        while prober.probes < 1:
            assert time.monotonic() < deadline, "the probe did not run"
            time.sleep(0.05)
        _curl(pods)  # served from the cache
        # failures: a closed port (refused) and an address nobody answers for (timeout)
        assert prober.lookup(pods.pod_ip(0), 9, None) is None
        assert prober.lookup("10.200.0.77", 8443, None) is None
        deadline = time.monotonic() + 10
        while prober.probes < 3:
            assert time.monotonic() < deadline, prober.failures
            time.sleep(0.05)
        assert prober.lookup(pods.pod_ip(0), 9, None) is None  # cached failure: no new probe
        # until both curls have records and the probe's own connection has closed (and was dropped)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            prober.own_dropped >= 1
            and sum(1 for c in list(sink.connections) if c.record.server.port == 8443) >= 2
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
        pipeline.finish(time.time())
        capture.close()
        prober.close()
    assert prober.probes == 3
    assert prober.failures["refused"] == 1
    assert prober.failures.get("timeout", 0) + prober.failures.get("network", 0) == 1
    # the capture saw three TLS connections to the server (two curls, one probe); only the curls reach sinks
    records: list[ConnectionRecord] = [c.record for c in sink.connections if c.record.server.port == 8443]
    assert len(records) == 2, records
    assert prober.own_dropped >= 1
    first, second = sorted(records, key=lambda r: r.start_time or 0.0)
    assert first.tls is not None and first.tls.version == "TLS 1.3"
    assert first.tls.certificate_not_after is None
    assert second.tls is not None and second.tls.certificate_not_after == NOT_AFTER.timestamp()
    assert second.tls.certificate_subject == "CN=web.podwire.test"
