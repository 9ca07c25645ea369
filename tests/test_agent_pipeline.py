"""Pipeline: tracker events reach every sink, named, as real frozen model objects."""

from __future__ import annotations

import pytest

from podwire.agent import CollectingSink, Pipeline
from podwire.model import (
    ACK,
    FIN,
    SYN,
    Batch,
    ConnectionOpened,
    Identity,
    IdentityKind,
    NamedConnection,
    Outcome,
    Segment,
)
from podwire.tracker.tracker import Tracker

C, S = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
NAMES = {"10.0.0.1": Identity(IdentityKind.POD, "client"), "10.0.0.2": Identity(IdentityKind.POD, "server")}


class _Resolver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def resolve(self, address: str, at: float | None) -> Identity:
        self.calls.append((address, at))
        return NAMES[address]


class _OpenedSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.opened: list[tuple[ConnectionOpened, Identity, Identity]] = []

    def on_opened(self, event: ConnectionOpened, client: object, server: object) -> None:
        assert isinstance(client, Identity) and isinstance(server, Identity)
        self.opened.append((event, client, server))


def test_every_sink_gets_each_opened_and_each_named_connection_as_real_frozen_objects() -> None:
    resolver = _Resolver()
    sinks = [_OpenedSink(), _OpenedSink()]
    pipeline = Pipeline(Tracker(), resolver, sinks)
    segments = [
        Segment(10.0, 1, C, S, 40000, 80, 100, 0, SYN, 0, True),
        Segment(10.5, 1, S, C, 80, 40000, 900, 101, SYN | ACK, 0, False),
        Segment(11.0, 1, C, S, 40000, 80, 103, 906, FIN | ACK, 0, True),
        Segment(11.5, 1, S, C, 80, 40000, 906, 104, FIN | ACK, 0, False),
    ]
    for seg in segments:
        pipeline.feed(Batch([seg], []))
    for sink in sinks:
        assert [(o.client.port, c.name, s.name) for o, c, s in sink.opened] == [(40000, "client", "server")]
        (named,) = sink.connections
        assert type(named) is NamedConnection
        record = named.record
        assert named == NamedConnection(record, NAMES["10.0.0.1"], NAMES["10.0.0.2"])
        assert hash(named) == hash(NamedConnection(record, NAMES["10.0.0.1"], NAMES["10.0.0.2"]))
        assert record.outcome is Outcome.CLOSED and record.bytes_client_to_server == 2
        assert record.bytes_server_to_client == 5
        with pytest.raises(AttributeError):  # frozen
            named.client = NAMES["10.0.0.2"]  # type: ignore[misc]
    # names are looked up at the connection's start, once per end per event, not per sink
    assert resolver.calls == [("10.0.0.1", 10.0), ("10.0.0.2", 10.0)] * 2


def test_more_rings_than_the_ring_memory_cap_allows_are_refused_at_start() -> None:
    from podwire.agent import StartError, check_start
    from podwire.config import Settings

    settings = Settings(ring_block_kib=256, ring_blocks=32, ring_memory_mib=16)  # two 8 MiB rings
    with pytest.raises(StartError, match=r"3 capture rings of 8 MiB exceed .*PODWIRE_RING_MEMORY_MIB=16"):
        check_start(settings, ["a", "b", "c"])
