"""Live capture in namespaces we create: interfaces followed by netlink, the kernel filter's verdicts,
bulk data kept out of Python, and kernel statistics read."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, raw

from podwire.capture import netns
from podwire.capture.live import LiveCapture
from podwire.config import Settings
from podwire.model import FIN, RST, SYN, DnsAnswer, Segment
from tests.capture.nets import Pods, in_ns, pods_namespace

pytestmark = pytest.mark.live


@pytest.fixture
def pods() -> Iterator[Pods]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with pods_namespace(1) as p:
        yield p


@pytest.fixture
def capture(pods: Pods) -> Iterator[LiveCapture]:
    # pod 0 is the trusted resolver: its answers to queries seen name addresses (DnsGuard)
    cap = LiveCapture(Settings(netns=pods.node, dns_names=True, dns_resolvers=(pods.pod_ip(0),)))
    try:
        yield cap
    finally:
        cap.close()


def drain(cap: LiveCapture, seconds: float) -> tuple[list[Segment], list[DnsAnswer]]:
    segs: list[Segment] = []
    dns: list[DnsAnswer] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = cap.poll(0.05)
        assert batch is not None
        segs += batch.segments
        dns += batch.dns
    return segs, dns


def wait_for(cap: LiveCapture, cond: object, timeout: float) -> float:
    """Poll until cond() holds; return the seconds it took (fails past `timeout`)."""
    start = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, "condition not reached in time"
        cap.poll(0.02)
    return time.monotonic() - start


def netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_sockets_are_made_in_the_named_netns_and_the_thread_comes_back(pods: Pods) -> None:
    before = netns_inode()
    cap = LiveCapture(Settings(netns=pods.node))
    try:
        assert netns_inode() == before
        assert [(i.name, i.ifindex) for i in cap.interfaces()] == [
            (pods.host_ifs[0], socket_ifindex(pods.node, pods.host_ifs[0]))
        ]
    finally:
        cap.close()
    assert cap.poll(0) is None


def socket_ifindex(ns: str, name: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "-o", "link", "show", name], check=True, capture_output=True, text=True
    )
    return int(out.stdout.split(":", 1)[0])


def test_new_pod_interface_is_captured_within_a_second_and_closed_when_removed(
    pods: Pods, capture: LiveCapture
) -> None:
    assert len(capture.interfaces()) == 1
    i = pods.add_pod()
    name = pods.host_ifs[i]
    took = wait_for(capture, lambda: name in {c.name for c in capture.interfaces()}, 1.0)
    assert took < 1.0
    # A veth with both ends in the node namespace is no pod interface.
    pods_local = pods.prefix + "x0"
    subprocess.run(
        [
            "ip",
            "-n",
            pods.node,
            "link",
            "add",
            pods_local,
            "type",
            "veth",
            "peer",
            "name",
            pods.prefix + "x1",
        ],
        check=True,
    )
    drain(capture, 0.3)
    assert {c.name for c in capture.interfaces()} == {pods.host_ifs[0], name}
    # Removing the link closes its ring...
    pods.remove_pod_link(i)
    wait_for(capture, lambda: name not in {c.name for c in capture.interfaces()}, 1.0)
    # ...and so does deleting a pod's namespace (the veth dies with it).
    subprocess.run(["ip", "netns", "del", pods.pods[0]], check=True)
    wait_for(capture, lambda: not capture.interfaces(), 1.0)
    stats = capture.stats()
    assert (stats.interfaces, stats.interfaces_opened, stats.interfaces_closed) == (0, 2, 2)


def test_renamed_interface_keeps_its_ring(pods: Pods, capture: LiveCapture) -> None:
    old = pods.host_ifs[0]
    ifindex = socket_ifindex(pods.node, old)
    new = pods.prefix + "r0"
    subprocess.run(["ip", "-n", pods.node, "link", "set", old, "down"], check=True)
    subprocess.run(["ip", "-n", pods.node, "link", "set", old, "name", new], check=True)
    subprocess.run(["ip", "-n", pods.node, "link", "set", new, "up"], check=True)
    wait_for(capture, lambda: [(c.name, c.ifindex) for c in capture.interfaces()] == [(new, ifindex)], 1.0)
    assert capture.stats().interfaces_opened == 1


def test_missing_namespace_is_a_clear_error() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(FileNotFoundError, match="network namespace 'pwc-no-such-ns' does not exist"):
        LiveCapture(Settings(netns="pwc-no-such-ns"))


def test_exclude_pattern_keeps_an_interface_out(pods: Pods) -> None:
    cap = LiveCapture(Settings(netns=pods.node, interface_exclude=pods.host_ifs[0]))
    try:
        i = pods.add_pod()
        wait_for(cap, lambda: [c.name for c in cap.interfaces()] == [pods.host_ifs[i]], 1.0)
    finally:
        cap.close()


# ---- the kernel filter's verdicts, in the kernel ---------------------------------------------

POD_MAC = "02:00:00:00:00:0a"


def dns_query_payload(msg_id: int = 7) -> bytes:
    return (
        struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, 0) + b"\x03api\x04shop\x00" + struct.pack("!HH", 1, 1)
    )


def dns_answer_payload(msg_id: int = 7, address: str = "10.96.0.10") -> bytes:
    q = b"\x03api\x04shop\x00"
    return (
        struct.pack("!HHHHHH", msg_id, 0x8180, 1, 1, 0, 0)
        + q
        + struct.pack("!HH", 1, 1)
        + b"\xc0\x0c"
        + struct.pack("!HHIH", 1, 1, 120, 4)
        + socket.inet_aton(address)
    )


def dns_query_to_pod0(pods: Pods, sport: int = 1010, msg_id: int = 7) -> bytes:
    """The node asks pod 0 (the trusted resolver) for api.shop, as the answer case expects."""
    e = Ether(src="02:00:00:00:00:0b", dst=POD_MAC)
    return raw(
        e
        / IP(src=pods.node_ip(0), dst=pods.pod_ip(0))
        / UDP(sport=sport, dport=53)
        / dns_query_payload(msg_id)
    )


def crafted(pods: Pods) -> list[tuple[str, Packet, bool]]:
    """(case, frame, must arrive): each frame has its own source port to tell them apart."""
    e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
    v4 = IP(src=pods.pod_ip(0), dst=pods.node_ip(0))
    v6 = IPv6(src=pods.pod_ip6(0), dst=pods.node_ip6(0))

    def t(port: int, flags: str, data: bytes = b"") -> Packet:
        return TCP(sport=port, dport=9, flags=flags, seq=1000 + port) / data

    return [
        ("syn", e / v4 / t(1001, "S"), True),
        ("fin", e / v4 / t(1002, "FA"), True),
        ("rst", e / v4 / t(1003, "R"), True),
        ("ack", e / v4 / t(1004, "A"), False),
        ("data", e / v4 / t(1005, "PA", b"x" * 1200), False),
        ("v6 syn", e / v6 / t(1006, "S"), True),
        ("v6 data", e / v6 / t(1007, "PA", b"y" * 900), False),
        ("vlan syn", e / Dot1Q(vlan=12) / v4 / t(1008, "S"), True),
        ("vlan data", e / Dot1Q(vlan=12) / v4 / t(1009, "A", b"z" * 100), False),
        ("dns answer", e / v4 / UDP(sport=53, dport=1010) / dns_answer_payload(), True),
        ("dns query", e / v4 / UDP(sport=1011, dport=53) / dns_query_payload(8), True),
    ]


def send_frames(ns: str, ifname: str, frames: list[bytes]) -> None:
    with netns.inside(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((ifname, 0))
        for f in frames:
            s.send(f)
    finally:
        s.close()


def test_kernel_filter_passes_only_control_segments_and_dns_answers(pods: Pods, capture: LiveCapture) -> None:
    cases = crafted(pods)
    send_frames(pods.node, pods.host_ifs[0], [dns_query_to_pod0(pods)])  # what the answer answers
    time.sleep(0.05)
    send_frames(pods.pods[0], "eth0", [raw(f) for _, f, _ in cases])
    segs, dns = drain(capture, 0.5)
    got = {s.sport for s in segs if s.dport == 9}
    want = {int(f[TCP].sport) for _, f, ok in cases if ok and f.haslayer(TCP)}
    assert got == want
    assert all(s.from_local is True for s in segs)  # sent by the pod: received on its host veth
    assert dns == [DnsAnswer(dns[0].ts, "api.shop", "10.96.0.10", 120)]
    stats = capture.stats()
    assert stats.packets == 1 + sum(ok for _, _, ok in cases)  # nothing else reached Python
    assert stats.kernel_packets == stats.packets and stats.kernel_drops == 0
    assert stats.decode_errors == 0


def test_spoofed_dns_answers_name_nothing_and_are_counted(pods: Pods, capture: LiveCapture) -> None:
    # Issue 14: any pod could send an unsolicited answer from port 53 and rename an address for
    # every pod on the node.  Pod 1 is not a resolver; pod 0 is, but nobody asked it this.
    pods.add_pod()
    e = Ether(src="02:00:00:00:00:0c", dst="ff:ff:ff:ff:ff:ff")
    from_pod1 = IP(src=pods.pod_ip(1), dst=pods.node_ip(1)) / UDP(sport=53, dport=1010)
    send_frames(pods.node, pods.host_ifs[0], [dns_query_to_pod0(pods, sport=1010, msg_id=7)])
    wait_for(capture, lambda: capture.stats().packets >= 1, 2.0)
    send_frames(pods.pods[1], "eth0", [raw(e / from_pod1 / dns_answer_payload(7, "10.232.77.77"))])
    from_pod0 = IP(src=pods.pod_ip(0), dst=pods.node_ip(0))
    spoofs = [
        UDP(sport=53, dport=1010) / dns_answer_payload(99, "10.232.77.77"),  # wrong id
        UDP(sport=53, dport=1999) / dns_answer_payload(7, "10.232.77.77"),  # wrong client port
    ]
    send_frames(pods.pods[0], "eth0", [raw(Ether(src=POD_MAC) / from_pod0 / s) for s in spoofs])
    _, dns = drain(capture, 0.5)
    assert dns == []  # nothing to learn: no address renamed
    stats = capture.stats()
    assert stats.dns_rejected == {"untrusted": 1, "unsolicited": 2}
    # the real answer still names it (the query is still pending: spoofs do not consume it)
    send_frames(
        pods.pods[0],
        "eth0",
        [raw(Ether(src=POD_MAC) / from_pod0 / UDP(sport=53, dport=1010) / dns_answer_payload())],
    )
    _, dns = drain(capture, 0.3)
    assert [(a.name, a.address) for a in dns] == [("api.shop", "10.96.0.10")]


def test_frames_towards_the_pod_are_marked_not_local(pods: Pods, capture: LiveCapture) -> None:
    e = Ether(src="02:00:00:00:00:0b", dst=POD_MAC)
    frame = raw(e / IP(src=pods.node_ip(0), dst=pods.pod_ip(0)) / TCP(sport=2001, dport=9, flags="S"))
    send_frames(pods.node, pods.host_ifs[0], [frame])
    segs, _ = drain(capture, 0.3)
    assert [(s.sport, s.from_local, s.point) for s in segs] == [
        (2001, False, socket_ifindex(pods.node, pods.host_ifs[0]))
    ]


def test_without_dns_option_udp_answers_stay_in_the_kernel(pods: Pods) -> None:
    cap = LiveCapture(Settings(netns=pods.node, dns_names=False))
    try:
        cases = crafted(pods)
        send_frames(pods.pods[0], "eth0", [raw(f) for _, f, _ in cases])
        segs, dns = drain(cap, 0.5)
        assert dns == []
        dns_cases = ("dns answer", "dns query")
        assert cap.stats().packets == sum(ok for c, _, ok in cases if c not in dns_cases) == len(segs)
    finally:
        cap.close()


# ---- real traffic ---------------------------------------------------------------------------

SINK = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind((sys.argv[1],int(sys.argv[2])));s.listen()\n"
    "c,_=s.accept();n=0\n"
    "while (d:=c.recv(1<<20)): n+=len(d)\n"
    "c.close();print(n)\n"
)
SEND = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
    "b=b'x'*(1<<20)\n"
    "for _ in range(int(sys.argv[3])): s.sendall(b)\n"
    "s.close()\n"
)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_bulk_transfer_reaches_python_only_as_control_segments(
    pods: Pods, capture: LiveCapture, family: str
) -> None:
    host = pods.node_ip(0) if family == "ipv4" else pods.node_ip6(0)
    mib = 128
    sink = pods.start(pods.node, "python3", "-c", SINK, host, "7000")
    wait_port_silently(pods, host)
    drain(capture, 0.05)
    before = capture.stats().packets
    sender = pods.start(pods.pods[0], "python3", "-c", SEND, host, "7000", str(mib))
    segs: list[Segment] = []
    deadline = time.monotonic() + 60
    while sender.poll() is None or sink.poll() is None:
        assert time.monotonic() < deadline
        batch = capture.poll(0.05)
        assert batch is not None
        segs += batch.segments
    more, _ = drain(capture, 0.3)
    segs += more
    assert sender.returncode == 0
    assert sink.stdout is not None and int(sink.stdout.read()) == mib << 20
    conn = [s for s in segs if 7000 in (s.sport, s.dport)]
    syn = next(s for s in conn if s.flags & SYN and s.dport == 7000)
    fin = next(s for s in conn if s.flags & FIN and s.sport == syn.sport)
    assert (fin.seq + fin.payload_len - syn.seq - 1) % 2**32 == mib << 20
    assert all(s.flags & (SYN | FIN | RST) for s in segs)
    stats = capture.stats()
    # 128 MiB is ~90k segments on the wire; only the handful of control segments were read.
    assert stats.packets - before == len(conn) <= 8
    assert stats.kernel_drops == 0 and stats.kernel_packets == stats.packets


def wait_port_silently(pods: Pods, host: str) -> None:
    # A probe connection would show up in the capture; wait for the listening socket instead.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            in_ns(pods.node, "ss", "-Hltn", "sport", "= :7000"), capture_output=True, text=True
        )
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise TimeoutError("sink not listening")


def test_kernel_drops_are_read_from_packet_statistics(pods: Pods) -> None:
    # A one-block 4 KiB ring that nobody drains overflows after a few dozen SYNs.
    cap = LiveCapture(Settings(netns=pods.node, ring_block_kib=4, ring_blocks=1), retire_ms=1000)
    try:
        e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
        syn = raw(e / IP(src=pods.pod_ip(0), dst=pods.node_ip(0)) / TCP(sport=3000, dport=9, flags="S"))
        send_frames(pods.pods[0], "eth0", [syn] * 500)
        stats = cap.stats()
        assert stats.kernel_packets == 500
        assert stats.kernel_drops > 0
        segs, _ = drain(cap, 1.5)
        assert 0 < len(segs) == 500 - stats.kernel_drops
        assert cap.stats().kernel_drops == stats.kernel_drops  # accumulated, not reset by the read
    finally:
        cap.close()


def test_tun_interface_gets_the_raw_ip_filter_and_decoder(pods: Pods) -> None:
    # veth_only off and a name pattern: a tun device (no link header, ARPHRD_NONE) is captured too.
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    tun = pods.prefix + "t0"
    subprocess.run(["ip", "-n", pods.node, "tuntap", "add", "name", tun, "mode", "tun"], check=True)
    subprocess.run(["ip", "-n", pods.node, "link", "set", tun, "up"], check=True)
    with netns.inside(pods.node):
        fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(
            fd, 0x400454CA, struct.pack("16sH", tun.encode(), 0x0001 | 0x1000)
        )  # TUNSETIFF, TUN|NO_PI
        cap = LiveCapture(Settings(netns=pods.node, veth_only=False, interface_include=f"^{tun}$"))
        try:
            assert [c.name for c in cap.interfaces()] == [tun]
            v4 = IP(src="10.250.0.2", dst="10.250.0.1")
            for pkt in (
                v4 / TCP(sport=4001, flags="S"),
                v4 / TCP(sport=4002, flags="A") / b"data",
                IPv6(src="fd00:250::2", dst="fd00:250::1") / TCP(sport=4003, flags="R"),
            ):
                os.write(fd, raw(pkt))
            segs, _ = drain(cap, 0.3)
            assert [(s.sport, s.flags, len(s.src)) for s in segs] == [(4001, SYN, 4), (4003, RST, 16)]
            assert cap.stats().packets == 2 and cap.stats().decode_errors == 0
        finally:
            cap.close()
    finally:
        os.close(fd)


def test_stats_and_interfaces_are_safe_from_another_thread_while_links_come_and_go(
    pods: Pods, capture: LiveCapture
) -> None:
    import threading

    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                capture.stats()
                capture.interfaces()
        except BaseException as exc:  # any race shows up here
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(4):
            i = pods.add_pod()
            wait_for(capture, lambda: pods.host_ifs[i] in {c.name for c in capture.interfaces()}, 1.0)
            pods.remove_pod_link(i)
            wait_for(capture, lambda: pods.host_ifs[i] not in {c.name for c in capture.interfaces()}, 1.0)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert capture.stats().interfaces_opened == 5


# ---- link events that must not lose a pod ------------------------------------------------------


def bridged_syn_seen(pods: Pods, capture: LiveCapture, port: int) -> set[int]:
    """Connect pod 0 -> pod 1 over the bridge on `port`; return the capture points of the SYN."""
    with netns.inside(pods.pods[1]):
        server = socket.create_server((pods.bridge_ip(1), port))
    try:
        with netns.inside(pods.pods[0]):
            client = socket.socket()
        client.settimeout(10)
        client.connect((pods.bridge_ip(1), port))
        client.close()
        server.accept()[0].close()
    finally:
        server.close()
    segs, _ = drain(capture, 0.4)
    return {s.point for s in segs if s.dport == port and s.flags == SYN}


def test_bridge_port_changes_never_stop_capture(pods: Pods, capture: LiveCapture) -> None:
    # Round 1 took the bridge's AF_BRIDGE RTM_NEWLINK (STP state, port cost: no veth details) for a
    # removal and lost every bridged pod; here the pods must stay captured through all of them.
    pods.add_pod()
    h0, h1 = pods.host_ifs
    want = {(h0, socket_ifindex(pods.node, h0)), (h1, socket_ifindex(pods.node, h1))}
    br = pods.add_bridge()
    node = ["ip", "-n", pods.node]

    def still_captured(step: str) -> None:
        drain(capture, 0.3)
        assert {(c.name, c.ifindex) for c in capture.interfaces()} == want, step

    still_captured("enslaved")
    for step, argv in [
        ("forward delay", [*node, "link", "set", br, "type", "bridge", "forward_delay", "200"]),
        ("stp on", [*node, "link", "set", br, "type", "bridge", "stp_state", "1"]),
        ("cost", ["bridge", "-n", pods.node, "link", "set", "dev", h0, "cost", "7"]),
        ("priority", ["bridge", "-n", pods.node, "link", "set", "dev", h1, "priority", "5"]),
        ("mtu", [*node, "link", "set", h0, "mtu", "1400"]),
        ("down", [*node, "link", "set", h1, "down"]),
        ("up", [*node, "link", "set", h1, "up"]),
    ]:
        subprocess.run(argv, check=True)
        still_captured(step)
    # The pod end of h1 moves to another pod namespace: h1's peer is still elsewhere, a candidate.
    moved = pods.prefix + "mv"
    subprocess.run(["ip", "netns", "add", moved], check=True)
    pods.pods.append(moved)  # torn down with the rest
    subprocess.run(["ip", "-n", pods.pods[1], "link", "set", "eth0", "netns", moved], check=True)
    still_captured("peer moved")
    subprocess.run(["ip", "-n", moved, "link", "set", "eth0", "netns", pods.pods[1]], check=True)
    subprocess.run(["ip", "-n", pods.pods[1], "addr", "add", f"{pods.bridge_ip(1)}/24", "dev", "eth0"])
    subprocess.run(["ip", "-n", pods.pods[1], "link", "set", "eth0", "up"], check=True)
    still_captured("peer back")

    # STP moves h1 (up again) through listening and learning to forwarding, 2 x forward_delay;
    # then a connection is seen on both bridge ports.
    def forwarding() -> bool:
        out = subprocess.run(["bridge", "-n", pods.node, "link"], check=True, capture_output=True, text=True)
        return out.stdout.count("state forwarding") == 2

    wait_for(capture, forwarding, 10.0)
    still_captured("forwarding")
    assert bridged_syn_seen(pods, capture, 7101) == {i for _, i in want}
    stats = capture.stats()
    assert stats.interfaces_closed == 0 and stats.interface_removals == {}


def test_interface_moved_out_and_back_is_captured_again_within_a_second(
    pods: Pods, capture: LiveCapture
) -> None:
    h0 = pods.host_ifs[0]
    other = pods.prefix + "o"
    subprocess.run(["ip", "netns", "add", other], check=True)
    pods.pods.append(other)
    subprocess.run(["ip", "-n", pods.node, "link", "set", h0, "netns", other], check=True)
    wait_for(capture, lambda: not capture.interfaces(), 1.0)
    assert capture.stats().interface_removals == {"deleted": 1}
    subprocess.run(["ip", "-n", other, "link", "set", h0, "netns", pods.node], check=True)
    took = wait_for(capture, lambda: [c.name for c in capture.interfaces()] == [h0], 1.0)
    assert took < 1.0


# ---- one socket and one ring per namespace -----------------------------------------------------


def packet_sockets(ns: str) -> list[list[str]]:
    """Rows of /proc/net/packet in `ns` (sk RefCnt Type Proto Iface R Rmem User Inode)."""
    out = subprocess.run(in_ns(ns, "cat", "/proc/net/packet"), check=True, capture_output=True, text=True)
    return [line.split() for line in out.stdout.splitlines()[1:]]


def test_one_packet_socket_on_all_interfaces_whatever_the_pod_count(pods: Pods, capture: LiveCapture) -> None:
    n = 12  # more than a leaf of the prelude's search: its `jgt` halves run in the kernel too
    for _ in range(n - 1):
        i = pods.add_pod()
        wait_for(capture, lambda: pods.host_ifs[i] in {c.name for c in capture.interfaces()}, 1.0)
    rows = packet_sockets(pods.node)
    assert len(rows) == 1 and rows[0][4] == "0"  # Iface 0: bound to every interface
    assert capture.stats().filter_swaps == n  # the initial set, then one per new pod
    # Every pod is seen, each under its own interface, through the one ring.
    e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
    for i in range(n):
        syn = e / IP(src=pods.pod_ip(i), dst=pods.node_ip(i)) / TCP(sport=5000 + i, dport=9, flags="S")
        send_frames(pods.pods[i], "eth0", [raw(syn)])
    segs, _ = drain(capture, 0.4)
    assert sorted((s.sport, s.point) for s in segs) == [
        (5000 + i, socket_ifindex(pods.node, pods.host_ifs[i])) for i in range(n)
    ]


def test_traffic_on_other_interfaces_never_reaches_python(pods: Pods, capture: LiveCapture) -> None:
    # A veth with both ends in the node namespace carries control segments, the bridge (with the
    # node's address on it) a bulk transfer to pod 0; the kernel filter keeps them out.  Only the
    # control segments of that connection on pod 0's veth arrive.
    pods.add_pod()
    br = pods.add_bridge()
    subprocess.run(["ip", "-n", pods.node, "addr", "add", "10.199.0.1/24", "dev", br], check=True)
    local_a, local_b = pods.prefix + "la", pods.prefix + "lb"
    subprocess.run(
        ["ip", "-n", pods.node, "link", "add", local_a, "type", "veth", "peer", "name", local_b], check=True
    )
    for dev in (local_a, local_b):
        subprocess.run(["ip", "-n", pods.node, "link", "set", dev, "up"], check=True)
    wait_for(capture, lambda: len(capture.interfaces()) == 2, 1.0)
    drain(capture, 0.2)
    before = capture.stats()
    e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
    syns = [
        raw(e / IP(src="10.9.9.1", dst="10.9.9.2") / TCP(sport=p, dport=9, flags="S")) for p in range(200)
    ]
    send_frames(pods.node, local_a, syns)  # (sent on the bridge they would be flooded to the pods)
    # Bulk from the node (on the bridge) to pod 0: 32 MiB through bridge and veth h0.
    sink = pods.start(pods.pods[0], "python3", "-c", SINK, pods.bridge_ip(0), "7000")
    deadline = time.monotonic() + 10
    while not subprocess.run(
        in_ns(pods.pods[0], "ss", "-Hltn", "sport", "= :7000"), capture_output=True, text=True
    ).stdout.strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sender = pods.start(pods.node, "python3", "-c", SEND, pods.bridge_ip(0), "7000", "32")
    segs: list[Segment] = []
    while sender.poll() is None or sink.poll() is None:
        assert time.monotonic() < deadline + 30
        batch = capture.poll(0.05)
        assert batch is not None
        segs += batch.segments
    more, _ = drain(capture, 0.3)
    segs += more
    assert sender.returncode == 0
    h0 = socket_ifindex(pods.node, pods.host_ifs[0])
    assert {s.point for s in segs} == {h0}  # never the bridge, never the node-local veth
    assert all(7000 in (s.sport, s.dport) for s in segs) and 4 <= len(segs) <= 8
    stats = capture.stats()
    assert stats.packets - before.packets == len(segs)
    assert stats.kernel_packets - before.kernel_packets == len(segs) and stats.kernel_drops == 0


# ---- nothing captured is thrown away ------------------------------------------------------------


def test_final_reads_the_block_the_kernel_is_still_filling(pods: Pods) -> None:
    # A long retire time: the SYNs sit in a block the kernel has not handed over yet.
    cap = LiveCapture(Settings(netns=pods.node), retire_ms=2000)
    try:
        e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
        syns = [
            raw(e / IP(src=pods.pod_ip(0), dst=pods.node_ip(0)) / TCP(sport=p, dport=9, flags="S"))
            for p in range(6000, 6010)
        ]
        send_frames(pods.pods[0], "eth0", syns)
        batch = cap.poll(0.05)
        assert batch is not None and batch.segments == []  # still in the kernel's block
        start = time.monotonic()
        last = cap.final()
        assert sorted(s.sport for s in last.segments) == list(range(6000, 6010))
        assert time.monotonic() - start < 4.1 + 0.5
        assert cap.final().segments == []  # nothing twice; an empty block costs no wait
        assert time.monotonic() - start < 4.6
    finally:
        cap.close()


def test_a_deleted_pods_last_frames_are_still_read(pods: Pods) -> None:
    cap = LiveCapture(Settings(netns=pods.node), retire_ms=300)
    try:
        i = pods.add_pod()
        wait_for(cap, lambda: len(cap.interfaces()) == 2, 1.0)
        e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
        v4 = IP(src=pods.pod_ip(i), dst=pods.node_ip(i))
        last = [raw(e / v4 / TCP(sport=6100, dport=9, flags=f)) for f in ("S", "FA", "R")]
        send_frames(pods.pods[i], "eth0", last)
        subprocess.run(["ip", "netns", "del", pods.pods[i]], check=True)  # 0 ms after its last frame
        pods.pods[i] = pods.prefix + "gone"
        segs, _ = drain(cap, 0.8)
        assert [(s.sport, s.flags) for s in segs] == [(6100, SYN), (6100, FIN | 0x10), (6100, RST)]
        assert len(cap.interfaces()) == 1
        # The veth's last full message, as its peer goes, names no peer: counted as "peer_gone".
        assert cap.stats().interface_removals == {"peer_gone": 1}
    finally:
        cap.close()


def test_stopping_the_capture_thread_delivers_connections_still_in_the_kernels_block(pods: Pods) -> None:
    # SIGTERM path of the agent: NodeCapture.stop() -> the loop's last LiveCapture.final().  With a
    # 2 s retire time the whole connection is still in the block the kernel is filling at stop.
    from podwire.agent import CollectingSink, NodeCapture
    from podwire.identity import build_service

    settings = Settings(netns=pods.node, kube="off", ring_retire_ms=2000)
    sink = CollectingSink()
    node = NodeCapture(settings, build_service(settings), [sink])
    node.start()
    try:
        time.sleep(0.3)  # the loop is polling
        e = Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff")
        c, s = IP(src=pods.pod_ip(0), dst=pods.node_ip(0)), IP(src=pods.node_ip(0), dst=pods.pod_ip(0))
        conn = [
            c / TCP(sport=6200, dport=80, flags="S", seq=100),
            s / TCP(sport=80, dport=6200, flags="SA", seq=500, ack=101),
            c / TCP(sport=6200, dport=80, flags="FA", seq=101, ack=501) / b"hello",
            s / TCP(sport=80, dport=6200, flags="FA", seq=501, ack=107) / b"hi",
            c / TCP(sport=6200, dport=80, flags="A", seq=107, ack=504),
        ]
        send_frames(pods.pods[0], "eth0", [raw(e / p) for p in conn])
        time.sleep(0.2)
        assert sink.connections == []  # nothing handed over yet
    finally:
        node.stop(time.monotonic() + 6)
    assert [(n.record.bytes_client_to_server, n.record.bytes_server_to_client) for n in sink.connections] == [
        (5, 2)
    ]
