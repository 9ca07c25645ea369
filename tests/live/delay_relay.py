"""A small userspace relay that delays one direction of a pod's traffic (this kernel has no netem).

In the node's namespace, the pod's host-side veth leaves the bridge and a new veth pair takes its
place: bridge -- <prefix>ra ==veth== <prefix>rb  <-relay->  the pod's host veth.  Two AF_PACKET
sockets copy every frame between rb and the pod's veth; frames from the pod wait `delay_s` first.
The capture and the socket-stats sampler still see the pod's own veth, as on a real node.
"""

from __future__ import annotations

import heapq
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute

from podwire.demo.cluster import Cluster, Pod, popen_in_netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def with_tcp_checksum(frame: bytes) -> bytes:
    """veths leave the TCP checksum to "offload" (CHECKSUM_PARTIAL): a frame copied through
    AF_PACKET must carry a real one, or the receiving pod drops it (IPv4 only: the test's)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
        return frame
    ihl = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    ip = frame[14 : 14 + total]
    seg = bytearray(ip[ihl:])
    seg[16:18] = b"\0\0"
    pseudo = ip[12:20] + b"\x00\x06" + len(seg).to_bytes(2, "big")
    seg[16:18] = _checksum(pseudo + bytes(seg)).to_bytes(2, "big")
    return frame[:14] + ip[:ihl] + bytes(seg) + frame[14 + total :]


class DelayRelay:
    """Runs the relay in a child process inside the node's namespace (its own GIL: the agent under
    test shares ours), and stops it on exit."""

    def __init__(self, cluster: Cluster, pod: Pod, delay_s: float) -> None:
        self._cluster, self._pod, self._delay = cluster, pod, delay_s
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> DelayRelay:
        node = self._cluster.node(self._pod.node)
        argv = [
            sys.executable,
            "-m",
            "tests.live.delay_relay",
            node.bridge,
            self._pod.host_ifname,
            f"{self._cluster.prefix}ra",
            f"{self._cluster.prefix}rb",
            str(self._delay),
        ]
        root = Path(__file__).resolve().parents[2]
        self._proc = popen_in_netns(node.netns, argv, cwd=root, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != "ready":
            self._proc.kill()
            raise RuntimeError(f"delay relay did not start: {line!r}")
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)


def _recv(sock: socket.socket) -> bytes | None:
    try:
        frame, addr = sock.recvfrom(65536)
    except OSError:
        return None
    return None if addr[2] == PACKET_OUTGOING else with_tcp_checksum(frame)


def main(bridge: str, pod_veth: str, ra: str, rb: str, delay_s: float) -> None:
    """In the node's namespace: splice the relay in, then copy frames until terminated."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=ra, kind="veth", peer={"ifname": rb})
        (br,) = ipr.link_lookup(ifname=bridge)
        (ia,) = ipr.link_lookup(ifname=ra)
        (ib,) = ipr.link_lookup(ifname=rb)
        (ip_,) = ipr.link_lookup(ifname=pod_veth)
        ipr.link("set", index=ip_, master=0)
        ipr.link("set", index=ia, master=br, state="up")
        ipr.link("set", index=ib, state="up")
    socks = []
    for name in (rb, pod_veth):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        socks.append(s)
    to_rb, to_pod = socks
    heap: list[tuple[float, int, bytes]] = []
    cv = threading.Condition()
    n = 0

    def towards_pod() -> None:  # at once
        while True:
            frame = _recv(to_rb)
            if frame is not None:
                to_pod.send(frame)

    def from_pod() -> None:  # after the delay
        nonlocal n
        while True:
            frame = _recv(to_pod)
            if frame is not None:
                with cv:
                    n += 1
                    heapq.heappush(heap, (time.monotonic() + delay_s, n, frame))
                    cv.notify()

    for target in (towards_pod, from_pod):
        threading.Thread(target=target, daemon=True).start()
    print("ready", flush=True)
    while True:
        with cv:
            while not heap:
                cv.wait()
            due, _, frame = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                cv.wait(wait)
                continue
            heapq.heappop(heap)
        to_rb.send(frame)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
