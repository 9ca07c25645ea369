"""settle_heap(): what start-up built leaves the collector's generations; what comes later stays."""

from __future__ import annotations

import gc

from podwire.agent import GC_YOUNG_THRESHOLD, settle_heap


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_settle_heap_freezes_startup_objects_and_later_cycles_are_still_collected() -> None:
    before = _Node()
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        assert not any(o is before for o in gc.get_objects())  # frozen: never walked again
        later = _Node()
        later.peer = _Node()
        later.peer.peer = later  # a cycle made after start-up
        assert any(o is later for o in gc.get_objects())
        del later
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
