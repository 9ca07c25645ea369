"""The OTLP exporters load only when OTLP export is on (grpc + protobuf: ~30 MB resident)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from podwire.config import Settings
from podwire.telemetry.export import Telemetry
t = Telemetry(Settings(otlp="{otlp}"), env={env})
t.metrics_text()
roots = {{m.split(".")[0] for m in sys.modules}}
loaded = sorted(roots & {{"grpc", "scapy", "kubernetes"}})
print("loaded:" + ",".join(loaded))
t.shutdown(2)
"""


def _loaded(otlp: str, env: dict[str, str]) -> str:
    code = CODE.format(otlp=otlp, env=repr(env))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("loaded:")]
    return line.removeprefix("loaded:")


def test_metrics_only_loads_no_exporter_and_otlp_on_loads_grpc() -> None:
    assert _loaded("off", {}).strip() == ""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert _loaded("on", env).strip() == "grpc"
