"""tracker room: sans-I/O TCP connection tracking (SYN/FIN/RST segments in, connection events out).

`tracker.Tracker` keeps the books; `transitions.TABLE` holds every rule.
"""

from podwire.tracker.tracker import Events, Tracker, TrackerLimits, TrackerStats

__all__ = ["Events", "Tracker", "TrackerLimits", "TrackerStats"]
