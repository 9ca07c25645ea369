"""The image built and run for real: scripts/build-image.sh builds the Dockerfile with Debian's
podman on the debootstrap bookworm stand-in base (cached outside the clone by
`scripts/setup.sh --test`), then runs the image in a container (runc, no capabilities, no network,
read-only root): `podwire --version`, and `podwire replay` of a pcap written here, whose record must
carry exactly the bytes the pcap holds.  3-7 minutes on the shared machine with the base cached."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from podwire import __version__
from tests.pcaps import one_connection

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/podwire:test"
MAX_IMAGE_BYTES = 700_000_000  # 601 MB measured (the stand-in base is 273 MB of it): catch bloat


@pytest.mark.timeout(1500)  # cold (no cached base): debootstrap first, ~9 min more
def test_the_image_builds_and_runs_version_and_replay_in_a_container(tmp_path: Path) -> None:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/setup.sh --test installs them)")
    pcap = tmp_path / "one.pcap"
    one_connection(pcap, up=123, down=4567)
    pcap.chmod(0o644)
    tmp_path.chmod(0o755)  # read by the image's non-root user through the bind mount
    out = subprocess.run(
        ["bash", str(REPO / "scripts/build-image.sh"), str(pcap)],
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert f"podwire {__version__}" in lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == 1, out.stdout[-2000:]
    (record,) = records
    assert (record["client"]["address"], record["server"]["address"], record["server"]["port"]) == (
        "10.0.0.1",
        "10.0.0.2",
        80,
    )
    assert (record["bytes_client_to_server"], record["bytes_server_to_client"]) == (123, 4567)
    assert (record["outcome"], record["close_initiator"]) == ("closed", "server")
    size = re.search(r"^image size: (\d+) bytes$", out.stdout, re.MULTILINE)
    assert size is not None, out.stdout[-2000:]
    assert 100_000_000 < int(size.group(1)) < MAX_IMAGE_BYTES
    user = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Config.User}}", IMAGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert user == "10001:10001"
