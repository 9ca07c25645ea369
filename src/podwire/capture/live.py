"""Live capture on every pod interface of one network namespace: one socket, one ring, one epoll.

One AF_PACKET socket listens on every interface of the namespace, with one TPACKET_V3 ring whose
size does not depend on the number of pods.  The kernel filter (capture/prelude.py) checks the
frame's interface against the current pod interfaces before the libpcap program for its link
type, so traffic on other interfaces (eth0, the bridge, lo) never reaches Python.  A netlink
event that adds or removes a pod interface rebuilds the filter and swaps it atomically; nothing
is opened or closed per pod, so a deleted pod's last frames stay in the ring and are read.

`LiveCapture.poll(timeout)` waits on one selector holding the ring socket and the netlink socket.
`final()` (at stop) lets the kernel hand over the block it is filling and reads it, so the last
~`ring_retire_ms` of traffic is not thrown away.

With `settings.netns` the sockets (ring and netlink) are created inside that named namespace;
the caller's thread returns to its own namespace at once and the sockets stay behind.

`poll()` belongs to one thread; `stats()` and `interfaces()` may be called from any other (the
agent's /metrics and health views): a lock guards the interface table and the kernel counters,
taken once per change or snapshot, never per packet.
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
from podwire.capture.afpacket import ARPHRD_ETHER, Decode, RingSocket
from podwire.capture.bpf import LINKTYPE_ETHERNET, LINKTYPE_RAW, BpfProgram, FilterOptions, compile_program
from podwire.capture.decode import Decoder
from podwire.capture.dns import REJECT_UNSOLICITED, REJECT_UNTRUSTED, DnsGuard, resolv_conf_nameservers
from podwire.capture.handshake import FILTER_PARTS, SNAPLEN_TLS
from podwire.capture.interfaces import InterfaceWatch, Link, LinkChange, LinkFilter
from podwire.capture.prelude import per_interface
from podwire.config import Settings
from podwire.model import Batch, Segment

_log = log.get("podwire.capture.live")

_STATS_EVERY_S = 1.0  # PACKET_STATISTICS read at most this often from poll()
_PAGE = mmap.PAGESIZE
_FINAL_POLL_S = 0.005  # how often final() looks whether the kernel handed the last block over

# ifi_type -> the pcap link type the kernel hands SOCK_RAW readers (and the filter is compiled for).
_LINKTYPE_BY_HATYPE = {
    ARPHRD_ETHER: LINKTYPE_ETHERNET,  # veth, bridge, physical
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
    packets: int  # frames read from the ring (all passed the kernel filter)
    segments: int  # TCP control segments decoded
    kernel_packets: int  # frames the kernel matched (PACKET_STATISTICS tp_packets, incl. drops)
    kernel_drops: int  # frames the kernel could not put in the ring (PACKET_STATISTICS tp_drops)
    decode_errors: int  # truncated, malformed or unknown-link frames
    dns_answers: int
    dns_rejected: dict[str, int]  # reason (untrusted, unsolicited) -> answers not used
    interfaces: int  # pod interfaces in the kernel filter now
    interfaces_opened: int  # pod interfaces added to the filter since start
    interfaces_closed: int  # ... and removed from it
    open_failures: int  # interfaces that could not be captured (link type) or filter swaps refused
    netlink_events: int
    interface_removals: dict[str, int]  # reason -> candidates removed (capture/interfaces.py REMOVED_*)
    filter_swaps: int  # kernel filter replacements (one per netlink batch that changed the set)
    ring_bytes: int = 0  # bytes the kernel wrote into the ring: frames as the filter cut them + headers


class LiveCapture:
    """`PacketSource` over one AF_PACKET ring on every candidate interface of one namespace."""

    def __init__(
        self, settings: Settings, *, retire_ms: int | None = None, program: BpfProgram | None = None
    ) -> None:
        if settings.ring_block_kib * 1024 % _PAGE:
            raise ValueError(f"ring_block_kib must be a multiple of the page size ({_PAGE // 1024} KiB)")
        self._settings = settings
        self._retire_ms = settings.ring_retire_ms if retire_ms is None else retire_ms
        guard = None
        if settings.dns_names:
            resolvers = settings.dns_resolvers
            guard = DnsGuard.from_addresses(resolvers if resolvers is not None else resolv_conf_nameservers())
        self._decoder = Decoder(dns=settings.dns_names, tls=settings.tls, dns_guard=guard)
        # Decided once: one filter and one decoder per link type (Ethernet for veths).
        options = FilterOptions(
            dns_answers=settings.dns_names,
            dns_queries=settings.dns_names,
            extra_parts=FILTER_PARTS if settings.tls else (),
            extra_snaplen=SNAPLEN_TLS,  # only handshake frames get the long copy (bpf.py: stages)
        )
        self._programs: dict[int, BpfProgram] = {
            LINKTYPE_ETHERNET: program or compile_program(options),
            LINKTYPE_RAW: compile_program(options, linktype=LINKTYPE_RAW),
        }
        by_linktype: dict[int, Decode] = {
            LINKTYPE_ETHERNET: self._decoder.ethernet,
            LINKTYPE_RAW: self._decoder.raw,
        }
        self._decoders = {hatype: by_linktype[lt] for hatype, lt in _LINKTYPE_BY_HATYPE.items()}
        self._filter = LinkFilter.from_patterns(
            settings.interface_include, settings.interface_exclude, settings.veth_only
        )
        self._links: dict[int, Link] = {}  # ifindex -> pod interface in the kernel filter
        self._in_filter: dict[int, int] = {}  # ifindex -> link type, as the kernel filter has it
        self._packets = 0
        self._opened = 0
        self._removed = 0
        self._open_failures = 0
        self._filter_swaps = 0
        self._last_stats = 0.0
        self._closed = False
        self._lock = threading.Lock()  # interface table + kernel counters (see module docstring)
        self._sel = selectors.EpollSelector()
        with netns.inside(settings.netns):
            self._watch = InterfaceWatch(self._filter, settings.netns)
            try:
                # Bound to every interface with a filter that drops all until the first swap.
                self._ring = RingSocket(
                    self._program({}),
                    block_kib=settings.ring_block_kib,
                    blocks=settings.ring_blocks,
                    retire_ms=self._retire_ms,
                )
            except BaseException:
                self._watch.close()
                raise
        try:
            self._sel.register(self._watch.fileno(), selectors.EVENT_READ, None)
            self._sel.register(self._ring.fileno(), selectors.EVENT_READ, self._ring)
            self._apply(self._watch.initial())
        except BaseException:
            self.close()
            raise

    # ---- PacketSource ----------------------------------------------------------------------

    def poll(self, timeout: float) -> Batch | None:
        if self._closed:
            return None
        segments: list[Segment] = []
        for key, _mask in self._sel.select(timeout):
            if key.data is None:
                self._apply(self._watch.events())
            elif key.data is self._ring:
                self._packets += self._ring.drain(
                    self._decoders, segments, self._settings.ring_blocks, self._decoder.stats
                )
        now = time.monotonic()
        if now - self._last_stats >= _STATS_EVERY_S:
            self._last_stats = now
            self._read_kernel_stats()
        return Batch(segments, self._decoder.take_dns(), self._decoder.take_tls())

    def final(self) -> Batch:
        """At stop: the frames still in the ring, including the block the kernel is filling.

        The kernel hands a partly filled block over only when its retire timer fires (within
        2 x retire_ms); wait for that, bounded, and read it, so that nothing captured is lost.
        """
        segments: list[Segment] = []
        if self._closed:
            return Batch(segments, [], [])
        ring = self._ring
        deadline = time.monotonic() + 2 * self._retire_ms / 1000 + 0.05
        while True:
            self._packets += ring.drain(self._decoders, segments, 0, self._decoder.stats)
            if not ring.pending() or time.monotonic() >= deadline:
                break
            while not ring.ready() and time.monotonic() < deadline:
                time.sleep(_FINAL_POLL_S)
        return Batch(segments, self._decoder.take_dns(), self._decoder.take_tls())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sel.close()
        self._watch.close()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            with self._lock:
                ring.close()

    # ---- introspection ---------------------------------------------------------------------

    def interfaces(self) -> list[CapturedInterface]:
        with self._lock:
            return [CapturedInterface(link.ifindex, link.name) for link in self._links.values()]

    def stats(self) -> CaptureStats:
        self._read_kernel_stats()
        d = self._decoder.stats
        with self._lock:
            kernel_packets, kernel_drops = self._ring.kernel_packets, self._ring.drops
            interfaces = len(self._links)
        return CaptureStats(
            packets=self._packets,
            segments=d.segments,
            kernel_packets=kernel_packets,
            kernel_drops=kernel_drops,
            decode_errors=d.errors + self._ring.unknown_link,
            dns_answers=self._decoder.dns_stats.answers,
            dns_rejected={
                REJECT_UNTRUSTED: self._decoder.dns_stats.rejected_untrusted,
                REJECT_UNSOLICITED: self._decoder.dns_stats.rejected_unsolicited,
            },
            interfaces=interfaces,
            interfaces_opened=self._opened,
            interfaces_closed=self._removed,
            open_failures=self._open_failures,
            netlink_events=self._watch.events_seen,
            interface_removals=dict(self._watch.removals),
            filter_swaps=self._filter_swaps,
            ring_bytes=self._ring.ring_bytes,
        )

    @property
    def decoder(self) -> Decoder:
        return self._decoder

    # ---- internals -------------------------------------------------------------------------

    def _read_kernel_stats(self) -> None:
        with self._lock:
            if not self._closed:
                with contextlib.suppress(OSError):
                    self._ring.read_stats()

    def _program(self, in_filter: dict[int, int]) -> BpfProgram:
        groups = [
            ([i for i, lt in in_filter.items() if lt == linktype], prog.instructions)
            for linktype, prog in self._programs.items()
        ]
        eth = self._programs[LINKTYPE_ETHERNET]
        return BpfProgram(f"ifindex in pods: {eth.expression}", per_interface(groups), eth.snaplen)

    def _apply(self, changes: list[LinkChange]) -> None:
        if not changes:
            return
        with self._lock:
            for change in changes:
                link = change.link
                if not change.added:
                    if self._links.pop(link.ifindex, None) is not None:
                        self._removed += 1
                        _log.info("stopped capturing interface", interface=link.name, ifindex=link.ifindex)
                elif link.hatype not in _LINKTYPE_BY_HATYPE:
                    self._open_failures += 1
                    _log.warning(
                        "cannot capture interface: unsupported link type",
                        interface=link.name,
                        hatype=link.hatype,
                    )
                else:
                    if link.ifindex not in self._links:
                        self._opened += 1
                        _log.info("capturing interface", interface=link.name, ifindex=link.ifindex)
                    self._links[link.ifindex] = link  # new, or a rename (same ifindex, same capture)
            wanted = {i: _LINKTYPE_BY_HATYPE[link.hatype] for i, link in self._links.items()}
        if wanted == self._in_filter:
            return
        try:
            self._ring.set_filter(self._program(wanted))
        except (OSError, ValueError) as exc:  # too many interfaces for one program, or no memory
            self._open_failures += 1
            _log.error("cannot update the capture filter; keeping the previous one", error=str(exc))
            return
        self._in_filter = wanted
        self._filter_swaps += 1
