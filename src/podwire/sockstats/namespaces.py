"""Which network namespace sits behind which pod veth, and how to enter it.

A pod's host-side veth carries its peer's netnsid (IFLA_LINK_NETNSID): the number the node's
namespace gives the pod's namespace.  A netnsid is not a path, so we find the namespace files and
ask the kernel for each file's netnsid (RTM_GETNSID with NETNSA_FD, asked on a netlink socket of
the node's namespace).  Two places hold namespace files:

* `/run/netns/<name>`: where CNI plugins (containerd, CRI-O) bind-mount pod sandboxes' namespaces.
  The chart mounts the host's /run/netns (read-only, HostToContainer propagation).  No hostPID.
* `/proc/<pid>/ns/net` of the pod sandbox's processes: used for netnsids not found above, and only
  visible when the agent runs with the host's PID namespace (chart: socketStats.hostPID).

Answers are cached by the file's inode (a namespace keeps its inode for its whole life).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from podwire import log

_log = log.get("podwire.sockstats")

DEFAULT_NETNS_DIR = "/run/netns"
_MAX_CACHE = 65_536  # inodes remembered (cleared when full)
_RTMGRP_LINK = 0x1
_EVENTS_BUF = 1 << 16


class PodLink(NamedTuple):
    """A veth in the node's namespace whose peer lives in another namespace (a pod)."""

    ifindex: int
    peer_netnsid: int


class LinkSource(Protocol):
    """The seam with capture: the pod veths of one node namespace, now."""

    def pod_links(self) -> Sequence[PodLink]: ...

    def close(self) -> None: ...


class NodeNetlink:
    """Netlink in the node namespace: veth listing (a LinkSource) and netnsid queries.

    Create it in the node's namespace (its socket stays there) and use it from that thread only:
    pyroute2 0.9's IPRoute called from another thread talks through a new socket of that thread's
    namespace (seen here: the node's veths listed from another thread came back empty).
    `include`/`exclude` are the capture's interface name patterns, so both see the same pods."""

    def __init__(self, include: str = r".*", exclude: str = r"^$") -> None:
        from pyroute2 import IPRoute

        self._include = re.compile(include)
        self._exclude = re.compile(exclude)
        # Link events, joined before the first listing: the listing is read again only after one
        # came (pyroute2's listing cost ~0.7 ms per link each round, measured: 15 ms at 20 pods).
        self._events = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )
        self._events.bind((0, _RTMGRP_LINK))
        self._ipr: Any = IPRoute()
        self._links: list[PodLink] | None = None
        self.listings = 0  # times the links were listed

    def pod_links(self) -> list[PodLink]:
        """The pod veths now: listed again only when a link event came since the last listing."""
        if self._changed() or self._links is None:
            self._links = self._list()
            self.listings += 1
        return self._links

    def _changed(self) -> bool:
        changed = False
        while True:
            try:
                self._events.recv(_EVENTS_BUF)
            except BlockingIOError:
                return changed
            except OSError as exc:  # ENOBUFS: events were lost, so something changed
                if exc.errno != errno.ENOBUFS:
                    raise
            changed = True

    def _list(self) -> list[PodLink]:
        links: list[PodLink] = []
        for msg in self._ipr.get_links():
            info = msg.get("IFLA_LINKINFO")
            nsid = msg.get("IFLA_LINK_NETNSID")
            if nsid is None or info is None or info.get("IFLA_INFO_KIND") != "veth":
                continue
            name = str(msg.get("ifname") or "")
            if not self._include.search(name) or self._exclude.search(name):
                continue
            links.append(PodLink(int(msg["index"]), int(nsid)))
        return links

    def netnsid_of(self, fd: int) -> int | None:
        """The node namespace's id for the namespace open at `fd` (None: it has none)."""
        answer = self._ipr.get_netnsid(fd=fd)
        nsid = None if answer is None else answer.get("nsid")
        return None if nsid is None or nsid < 0 else int(nsid)

    def close(self) -> None:
        self._ipr.close()
        self._events.close()


class NamespaceFinder:
    """netnsid -> path of a namespace file, found under `netns_dir`, else under `/proc`."""

    def __init__(self, netlink: NodeNetlink, netns_dir: str = DEFAULT_NETNS_DIR, proc: str = "/proc") -> None:
        self._netlink = netlink
        self._netns_dir = netns_dir
        self._proc = proc
        self._by_inode: dict[tuple[int, int], int | None] = {}  # (dev, ino) -> netnsid

    def find(self, wanted: set[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        self._scan(self._named(), wanted, found)
        if len(found) < len(wanted):
            self._scan(self._processes(), wanted, found)
        return found

    def _named(self) -> Iterator[str]:
        try:
            names = os.listdir(self._netns_dir)
        except OSError:
            return
        for name in names:
            yield os.path.join(self._netns_dir, name)

    def _processes(self) -> Iterator[str]:
        try:
            names = os.listdir(self._proc)
        except OSError:
            return
        for name in names:
            if name.isdigit():
                yield f"{self._proc}/{name}/ns/net"

    def _scan(self, paths: Iterator[str], wanted: set[int], found: dict[int, str]) -> None:
        cache = self._by_inode
        for path in paths:
            if len(found) == len(wanted):
                return
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone, or not ours to see
            key = (st.st_dev, st.st_ino)
            if key not in cache:
                if len(cache) >= _MAX_CACHE:
                    cache.clear()
                cache[key] = self._ask(path)
            nsid = cache[key]
            if nsid is not None and nsid in wanted and nsid not in found:
                found[nsid] = path

    def _ask(self, path: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return self._netlink.netnsid_of(fd)
        except Exception:  # not a namespace file, or the kernel said no: not a pod of ours
            return None
        finally:
            os.close(fd)


class LeaveError(RuntimeError):
    """The thread could not return to its own namespace (fatal for the sampler, unlike OSError)."""


@contextlib.contextmanager
def entered(path: str, home: int) -> Iterator[None]:
    """Run the body in the namespace at `path` (this thread only), then return to `home` (an fd of
    the thread's own namespace) whatever happens.  Raises OSError if the namespace is gone."""
    from pyroute2.netns import setns

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError: deleted since it was found
    try:
        setns(fd, flags=0)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        try:
            setns(home, flags=0)
        except OSError as exc:  # never carry on in a pod's namespace
            raise LeaveError(f"cannot return to the agent's network namespace: {exc}") from exc
