"""Value types that cross from room to room.

capture -> Segment (+ TlsChunk) -> tracker (+ tls assembler) -> ConnectionOpened / ConnectionRecord
-> identity -> NamedConnection -> telemetry / views.  Nothing here does I/O; every type is immutable
or slotted.

The types built once per connection on the hot path (Endpoint, ConnectionOpened,
ConnectionRecord, NamedConnection) are frozen `msgspec.Struct`s: construction is ~0.1-0.2 us
where a frozen dataclass's __init__ costs ~3 us (one object.__setattr__ per field), and they
encode straight to JSON.  `gc=False`: they hold only strings, numbers, enums and other values,
never a cycle, so the collector need not track one more object per connection.  A changed copy
is `msgspec.structs.replace(record, field=...)`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import msgspec

# TCP flag bits as they sit in the 14th byte of the TCP header.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
CONTROL = FIN | SYN | RST


class Segment(NamedTuple):
    """One TCP control segment (SYN, FIN or RST) as seen at a capture point.

    Addresses stay packed (4 or 16 bytes) on the hot path; they are turned into
    text once per connection, not once per packet.
    """

    ts: float  # unix seconds from the capture
    point: int  # capture point id (interface index; 0 for a pcap file)
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload_len: int
    # True: sent by the workload behind the capture interface (received on its host-side veth);
    # False: sent towards it; None: unknown (pcap replay).
    from_local: bool | None = None


class TlsChunk(NamedTuple):
    """The payload of a TCP segment that starts (or continues) a clear-text TLS handshake.

    The kernel filter passes only segments whose payload starts a handshake record, so these are
    a few per TLS connection; the payload is copied out of the ring (bounded by the snap length).
    """

    ts: float
    point: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What the clear-text TLS handshake of one connection showed (nothing is decrypted).

    Names as Wireshark and IANA write them: `version` "TLS 1.2"/"TLS 1.3", `cipher`
    "TLS_AES_128_GCM_SHA256"; unknown codes as hex ("0x7a7a").  `alpn` is the protocol the server
    chose (None when not visible: TLS 1.3 sends it in the encrypted EncryptedExtensions).
    Certificate fields come from the leaf of a TLS <= 1.2 Certificate message (or the prober).
    """

    server_name: str | None = None
    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    client_alpn: tuple[str, ...] = ()  # what the client offered
    client_versions: tuple[str, ...] = ()  # supported_versions offered (GREASE left out)
    client_ciphers: tuple[str, ...] = ()  # cipher suites offered, in the client's order (GREASE left out)
    ja3: str | None = None
    ja3s: str | None = None
    ja4: str | None = None
    certificate_not_before: float | None = None  # unix seconds
    certificate_not_after: float | None = None  # unix seconds
    certificate_subject: str | None = None  # RFC 4514
    certificate_issuer: str | None = None  # RFC 4514
    certificate_sans: tuple[str, ...] = ()  # DNS names and IP addresses
    deprecated: bool = False  # SSL 3.0, TLS 1.0 or TLS 1.1 negotiated


class Outcome(enum.StrEnum):
    CLOSED = "closed"
    RESET = "reset"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    OPEN = "open"


class CloseInitiator(enum.StrEnum):
    CLIENT = "client"
    SERVER = "server"
    BOTH = "both"


class Side(enum.StrEnum):
    """Which end of the connection sits behind the capture point."""

    CLIENT = "client"
    SERVER = "server"


class Endpoint(msgspec.Struct, frozen=True, gc=False):
    address: str
    port: int


class ConnectionOpened(msgspec.Struct, frozen=True, gc=False):
    """The server answered the SYN (SYN-ACK seen)."""

    point: int
    client: Endpoint
    server: Endpoint
    start_time: float
    handshake_rtt_s: float | None
    client_isn: int
    server_isn: int
    observed_side: Side | None


class ConnectionRecord(msgspec.Struct, frozen=True, gc=False):
    """One connection, finished (or still open when the capture ended)."""

    point: int
    client: Endpoint
    server: Endpoint
    network_type: str  # "ipv4" | "ipv6"
    start_time: float | None
    end_time: float | None
    duration_s: float | None
    outcome: Outcome
    close_initiator: CloseInitiator | None
    bytes_client_to_server: int | None
    bytes_server_to_client: int | None
    handshake_rtt_s: float | None
    started_before_capture: bool
    client_guessed: bool  # roles guessed from ports (no SYN or SYN-ACK seen)
    client_isn: int | None
    server_isn: int | None
    observed_side: Side | None
    # from socket stats (None when never sampled, and always in pcap replay); retransmits counts
    # from when counting began: the SYN, or the agent's start for a connection older than it
    rtt_s: float | None = None  # smoothed RTT at the last sample
    min_rtt_s: float | None = None
    retransmits: int | None = None
    tls: TlsInfo | None = None  # the clear-text handshake, when the connection spoke TLS


class ConnectionProgress(NamedTuple):
    """An open connection's counters at a socket-stats sample (cumulative, since counting began:
    the SYN, or the first sample of a connection older than the agent).  The sinks count what
    they have not counted yet; the connection's record still carries the exact totals.
    A NamedTuple: one per open connection per round (5,000 a round cost 4 us each as a frozen
    dataclass, 0.5 us as a tuple)."""

    point: int
    client: Endpoint
    server: Endpoint
    start_time: float | None  # None: open before the agent started
    client_isn: int | None
    server_isn: int | None
    observed_side: Side | None
    ts: float  # when the sample was taken
    bytes_client_to_server: int
    bytes_server_to_client: int
    rtt_s: float  # smoothed RTT
    min_rtt_s: float
    retransmits: int  # segments retransmitted


ConnectionEvent = ConnectionOpened | ConnectionRecord | ConnectionProgress


class IdentityKind(enum.StrEnum):
    POD = "pod"
    SERVICE = "service"
    NODE = "node"
    EXTERNAL = "external"


class Identity(msgspec.Struct, frozen=True, gc=False, cache_hash=True):
    """Who held an address.  `name` is the pod, service, node or external name.

    A frozen Struct with its hash cached: the sinks key per-edge caches by (client, server)
    identities, looked up for every connection; a frozen dataclass hashed its eight fields in
    Python each time (~0.8 us), this hashes once per object (~0.05 us after)."""

    kind: IdentityKind
    name: str
    namespace: str | None = None
    workload: str | None = None
    workload_kind: str | None = None  # Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, Pod
    node: str | None = None
    host_network: bool = False
    # The Service this pod was reached through (a ClusterIP DNATed to it, read from conntrack).
    service: str | None = None

    @property
    def workload_name(self) -> str:
        """The name an edge is drawn with: the workload for pods, else the name."""
        return self.workload or self.name


UNKNOWN_EXTERNAL = Identity(kind=IdentityKind.EXTERNAL, name="external")


class NamedConnection(msgspec.Struct, frozen=True, gc=False):
    record: ConnectionRecord
    client: Identity
    server: Identity


class SocketSample(NamedTuple):
    """One TCP socket in a pod's namespace, read with sock_diag (sockstats -> tracker)."""

    point: int  # the pod's host-side veth ifindex: the capture point the tracker keys it by
    local: bytes  # packed address of the pod's end
    remote: bytes
    lport: int
    rport: int
    local_listens: bool  # a listening socket holds lport: the pod's end is the server
    established: bool  # no FIN yet: the byte counters hold payload only (+1 for the client's SYN)
    bytes_acked: int  # tcpi_bytes_acked: sent and acknowledged
    bytes_received: int  # tcpi_bytes_received
    rtt_us: int  # tcpi_rtt (smoothed)
    min_rtt_us: int  # tcpi_min_rtt
    total_retrans: int  # tcpi_total_retrans: segments retransmitted


class StatsRound(NamedTuple):
    """One sampling round of one node: every pod socket seen at `ts`."""

    ts: float
    samples: list[SocketSample]


class Resolver(Protocol):
    """IP address -> who held it at a given time (identity room)."""

    def resolve(self, address: str, at: float | None) -> Identity: ...


class ServiceBackends(Protocol):
    """Which backend a Service address was DNATed to for one connection (sockstats room)."""

    def backend(self, client: Endpoint, server: Endpoint, client_isn: int | None) -> Endpoint | None: ...


class Sink(Protocol):
    """Where named connections go (telemetry, views)."""

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None: ...

    def on_connection(self, conn: NamedConnection) -> None: ...


class ProgressSink(Protocol):
    """A sink that also wants open connections' progress (an optional method: sinks without it
    are not called)."""

    def on_progress(self, event: ConnectionProgress, client: Identity, server: Identity) -> None: ...


class DnsAnswer(NamedTuple):
    """A name learned from a sniffed DNS answer: `name` resolved to `address` for `ttl` seconds."""

    ts: float
    name: str
    address: str
    ttl: int


class Batch(NamedTuple):
    """What one wake-up of a packet source yields."""

    segments: list[Segment]
    dns: list[DnsAnswer]
    tls: Sequence[TlsChunk] = ()  # handshake payloads (when TLS insight is on)


class PacketSource(Protocol):
    """Live capture or a pcap file; both yield the same batches."""

    def poll(self, timeout: float) -> Batch | None:
        """Wait up to `timeout` s for packets; None once the source is exhausted (end of file)."""
        ...

    def close(self) -> None: ...
