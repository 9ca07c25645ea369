"""`benchmarks/run --quick` as CI runs it: the whole table's scenarios at small counts, checking
exactness (agent and replay against what was sent and what tshark lists) and memory bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, AF_PACKET)")


def test_benchmarks_run_quick_is_exact_and_within_bounds(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "run"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == [] and result["cpu_count"] == os.cpu_count()
    assert {run["mode"] for run in result["agent"]} == {"metrics", "spans"}
    for run in result["agent"]:
        assert run["exact"] and run["closed_counted"] == run["connections"] and run["kernel_drops"] == 0
        assert run["agent_us_per_conn"] > 0
    assert len(result["replay"]) == 2
    for rep in result["replay"]:
        assert rep["records_closed"] == rep["connections"] == rep["tshark_conversations"]
    assert 0 < result["tracker_bytes_per_open_connection"]["10000"] <= 450
    assert "podwire run" in proc.stdout and "tshark" in proc.stdout
