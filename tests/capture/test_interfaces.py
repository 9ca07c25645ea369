"""Link judgement without a kernel: which netlink messages add, keep or remove a candidate."""

from __future__ import annotations

from typing import Any

from podwire.capture.interfaces import InterfaceWatch, LinkChange, LinkFilter

AF_BRIDGE = 7


class Msg(dict[str, Any]):
    """Stands in for a pyroute2 ifinfmsg: `get()` of fields and NLAs."""


def newlink(
    index: int, name: str, *, family: int = 0, kind: str | None = "veth", netnsid: int | None = 3
) -> Msg:
    m = Msg(event="RTM_NEWLINK", family=family, index=index, ifname=name, ifi_type=1)
    if kind is not None:
        m["IFLA_LINKINFO"] = {"IFLA_INFO_KIND": kind}
    if netnsid is not None:
        m["IFLA_LINK_NETNSID"] = netnsid
    return m


def watch(veth_only: bool = True, exclude: str = "^lo$") -> InterfaceWatch:
    w = InterfaceWatch.__new__(InterfaceWatch)  # no sockets: only _judge is exercised
    w._filter = LinkFilter.from_patterns(".*", exclude, veth_only)
    w._current = {}
    w.events_seen = 0
    w.resyncs = 0
    w.removals = {}
    return w


def judge(w: InterfaceWatch, *msgs: Msg) -> list[tuple[str, bool]]:
    out: list[LinkChange] = []
    for m in msgs:
        w._judge(m, out)
    return [(c.link.name, c.added) for c in out]


def test_bridge_family_and_partial_messages_never_remove() -> None:
    w = watch()
    assert judge(w, newlink(5, "veth5")) == [("veth5", True)]
    bridge_port = Msg(event="RTM_NEWLINK", family=AF_BRIDGE, index=5, ifname="veth5")  # STP state, cost
    partial = newlink(5, "veth5", kind=None, netnsid=None)  # no IFLA_LINKINFO
    assert judge(w, bridge_port, partial, newlink(5, "veth5", family=AF_BRIDGE, kind=None)) == []
    assert w.removals == {}


def test_bridge_message_first_does_not_hide_a_new_pod() -> None:
    # Many pods at once: the bridge message may come before or after the full one.
    w = watch()
    bridge_port = Msg(event="RTM_NEWLINK", family=AF_BRIDGE, index=9, ifname="veth9")
    assert judge(w, bridge_port, newlink(9, "veth9"), bridge_port) == [("veth9", True)]


def test_only_deletion_or_a_full_message_removes_and_says_why() -> None:
    w = watch(exclude="^skip")
    judge(w, newlink(1, "a"), newlink(2, "b"), newlink(3, "c"), newlink(4, "d"))
    assert judge(
        w,
        Msg(event="RTM_DELLINK", family=0, index=1, ifname="a"),
        newlink(2, "b", kind="macvlan", netnsid=None),
        newlink(3, "c", netnsid=None),
        newlink(4, "skipme"),
    ) == [("a", False), ("b", False), ("c", False), ("d", False)]
    assert w.removals == {"deleted": 1, "not_veth": 1, "peer_local": 1, "name_excluded": 1}
    assert judge(w, newlink(1, "a")) == [("a", True)]  # back: captured again


def test_rename_is_an_update_of_the_same_interface() -> None:
    w = watch()
    judge(w, newlink(7, "tmp123"))
    assert judge(w, newlink(7, "vethabc"), newlink(7, "vethabc")) == [("vethabc", True)]
    assert w.removals == {}
