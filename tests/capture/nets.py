"""Namespaces for capture tests: a "node" netns and "pod" netns joined by a veth, always removed.

Every name carries a random prefix so parallel runs by other engineers never collide.  The
host-side veth lives in the node namespace (never the root namespace); the capture under test is
created there with `Settings(netns=node)`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass
class Pods:
    prefix: str
    node: str  # node netns: host-side veths live here
    pods: list[str] = field(default_factory=list)  # pod netns names
    host_ifs: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node_ip(self, i: int) -> str:
        return f"10.{200 + i}.0.1"

    def pod_ip(self, i: int) -> str:
        return f"10.{200 + i}.0.2"

    def node_ip6(self, i: int) -> str:
        return f"fd00:{200 + i}::1"

    def pod_ip6(self, i: int) -> str:
        return f"fd00:{200 + i}::2"

    def add_pod(self) -> int:
        """A new pod netns with eth0 <-> host veth `<prefix>h<i>` in the node netns; returns i."""
        i = len(self.pods)
        pod = f"{self.prefix}p{i}"
        host = f"{self.prefix}h{i}"
        sh("ip", "netns", "add", pod)
        self.pods.append(pod)
        sh("ip", "-n", self.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod)
        self.host_ifs.append(host)
        sh("ip", "-n", self.node, "addr", "add", f"{self.node_ip(i)}/24", "dev", host)
        sh("ip", "-n", self.node, "addr", "add", f"{self.node_ip6(i)}/64", "dev", host, "nodad")
        sh("ip", "-n", self.node, "link", "set", host, "up")
        sh("ip", "-n", pod, "addr", "add", f"{self.pod_ip(i)}/24", "dev", "eth0")
        sh("ip", "-n", pod, "addr", "add", f"{self.pod_ip6(i)}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", pod, "link", "set", "eth0", "up")
        sh("ip", "-n", pod, "link", "set", "lo", "up")
        return i

    def bridge_ip(self, i: int) -> str:
        return f"10.199.0.{10 + i}"

    def add_bridge(self) -> str:
        """A bridge `<prefix>br` in the node netns with every host veth as a port (as the bridge CNI
        does); each pod also gets bridge_ip(i)/24 on eth0, so pods reach each other through it."""
        br = self.prefix + "br"
        sh("ip", "-n", self.node, "link", "add", br, "type", "bridge")
        sh("ip", "-n", self.node, "link", "set", br, "up")
        for i, host in enumerate(self.host_ifs):
            sh("ip", "-n", self.node, "link", "set", host, "master", br)
            sh("ip", "-n", self.pods[i], "addr", "add", f"{self.bridge_ip(i)}/24", "dev", "eth0")
        return br

    def remove_pod_link(self, i: int) -> None:
        sh("ip", "-n", self.node, "link", "del", self.host_ifs[i])

    def start(self, ns: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(in_ns(ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in [*self.pods, self.node]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def pods_namespace(n_pods: int = 1) -> Iterator[Pods]:
    """A node netns with `n_pods` pod netns; everything removed afterwards, even on failure."""
    prefix = "pwc" + os.urandom(3).hex()
    pods = Pods(prefix, prefix + "n")
    try:
        sh("ip", "netns", "add", pods.node)
        sh("ip", "-n", pods.node, "link", "set", "lo", "up")
        for _ in range(n_pods):
            pods.add_pod()
        yield pods
    finally:
        pods.cleanup()


@contextlib.contextmanager
def nginx(pods: Pods, ns: str, listen: list[str], body: bytes) -> Iterator[None]:
    """nginx serving `body` at /file in netns `ns` on the `listen` addresses ("ip:port")."""
    with tempfile.TemporaryDirectory(prefix="pwnginx") as d:
        os.chmod(d, 0o755)  # nginx workers run as an unprivileged user
        os.makedirs(f"{d}/www")
        with open(f"{d}/www/file", "wb") as f:
            f.write(body)
        listens = "\n".join(f"listen {addr};" for addr in listen)
        conf = textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {d}/nginx.pid;
            error_log {d}/error.log;
            events {{ worker_connections 256; }}
            http {{
              access_log off;
              client_body_temp_path {d}/body;
              proxy_temp_path {d}/proxy;
              server {{ {listens} location / {{ root {d}/www; }} }}
            }}
            """
        )
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(conf)
        proc = pods.start(ns, "nginx", "-e", f"{d}/error.log", "-p", d, "-c", f"{d}/nginx.conf")
        try:
            wait_port(ns, listen[0])
            yield
        finally:
            proc.terminate()
            proc.wait(10)


def wait_port(ns: str, addr: str, timeout: float = 10.0) -> None:
    host, _, port = addr.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            in_ns(
                ns,
                "python3",
                "-c",
                f"import socket; socket.create_connection(('{host.strip('[]')}', {port}), 1)",
            ),
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {addr} in {ns}")
