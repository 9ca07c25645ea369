"""The ctnetlink messages podwire packs itself, checked against pyroute2's own marshalling."""

from __future__ import annotations

import socket

import pytest
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    NFCTAttrTuple,
    nfct_msg,
)

from podwire.model import Endpoint
from podwire.sockstats.conntrack import ConntrackBackends, decode_reply_source, encode_get


def _pyroute2(family: int, msg_type: int, seq: int, **tuples: NFCTAttrTuple) -> bytes:
    msg = nfct_msg.create_from(**tuples)
    msg["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | msg_type
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = family
    msg.encode()
    return bytes(msg.data)


@pytest.mark.parametrize(
    ("family", "client", "server"),
    [
        (socket.AF_INET, Endpoint("10.244.0.2", 40000), Endpoint("10.96.0.10", 80)),
        (socket.AF_INET6, Endpoint("fd00:244::2", 51234), Endpoint("fd00:96::a", 443)),
    ],
)
def test_get_request_is_byte_for_byte_what_pyroute2_encodes(
    family: int, client: Endpoint, server: Endpoint
) -> None:
    orig = NFCTAttrTuple(
        family=family,
        saddr=client.address,
        daddr=server.address,
        proto=socket.IPPROTO_TCP,
        sport=client.port,
        dport=server.port,
    )
    assert encode_get(7, client, server) == _pyroute2(family, IPCTNL_MSG_CT_GET, 7, tuple_orig=orig)


def test_reply_tuple_source_is_the_backend() -> None:
    orig = NFCTAttrTuple(saddr="10.244.0.2", daddr="10.96.0.10", proto=6, sport=40000, dport=80)
    reply = NFCTAttrTuple(saddr="10.244.1.7", daddr="10.244.0.2", proto=6, sport=8080, dport=40000)
    data = _pyroute2(socket.AF_INET, IPCTNL_MSG_CT_NEW, 1, tuple_orig=orig, tuple_reply=reply)
    assert decode_reply_source(data, 0, len(data)) == Endpoint("10.244.1.7", 8080)
    v6 = socket.AF_INET6
    reply6 = NFCTAttrTuple(
        family=v6, saddr="fd00:244:1::7", daddr="fd00:244::2", proto=6, sport=8443, dport=1
    )
    orig6 = NFCTAttrTuple(family=v6, saddr="fd00:244::2", daddr="fd00:96::a", proto=6, sport=1, dport=443)
    data6 = _pyroute2(socket.AF_INET6, IPCTNL_MSG_CT_NEW, 1, tuple_orig=orig6, tuple_reply=reply6)
    assert decode_reply_source(data6, 0, len(data6)) == Endpoint("fd00:244:1::7", 8443)


@pytest.mark.parametrize("cut", [0, 4, 16, 20, 30, 45, 60])
def test_truncated_or_foreign_replies_name_nothing(cut: int) -> None:
    orig = NFCTAttrTuple(saddr="10.244.0.2", daddr="10.96.0.10", proto=6, sport=40000, dport=80)
    reply = NFCTAttrTuple(saddr="10.244.1.7", daddr="10.244.0.2", proto=6, sport=8080, dport=40000)
    data = _pyroute2(socket.AF_INET, IPCTNL_MSG_CT_NEW, 1, tuple_orig=orig, tuple_reply=reply)
    assert decode_reply_source(data[:cut], 0, cut) is None
    only_orig = _pyroute2(socket.AF_INET, IPCTNL_MSG_CT_NEW, 1, tuple_orig=orig)
    assert decode_reply_source(only_orig, 0, len(only_orig)) is None


def test_an_unknown_connection_is_not_found_and_counted() -> None:
    """Against this namespace's real conntrack table (root): no entry -> None, counted once."""
    backends = ConntrackBackends(None)
    try:
        if not backends.available:
            pytest.skip(f"conntrack unavailable here: {backends.unavailable_reason}")
        assert backends.backend(Endpoint("192.0.2.1", 1), Endpoint("192.0.2.2", 2), 12345) is None
        assert backends.counts() == {"found": 0, "not_found": 1, "failed": 0, "unavailable": 0}
    finally:
        backends.close()
