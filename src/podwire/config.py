"""Frozen settings from flags and environment (PODWIRE_*), validated once at start.

Every setting is declared once in `_FIELDS`: its env name, its parser and its default.
A bad value or an unknown PODWIRE_* key gives one clear line per problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
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


def parse_cidr_names(text: str) -> tuple[tuple[str, str], ...]:
    """`10.96.0.0/12=cluster-services,0.0.0.0/0=internet` -> ((cidr, name), ...)."""
    out: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        cidr, sep, name = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"entry {part!r} is not CIDR=NAME")
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"entry {part!r}: {exc}") from None
        out.append((str(net), name.strip()))
    return tuple(out)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"must be a number from {low:g} to {high:g}")
        return value

    return parse


def _path(text: str) -> str:
    if not text.startswith("/") or len(text) > 4096:
        raise ValueError("must be an absolute path")
    return text


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


def _regex(text: str) -> str:
    re.compile(text)
    return text


def _text(text: str) -> str:
    return text


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
    # TLS handshake insight (tls/): the kernel passes handshake records; bounded reassembly
    tls: bool = True
    tls_max_connections: int = 4096  # connections whose handshake is being reassembled
    tls_max_handshake_kib: int = 32  # per direction of one connection
    # telemetry
    otlp: str = "auto"  # auto (on when OTEL_EXPORTER_OTLP_ENDPOINT is set) | on | off
    spans: bool = True
    span_sample_ratio: float = 1.0
    label_pod_names: bool = False
    label_client_port: bool = False
    max_series: int = 20_000
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
    "netns": _text,
    "interface_include": _regex,
    "interface_exclude": _regex,
    "veth_only": _bool,
    "ring_block_kib": _positive_int,
    "ring_blocks": _positive_int,
    "ring_retire_ms": _positive_int,
    "max_connections": _positive_int,
    "max_half_open": _positive_int,
    "syn_timeout_s": _positive_float,
    "closing_timeout_s": _positive_float,
    "idle_timeout_s": _positive_float,
    "sockstats": _bool,
    "sockstats_interval_s": _float_in(0.1, 3600.0),
    "netns_dir": _path,
    "inventory": _text,
    "kube": _choice("auto", "on", "off"),
    "kubeconfig": _text,
    "node_name": _text,
    "external_cidrs": parse_cidr_names,
    "identity_history_s": _positive_float,
    "dns_names": _bool,
    "tls": _bool,
    "tls_max_connections": _bounded_int(1, 1_048_576),
    "tls_max_handshake_kib": _bounded_int(1, 1024),
    "otlp": _choice("auto", "on", "off"),
    "spans": _bool,
    "span_sample_ratio": _ratio,
    "label_pod_names": _bool,
    "label_client_port": _bool,
    "max_series": _positive_int,
    "export_queue_size": _positive_int,
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
    return dataclasses.replace(base or Settings(), **values)
