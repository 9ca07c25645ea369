"""Live capture on every pod interface: one thread, one epoll, many rings.

`LiveCapture.poll(timeout)` waits on one selector holding every ring socket and the netlink
socket.  A readable ring is drained in place; a readable netlink socket opens a ring for each
new pod interface and drains then closes the ring of each removed one (so the last FIN/RST of
a deleted pod is not lost).  Nothing runs in a thread of its own.

With `settings.netns` every socket (rings and netlink) is created inside that named namespace;
the caller's thread returns to its own namespace at once and the sockets stay behind.

`poll()` belongs to one thread; `stats()` and `interfaces()` may be called from any other (the
agent's /metrics and health views): a lock guards the ring table and the kernel counters, taken
once per change or snapshot, never per packet.
"""

from __future__ import annotations

import contextlib
import mmap
import selectors
import threading
import time
from dataclasses import dataclass

from podwire import log
from podwire.capture import netns
from podwire.capture.afpacket import Decode, RingSocket
from podwire.capture.bpf import LINKTYPE_ETHERNET, LINKTYPE_RAW, BpfProgram, FilterOptions, compile_program
from podwire.capture.decode import Decoder, DecodeStats
from podwire.capture.handshake import FILTER_PARTS, SNAPLEN_TLS
from podwire.capture.interfaces import InterfaceWatch, Link, LinkChange, LinkFilter
from podwire.config import Settings
from podwire.model import Batch, Segment

_log = log.get("podwire.capture.live")

_STATS_EVERY_S = 1.0  # PACKET_STATISTICS read at most this often from poll()
_PAGE = mmap.PAGESIZE

# ifi_type -> the pcap link type the kernel hands SOCK_RAW readers (and the filter is compiled for).
_LINKTYPE_BY_HATYPE = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER: veth, bridge, physical
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK: lo carries a zeroed Ethernet header
    65534: LINKTYPE_RAW,  # ARPHRD_NONE: tun, WireGuard
    519: LINKTYPE_RAW,  # ARPHRD_RAWIP
}


@dataclass(frozen=True, slots=True)
class CapturedInterface:
    ifindex: int
    name: str


@dataclass(frozen=True, slots=True)
class CaptureStats:
    packets: int  # frames read from the rings (all passed the kernel filter)
    segments: int  # TCP control segments decoded
    kernel_packets: int  # frames the kernel matched (PACKET_STATISTICS tp_packets, incl. drops)
    kernel_drops: int  # frames the kernel could not put in a ring (PACKET_STATISTICS tp_drops)
    decode_errors: int  # truncated, malformed or unknown-link frames
    dns_answers: int
    interfaces: int  # rings open now
    interfaces_opened: int
    interfaces_closed: int
    open_failures: int
    netlink_events: int
    interface_removals: dict[str, int]  # reason -> candidates removed (capture/interfaces.py REMOVED_*)


class LiveCapture:
    """`PacketSource` over AF_PACKET rings on every candidate interface of one namespace."""

    def __init__(
        self, settings: Settings, *, retire_ms: int | None = None, program: BpfProgram | None = None
    ) -> None:
        if settings.ring_block_kib * 1024 % _PAGE:
            raise ValueError(f"ring_block_kib must be a multiple of the page size ({_PAGE // 1024} KiB)")
        self._settings = settings
        self._retire_ms = settings.ring_retire_ms if retire_ms is None else retire_ms
        self._decoder = Decoder(dns=settings.dns_names, tls=settings.tls)
        # Decided once: one filter and one decoder per link type (Ethernet for veths).
        options = FilterOptions(
            dns_answers=settings.dns_names, extra_parts=FILTER_PARTS if settings.tls else ()
        )
        snaplen = SNAPLEN_TLS if settings.tls else None  # one accept length for the whole program
        self._programs: dict[int, BpfProgram] = {
            LINKTYPE_ETHERNET: program or compile_program(options, snaplen),
            LINKTYPE_RAW: compile_program(options, snaplen, linktype=LINKTYPE_RAW),
        }
        self._decoders: dict[int, Decode] = {
            LINKTYPE_ETHERNET: self._decoder.ethernet,
            LINKTYPE_RAW: self._decoder.raw,
        }
        self._ring_decode: dict[int, Decode] = {}  # ifindex -> decoder for its link type
        # ifindex -> the decoder's stats if the ring may decode Ethernet IPv4 inline (RingSocket.drain)
        self._ring_inline: dict[int, DecodeStats | None] = {}
        self._filter = LinkFilter.from_patterns(
            settings.interface_include, settings.interface_exclude, settings.veth_only
        )
        self._rings: dict[int, RingSocket] = {}
        self._closed_drops = 0  # drops and packets of rings already closed
        self._closed_kernel_packets = 0
        self._packets = 0
        self._opened = 0
        self._removed = 0
        self._open_failures = 0
        self._last_stats = 0.0
        self._closed = False
        self._lock = threading.Lock()  # ring table + kernel counters (see module docstring)
        self._sel = selectors.EpollSelector()
        with netns.inside(settings.netns):
            self._watch = InterfaceWatch(self._filter)
        try:
            self._sel.register(self._watch.fileno(), selectors.EVENT_READ, None)
            pending: list[Segment] = []
            self._apply(self._watch.initial(), pending)
        except BaseException:
            self.close()
            raise

    # ---- PacketSource ----------------------------------------------------------------------

    def poll(self, timeout: float) -> Batch | None:
        if self._closed:
            return None
        segments: list[Segment] = []
        for key, _mask in self._sel.select(timeout):
            ring = key.data
            if ring is None:
                self._apply(self._watch.events(), segments)
            elif ring.ifindex in self._rings:  # not closed by a netlink event earlier in this loop
                ifindex = ring.ifindex
                self._packets += ring.drain(
                    self._ring_decode[ifindex],
                    segments,
                    self._settings.ring_blocks,
                    self._ring_inline[ifindex],
                )
        now = time.monotonic()
        if now - self._last_stats >= _STATS_EVERY_S:
            self._last_stats = now
            self._read_kernel_stats()
        return Batch(segments, self._decoder.take_dns(), self._decoder.take_tls())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ring in list(self._rings.values()):
            self._close_ring(ring, [])
        self._watch.close()
        self._sel.close()

    # ---- introspection ---------------------------------------------------------------------

    def interfaces(self) -> list[CapturedInterface]:
        with self._lock:
            return [CapturedInterface(r.ifindex, r.name) for r in self._rings.values()]

    def stats(self) -> CaptureStats:
        self._read_kernel_stats()
        d = self._decoder.stats
        with self._lock:
            rings = list(self._rings.values())
            kernel_packets = self._closed_kernel_packets + sum(r.kernel_packets for r in rings)
            kernel_drops = self._closed_drops + sum(r.drops for r in rings)
        return CaptureStats(
            packets=self._packets,
            segments=d.segments,
            kernel_packets=kernel_packets,
            kernel_drops=kernel_drops,
            decode_errors=d.errors,
            dns_answers=self._decoder.dns_stats.answers,
            interfaces=len(rings),
            interfaces_opened=self._opened,
            interfaces_closed=self._removed,
            open_failures=self._open_failures,
            netlink_events=self._watch.events_seen,
            interface_removals=dict(self._watch.removals),
        )

    @property
    def decoder(self) -> Decoder:
        return self._decoder

    # ---- internals -------------------------------------------------------------------------

    def _read_kernel_stats(self) -> None:
        with self._lock:
            for ring in self._rings.values():
                with contextlib.suppress(OSError):
                    ring.read_stats()

    def _apply(self, changes: list[LinkChange], segments: list[Segment]) -> None:
        for change in changes:
            if change.added:
                self._open(change.link)
            else:
                ring = self._rings.get(change.link.ifindex)
                if ring is not None:
                    self._close_ring(ring, segments)

    def _open(self, link: Link) -> None:
        known = self._rings.get(link.ifindex)
        if known is not None:
            with self._lock:
                known.name = link.name  # a rename: the ring is bound to the ifindex and stays
            return
        linktype = _LINKTYPE_BY_HATYPE.get(link.hatype)
        if linktype is None:
            self._open_failures += 1
            _log.warning(
                "cannot capture interface: unsupported link type", interface=link.name, hatype=link.hatype
            )
            return
        try:
            with netns.inside(self._settings.netns):
                ring = RingSocket(
                    link.ifindex,
                    link.name,
                    self._programs[linktype],
                    block_kib=self._settings.ring_block_kib,
                    blocks=self._settings.ring_blocks,
                    retire_ms=self._retire_ms,
                )
        except OSError as exc:  # gone again already, or out of memory for the ring
            self._open_failures += 1
            _log.warning(
                "cannot capture interface", interface=link.name, ifindex=link.ifindex, error=str(exc)
            )
            return
        with self._lock:
            self._rings[link.ifindex] = ring
        self._ring_decode[link.ifindex] = self._decoders[linktype]
        self._ring_inline[link.ifindex] = self._decoder.stats if linktype == LINKTYPE_ETHERNET else None
        self._sel.register(ring.fileno(), selectors.EVENT_READ, ring)
        self._opened += 1
        _log.info("capturing interface", interface=link.name, ifindex=link.ifindex)

    def _close_ring(self, ring: RingSocket, segments: list[Segment]) -> None:
        # Frames already in the ring are the connection's last words: read them first.
        self._packets += ring.drain(
            self._ring_decode.pop(ring.ifindex), segments, 0, self._ring_inline.pop(ring.ifindex)
        )
        self._sel.unregister(ring.fileno())
        with self._lock:
            ring.close()
            self._closed_drops += ring.drops
            self._closed_kernel_packets += ring.kernel_packets
            del self._rings[ring.ifindex]
        self._removed += 1
        _log.info("stopped capturing interface", interface=ring.name, ifindex=ring.ifindex)
