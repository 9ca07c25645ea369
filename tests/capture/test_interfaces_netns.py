"""InterfaceWatch against a real kernel: it lists the namespace it was made for, from any thread."""

from __future__ import annotations

import os
import threading

import pytest

from podwire.capture import netns
from podwire.capture.interfaces import InterfaceWatch, LinkChange, LinkFilter
from tests.capture.nets import pods_namespace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def test_a_relist_from_another_thread_lists_the_node_namespace_not_the_callers() -> None:
    with pods_namespace(2) as pods:
        with netns.inside(pods.node):
            watch = InterfaceWatch(LinkFilter.from_patterns(".*", "^lo$", True), pods.node)
        try:
            first = watch.initial()
            assert sorted(c.link.name for c in first if c.added) == sorted(pods.host_ifs)
            # The capture thread re-lists after a netlink overflow: the same links, nothing removed.
            out: dict[str, list[LinkChange]] = {}
            t = threading.Thread(target=lambda: out.setdefault("relist", watch.initial()))
            t.start()
            t.join(10)
            assert out["relist"] == []
            assert watch.removals == {}
        finally:
            watch.close()
