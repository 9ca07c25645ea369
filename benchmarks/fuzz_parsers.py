"""The long Hypothesis run: the CI fuzz tests' strategies at any count, per parser fed by traffic.

The coverage-guided run of >= 1,000,000 inputs per parser whose figures docs/reliability.md gives is
benchmarks/fuzz_atheris.py: libFuzzer mutates toward new branches, and fast.  Measured on the shared
machine under `nice -n 19`, decoder target: this script 10,000 inputs in 231 s (43/s), atheris
3,883/s; a million here would take hours.

    .venv/bin/python benchmarks/fuzz_parsers.py [--inputs 1000000] [--only decoder,dns,tracker,pcap]

The same targets and strategies as the CI tests (tests/fuzzing.py, tests/capture/test_fuzz.py,
tests/tracker/test_fuzz.py), one input per Hypothesis example (a frame, a DNS message, a segment
sequence, a file), in chunks of 10,000 examples with fresh random seeds.  Per parser it reports
inputs, seconds, the counters every rejection went to, and the process's peak RSS before and
after (memory bounded: the decoder, DNS guard and tracker are reused across the whole run, so
their tables would grow if a bound were missing).  Any exception fails the run.  Writes
benchmarks/results/fuzz_parsers.json.  The pcap target writes a file per input: pass --pcap-inputs
to size it separately.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fuzzing as f
from tests.capture import test_fuzz as cf
from tests.tracker import test_fuzz as tf

from podwire.capture.decode import Decoder
from podwire.capture.dns import DnsGuard, DnsStats
from podwire.model import Segment
from podwire.tracker.tracker import Tracker

CHUNK = 10_000


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(
    name: str, strategy: st.SearchStrategy[Any], target: Callable[[Any], None], inputs: int
) -> dict[str, Any]:
    done = 0
    rss_before = _rss_mib()
    began = time.perf_counter()
    while done < inputs:
        n = min(CHUNK, inputs - done)

        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def chunk(value: Any) -> None:
            target(value)

        chunk()
        done += n
        print(f"  {name}: {done:,} inputs, {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return {
        "inputs": done,
        "seconds": round(time.perf_counter() - began, 1),
        "peak_rss_mib_before": round(rss_before, 1),
        "peak_rss_mib_after": round(_rss_mib(), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--pcap-inputs", type=int, default=None)
    parser.add_argument("--only", default="decoder,dns,tracker,pcap")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    results: dict[str, Any] = {}

    decoder = Decoder(dns=True, tls=True, dns_guard=DnsGuard(None, max_pending=1024))
    if "decoder" in wanted:
        r = _run(
            "decoder",
            st.tuples(st.sampled_from(f.LINKTYPES), cf.frames),
            lambda frame: f.fuzz_decoder(decoder, [frame]),
            args.inputs,
        )
        results["decoder"] = {
            **r,
            "counters": decoder.stats.as_dict(),
            "dns_pending": len(decoder.dns_guard or ()),
        }

    guard, dns_stats = DnsGuard(None, max_pending=1024), DnsStats()
    if "dns" in wanted:
        messages = st.one_of(
            st.builds(f.mutate, st.sampled_from(f.DNS_SEEDS), cf.edits), st.binary(max_size=120)
        )
        r = _run("dns", messages, lambda msg: f.fuzz_dns([msg], guard, dns_stats), args.inputs)
        results["dns"] = {
            **r,
            "counters": {k: getattr(dns_stats, k) for k in DnsStats.__slots__},
            "pending": len(guard),
            "evicted": guard.evicted,
        }

    tracker = Tracker(f.FUZZ_LIMITS)
    clock = [0.0]

    def feed(segs: list[Segment]) -> None:
        clock[0] += 1.0
        f.fuzz_tracker(tracker, [s._replace(ts=s.ts + clock[0]) for s in segs], clock[0])

    if "tracker" in wanted:
        r = _run("tracker", st.lists(tf.segments, max_size=8), feed, args.inputs)
        s = tracker.stats
        results["tracker"] = {
            **r,
            "entries": s.entries,
            "evictions": dict(s.evictions),
            "anomalies": dict(s.anomalies),
        }

    if "pcap" in wanted:
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        r = _run(
            "pcap",
            st.one_of(cf.files, st.binary(max_size=300)),
            lambda data: f.fuzz_pcap(data, shm) and None,
            args.pcap_inputs or args.inputs,
        )
        results["pcap"] = r

    out = Path(__file__).resolve().parent / "results" / "fuzz_parsers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
