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
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from typing import Any

from podwire import log

_log = log.get("podwire.capture.interfaces")

RTMGRP_LINK = 0x1
ARPHRD_ETHER = 1
_RCVBUF = 1 << 20  # room for a burst of link events (many pods created at once)


@dataclass(frozen=True, slots=True)
class Link:
    ifindex: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: "veth", "bridge", ... None for plain devices
    peer_netnsid: int | None  # IFLA_LINK_NETNSID: set when the peer is in another netns
    hatype: int = ARPHRD_ETHER  # ifi_type: ARPHRD_ETHER, ARPHRD_NONE (tun), ...


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
        if self.veth_only and (link.kind != "veth" or link.peer_netnsid is None):
            return False
        return bool(self.include.search(link.name)) and not self.exclude.search(link.name)


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
    return Link(
        int(msg["index"]),
        str(name),
        kind,
        None if netnsid is None else int(netnsid),
        ARPHRD_ETHER if hatype is None else int(hatype),
    )


class InterfaceWatch:
    """Netlink link discovery; create it in the namespace to watch (the sockets stay there)."""

    def __init__(self, link_filter: LinkFilter) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        self._filter = link_filter
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

    def fileno(self) -> int:
        return self._sock.fileno()

    def initial(self) -> list[LinkChange]:
        """Compare the full link list with what we reported; used at start and after an overflow."""
        seen: dict[int, Link] = {}
        for msg in self._ipr.get_links():
            link = link_from_message(msg)
            if link is not None and self._filter.accepts(link):
                seen[link.ifindex] = link
        changes = [LinkChange(link, False) for idx, link in self._current.items() if idx not in seen]
        changes += [LinkChange(link, True) for idx, link in seen.items() if self._current.get(idx) != link]
        self._current = seen
        return changes

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
        index = int(msg["index"])
        old = self._current.get(index)
        link = link_from_message(msg) if event == "RTM_NEWLINK" else None
        if link is not None and self._filter.accepts(link):
            if old != link:  # new, or renamed (CNIs rename after creating): same ifindex, same ring
                changes.append(LinkChange(link, True))
                self._current[index] = link
        elif old is not None:
            changes.append(LinkChange(old, False))
            del self._current[index]

    def close(self) -> None:
        self._sock.close()
        self._ipr.close()
