"""The socket-stats worker: every interval, one sock_diag dump per local pod namespace.

    sampler = Sampler([NodeTarget(None, deliver)], interval_s=10.0)
    sampler.start()        # a worker thread of its own: never the capture thread
    ...
    sampler.stop(deadline)

Per round and node namespace: list the pod veths (`LinkSource`), map each peer netnsid to a
namespace file (`NamespaceFinder`), then per pod: enter its namespace in this thread, create the
sock_diag socket there, return to the agent's own namespace at once (always, also on error), dump
over the socket (it stays bound to the pod's namespace), and turn each socket into a
`SocketSample` tagged with the pod veth's ifindex: the capture point the tracker keys it by.  A
pod whose namespace cannot be found, vanishes before or during its dump, or may not be entered or
dumped (EPERM, EACCES) is skipped and counted by that reason, never fatal.
The samples of a round go to the node's `deliver` callback (the agent queues them for the capture
thread, which owns the tracker).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from podwire import log
from podwire.model import SocketSample, StatsRound
from podwire.sockstats.diag import DiagDump, DiagError
from podwire.sockstats.namespaces import (
    DEFAULT_NETNS_DIR,
    LinkSource,
    NamespaceFinder,
    NodeNetlink,
    entered,
)

_log = log.get("podwire.sockstats")

SKIP_NOT_FOUND = "not_found"  # no namespace file for the veth's netnsid (mount or hostPID missing)
SKIP_VANISHED = "vanished"  # the namespace went away before or during its dump
SKIP_DENIED = "denied"  # not allowed to enter it or dump it (EPERM/EACCES: CAP_SYS_ADMIN missing?)
SKIP_FAILED = "failed"  # any other error of the system (e.g. out of file descriptors)

# errno -> reason for an OSError while entering or dumping (the rest: SKIP_FAILED)
_REASONS = {
    errno.EPERM: SKIP_DENIED,
    errno.EACCES: SKIP_DENIED,
    errno.ENOENT: SKIP_VANISHED,  # its file was unmounted, or its process exited
    errno.ESRCH: SKIP_VANISHED,
    errno.EINVAL: SKIP_VANISHED,  # the path now names something that is not a network namespace
    errno.EBADMSG: SKIP_FAILED,  # a truncated reply: a fault, not a pod going away
}


@dataclass(slots=True)
class SamplerStats:
    """Counters since start (read by the self-metrics from another thread: ints only)."""

    rounds: int = 0
    dumps: int = 0
    dump_seconds: float = 0.0  # wall time spent entering namespaces and dumping
    sockets: int = 0  # sockets seen in the last round
    sockets_dropped: int = 0  # over max_sockets in a round
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> pods skipped


@dataclass(slots=True)
class NodeTarget:
    """One node namespace to sample (None: the agent's own) and where its rounds go."""

    netns: str | None
    deliver: Callable[[StatsRound], None]
    netns_dir: str = DEFAULT_NETNS_DIR
    include: str = r".*"  # pod veth name patterns (the capture's)
    exclude: str = r"^$"
    # the seam with capture: pod veths of this node (default: our own netlink listing)
    links: LinkSource | None = None
    # built in the worker thread, inside `netns`
    netlink: NodeNetlink | None = None
    finder: NamespaceFinder | None = None


def _ns_path(name: str, netns_dir: str) -> str:
    return name if name.startswith("/") else os.path.join(netns_dir, name)


class Sampler:
    def __init__(
        self,
        targets: Sequence[NodeTarget],
        interval_s: float,
        max_sockets: int = 262_144,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._targets = list(targets)
        self._interval = interval_s
        self._max_sockets = max_sockets
        self._clock = clock
        self.stats = SamplerStats()
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="podwire-sockstats", daemon=True)
        self._home: int | None = None
        self._one_walk = True  # (diag: one hash-table walk per pod, unless the kernel refuses it)

    # --- thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    def _loop(self) -> None:
        try:
            while True:
                self.sample_once()
                if self._stop.wait(self._interval):
                    break
        except Exception as exc:  # a bug or a namespace we could not leave: stop sampling, say so
            _log.exception("sockstats_failed")
            self.failed = repr(exc)
        finally:
            self.close()

    # --- one round -------------------------------------------------------------------------

    def sample_once(self) -> None:
        """One round over every node target (the worker's loop; tests and benchmarks call it)."""
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        seen = 0
        for target in self._targets:
            samples = self._sample_node(target)
            seen += len(samples)
            target.deliver(StatsRound(self._clock(), samples))
        self.stats.sockets = seen
        self.stats.rounds += 1

    def _setup(self, target: NodeTarget) -> tuple[LinkSource, NamespaceFinder]:
        if target.netlink is None or target.finder is None:
            assert self._home is not None
            if target.netns is None:
                netlink = NodeNetlink(target.include, target.exclude)
            else:
                with entered(_ns_path(target.netns, target.netns_dir), self._home):
                    netlink = NodeNetlink(target.include, target.exclude)
            target.netlink = netlink
            target.finder = NamespaceFinder(netlink, target.netns_dir)
        return target.links or target.netlink, target.finder

    def _skip(self, reason: str, count: int = 1) -> None:
        skipped = self.stats.skipped
        skipped[reason] = skipped.get(reason, 0) + count

    def _sample_node(self, target: NodeTarget) -> list[SocketSample]:
        links, finder = self._setup(target)
        home = self._home
        assert home is not None
        points: dict[int, int] = {}  # netnsid -> lowest pod veth ifindex (one point per pod)
        for link in links.pod_links():
            old = points.get(link.peer_netnsid)
            if old is None or link.ifindex < old:
                points[link.peer_netnsid] = link.ifindex
        paths = finder.find(set(points))
        if len(paths) < len(points):
            self._skip(SKIP_NOT_FOUND, len(points) - len(paths))
        out: list[SocketSample] = []
        room = self._max_sockets
        stats = self.stats
        for nsid, path in paths.items():
            t0 = time.perf_counter()
            try:
                with entered(path, home):
                    dump = DiagDump(self._one_walk)  # bound to the pod's namespace for its life
                with dump:  # (never more than the round has room for: the rest is counted)
                    samples = dump.connections(points[nsid], dump.listening(), limit=room)
                    self._one_walk = dump.one_walk
                    stats.sockets_dropped += dump.over_limit
            except OSError as exc:
                # a dump the kernel ended otherwise: the namespace is being torn down
                other = SKIP_VANISHED if isinstance(exc, DiagError) else SKIP_FAILED
                reason = _REASONS.get(exc.errno or 0, other)
                if reason != SKIP_VANISHED and reason not in self.stats.skipped:  # once per reason
                    _log.warning("sockstats_pod_skipped", reason=reason, netns=path, error=str(exc))
                self._skip(reason)
                continue
            finally:
                stats.dump_seconds += time.perf_counter() - t0
            stats.dumps += 1
            room -= len(samples)
            out += samples
        return out

    def close(self) -> None:
        for target in self._targets:
            if target.netlink is not None:
                target.netlink.close()
                target.netlink = None
            target.finder = None
        if self._home is not None:
            os.close(self._home)
            self._home = None
