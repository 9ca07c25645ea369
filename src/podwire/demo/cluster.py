"""A mini-cluster of network namespaces: "nodes" holding a bridge, "pods" joined to it by veth pairs.

Layout of one node (all inside the node's netns, nothing in the root namespace):

    pod netns  eth0 ==veth== <prefix>h<k>  --+
    pod netns  eth0 ==veth== <prefix>h<k>  --+-- <prefix>br (10.244.<i>.1/24, fd00:244:0:<i>::1/64)
                                                 <prefix>w<i> ==wire== next node (or the "lan" switch netns)

Pods get 10.244.<i>.<2+j>/24 and fd00:244:0:<i>::<2+j>/64 with default routes via the bridge. Nodes
forward (IPv4 and IPv6) and route each other's pod subnets over the wire: two nodes share one veth pair;
three or more hang off a bridge in an extra "<prefix>-lan" netns. Services are nftables DNAT rules in
every node netns (like kube-proxy); br_netfilter is on in node namespaces so a same-node hairpin
(pod -> ClusterIP -> pod on the same bridge) is un-NATed on the way back.

Everything is made with pyroute2 netlink; nftables rules go through the `nft` binary (argv list,
script on stdin) because pyroute2's nftables API cannot express NAT or numgen rules yet.

Crash safety: every name starts with the cluster prefix `pwd` + 5 hex digits. Before any namespace is
made, a state file /run/podwire-demo/<prefix>.json records the creator pid (and its start time, against
pid reuse). `cleanup_stale()` (run at the start of every build) kills the processes inside, and deletes
the namespaces of, every cluster whose creator is gone. Children started with `Cluster.run` carry
PR_SET_PDEATHSIG=SIGKILL, so they die with the creator even if it is SIGKILLed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from podwire import log

_log = log.get("podwire.demo.cluster")

T = TypeVar("T")

MARKER = "pwd"  # every cluster prefix starts with this; cleanup only touches names it recorded
STATE_DIR = Path("/run/podwire-demo")
NETNS_DIR = Path("/run/netns")
POD_IFNAME = "eth0"  # the pod side of its veth, as in Kubernetes
_IFNAMSIZ = 15
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

# prefixes of every cluster this process created (tests check none is left behind)
_created_prefixes: set[str] = set()


class ClusterError(RuntimeError):
    """Building, using or tearing down the mini-cluster failed; the message says what."""


class NotRootError(ClusterError):
    """The mini-cluster needs root (network namespaces, veths, nftables)."""


# ---------------------------------------------------------------- specs (what to build)


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    namespace: str = "default"
    workload: str = ""  # "" -> the pod's name (a bare pod is its own workload)
    workload_kind: str = "Deployment"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    pods: tuple[PodSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A ClusterIP: `ip:port` (and `ipv6:port`) DNATed to `backend` pod's `target_port` on every node;
    with `more_backends`, each new connection goes to the next backend in turn (nftables numgen)."""

    name: str
    namespace: str
    ip: str
    port: int
    backend: str
    target_port: int
    ipv6: str | None = None
    more_backends: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExternalSpec:
    """A host outside the cluster (its own netns) on a link to `via_node` (default: the first node).

    It holds the first usable address of each CIDR after the node's; every node routes the CIDRs to it,
    and pods reach it by their default route, without NAT (like a routed partner network).
    """

    name: str
    cidr_v4: str = "203.0.113.0/24"
    cidr_v6: str = "2001:db8:113::/64"
    via_node: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    services: tuple[ServiceSpec, ...] = ()
    externals: tuple[ExternalSpec, ...] = ()
    pod_cidr_v4: str = "10.244.0.0/16"  # node i gets the i-th /24
    pod_cidr_v6: str = "fd00:244::/48"  # node i gets the i-th /64
    node_cidr_v4: str = "192.168.200.0/24"  # the wire between nodes
    node_cidr_v6: str = "fd00:200::/64"
    prefix: str | None = None  # None -> random `pwd` + 5 hex digits


# ---------------------------------------------------------------- what was built


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    namespace: str
    workload: str
    workload_kind: str
    node: str  # node name
    netns: str
    ipv4: str
    ipv6: str
    host_ifname: str  # host-side veth, in the node netns, on the bridge: where the agent captures
    host_ifindex: int  # its ifindex inside the node netns
    ifname: str = POD_IFNAME


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    netns: str
    bridge: str
    bridge_ifindex: int
    gateway_v4: str  # the bridge's addresses, pods' default routes
    gateway_v6: str
    ipv4: str | None  # the wire address (None for a single-node cluster)
    ipv6: str | None
    wire_ifname: str | None
    pods: tuple[Pod, ...]


@dataclass(frozen=True, slots=True)
class External:
    name: str
    netns: str
    ipv4: str
    ipv6: str
    cidr_v4: str
    cidr_v6: str
    via_node: str
    ifname: str = POD_IFNAME


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    ip: str
    port: int
    backend: Pod
    target_port: int
    ipv6: str | None
    more_backends: tuple[Pod, ...] = ()

    @property
    def backends(self) -> tuple[Pod, ...]:
        return (self.backend, *self.more_backends)


def _numgen_map(addresses: list[str]) -> str:
    entries = ", ".join(f"{i} : {a}" for i, a in enumerate(addresses))
    return f"numgen inc mod {len(addresses)} map {{ {entries} }}"


# ---------------------------------------------------------------- netns primitives


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            "the podwire mini-cluster needs root (it creates network namespaces, veths and nftables rules);"
            " run it with sudo"
        )


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _open_netns(name: str) -> int:
    try:
        return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ClusterError(f"network namespace {name!r} does not exist") from None


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _child_setup(fd: int | None, parent: int) -> Callable[[], None]:
    """preexec_fn: die with the parent (even on SIGKILL), then enter the netns. Runs between fork and exec."""

    def setup() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: nobody would kill us
            os._exit(1)
        if fd is not None:
            _setns(fd)

    return setup


def popen_in_netns(netns: str | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """Start argv inside `netns` (None: the current one), in a new session/process group, with PDEATHSIG.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits: call this from a long-lived thread
    (Cluster.run does, through its own spawner thread).
    """
    if "preexec_fn" in kw or "shell" in kw:
        raise TypeError("popen_in_netns sets preexec_fn itself and never uses a shell")
    fd = _open_netns(netns) if netns is not None else None
    try:
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(list(argv), preexec_fn=_child_setup(fd, os.getpid()), **kw)
    finally:
        if fd is not None:
            os.close(fd)


def call_in_netns(netns: str, fn: Callable[..., T], *args: Any, timeout: float | None = 60.0) -> T:
    """Run fn(*args) in a short-lived thread that has entered `netns`; return its result or raise its error.

    Sockets created by fn belong to that netns and stay usable from any thread afterwards.
    """
    fd = _open_netns(netns)
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            try:
                _setns(fd)  # only this thread moves; the thread ends after fn
            finally:
                os.close(fd)
            result.append(fn(*args))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in netns {netns!r} still running after {timeout}s")
    if error:
        raise error[0]
    return result[0]


def _write_sysctls(netns: str, values: dict[str, str]) -> None:
    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", key.replace(".", "/")).write_text(value)

    call_in_netns(netns, write)


def nft_in_netns(netns: str, script: str) -> None:
    """Load an nftables script (nft -f -) inside `netns`; a failure raises ClusterError with nft's message."""
    fd = _open_netns(netns)
    try:
        done = subprocess.run(
            ["nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=_child_setup(fd, os.getpid()),
            check=False,
        )
    finally:
        os.close(fd)
    if done.returncode != 0:
        raise ClusterError(f"nft in {netns}: {done.stderr.strip() or done.returncode}")


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError:
        return None


def pids_in_netns(inodes: Iterable[int]) -> list[int]:
    """Every process (other than this one) whose network namespace is one of `inodes`."""
    wanted = set(inodes)
    me = os.getpid()
    found: list[int] = []
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino in wanted:
                found.append(int(entry.name))
    return found


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_netns(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        pyroute2_netns.remove(name)


def _proc_start_time(pid: int) -> int | None:
    """Start time in clock ticks (field 22 of /proc/PID/stat): tells a live creator from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def list_netns(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _owned_netns(prefix: str) -> list[str]:
    return list_netns(prefix + "-")


# ---------------------------------------------------------------- crash safety


def _creator_alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    if not isinstance(pid, int):
        return False
    start = _proc_start_time(pid)
    return start is not None and start == state.get("pid_start")


def _purge(prefix: str, recorded: Iterable[str], inodes: Iterable[int]) -> list[str]:
    names = sorted(set(recorded) | set(_owned_netns(prefix)))
    names = [n for n in names if n.startswith(prefix + "-")]
    all_inodes = set(inodes) | {i for i in map(_netns_inode, names) if i is not None}
    _kill_pids(pids_in_netns(all_inodes))
    for name in names:
        _remove_netns(name)
    return names


def cleanup_stale(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the namespaces and processes of every cluster whose creator process is gone.

    Returns the prefixes it cleaned. Clusters of live creators (any process) are left alone.
    """
    cleaned: list[str] = []
    try:
        files = sorted(state_dir.glob(f"{MARKER}*.json"))
    except OSError:
        return cleaned
    for path in files:
        prefix = path.stem
        if not re.fullmatch(MARKER + r"[0-9a-z]{1,8}", prefix):
            continue
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            continue  # its creator tore it down meanwhile
        except (OSError, ValueError):
            state = {}
        if state and _creator_alive(state):
            continue
        removed = _purge(prefix, state.get("netns", []), state.get("netns_inodes", []))
        shutil.rmtree(state_dir / f"{prefix}.d", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _log.info("stale cluster removed", prefix=prefix, creator=state.get("pid"), netns=len(removed))
        cleaned.append(prefix)
    return cleaned


def leftovers(prefixes: Iterable[str], state_dir: Path = STATE_DIR) -> list[str]:
    """Namespaces and state files still present for these cluster prefixes (empty when all is clean)."""
    out: list[str] = []
    for prefix in sorted(set(prefixes)):
        out += [f"netns {n}" for n in _owned_netns(prefix)]
        if (state_dir / f"{prefix}.json").exists():
            out.append(f"state {state_dir / prefix}.json")
        if (state_dir / f"{prefix}.d").exists():
            out.append(f"workdir {state_dir / prefix}.d")
    return out


def created_prefixes() -> frozenset[str]:
    """Prefixes of every cluster built by this process (torn down or not)."""
    return frozenset(_created_prefixes)


# ---------------------------------------------------------------- the cluster


@dataclass(slots=True)
class _Plan:
    """Names and addresses decided before anything is created."""

    prefix: str
    node_netns: list[str] = field(default_factory=list)
    pod_netns: dict[str, str] = field(default_factory=dict)
    lan_netns: str | None = None
    external_netns: dict[str, str] = field(default_factory=dict)

    def all_netns(self) -> list[str]:
        lan = [self.lan_netns] if self.lan_netns else []
        return [*self.node_netns, *self.pod_netns.values(), *lan, *self.external_netns.values()]


def _validate(spec: ClusterSpec) -> None:
    if not spec.nodes:
        raise ClusterError("a cluster needs at least one node")
    seen_pods: set[str] = set()
    seen_nodes: set[str] = set()
    for node in spec.nodes:
        if not _NAME_RE.match(node.name) or node.name in seen_nodes:
            raise ClusterError(f"bad or duplicate node name {node.name!r} (lowercase, digits, '-')")
        seen_nodes.add(node.name)
        if len(node.pods) > 250:
            raise ClusterError(f"node {node.name}: at most 250 pods")
        for pod in node.pods:
            if not _NAME_RE.match(pod.name) or pod.name in seen_pods:
                raise ClusterError(f"bad or duplicate pod name {pod.name!r} (lowercase, digits, '-')")
            seen_pods.add(pod.name)
    for ext in spec.externals:
        if not _NAME_RE.match(ext.name) or ext.name in seen_pods | seen_nodes:
            raise ClusterError(f"bad or duplicate external name {ext.name!r}")
        seen_pods.add(ext.name)
        if ext.via_node is not None and ext.via_node not in seen_nodes:
            raise ClusterError(f"external {ext.name}: no node {ext.via_node!r}")
    for svc in spec.services:
        for backend in (svc.backend, *svc.more_backends):
            if backend not in seen_pods:
                raise ClusterError(f"service {svc.name}: backend pod {backend!r} is not in the spec")
    if spec.prefix is not None and not re.fullmatch(MARKER + r"[0-9a-z]{1,5}", spec.prefix):
        raise ClusterError(f"prefix must be {MARKER!r} + 1..5 of [0-9a-z], got {spec.prefix!r}")


class Cluster:
    """Builds the namespaces of a ClusterSpec; a context manager that always tears them down.

    with Cluster(spec) as cluster:
        proc = cluster.run("web", ["nginx", ...])
        cluster.call("client", socket.create_connection, ("10.244.0.2", 80))
    """

    def __init__(self, spec: ClusterSpec, *, state_dir: Path = STATE_DIR) -> None:
        _validate(spec)
        self.spec = spec
        self.prefix = spec.prefix or MARKER + secrets.token_hex(3)[:5]
        self.state_dir = state_dir
        self.nodes: tuple[Node, ...] = ()
        self.services: tuple[Service, ...] = ()
        self.externals: tuple[External, ...] = ()
        self._pods: dict[str, Pod] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        self._plan = _Plan(self.prefix)
        self._inodes: set[int] = set()
        self._spawner: ThreadPoolExecutor | None = None
        self._built = False
        self._torn_down = False
        self._creator = os.getpid()  # a forked child inherits atexit hooks; only the creator tears down

    # ------------------------------------------------------------ public lookups

    @property
    def pods(self) -> tuple[Pod, ...]:
        return tuple(self._pods.values())

    def pod(self, name: str) -> Pod:
        try:
            return self._pods[name]
        except KeyError:
            raise ClusterError(f"no pod {name!r} in cluster {self.prefix}") from None

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node {name!r} in cluster {self.prefix}")

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise ClusterError(f"no service {name!r} in cluster {self.prefix}")

    @property
    def host_veth_pattern(self) -> str:
        """Regex matching exactly the pods' host-side veths (Settings.interface_include): not the wire."""
        return rf"^{self.prefix}h\d+$"

    def workdir(self) -> Path:
        """A scratch directory of this cluster (configs, logs); removed at teardown and by cleanup_stale."""
        path = self.state_dir / f"{self.prefix}.d"
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        return path

    @property
    def netns_names(self) -> tuple[str, ...]:
        return tuple(self._plan.all_netns())

    def external(self, name: str) -> External:
        for ext in self.externals:
            if ext.name == name:
                return ext
        raise ClusterError(f"no external host {name!r} in cluster {self.prefix}")

    def netns_of(self, target: Pod | Node | External | str) -> str:
        """A Pod, Node or External, or a pod/node/external name -> its netns name."""
        if isinstance(target, Pod | Node | External):
            return target.netns
        if target in self._pods:
            return self._pods[target].netns
        if target in self._plan.external_netns:
            return self._plan.external_netns[target]
        return self.node(target).netns

    # ------------------------------------------------------------ build

    def __enter__(self) -> Cluster:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def build(self) -> Cluster:
        require_root()
        if self._built:
            return self
        self._built = True
        cleanup_stale(self.state_dir)
        self._plan_names()
        _created_prefixes.add(self.prefix)
        self._write_state()  # before any namespace exists, so a crash at any point is recoverable
        atexit.register(self.teardown)
        started = time.monotonic()
        try:
            self._spawner = ThreadPoolExecutor(1, thread_name_prefix=f"{self.prefix}-spawn")
            self._create()
        except BaseException:
            self.teardown()
            raise
        self._write_state()
        _log.info(
            "cluster built",
            prefix=self.prefix,
            nodes=len(self.nodes),
            pods=len(self._pods),
            seconds=round(time.monotonic() - started, 3),
        )
        return self

    def _plan_names(self) -> None:
        plan = self._plan
        plan.node_netns = [f"{self.prefix}-{n.name}" for n in self.spec.nodes]
        plan.pod_netns = {p.name: f"{self.prefix}-{n.name}-{p.name}" for n in self.spec.nodes for p in n.pods}
        plan.lan_netns = f"{self.prefix}-lan" if len(self.spec.nodes) > 2 else None
        plan.external_netns = {e.name: f"{self.prefix}-ext-{e.name}" for e in self.spec.externals}
        total_pods = len(plan.pod_netns)
        longest = max(len(f"{self.prefix}h{total_pods}"), len(f"{self.prefix}w{len(self.spec.nodes)}"))
        if longest > _IFNAMSIZ:
            raise ClusterError(f"interface names would exceed {_IFNAMSIZ} characters")

    def _write_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "prefix": self.prefix,
            "pid": os.getpid(),
            "pid_start": _proc_start_time(os.getpid()),
            "netns": self._plan.all_netns(),
            "netns_inodes": sorted(self._inodes),
            "created": time.time(),
        }
        tmp = self.state_dir / f".{self.prefix}.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_dir / f"{self.prefix}.json")

    def _make_netns(self, name: str, node: bool) -> None:
        if netns_path(name).exists():
            raise ClusterError(f"network namespace {name} already exists")
        pyroute2_netns.create(name)
        inode = _netns_inode(name)
        if inode is not None:
            self._inodes.add(inode)
        sysctls = {
            # addresses usable at once: no duplicate address detection delay
            "net.ipv6.conf.all.accept_dad": "0",
            "net.ipv6.conf.default.accept_dad": "0",
            "net.ipv6.conf.default.accept_ra": "0",
        }
        if node:
            sysctls |= {
                "net.ipv4.ip_forward": "1",
                "net.ipv6.conf.all.forwarding": "1",
                # bridged pod-to-pod packets pass the node's nftables/conntrack (ClusterIP hairpin)
                "net.bridge.bridge-nf-call-iptables": "1",
                "net.bridge.bridge-nf-call-ip6tables": "1",
            }
        _write_sysctls(name, sysctls)

    def _create(self) -> None:
        spec = self.spec
        v4_pods = list(ipaddress.IPv4Network(spec.pod_cidr_v4).subnets(new_prefix=24))
        v6_pods = list(ipaddress.IPv6Network(spec.pod_cidr_v6).subnets(new_prefix=64))
        wire_v4 = ipaddress.IPv4Network(spec.node_cidr_v4)
        wire_v6 = ipaddress.IPv6Network(spec.node_cidr_v6)
        multi = len(spec.nodes) > 1
        for name in self._plan.all_netns():
            self._make_netns(name, node=name in self._plan.node_netns)

        pod_index = 0
        nodes: list[Node] = []
        for i, nspec in enumerate(spec.nodes):
            node_ns = self._plan.node_netns[i]
            net4, net6 = v4_pods[i], v6_pods[i]
            gw4, gw6 = str(net4[1]), str(net6[1])
            bridge = f"{self.prefix}br"
            pods: list[Pod] = []
            with IPRoute(netns=node_ns) as ipr:
                _up(ipr, "lo")
                ipr.link("add", ifname=bridge, kind="bridge")
                br_idx = _index(ipr, bridge)
                _addr(ipr, br_idx, gw4, 24)
                _addr(ipr, br_idx, gw6, 64)
                ipr.link("set", index=br_idx, state="up")
                for j, pspec in enumerate(nspec.pods):
                    host_if = f"{self.prefix}h{pod_index}"
                    pod_index += 1
                    pod_ns = self._plan.pod_netns[pspec.name]
                    fd = _open_netns(pod_ns)
                    try:
                        peer = {"ifname": POD_IFNAME, "net_ns_fd": fd}
                        ipr.link("add", ifname=host_if, kind="veth", peer=peer)
                    finally:
                        os.close(fd)
                    host_idx = _index(ipr, host_if)
                    ipr.link("set", index=host_idx, master=br_idx)
                    ipr.link("set", index=host_idx, state="up")
                    pod = Pod(
                        name=pspec.name,
                        namespace=pspec.namespace,
                        workload=pspec.workload or pspec.name,
                        workload_kind=pspec.workload_kind,
                        node=nspec.name,
                        netns=pod_ns,
                        ipv4=str(net4[2 + j]),
                        ipv6=str(net6[2 + j]),
                        host_ifname=host_if,
                        host_ifindex=host_idx,
                    )
                    pods.append(pod)
                    self._pods[pod.name] = pod
            for pod in pods:
                with IPRoute(netns=pod.netns) as ipr:
                    _up(ipr, "lo")
                    idx = _index(ipr, POD_IFNAME)
                    _addr(ipr, idx, pod.ipv4, 24)
                    _addr(ipr, idx, pod.ipv6, 64)
                    ipr.link("set", index=idx, state="up")
                    ipr.route("add", dst="0.0.0.0/0", gateway=gw4)
                    ipr.route("add", family=_AF_INET6, dst="::/0", gateway=gw6)
            nodes.append(
                Node(
                    name=nspec.name,
                    netns=node_ns,
                    bridge=bridge,
                    bridge_ifindex=br_idx,
                    gateway_v4=gw4,
                    gateway_v6=gw6,
                    ipv4=str(wire_v4[1 + i]) if multi else None,
                    ipv6=str(wire_v6[1 + i]) if multi else None,
                    wire_ifname=f"{self.prefix}w{i}" if multi else None,
                    pods=tuple(pods),
                )
            )
        self.nodes = tuple(nodes)
        if multi:
            self._wire(v4_pods, v6_pods, wire_v4, wire_v6)
        if spec.externals:
            self._attach_externals(v4_pods, v6_pods)
        self.services = tuple(
            Service(
                s.name,
                s.namespace,
                s.ip,
                s.port,
                self._pods[s.backend],
                s.target_port,
                s.ipv6,
                tuple(self._pods[b] for b in s.more_backends),
            )
            for s in spec.services
        )
        if self.services:
            script = self._service_script()
            for node in self.nodes:
                nft_in_netns(node.netns, script)

    def _wire(
        self,
        v4_pods: list[ipaddress.IPv4Network],
        v6_pods: list[ipaddress.IPv6Network],
        wire_v4: ipaddress.IPv4Network,
        wire_v6: ipaddress.IPv6Network,
    ) -> None:
        """Connect the nodes: one veth pair for two nodes, a switch netns for more; then routes."""
        nodes = self.nodes
        if self._plan.lan_netns is None:
            fd = _open_netns(nodes[1].netns)
            try:
                with IPRoute(netns=nodes[0].netns) as ipr:
                    ipr.link(
                        "add",
                        ifname=nodes[0].wire_ifname,
                        kind="veth",
                        peer={"ifname": nodes[1].wire_ifname, "net_ns_fd": fd},
                    )
            finally:
                os.close(fd)
        else:
            lan_bridge = f"{self.prefix}lan"
            with IPRoute(netns=self._plan.lan_netns) as ipr:
                _up(ipr, "lo")
                ipr.link("add", ifname=lan_bridge, kind="bridge")
                lan_idx = _index(ipr, lan_bridge)
                ipr.link("set", index=lan_idx, state="up")
                for i, node in enumerate(nodes):
                    port = f"{self.prefix}u{i}"
                    fd = _open_netns(node.netns)
                    try:
                        ipr.link(
                            "add",
                            ifname=port,
                            kind="veth",
                            peer={"ifname": node.wire_ifname, "net_ns_fd": fd},
                        )
                    finally:
                        os.close(fd)
                    idx = _index(ipr, port)
                    ipr.link("set", index=idx, master=lan_idx)
                    ipr.link("set", index=idx, state="up")
        for i, node in enumerate(nodes):
            assert node.wire_ifname is not None and node.ipv4 is not None and node.ipv6 is not None
            with IPRoute(netns=node.netns) as ipr:
                idx = _index(ipr, node.wire_ifname)
                _addr(ipr, idx, node.ipv4, wire_v4.prefixlen)
                _addr(ipr, idx, node.ipv6, wire_v6.prefixlen)
                ipr.link("set", index=idx, state="up")
                for j, other in enumerate(nodes):
                    if j != i:
                        ipr.route("add", dst=str(v4_pods[j]), gateway=other.ipv4)
                        ipr.route("add", family=_AF_INET6, dst=str(v6_pods[j]), gateway=other.ipv6)

    def _attach_externals(
        self, v4_pods: list[ipaddress.IPv4Network], v6_pods: list[ipaddress.IPv6Network]
    ) -> None:
        externals: list[External] = []
        for k, espec in enumerate(self.spec.externals):
            node = self.node(espec.via_node) if espec.via_node else self.nodes[0]
            net4, net6 = ipaddress.IPv4Network(espec.cidr_v4), ipaddress.IPv6Network(espec.cidr_v6)
            gw4, gw6, host4, host6 = str(net4[1]), str(net6[1]), str(net4[10]), str(net6[10])
            ext_ns = self._plan.external_netns[espec.name]
            link = f"{self.prefix}x{k}"
            fd = _open_netns(ext_ns)
            try:
                with IPRoute(netns=node.netns) as ipr:
                    ipr.link("add", ifname=link, kind="veth", peer={"ifname": POD_IFNAME, "net_ns_fd": fd})
                    idx = _index(ipr, link)
                    _addr(ipr, idx, gw4, net4.prefixlen)
                    _addr(ipr, idx, gw6, net6.prefixlen)
                    ipr.link("set", index=idx, state="up")
            finally:
                os.close(fd)
            with IPRoute(netns=ext_ns) as ipr:
                _up(ipr, "lo")
                idx = _index(ipr, POD_IFNAME)
                _addr(ipr, idx, host4, net4.prefixlen)
                _addr(ipr, idx, host6, net6.prefixlen)
                ipr.link("set", index=idx, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=gw4)
                ipr.route("add", family=_AF_INET6, dst="::/0", gateway=gw6)
            for other in self.nodes:
                if other is not node:
                    assert node.ipv4 is not None and node.ipv6 is not None
                    with IPRoute(netns=other.netns) as ipr:
                        ipr.route("add", dst=str(net4), gateway=node.ipv4)
                        ipr.route("add", family=_AF_INET6, dst=str(net6), gateway=node.ipv6)
            externals.append(External(espec.name, ext_ns, host4, host6, str(net4), str(net6), node.name))
        self.externals = tuple(externals)

    def _service_script(self) -> str:
        rules: list[str] = []
        for svc in self.services:
            backends = svc.backends
            if len(backends) == 1:
                to4 = f"{svc.backend.ipv4}:{svc.target_port}"
                to6 = f"[{svc.backend.ipv6}]:{svc.target_port}"
            else:  # round robin, as kube-proxy's nftables mode spreads connections
                to4 = _numgen_map([str(b.ipv4) for b in backends]) + f":{svc.target_port}"
                to6 = _numgen_map([str(b.ipv6) for b in backends]) + f":{svc.target_port}"
            rules.append(f"ip daddr {svc.ip} tcp dport {svc.port} dnat ip to {to4}")
            if svc.ipv6:
                rules.append(f"ip6 daddr {svc.ipv6} tcp dport {svc.port} dnat ip6 to {to6}")
        body = "\n".join(f"    {r}" for r in rules)
        return (
            "table inet pwsvc {\n"
            "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n"
            f"{body}\n  }}\n"
            "  chain output {\n    type nat hook output priority -100; policy accept;\n"
            f"{body}\n  }}\n"
            "}\n"
        )

    # ------------------------------------------------------------ use

    def run(
        self, target: Pod | Node | External | str, argv: Sequence[str], **popen_kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a real program inside a pod's (or node's) netns; the cluster owns and will kill it.

        Popen keywords pass through (stdout, stderr, env, cwd, ...). The child has its own process
        group and PR_SET_PDEATHSIG=SIGKILL tied to the cluster's spawner thread.
        """
        netns = self.netns_of(target)
        with self._lock:
            if self._torn_down or self._spawner is None:
                raise ClusterError(f"cluster {self.prefix} is not running")
            spawner = self._spawner
        proc = spawner.submit(popen_in_netns, netns, argv, **popen_kw).result()
        with self._lock:
            self._procs.append(proc)
        return proc

    def call(
        self,
        target: Pod | Node | External | str,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = 60.0,
    ) -> T:
        """Run a Python callable inside the target's netns (a short-lived thread) and return its result."""
        return call_in_netns(self.netns_of(target), fn, *args, timeout=timeout)

    def nft(self, target: Pod | Node | External | str, script: str) -> None:
        """Load an nftables script inside the target's netns."""
        nft_in_netns(self.netns_of(target), script)

    def add_loss(
        self, target: Pod | Node | External | str, percent: int, hooks: Sequence[str] | None = None
    ) -> None:
        """Drop `percent`% of TCP packets at these netfilter hooks of the target's netns (no netem here).

        Default hooks: ("input",) for a pod: packets arriving at the pod are lost after its veth, so the
        capture sees them and the sender really retransmits. ("forward",) for a node: bridged and routed
        pod traffic through that node is lost in both directions. An "output" drop in a pod is reported
        to the local TCP stack (EPERM) rather than lost on the wire. Replaces any earlier loss rule there.
        """
        if not 0 < percent <= 100:
            raise ValueError("percent must be 1..100")
        is_pod = isinstance(target, Pod) or (isinstance(target, str) and target in self._pods)
        chosen = tuple(hooks) if hooks is not None else (("input",) if is_pod else ("forward",))
        bad = set(chosen) - {"input", "output", "forward", "prerouting", "postrouting"}
        if bad or not chosen:
            raise ValueError(f"bad hooks {sorted(bad) or chosen}")
        self.remove_loss(target)
        # numgen values are 0..99, so "< 100" is out of range: 100% is a plain drop
        rule = "drop" if percent == 100 else f"numgen random mod 100 < {percent} drop"
        chains = "".join(
            f"  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n"
            f"    meta l4proto tcp {rule}\n  }}\n"
            for hook in chosen
        )
        self.nft(target, f"table inet pwloss {{\n{chains}}}\n")

    def remove_loss(self, target: Pod | Node | External | str) -> None:
        # "add" first makes the delete succeed whether or not the table exists
        self.nft(target, "add table inet pwloss\ndelete table inet pwloss\n")

    @property
    def processes(self) -> tuple[subprocess.Popen[Any], ...]:
        with self._lock:
            return tuple(self._procs)

    # ------------------------------------------------------------ teardown

    def teardown(self, grace_s: float = 2.0) -> None:
        """Kill every process, delete every namespace, drop the state file. Idempotent, never raises."""
        if os.getpid() != self._creator:
            return
        with self._lock:
            if self._torn_down or not self._built:
                return
            self._torn_down = True
            procs = list(self._procs)
        atexit.unregister(self.teardown)
        try:
            _stop_processes(procs, grace_s)
        except Exception as exc:
            _log.warning("teardown: stopping processes failed", prefix=self.prefix, error=str(exc))
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
        try:
            _purge(self.prefix, self._plan.all_netns(), self._inodes)
            shutil.rmtree(self.state_dir / f"{self.prefix}.d", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{self.prefix}.json").unlink()
        except Exception as exc:  # the next cleanup_stale finishes the job
            _log.warning("teardown incomplete", prefix=self.prefix, error=str(exc))
            return
        _log.info("cluster torn down", prefix=self.prefix)


_AF_INET6 = 10


def exit_on_signals() -> None:
    """Make SIGTERM raise SystemExit and SIGINT KeyboardInterrupt in the main thread, so
    `with Cluster(...)` and atexit tear down.  SIGINT is set explicitly: a program started in the
    background by a non-interactive shell inherits it ignored (Python then leaves it so), and a
    demo that ignored Ctrl-C or `kill -INT` would never clean up.  Call from the main thread."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m podwire.demo.cluster cleanup`: remove what crashed demo clusters left behind."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["cleanup"]:
        print("usage: python -m podwire.demo.cluster cleanup", file=sys.stderr)
        return 2
    try:
        require_root()
    except NotRootError as exc:
        print(exc, file=sys.stderr)
        return 1
    for prefix in cleanup_stale():
        print(f"removed stale cluster {prefix}")
    return 0


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise ClusterError(f"interface {ifname} vanished")
    return int(found[0])


def _up(ipr: Any, ifname: str) -> None:
    ipr.link("set", index=_index(ipr, ifname), state="up")


def _addr(ipr: Any, index: int, address: str, prefixlen: int) -> None:
    family = _AF_INET6 if ":" in address else 2
    ipr.addr("add", index=index, address=address, prefixlen=prefixlen, family=family)


def _stop_processes(procs: list[subprocess.Popen[Any]], grace_s: float) -> None:
    """SIGTERM each process group, wait up to grace_s, then SIGKILL what is left, and reap."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in live:
        _signal_group(proc, signal.SIGKILL)  # also the group's stragglers whose leader already left
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the child leads its own group unless the caller chose otherwise
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)  # Popen skips this once the child is reaped (no pid reuse risk)


if __name__ == "__main__":
    raise SystemExit(main())
