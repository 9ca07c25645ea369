"""Hypothesis: the decoder, the DNS parser and guard, and the pcap/pcapng reader take any bytes.

No exception escapes, every input is counted once, the DNS guard's table stays bounded.  The long
run (>= 1,000,000 inputs per parser) is benchmarks/fuzz_parsers.py.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podwire.capture.decode import Decoder
from podwire.capture.dns import DnsGuard, DnsStats
from tests import fuzzing as f

edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.binary(max_size=24)), max_size=6)
frames = st.one_of(
    st.builds(f.mutate, st.sampled_from(f.FRAME_SEEDS), edits),
    st.binary(max_size=200),
)
FAST = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(st.tuples(st.sampled_from(f.LINKTYPES), frames), min_size=1, max_size=8))
def test_decoder_counts_every_frame_and_never_raises(batch: list[tuple[int, bytes]]) -> None:
    d = Decoder(dns=True, tls=True, dns_guard=DnsGuard(None, max_pending=4))
    f.fuzz_decoder(d, batch)


@FAST
@given(
    st.lists(
        st.one_of(st.builds(f.mutate, st.sampled_from(f.DNS_SEEDS), edits), st.binary(max_size=120)),
        min_size=1,
        max_size=8,
    ),
    st.booleans(),
)
def test_dns_parser_and_guard_take_any_message(messages: list[bytes], guarded: bool) -> None:
    stats = DnsStats()
    guard = DnsGuard(None, max_pending=4) if guarded else None
    f.fuzz_dns(messages, guard, stats)
    used = stats.not_answer + stats.malformed + stats.queries + stats.rejected
    assert used >= 1 or stats.answers >= 1


files = st.builds(
    f.mutate,
    st.builds(
        lambda fmt, recs: fmt(recs),
        st.sampled_from([f.pcap_file, f.pcapng_file]),
        st.lists(st.sampled_from(f.FRAME_SEEDS), max_size=4),
    ),
    edits,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(files, st.binary(max_size=300)))
def test_pcap_reader_reads_or_refuses_any_file_in_one_line(data: bytes) -> None:
    f.fuzz_pcap(data, Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
