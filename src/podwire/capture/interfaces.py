"""Pod interfaces, found and followed with netlink (pyroute2): no shell, no polling.

`InterfaceWatch` holds a netlink socket bound to the link multicast group (RTMGRP_LINK).  Its fd
goes into the capture loop's selector; when readable, `events()` reads every pending datagram
(non-blocking, until EAGAIN), parses them with pyroute2's rtnetlink marshal and turns
RTM_NEWLINK/RTM_DELLINK into `LinkChange`s.  `initial()` lists the links present now with
pyroute2's IPRoute.get_links().

Why not IPRoute.bind() + get() for the events: pyroute2 0.9 reads the socket from its asyncio
transport, which queues *every* pending datagram while get() returns only one, so the fd stops
being readable while events wait in pyroute2's queue (a removed interface was then noticed only
at the next event).  A plain socket keeps "fd readable" == "events pending".

A candidate is a veth whose peer lives in another network namespace (IFLA_LINK_NETNSID is
present) when `veth_only`, filtered by the include/exclude name patterns.  A veth is often
created with both ends in one namespace and its peer moved afterwards, so every RTM_NEWLINK is
judged again: the interface becomes a candidate when the netnsid appears.

Netlink is noisy, and a lost pod is lost data, so removal is strict.  Only these remove a
candidate: RTM_DELLINK, or a *full* link message (family AF_UNSPEC, with IFLA_LINKINFO, as the
kernel sends for every real link change) that shows it is no longer one (another kind, the peer
back in this namespace, a name now excluded).  Bridge-family (AF_BRIDGE) messages -- STP state,
`bridge link set ... cost` -- and partial messages describe the same ifindex without veth
details; they never remove (round 1 took them for removals and lost every bridged pod).  Every
removal is logged with its reason and counted in `removals`.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from typing import Any

from podwire import log
from podwire.capture import netns

_log = log.get("podwire.capture.interfaces")

RTMGRP_LINK = 0x1
ARPHRD_ETHER = 1
AF_UNSPEC = 0

# Why a candidate stopped being one (the `reason` of the removal counter).
REMOVED_DELETED = "deleted"  # RTM_DELLINK (deleted, or moved to another namespace)
REMOVED_NOT_VETH = "not_veth"  # a full message of another link kind
REMOVED_PEER_LOCAL = "peer_local"  # a full veth message: the peer is in this namespace now
REMOVED_PEER_GONE = "peer_gone"  # a full veth message without a peer: its pod is being deleted
REMOVED_EXCLUDED = "name_excluded"  # renamed to a name the patterns exclude
REMOVED_RELIST = "relist"  # missing from the link list read again after a netlink overflow
_RCVBUF = 1 << 20  # room for a burst of link events (many pods created at once)


@dataclass(frozen=True, slots=True)
class Link:
    ifindex: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: "veth", "bridge", ... None for plain devices
    peer_netnsid: int | None  # IFLA_LINK_NETNSID: set when the peer is in another netns
    hatype: int = ARPHRD_ETHER  # ifi_type: ARPHRD_ETHER, ARPHRD_NONE (tun), ...
    peer_ifindex: int | None = None  # IFLA_LINK: a veth's peer (0 once the peer is gone)


@dataclass(frozen=True, slots=True)
class LinkChange:
    """`link` became a candidate or changed name (added=True), or stopped being one (added=False)."""

    link: Link
    added: bool


@dataclass(frozen=True, slots=True)
class LinkFilter:
    include: re.Pattern[str]
    exclude: re.Pattern[str]
    veth_only: bool

    @classmethod
    def from_patterns(cls, include: str, exclude: str, veth_only: bool) -> LinkFilter:
        return cls(re.compile(include), re.compile(exclude), veth_only)

    def accepts(self, link: Link) -> bool:
        return self.rejection(link) is None

    def rejection(self, link: Link) -> str | None:
        """Why `link` is no candidate (a REMOVED_* reason), or None if it is one."""
        if self.veth_only:
            if link.kind != "veth":
                return REMOVED_NOT_VETH
            if link.peer_netnsid is None:
                return REMOVED_PEER_GONE if link.peer_ifindex == 0 else REMOVED_PEER_LOCAL
        if self.include.search(link.name) and not self.exclude.search(link.name):
            return None
        return REMOVED_EXCLUDED


def is_full(msg: Any) -> bool:
    """A complete link description (AF_UNSPEC with IFLA_LINKINFO): enough to prove a removal."""
    return (
        msg.get("family", AF_UNSPEC) == AF_UNSPEC
        and msg.get("IFLA_LINKINFO") is not None
        and bool(msg.get("ifname"))
    )


def link_from_message(msg: Any) -> Link | None:
    """A pyroute2 ifinfmsg -> Link (None if it carries no name, e.g. a partial message)."""
    name = msg.get("ifname")
    if not name:
        return None
    kind = None
    info = msg.get("IFLA_LINKINFO")
    if info is not None:
        kind = info.get("IFLA_INFO_KIND")
    netnsid = msg.get("IFLA_LINK_NETNSID")
    hatype = msg.get("ifi_type")
    peer = msg.get("IFLA_LINK")
    return Link(
        int(msg["index"]),
        str(name),
        kind,
        None if netnsid is None else int(netnsid),
        ARPHRD_ETHER if hatype is None else int(hatype),
        None if peer is None else int(peer),
    )


class InterfaceWatch:
    """Netlink link discovery; create it in the namespace to watch (the sockets stay there)."""

    def __init__(self, link_filter: LinkFilter, namespace: str | None = None) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        self._filter = link_filter
        self._namespace = namespace  # where the listing must run (None: this one)
        # Subscribe before the first listing, so no event falls between the two.
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            self._sock.bind((0, RTMGRP_LINK))
            self._ipr = IPRoute()
        except BaseException:
            self._sock.close()
            raise
        self._marshal = MarshalRtnl()
        self._current: dict[int, Link] = {}  # candidates we reported as added
        self.events_seen = 0
        self.resyncs = 0
        self.removals: dict[str, int] = {}  # reason -> candidates removed for it

    def fileno(self) -> int:
        return self._sock.fileno()

    def initial(self) -> list[LinkChange]:
        """Compare the full link list with what we reported; used at start and after an overflow."""
        seen: dict[int, Link] = {}
        # pyroute2 0.9 opens its socket per calling thread, in that thread's namespace: a re-list from
        # the capture thread (after an overflow) would otherwise list the host's links, not the node's.
        with netns.inside(self._namespace):
            msgs = list(self._ipr.get_links())
        for msg in msgs:
            link = link_from_message(msg)
            if link is not None and self._filter.accepts(link):
                seen[link.ifindex] = link
        changes: list[LinkChange] = []
        for idx, link in self._current.items():
            if idx not in seen:
                self._removed(link, REMOVED_RELIST, changes)
        changes += [LinkChange(link, True) for idx, link in seen.items() if self._current.get(idx) != link]
        self._current = seen
        return changes

    def _removed(self, link: Link, reason: str, changes: list[LinkChange]) -> None:
        self.removals[reason] = self.removals.get(reason, 0) + 1
        _log.info("interface removed", interface=link.name, ifindex=link.ifindex, reason=reason)
        changes.append(LinkChange(link, False))

    def events(self) -> list[LinkChange]:
        """Read every pending netlink datagram (call when the fd is readable)."""
        changes: list[LinkChange] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped events: list everything again (after draining the rest).
                _log.warning("netlink overflow, relisting links")
                self.resyncs += 1
                self._drain_quietly()
                return changes + self.initial()
            for msg in self._marshal.parse(data):
                self._judge(msg, changes)
        return changes

    def _drain_quietly(self) -> None:
        while True:
            try:
                self._sock.recv(65536)
            except OSError:
                return

    def _judge(self, msg: Any, changes: list[LinkChange]) -> None:
        event = msg.get("event")
        if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
            return
        self.events_seen += 1
        if msg.get("family", AF_UNSPEC) != AF_UNSPEC:
            return  # AF_BRIDGE port state and the like: the same ifindex, no veth details
        index = int(msg["index"])
        old = self._current.get(index)
        if event == "RTM_DELLINK":
            if old is not None:
                del self._current[index]
                self._removed(old, REMOVED_DELETED, changes)
            return
        link = link_from_message(msg)
        if link is None:
            return
        reason = self._filter.rejection(link)
        if reason is None:
            if old != link:  # new, or renamed (CNIs rename after creating): same ifindex
                changes.append(LinkChange(link, True))
                self._current[index] = link
        elif old is not None and is_full(msg):  # only a complete description proves a removal
            del self._current[index]
            self._removed(old, reason, changes)

    def close(self) -> None:
        self._sock.close()
        self._ipr.close()
