"""Coverage-guided fuzzing of the parsers fed by traffic with atheris (libFuzzer), >= 1,000,000
inputs per parser (issue 14).  One parser per process:

    nice -n 19 .venv/bin/python benchmarks/fuzz_atheris.py PARSER [--runs 1000000]

PARSER: decoder (frames on any link type), dns (messages through the spoofing guard), dns_open (no
guard: every answer reaches the record parser), tracker (control-segment sequences), pcap (files).

(`pip install atheris`: a binary wheel for CPython 3.11, not a project dependency.)  podwire's
capture and tracker modules are instrumented, so libFuzzer mutates toward new branches, starting
from real frames, DNS messages and pcap/pcapng files (tests/fuzzing.py's seeds).  The checks are
tests/fuzzing.py's: any exception or failed check escapes to libFuzzer, which stops the run and
writes the input as crash-<sha1>; a run that reaches --runs had none.  One decoder, DNS guard and
tracker serve the whole run, so a missing bound would show as growing tables and RSS.  The
counters every input went to, the peak RSS and the rate are written to
benchmarks/results/fuzz_atheris_<parser>.json every 100,000 inputs and at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["podwire.capture", "podwire.tracker"]):
    from tests import fuzzing as f

    from podwire.capture.decode import Decoder
    from podwire.capture.dns import DnsGuard, DnsStats, parse_answers
    from podwire.capture.pcap import PcapError, PcapSource
    from podwire.model import Segment
    from podwire.tracker.tracker import Tracker

RESULTS = Path(__file__).resolve().parent / "results"
REPORT_EVERY = 100_000


class Target:
    """One parser: `one(data)` runs an input, `counters()` says where every input went."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs = 0
        if name == "decoder":
            self.decoder = Decoder(dns=True, tls=True, dns_guard=DnsGuard(None, max_pending=1024))
        elif name in ("dns", "dns_open"):
            self.guard = DnsGuard(None, max_pending=1024) if name == "dns" else None
            self.dns_stats = DnsStats()
        elif name == "tracker":
            self.tracker = Tracker(f.FUZZ_LIMITS)
            self.now = 0.0
        elif name == "pcap":
            self.dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
            self.refused = self.read = self.records = 0
        else:
            raise SystemExit(f"unknown parser {name!r} (decoder, dns, dns_open, tracker, pcap)")

    def seeds(self) -> list[bytes]:
        if self.name == "decoder":
            return [bytes([1]) + s for s in f.FRAME_SEEDS]  # first byte: the link type
        if self.name in ("dns", "dns_open"):
            return [bytes([d]) + s for s in f.DNS_SEEDS for d in (0, 1)]  # first byte: the direction
        if self.name == "tracker":
            return [bytes(range(i, i + 40)) for i in range(0, 200, 40)]
        return [fmt(list(f.FRAME_SEEDS[:n])) for fmt in (f.pcap_file, f.pcapng_file) for n in (0, 1, 4)]

    def one(self, data: bytes) -> None:
        self.inputs += 1
        if self.name == "decoder":
            if data:
                frame = (f.LINKTYPES[data[0] % len(f.LINKTYPES)], data[1:])
                f.fuzz_decoder(self.decoder, [frame])
        elif self.name in ("dns", "dns_open"):
            if data:
                flow = (f.A4, 40000, f.B4, 53) if data[0] & 1 else (f.B4, 53, f.A4, 40000)
                out: list[Any] = []
                parse_answers(data, 1, len(data), float(self.inputs), out, self.dns_stats, self.guard, flow)
                assert len(out) <= 64
                assert self.guard is None or len(self.guard) <= self.guard.max_pending
        elif self.name == "tracker":
            self.tracker_input(data)
        else:
            self.pcap_input(data)
        if self.inputs % REPORT_EVERY == 0:
            self.report()

    def tracker_input(self, data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        self.now += 1.0
        segs: list[Segment] = []
        for _ in range(fdp.ConsumeIntInRange(0, 8)):
            ports = (80, 443, 40000, 40001)
            segs.append(
                f.segment(
                    self.now + fdp.ConsumeIntInRange(0, 30_000) / 1000,
                    fdp.ConsumeIntInRange(0, 2),
                    fdp.ConsumeIntInRange(0, 2),
                    ports[fdp.ConsumeIntInRange(0, 3)],
                    ports[fdp.ConsumeIntInRange(0, 3)],
                    fdp.ConsumeInt(4) & 0xFFFFFFFF,
                    fdp.ConsumeInt(4) & 0xFFFFFFFF,
                    f.CONTROL_FLAGS[fdp.ConsumeIntInRange(0, len(f.CONTROL_FLAGS) - 1)],
                    fdp.ConsumeIntInRange(0, 70_000),
                )
            )
        f.fuzz_tracker(self.tracker, segs, self.now)

    def pcap_input(self, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(dir=self.dir, suffix=".pcap") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                source = PcapSource(tmp.name, dns=True)
            except PcapError as exc:
                assert "\n" not in str(exc)
                self.refused += 1
                return
            try:
                while (batch := source.poll()) is not None:
                    assert all(isinstance(s, Segment) for s in batch.segments)
                assert source.decoder.stats.frames == source.stats.packets
                self.read += 1
                self.records += source.stats.packets
            finally:
                source.close()

    def counters(self) -> dict[str, Any]:
        if self.name == "decoder":
            return {**self.decoder.stats.as_dict(), "dns_pending": len(self.decoder.dns_guard or ())}
        if self.name in ("dns", "dns_open"):
            s = self.dns_stats
            pending = len(self.guard) if self.guard is not None else None
            return {**{k: getattr(s, k) for k in DnsStats.__slots__}, "pending": pending}
        if self.name == "tracker":
            t = self.tracker.stats
            return {
                "entries": t.entries,
                "half_open": t.half_open,
                "evictions": dict(t.evictions),
                "anomalies": dict(t.anomalies),
            }
        return {"files_refused": self.refused, "files_read": self.read, "records_read": self.records}

    def report(self) -> None:
        took = time.perf_counter() - BEGAN
        doc = {
            "parser": self.name,
            "inputs": self.inputs,
            "seconds": round(took, 1),
            "inputs_per_s": round(self.inputs / took) if took else None,
            "exceptions_escaped": 0,  # one would have stopped the run before this report
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "counters": self.counters(),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"fuzz_atheris_{self.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc), file=sys.stderr, flush=True)


BEGAN = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parser", choices=("decoder", "dns", "dns_open", "tracker", "pcap"))
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--max-len", type=int, default=2048)
    args, libfuzzer = parser.parse_known_args()
    target = Target(args.parser)
    corpus = Path(tempfile.mkdtemp(prefix=f"podwire-fuzz-{args.parser}-"))
    for i, seed in enumerate(target.seeds()):
        (corpus / f"seed{i}").write_bytes(seed)

    def one(data: bytes) -> None:
        target.one(data)
        if target.inputs == args.runs:
            target.report()

    argv = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-max_len={args.max_len}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={RESULTS}/crash-{args.parser}-",
        *libfuzzer,
        str(corpus),
    ]
    RESULTS.mkdir(exist_ok=True)
    atheris.Setup(argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
