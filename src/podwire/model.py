"""Value types that cross from room to room.

capture -> Segment -> tracker -> ConnectionOpened / ConnectionRecord -> identity -> NamedConnection
-> telemetry / views.  Nothing here does I/O; every type is immutable or slotted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Protocol

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


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """The server answered the SYN (SYN-ACK seen)."""

    point: int
    client: Endpoint
    server: Endpoint
    start_time: float
    handshake_rtt_s: float | None
    client_isn: int
    server_isn: int
    observed_side: Side | None


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
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


ConnectionEvent = ConnectionOpened | ConnectionRecord


class IdentityKind(enum.StrEnum):
    POD = "pod"
    SERVICE = "service"
    NODE = "node"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who held an address.  `name` is the pod, service, node or external name."""

    kind: IdentityKind
    name: str
    namespace: str | None = None
    workload: str | None = None
    workload_kind: str | None = None  # Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, Pod
    node: str | None = None
    host_network: bool = False

    @property
    def workload_name(self) -> str:
        """The name an edge is drawn with: the workload for pods, else the name."""
        return self.workload or self.name


UNKNOWN_EXTERNAL = Identity(kind=IdentityKind.EXTERNAL, name="external")


@dataclass(frozen=True, slots=True)
class NamedConnection:
    record: ConnectionRecord
    client: Identity
    server: Identity


class Resolver(Protocol):
    """IP address -> who held it at a given time (identity room)."""

    def resolve(self, address: str, at: float | None) -> Identity: ...


class Sink(Protocol):
    """Where named connections go (telemetry, views)."""

    def on_opened(self, event: ConnectionOpened, client: Identity, server: Identity) -> None: ...

    def on_connection(self, conn: NamedConnection) -> None: ...


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


class PacketSource(Protocol):
    """Live capture or a pcap file; both yield the same batches."""

    def poll(self, timeout: float) -> Batch | None:
        """Wait up to `timeout` s for packets; None once the source is exhausted (end of file)."""
        ...

    def close(self) -> None: ...
