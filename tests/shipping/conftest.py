"""Fixtures for the shipping checks: the podwire collector build and Debian's promtool.

helm_bin and kube_api come from tests/peers.py (loaded suite-wide by tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_OTELCOL = REPO / "tools" / "peers" / "build-otelcol.sh"
# A cold collector build on 2 busy cores; CI builds it in scripts/setup.sh first.
OTELCOL_BUILD_TIMEOUT_S = 3600.0


@pytest.fixture(scope="session")
def otelcol_bin() -> Path:
    """The podwire collector distribution (otel/builder-config.yaml), built if missing.

    With PODWIRE_SKIP_PEERS=1 nothing is built: a missing binary skips the test.
    """
    argv = [str(BUILD_OTELCOL)]
    if os.environ.get("PODWIRE_SKIP_PEERS") == "1":
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=OTELCOL_BUILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        if "--check" in argv:
            pytest.skip(f"PODWIRE_SKIP_PEERS=1 and otelcol not built: {proc.stderr.strip()}")
        pytest.fail(f"{BUILD_OTELCOL} failed:\n{proc.stderr[-4000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), proc.stdout
    return path


def _tool(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed (Debian package 'prometheus'; scripts/setup.sh --test installs it)"
        )
    return Path(found)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return _tool("prometheus")


BUILD_JAEGER = REPO / "tools" / "peers" / "build-jaeger.sh"


@pytest.fixture(scope="session")
def jaeger_bin() -> Path:
    """Jaeger v1.76.0 (`cmd/jaeger`, the all-in-one) built from the Go module proxy, if missing.

    With PODWIRE_SKIP_PEERS=1 nothing is built: a missing binary skips the test.
    """
    argv = [str(BUILD_JAEGER)]
    if os.environ.get("PODWIRE_SKIP_PEERS") == "1":
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=OTELCOL_BUILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        if "--check" in argv:
            pytest.skip(f"PODWIRE_SKIP_PEERS=1 and jaeger not built: {proc.stderr.strip()}")
        pytest.fail(f"{BUILD_JAEGER} failed:\n{proc.stderr[-4000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), proc.stdout
    return path
