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
from collections.abc import Iterator, Mapping
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
    """Entries one at a time off the YAML event stream: memory grows with the entries kept, not
    with the document (PyYAML's whole-document tree took 877 MB for 100,000 pods)."""
    where = f"inventory {source}"
    problems: dict[str, list[str]] = {section: [] for section in SECTIONS}
    entries: dict[str, list[InventoryEntry]] = {section: [] for section in SECTIONS}
    external: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], str] = {}  # (section, ip) -> entry label, for duplicates
    count = 0
    try:
        for section, i, item in _items(text, where):
            count += 1
            if count > MAX_INVENTORY_ENTRIES:
                raise InventoryError([f"{where}: more than {MAX_INVENTORY_ENTRIES} entries (the limit)"])
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
                problems[section].append(f"{where}: {label}: {exc}")
                continue
            dup = False
            for ip in entry.addresses:
                other = seen.get((section, ip))
                if other is not None:
                    problems[section].append(f"{where}: {label}: ip {ip} is already used by {other}")
                    dup = True
                seen[(section, ip)] = label
            if not dup:
                entries[section].append(entry)
    except _NotASection as exc:
        problems[exc.section].append(f"{where}: {exc.section}: expected a list of entries; got {exc.got}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "nesting depth" in problem:  # libyaml's own bound (1,000), met before ours
            raise InventoryError([f"{where}: nested too deep to be an inventory"]) from None
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InventoryError([f"{where}: not valid YAML{at}: {problem}"]) from None
    found = [p for section in SECTIONS for p in problems[section]]
    if found:
        raise InventoryError(found)
    return Inventory(
        source=source,
        entries=tuple(e for section in SECTIONS for e in entries[section]),
        external=tuple(external),
    )


# An inventory is for the demo and hosts outside Kubernetes; a cluster this big uses the API.
MAX_INVENTORY_ENTRIES = 200_000
_MAX_DEPTH = 16  # an entry is two levels deep (a mapping holding an `ips` list)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present


class _NotASection(Exception):
    def __init__(self, section: str, got: str) -> None:
        self.section, self.got = section, got


def _items(text: str, where: str) -> Iterator[tuple[str, int, Any]]:
    """(section, index, value) for each entry of the known sections, in file order, each built
    from the events alone; anything else in the file is skipped event by event."""
    loader = _Loader(text)
    try:
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return
        loader.get_event()  # document start
        anchors: dict[str, yaml.Node] = {}
        if not loader.check_event(yaml.MappingStartEvent):
            doc = loader.construct_document(_compose(loader, anchors, where))
            if doc is None:
                return
            raise InventoryError(
                [f"{where}: expected a mapping with {', '.join(SECTIONS)}; got {_type(doc)}"]
            )
        loader.get_event()
        while not loader.check_event(yaml.MappingEndEvent):
            key = loader.construct_document(_compose(loader, anchors, where))
            if key not in SECTIONS:
                _compose(loader, anchors, where)  # an extra key: its value is read and dropped
                continue
            if loader.check_event(yaml.ScalarEvent) and loader.peek_event().value in ("", "~", "null"):
                loader.get_event()  # `pods:` with nothing: no entries
                continue
            if not loader.check_event(yaml.SequenceStartEvent):
                got = _type(loader.construct_document(_compose(loader, anchors, where)))
                raise _NotASection(str(key), got)
            loader.get_event()
            i = 0
            while not loader.check_event(yaml.SequenceEndEvent):
                yield str(key), i, loader.construct_document(_compose(loader, anchors, where))
                i += 1
            loader.get_event()
        loader.get_event()  # mapping end
        loader.get_event()  # document end
        if not loader.check_event(yaml.StreamEndEvent):
            raise InventoryError([f"{where}: expected one YAML document, found more"])
    finally:
        loader.dispose()


def _compose(loader: Any, anchors: dict[str, yaml.Node], where: str) -> yaml.Node:
    """One node from the event stream, built without recursion and at most _MAX_DEPTH deep."""
    stack: list[yaml.CollectionNode] = []
    while True:
        event = loader.get_event()
        start: Any = event.start_mark  # libyaml's or PyYAML's Mark: both serve error messages
        end: Any = event.end_mark
        node: yaml.Node
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise yaml.YAMLError(f"found undefined alias {event.anchor!r}")
            node = anchors[event.anchor]
        elif isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(tag, event.value, start, end, style=event.style)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            kind: type[yaml.CollectionNode]
            kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(kind, None, event.implicit)
            node = kind(tag, [], start, None, flow_style=event.flow_style)
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            node = stack.pop()
            node.end_mark = end
            if isinstance(node, yaml.MappingNode) and node.value and len(node.value[-1]) == 1:
                raise yaml.YAMLError("a mapping key without a value")
        else:
            raise yaml.YAMLError(f"unexpected {type(event).__name__}")
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            anchors[anchor] = node
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if len(stack) >= _MAX_DEPTH:
                raise InventoryError([f"{where}: nested too deep to be an inventory"])
            _attach(stack, node)
            stack.append(node)  # type: ignore[arg-type]
            continue
        if not stack:
            return node
        if not isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            _attach(stack, node)
        elif not stack:
            return node


def _attach(stack: list[yaml.CollectionNode], node: yaml.Node) -> None:
    if not stack:
        return
    parent = stack[-1]
    if isinstance(parent, yaml.SequenceNode):
        parent.value.append(node)
    elif parent.value and len(parent.value[-1]) == 1:  # the value of a key already read
        parent.value[-1] = (parent.value[-1][0], node)
    else:
        parent.value.append((node,))


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
