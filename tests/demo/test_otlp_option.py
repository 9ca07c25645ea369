"""`podwire demo --otlp-endpoint URL`: the README's first OTLP set-up, with the demo's short interval."""

from __future__ import annotations

import subprocess
import sys

import pytest

from podwire.demo.main import DEMO_EXPORT_INTERVAL_MS, otlp_env


def test_the_option_sets_the_endpoint_and_a_short_export_interval() -> None:
    env = otlp_env("http://127.0.0.1:4317", {"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_METRIC_EXPORT_INTERVAL": DEMO_EXPORT_INTERVAL_MS,
    }
    assert int(DEMO_EXPORT_INTERVAL_MS) <= 5000  # a 60 s default exported a short demo about once


def test_an_endpoint_from_the_environment_gets_the_short_interval_but_a_set_interval_wins() -> None:
    base = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}
    assert otlp_env(None, base)["OTEL_METRIC_EXPORT_INTERVAL"] == DEMO_EXPORT_INTERVAL_MS
    assert (
        otlp_env("https://c:4317", {"OTEL_METRIC_EXPORT_INTERVAL": "1000"})["OTEL_METRIC_EXPORT_INTERVAL"]
        == "1000"
    )
    assert otlp_env(None, {}) == {}  # no collector: nothing changes


@pytest.mark.parametrize("bad", ["127.0.0.1:4317", "ftp://c:4317", "http://:4317", "http://c:99999"])
def test_a_bad_url_is_one_clear_line(bad: str) -> None:
    with pytest.raises(ValueError, match="--otlp-endpoint"):
        otlp_env(bad, {})


def test_the_cli_exits_2_with_one_line_on_a_bad_url() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "podwire", "demo", "--otlp-endpoint", "collector:4317"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--otlp-endpoint" in proc.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "podwire", "demo", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--otlp-endpoint" in help_text
