"""The TLS API against real TLS in the mini-cluster: Python's ssl (OpenSSL) server and client in two
pods, TLS 1.2 with a certificate this test made and TLS 1.3, plus plain TCP that must not show."""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podwire.agent import Agent
from podwire.config import Settings
from podwire.demo.cluster import Cluster
from podwire.demo.inventory import write_inventory
from tests.live.conftest import TWO_POD_SPEC
from tests.live.harness import client_socket, listener
from tests.tls.handshakes import NOT_AFTER, NOT_BEFORE, make_cert

pytestmark = pytest.mark.live

SNI = "web.podwire.test"
N12, N13 = 3, 2
OFFER12 = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"  # OpenSSL names


@dataclass
class World:
    agent: Agent
    t_before: float
    t_after: float

    def get(self, path: str, **query: str) -> Any:
        host, port = self.agent.http.address
        url = f"http://{host}:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            self.last_headers = r.headers
            return json.load(r)


def _serve_tls(sock: socket.socket, ctx: ssl.SSLContext, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(5)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(100)
                tls.sendall(b"hello over tls")
        except (OSError, ssl.SSLError):
            conn.close()


def _serve_plain(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.recv(100)
            conn.sendall(b"plain")


@pytest.fixture(scope="module")
def world(module_cluster_factory: Any) -> Iterator[World]:
    cluster: Cluster = module_cluster_factory(TWO_POD_SPEC)
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="pwviews") as tmp:
        cert_file, key_file = make_cert().write(Path(tmp))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert_file, key_file)
        inventory = write_inventory(cluster, Path(tmp) / "inventory.yaml")
        settings = Settings(
            listen=("127.0.0.1", 0),
            log_format="console",
            inventory=str(inventory),
            kube="off",
            interface_include=cluster.host_veth_pattern,
            node_name="node-a",
            otlp="off",
        )
        agent = Agent(settings, netns_list=[cluster.node("node-a").netns])
        agent.start()
        try:
            server = cluster.pod("server")
            threading.Thread(
                target=_serve_tls, args=(listener(cluster, server, port=8443), server_ctx, stop), daemon=True
            ).start()
            threading.Thread(
                target=_serve_plain, args=(listener(cluster, server, port=8080), stop), daemon=True
            ).start()
            time.sleep(0.5)
            t_before = time.time()
            for version, n in ((ssl.TLSVersion.TLSv1_2, N12), (ssl.TLSVersion.TLSv1_3, N13)):
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                ctx.minimum_version = ctx.maximum_version = version
                if version is ssl.TLSVersion.TLSv1_2:
                    ctx.set_ciphers(OFFER12)  # a known offer for clientCipherSuites
                for _ in range(n):
                    with client_socket(cluster, cluster.pod("client")) as raw:
                        raw.settimeout(5)
                        raw.connect((server.ipv4, 8443))
                        with ctx.wrap_socket(raw, server_hostname=SNI) as tls:
                            tls.sendall(b"hi")
                            assert tls.recv(100) == b"hello over tls"
            with client_socket(cluster, cluster.pod("client")) as raw:
                raw.settimeout(5)
                raw.connect((server.ipv4, 8080))
                raw.sendall(b"hi")
                assert raw.recv(100) == b"plain"
            w = World(agent, t_before, 0.0)
            deadline = time.monotonic() + 30
            # every connection in the views' store, the plain one too (so its absence below means something)
            while time.monotonic() < deadline and (
                len(w.get("/tlsparser/api/data")) < N12 + N13 or len(agent.store) < N12 + N13 + 1
            ):
                time.sleep(0.5)
            assert len(agent.store) == N12 + N13 + 1
            w.t_after = time.time()
            yield w
        finally:
            stop.set()
            agent.stop(5)


def test_the_list_has_each_tls_connection_with_k8spacket_fields(world: World) -> None:
    items = world.get("/tlsparser/api/data")
    assert world.last_headers["X-Podwire-Partial"] == "false"
    assert len(items) == N12 + N13  # the plain TCP connection is not a TLS connection
    for item in items:
        for key in ("id", "src", "srcName", "srcNamespace", "dst", "dstName", "dstPort", "domain",
                    "usedTLSVersion", "usedCipherSuite", "lastSeen"):  # fmt: skip
            assert key in item, key
        assert (item["src"], item["srcName"], item["srcNamespace"]) == ("shop/frontend", "frontend", "shop")
        assert (item["dst"], item["dstName"], item["dstPort"]) == ("shop/api", "api", 8443)
        assert item["domain"] == SNI
        assert len(item["ja3"]) == 32 and item["ja4"]
    versions = sorted(i["usedTLSVersion"] for i in items)
    assert versions == ["TLS 1.2"] * N12 + ["TLS 1.3"] * N13
    v12 = [i for i in items if i["usedTLSVersion"] == "TLS 1.2"]
    assert {i["certificateNotAfter"] for i in v12} == {NOT_AFTER.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert all(i["usedCipherSuite"].startswith("TLS_ECDHE_ECDSA_") for i in v12)
    v13 = [i for i in items if i["usedTLSVersion"] == "TLS 1.3"]
    assert all(i["certificateNotAfter"] is None for i in v13)  # TLS 1.3 encrypts the certificate
    assert all(i["usedCipherSuite"].startswith("TLS_AES_") or "CHACHA" in i["usedCipherSuite"] for i in v13)


def test_the_list_is_filtered_by_time(world: World) -> None:
    ms = lambda t: str(int(t * 1000))  # noqa: E731
    assert len(world.get("/tlsparser/api/data", **{"from": ms(world.t_before - 1)})) == N12 + N13
    assert world.get("/tlsparser/api/data", **{"from": ms(world.t_after + 60)}) == []
    assert world.get("/tlsparser/api/data", to=ms(world.t_before - 60)) == []


def test_details_by_id_carry_the_certificate_and_the_record(world: World) -> None:
    item = next(i for i in world.get("/tlsparser/api/data") if i["usedTLSVersion"] == "TLS 1.2")
    d = world.get(f"/tlsparser/api/data/{item['id']}")
    assert d["id"] == item["id"] and d["domain"] == SNI and d["port"] == 8443
    assert d["usedTLSVersion"] == "TLS 1.2" and d["usedCipherSuite"] == item["usedCipherSuite"]
    assert d["clientTLSVersions"] == []  # a TLS 1.2-only client sends no supported_versions
    assert d["clientCipherSuites"] == [  # OFFER12 in IANA names, and the renegotiation SCSV
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    ]
    assert d["usedCipherSuite"] in d["clientCipherSuites"]
    cert = d["certificate"]
    assert cert["notAfter"] == NOT_AFTER.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cert["notBefore"] == NOT_BEFORE.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "CN=web.podwire.test" in cert["serverChain"] and "podwire test CA" in cert["serverChain"]
    assert d["tls"]["server_name"] == SNI
    assert d["connection"]["server"]["port"] == 8443 and d["connection"]["outcome"] == "closed"


def test_details_of_a_tls13_connection(world: World) -> None:
    item = next(i for i in world.get("/tlsparser/api/data") if i["usedTLSVersion"] == "TLS 1.3")
    d = world.get(f"/tlsparser/api/data/{item['id']}")
    assert d["clientTLSVersions"] == ["TLS 1.3"] and d["certificate"]["notAfter"] is None
    assert d["usedCipherSuite"] in d["clientCipherSuites"][:3]  # OpenSSL offers its 3 TLS 1.3 suites first
    assert all(c.startswith("TLS_") for c in d["clientCipherSuites"])


def test_unknown_and_bad_ids(world: World) -> None:
    for bad, status in (
        ("ffffffff-1", 404),
        (f"{world.agent.store.instance}-999999", 404),
        ("nonsense", 400),
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            world.get(f"/tlsparser/api/data/{bad}")
        assert err.value.code == status, bad
