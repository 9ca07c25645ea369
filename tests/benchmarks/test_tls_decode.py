"""benchmarks/tls_decode.py at small counts: it runs, every handshake is parsed, the figures are there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tls_decode_benchmark_runs_and_reports_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tls_decode.py"), "--connections", "20", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((ROOT / "benchmarks" / "results" / "tls_decode.json").read_text())
    for key in ("TLS 1.3, one frame per write", "TLS 1.2, MSS-split"):
        figures = result[key]
        assert figures["tap_us_per_segment"] > 0 and figures["whole_us_per_handshake"] > 0
    assert result["TLS 1.2, MSS-split"]["segments_per_handshake"] > 4  # the flight did span segments
    assert result["data"]["decoder_us_per_data_segment_tls_on"] > 0
