"""Hypothesis: any sequence of control segments (orders, flags, numbers, wraps) never raises out of
the tracker, and its tables stay under their bounds.  Long run: benchmarks/fuzz_parsers.py."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podwire.tracker.tracker import Tracker
from tests import fuzzing as f

segments = st.builds(
    f.segment,
    st.floats(0, 30, allow_nan=False),
    st.integers(0, 2),
    st.integers(0, 2),
    st.sampled_from([80, 443, 40000, 40001]),
    st.sampled_from([80, 443, 40000, 40001]),
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**32 - 1, 2**31])),
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**32 - 1])),
    st.sampled_from(f.CONTROL_FLAGS),
    st.integers(0, 70_000),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(segments, max_size=40), st.floats(0, 100, allow_nan=False))
def test_tracker_takes_any_segment_sequence_within_its_bounds(segs: list, now: float) -> None:
    tracker = Tracker(f.FUZZ_LIMITS)
    f.fuzz_tracker(tracker, sorted(segs, key=lambda s: s.ts), now)
    f.fuzz_tracker(tracker, segs, now + 100)  # out of order, late
