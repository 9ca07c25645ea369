"""Frozen settings from flags and environment (PODWIRE_*), validated once at start.

Every setting is declared once in `_FIELDS`: its env name, its parser and its default.
A bad value or an unknown PODWIRE_* key gives one clear line per problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "PODWIRE_"


class ConfigError(ValueError):
    """One or more settings are wrong; str() holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected ADDR:PORT, e.g. 127.0.0.1:9477")
    host = host.strip("[]")
    ipaddress.ip_address(host)  # raises ValueError with a clear message
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError("port must be 0..65535")
    return host, number


def parse_peers(text: str) -> tuple[str, ...]:
    """`host:port,host:port` -> peer agents as `host:port` (IPv6 as `[addr]:port`)."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        host, port = parse_listen(part)
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if len(out) > 1000:
        raise ValueError("at most 1000 peers (the fan-out is for small clusters)")
    return tuple(out)


def _label_selector(text: str) -> str:
    if len(text) > 1000 or "\n" in text:
        raise ValueError("a label selector on one line, at most 1000 characters")
    return text.strip()


def _path(text: str) -> str:
    if not text.startswith("/") or len(text) > 4096:
        raise ValueError("must be an absolute path")
    return text


def _int_in(low: int, high: int, multiple_of: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        if value % multiple_of:
            raise ValueError(f"must be a multiple of {multiple_of}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if not low <= value <= high:  # also refuses nan
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


MAX_REGEX_CHARS = 1024

MAX_BUCKETS = 64
MAX_BUCKET_S = 7 * 86_400.0  # a week: past that a connection's duration is its own alert


def parse_buckets(text: str) -> tuple[float, ...]:
    """`0.001,0.01,0.1,1` -> histogram upper bounds in seconds: 1..64 values, increasing.
    Empty (the chart's default): () = telemetry's default buckets."""
    if not text.strip():
        return ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(parts) <= MAX_BUCKETS:
        raise ValueError(f"expected 1 to {MAX_BUCKETS} comma-separated bounds in seconds")
    bounds = tuple(float(p) for p in parts)
    if not all(0.0 < b <= MAX_BUCKET_S for b in bounds):
        raise ValueError(f"each bound must be > 0 and <= {MAX_BUCKET_S:.0f} seconds")
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError("bounds must be strictly increasing")
    return bounds


def _regex(text: str) -> str:
    if len(text) > MAX_REGEX_CHARS:
        raise ValueError(f"longer than {MAX_REGEX_CHARS} characters")
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


def _file_path(text: str) -> str:
    """A file path: not empty, one line, at most PATH_MAX."""
    if not text.strip():
        raise ValueError("is empty (unset it instead)")
    if any(c in text for c in "\n\r\0"):
        raise ValueError("contains a newline or NUL")
    if len(text.encode()) > 4096:
        raise ValueError("longer than 4096 bytes")
    return text


def _netns_name(text: str) -> str:
    """A name under /run/netns: one path component."""
    if not text or text in (".", "..") or "/" in text or "\0" in text or "\n" in text:
        raise ValueError("expected a network namespace name (as in `ip netns list`)")
    if len(text.encode()) > 255:
        raise ValueError("longer than 255 bytes")
    return text


# Kubernetes node names are DNS subdomains (RFC 1123): what the API would accept.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _node_name(text: str) -> str:
    if not text:
        raise ValueError("is empty (unset it to use the host name)")
    if len(text) > 253 or not _NODE_NAME.fullmatch(text):
        raise ValueError("expected a Kubernetes node name (lower-case DNS subdomain, at most 253 characters)")
    return text


MAX_EXTERNAL_CIDRS = 4096


def parse_cidr_names(text: str) -> tuple[tuple[str, str], ...]:
    """`10.96.0.0/12=cluster-services,0.0.0.0/0=internet` -> ((cidr, name), ...)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        cidr, sep, name = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"entry {part!r} is not CIDR=NAME")
        if len(name) > 253 or not name.isprintable():
            raise ValueError(f"entry {part!r}: the name must be printable, at most 253 characters")
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"entry {part!r}: {exc}") from None
        if str(net) in seen:
            raise ValueError(f"CIDR {net} is listed twice")
        seen.add(str(net))
        out.append((str(net), name))
    if len(out) > MAX_EXTERNAL_CIDRS:
        raise ValueError(f"more than {MAX_EXTERNAL_CIDRS} entries")
    return tuple(out)


MAX_DNS_RESOLVERS = 64


def parse_resolvers(text: str) -> tuple[str, ...] | None:
    """`auto` (None) or `ADDR,ADDR`: the DNS resolvers whose answers name addresses."""
    if text.strip() == "auto":
        return None
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address (expected auto or ADDR,ADDR)") from None
    if not out:
        raise ValueError("expected auto or a list of resolver addresses")
    if len(out) > MAX_DNS_RESOLVERS:
        raise ValueError(f"more than {MAX_DNS_RESOLVERS} resolvers")
    return tuple(dict.fromkeys(out))


# Ring memory is kernel memory, charged to no pod's cgroup: a ring too large takes the node down.
PAGE_KIB = 4
MAX_RING_BLOCK_KIB = 16 * 1024  # one block; the kernel allocates it contiguous or vmalloc'd
MAX_RING_BLOCKS = 4096
MAX_RING_RETIRE_MS = 60_000  # the kernel field is 32 bits; past a minute a quiet block never retires
MAX_RING_MEMORY_MIB = 2048  # the hard cap on PODWIRE_RING_MEMORY_MIB itself


@dataclass(frozen=True, slots=True)
class Settings:
    listen: tuple[str, int] = ("127.0.0.1", 9477)
    # the listener's bounds (views/http.py)
    http_max_connections: int = 256
    http_request_timeout_s: float = 10.0
    http_idle_timeout_s: float = 30.0
    http_backlog: int = 128
    http_workers: int = 4
    log_format: str = "json"
    log_level: str = "info"
    # capture
    netns: str | None = None  # capture inside this named network namespace (tests, simulations)
    interface_include: str = r".*"
    interface_exclude: str = r"^(lo|docker\d*|cni\d*|flannel.*|cilium_.*|kube-ipvs\d*)$"
    veth_only: bool = True  # only veths whose peer lives in another netns
    # One ring per network namespace, shared by every pod (8 MiB, not per pod).  A block goes to user
    # space when full or within `ring_retire_ms` of its first frame, so with sparse traffic each block
    # may hold one frame: blocks x retire is how long the capture thread may stall (GC, a metrics
    # collection) before sparse traffic is dropped.
    ring_block_kib: int = 256
    ring_blocks: int = 32
    ring_retire_ms: int = 100
    # Hard cap on the kernel memory of all rings together (one ring is block_kib x blocks).
    ring_memory_mib: int = 256
    # tracker
    max_connections: int = 262_144
    max_half_open: int = 65_536
    syn_timeout_s: float = 20.0
    closing_timeout_s: float = 300.0
    idle_timeout_s: float = 86_400.0
    # socket stats (sock_diag in each pod's namespace): off unless asked for, it needs CAP_SYS_ADMIN
    sockstats: bool = False
    sockstats_interval_s: float = 10.0
    netns_dir: str = "/run/netns"  # where CNI mounts pod network namespaces
    # identity
    inventory: str | None = None
    kube: str = "auto"  # auto | on | off
    kubeconfig: str | None = None
    node_name: str | None = None
    external_cidrs: tuple[tuple[str, str], ...] = ()
    identity_history_s: float = 3600.0
    dns_names: bool = True
    # answers name addresses only from these resolvers, to queries seen ("auto": /etc/resolv.conf,
    # which on a node with dnsPolicy ClusterFirstWithHostNet is the cluster DNS Service)
    dns_resolvers: tuple[str, ...] | None = None  # None: auto
    # TLS handshake insight (tls/): the kernel passes handshake records; bounded reassembly
    tls: bool = True
    tls_max_connections: int = 4096  # connections whose handshake is being reassembled
    tls_max_handshake_kib: int = 32  # per direction of one connection
    # TLS 1.3 certificate prober (off: the agent never dials anyone by default)
    tls_probe: bool = False
    tls_probe_concurrency: int = 4
    tls_probe_timeout_s: float = 3.0
    tls_probe_ttl_s: float = 3600.0
    service_backends: bool = True  # name a Service's connections by the backend conntrack shows
    # telemetry
    otlp: str = "auto"  # auto (on when OTEL_EXPORTER_OTLP_ENDPOINT is set) | on | off
    spans: bool = True
    span_sample_ratio: float = 1.0
    label_pod_names: bool = False
    label_client_port: bool = False
    max_series: int = 20_000
    duration_buckets: tuple[float, ...] = ()  # () = telemetry's default (100 us .. 3.7 h)
    export_queue_size: int = 8192
    # views (views/store.py, views/fanout.py)
    views_window_s: float = 900.0
    views_max_connections: int = 20_000
    views_max_edges: int = 5_000
    views_peers: tuple[str, ...] = ()
    views_peer_selector: str = ""
    views_peer_namespace: str = "podwire"
    views_peer_port: int = 0  # 0: the same port as this agent's listener
    views_peer_timeout_s: float = 2.0
    views_fanout_concurrency: int = 8
    views_max_peers: int = 64
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def ring_bytes(self) -> int:
        """Kernel memory of one capture ring."""
        return self.ring_block_kib * 1024 * self.ring_blocks

    @property
    def max_rings(self) -> int:
        """How many rings fit under the ring memory cap (at least one: load() checks one fits)."""
        return max(1, self.ring_memory_mib * 1024 * 1024 // self.ring_bytes)


# field -> parser; the env name is PODWIRE_<FIELD upper>.
_FIELDS: dict[str, Callable[[str], Any]] = {
    "listen": parse_listen,
    "http_max_connections": _int_in(1, 4096),
    "http_request_timeout_s": _float_in(0.1, 300.0),
    "http_idle_timeout_s": _float_in(0.1, 3600.0),
    "http_backlog": _int_in(1, 4096),
    "http_workers": _int_in(1, 64),
    "log_format": _choice("json", "console"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "netns": _netns_name,
    "interface_include": _regex,
    "interface_exclude": _regex,
    "veth_only": _bool,
    "ring_block_kib": _int_in(PAGE_KIB, MAX_RING_BLOCK_KIB, multiple_of=PAGE_KIB),
    "ring_blocks": _int_in(1, MAX_RING_BLOCKS),
    "ring_retire_ms": _int_in(1, MAX_RING_RETIRE_MS),
    "ring_memory_mib": _int_in(1, MAX_RING_MEMORY_MIB),
    "max_connections": _int_in(1, 16_777_216),
    "max_half_open": _int_in(1, 4_194_304),
    "syn_timeout_s": _float_in(0.01, 3600.0),
    "closing_timeout_s": _float_in(0.01, 86_400.0),
    "idle_timeout_s": _float_in(0.01, 30 * 86_400.0),
    "sockstats": _bool,
    "sockstats_interval_s": _float_in(0.1, 3600.0),
    "netns_dir": _path,
    "inventory": _file_path,
    "kube": _choice("auto", "on", "off"),
    "kubeconfig": _file_path,
    "node_name": _node_name,
    "external_cidrs": parse_cidr_names,
    "identity_history_s": _float_in(1.0, 7 * 86_400.0),
    "dns_names": _bool,
    "dns_resolvers": parse_resolvers,
    "tls": _bool,
    "tls_max_connections": _int_in(1, 1_048_576),
    "tls_max_handshake_kib": _int_in(1, 1024),
    "tls_probe": _bool,
    "tls_probe_concurrency": _int_in(1, 64),
    "tls_probe_timeout_s": _float_in(0.05, 60.0),
    "tls_probe_ttl_s": _float_in(1.0, 604_800.0),
    "service_backends": _bool,
    "otlp": _choice("auto", "on", "off"),
    "spans": _bool,
    "span_sample_ratio": _ratio,
    "label_pod_names": _bool,
    "label_client_port": _bool,
    "max_series": _int_in(1, 1_000_000),
    "duration_buckets": parse_buckets,
    "export_queue_size": _int_in(1, 1_048_576),
    "views_window_s": _float_in(1.0, 86_400.0),
    "views_max_connections": _int_in(1, 1_000_000),
    "views_max_edges": _int_in(1, 100_000),
    "views_peers": parse_peers,
    "views_peer_selector": _label_selector,
    "views_peer_namespace": _label_selector,
    "views_peer_port": _int_in(0, 65535),
    "views_peer_timeout_s": _float_in(0.1, 30.0),
    "views_fanout_concurrency": _int_in(1, 64),
    "views_max_peers": _int_in(1, 1000),
}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def load(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Build Settings from env, then flag overrides (raw strings), collecting every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    known = {env_name(f) for f in _FIELDS}
    for key in sorted(env):
        if key.startswith(ENV_PREFIX) and key not in known:
            problems.append(f"unknown setting {key} (known: see `podwire run --help`)")
    raw: dict[str, tuple[str, str]] = {}
    for name in _FIELDS:
        if env_name(name) in env:
            raw[name] = (env_name(name), env[env_name(name)])
    for name, text in (overrides or {}).items():
        if name not in _FIELDS:
            problems.append(f"unknown setting {name}")
        elif text is not None:
            raw[name] = ("--" + name.replace("_", "-"), text)
    for name, (source, text) in raw.items():
        try:
            values[name] = _FIELDS[name](text)
        except ValueError as exc:
            problems.append(f"bad setting {source}={text!r}: {exc}")
    if problems:
        raise ConfigError(problems)
    settings = dataclasses.replace(base or Settings(), **values)
    ring_kib = settings.ring_block_kib * settings.ring_blocks
    if ring_kib > settings.ring_memory_mib * 1024:
        raise ConfigError(
            [
                f"bad setting {env_name('ring_block_kib')} x {env_name('ring_blocks')}: one ring would be "
                f"{ring_kib // 1024} MiB, above the ring memory cap {env_name('ring_memory_mib')}="
                f"{settings.ring_memory_mib}"
            ]
        )
    return settings
