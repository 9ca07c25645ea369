"""The static inventory: a YAML file naming IPs, for the demo and for hosts outside Kubernetes.

    pods:     [{ip: 10.1.0.5, namespace: shop, name: frontend-7d9f-x2k, workload: frontend,
                workload_kind: Deployment, node: node-a}]
    services: [{ip: 10.96.0.20, namespace: shop, name: payments}]
    nodes:    [{ip: 192.168.1.10, name: node-a}]
    external: [{cidr: 203.0.113.0/24, name: partner-api}, {cidr: 0.0.0.0/0, name: internet}]

Extra keys are allowed (and ignored).  `ips: [...]` may be given beside or instead of `ip`
for dual-stack entries; `host_network: true` on a pod names it as its node.  Every problem is
reported as one line naming the entry; no traceback reaches the user.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from podwire.config import ConfigError
from podwire.identity.external import CidrError, CidrTable
from podwire.identity.index import NEG_INF, IdentityIndex, canonical_ip, make_identity
from podwire.model import Identity, IdentityKind

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod")
SECTIONS = ("pods", "services", "nodes", "external")


class InventoryError(ConfigError):
    """The inventory file is unreadable or has bad entries; one line per problem."""


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    key: str
    addresses: tuple[str, ...]
    identity: Identity


@dataclass(frozen=True, slots=True)
class Inventory:
    source: str
    entries: tuple[InventoryEntry, ...]
    external: tuple[tuple[str, str], ...]  # (cidr, name), in file order

    def apply(self, index: IdentityIndex, at: float = NEG_INF) -> None:
        """Put every entry into the index (static: held since forever)."""
        for entry in self.entries:
            index.set(entry.key, entry.addresses, entry.identity, at)


# A regular file of at most this size: /dev/zero or a FIFO would be read forever.
MAX_INVENTORY_BYTES = 64 << 20


def load(path: str | Path) -> Inventory:
    src = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore it)
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InventoryError([f"inventory {src}: not a regular file"])
            data = f.read(MAX_INVENTORY_BYTES + 1)
    except OSError as exc:
        raise InventoryError([f"inventory {src}: cannot read it: {exc.strerror or exc}"]) from None
    if len(data) > MAX_INVENTORY_BYTES:
        raise InventoryError([f"inventory {src}: larger than {MAX_INVENTORY_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"inventory {src}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise InventoryError([problem]) from None
    return parse(text, src)


def parse(text: str, source: str = "<inventory>") -> Inventory:
    where = f"inventory {source}"
    try:
        doc = yaml.safe_load(text)
    except RecursionError:  # the composer recurses per nesting level; ours has four
        raise InventoryError([f"{where}: nested too deep to be an inventory"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InventoryError([f"{where}: not valid YAML{at}: {problem}"]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise InventoryError([f"{where}: expected a mapping with {', '.join(SECTIONS)}; got {_type(doc)}"])
    problems: list[str] = []
    entries: list[InventoryEntry] = []
    external: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], str] = {}  # (section, ip) -> entry label, for duplicates
    for section in SECTIONS:
        items = doc.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.append(f"{where}: {section}: expected a list of entries; got {_type(items)}")
            continue
        for i, item in enumerate(items):
            label = f"{section}[{i}]"
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                label += f" ({item['name']})"
            try:
                if not isinstance(item, Mapping):
                    raise _Bad(f"expected a mapping; got {_type(item)}")
                if section == "external":
                    external.append(_external(item))
                    continue
                entry = _entry(section, i, item)
            except _Bad as exc:
                problems.append(f"{where}: {label}: {exc}")
                continue
            dup = False
            for ip in entry.addresses:
                other = seen.get((section, ip))
                if other is not None:
                    problems.append(f"{where}: {label}: ip {ip} is already used by {other}")
                    dup = True
                seen[(section, ip)] = label
            if not dup:
                entries.append(entry)
    if problems:
        raise InventoryError(problems)
    return Inventory(source=source, entries=tuple(entries), external=tuple(external))


class _Bad(Exception):
    pass


def _type(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _text(item: Mapping[str, Any], key: str, required: bool = True) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            raise _Bad(f"missing {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(f"{key!r} must be a string; got {_type(value)}")
    text = str(value).strip()
    if not text:
        if required:
            raise _Bad(f"{key!r} is empty")
        return None
    return text


def _addresses(item: Mapping[str, Any]) -> tuple[str, ...]:
    raw: list[Any] = []
    if item.get("ip") is not None:
        raw.append(item["ip"])
    ips = item.get("ips")
    if ips is not None:
        if not isinstance(ips, list):
            raise _Bad(f"'ips' must be a list of addresses; got {_type(ips)}")
        raw.extend(ips)
    if not raw:
        raise _Bad("missing 'ip'")
    out: list[str] = []
    for value in raw:
        if not isinstance(value, str):
            raise _Bad(f"ip {value!r} is not an IP address (write it as a string)")
        try:
            out.append(canonical_ip(value.strip()))
        except ValueError:
            raise _Bad(f"ip {value!r} is not an IP address") from None
    return tuple(dict.fromkeys(out))


def _entry(section: str, i: int, item: Mapping[str, Any]) -> InventoryEntry:
    addrs = _addresses(item)
    name = _text(item, "name")
    assert name is not None
    if section == "pods":
        namespace = _text(item, "namespace")
        kind = _text(item, "workload_kind", required=False) or "Pod"
        if kind not in WORKLOAD_KINDS:
            raise _Bad(f"workload_kind {kind!r} is not one of {', '.join(WORKLOAD_KINDS)}")
        workload = _text(item, "workload", required=False) or name
        node = _text(item, "node", required=False)
        host_network = item.get("host_network", False)
        if not isinstance(host_network, bool):
            raise _Bad(f"'host_network' must be true or false; got {host_network!r}")
        if host_network:
            if node is None:
                raise _Bad("a host_network pod needs 'node' (it is named as its node)")
            ident = make_identity(IdentityKind.NODE, node, node=node, host_network=True)
        else:
            ident = make_identity(
                IdentityKind.POD, name, namespace=namespace, workload=workload, workload_kind=kind, node=node
            )
    elif section == "services":
        namespace = _text(item, "namespace")
        ident = make_identity(IdentityKind.SERVICE, name, namespace=namespace)
    else:
        ident = make_identity(IdentityKind.NODE, name, node=name)
    return InventoryEntry(key=f"inventory/{section}/{i}", addresses=addrs, identity=ident)


def _external(item: Mapping[str, Any]) -> tuple[str, str]:
    cidr = _text(item, "cidr")
    name = _text(item, "name")
    assert cidr is not None and name is not None
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise _Bad(f"cidr {cidr!r} is not a network: {exc}") from None
    try:
        CidrTable([(str(net), name)])
    except CidrError as exc:
        raise _Bad(str(exc)) from None
    return (str(net), name)
