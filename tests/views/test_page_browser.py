"""The live map in a real browser: Debian's headless Chromium opens the page a running `podwire demo`
prints, sees the demo's workloads and edges, switches stats mode, clicks an edge, and leaves a
screenshot in test-artifacts/ (or $PODWIRE_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.views.cdp import CHROMIUM, Browser

ROOT = Path(__file__).resolve().parent.parent.parent
LABEL = "document.querySelector('#map [data-label-for=\"shop/frontend->shop/api\"]')"
ARTIFACTS = Path(os.environ.get("PODWIRE_TEST_ARTIFACTS", ROOT / "test-artifacts"))

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (network namespaces)"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/setup.sh --test)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _graph(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "nodegraph/api/graph/data", timeout=10) as r:
        return json.load(r)  # type: ignore[no-any-return]


def test_the_demo_page_draws_the_live_workload_graph_in_chromium(tmp_path: Path) -> None:
    port = _free_port()
    err = (tmp_path / "demo.stderr").open("w")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podwire",
            "demo",
            "--no-tui",
            "--listen",
            f"127.0.0.1:{port}",
            "--duration",
            "300",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        # the demo refuses unknown PODWIRE_* keys: leave out the test suite's own (PODWIRE_SKIP_PEERS, ...)
        env={k: v for k, v in os.environ.items() if not k.startswith("PODWIRE_")},
    )
    try:
        assert demo.stdout is not None
        url = None
        for line in demo.stdout:  # the demo prints the page's address
            if "live service map at " in line:
                url = line.split("live service map at ", 1)[1].strip()
                break
        assert url == f"http://127.0.0.1:{port}/", (
            f"the demo printed no URL (exit {demo.poll()}): {(tmp_path / 'demo.stderr').read_text()[-2000:]}"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = {e["id"] for e in _graph(url)["edges"]}  # type: ignore[attr-defined]
            if {"shop/frontend->shop/api", "shop/api->shop/db"} <= ids:
                break
            time.sleep(1)
        with Browser(url + "?stats-type=connection") as page:
            titles = page.wait_for(
                "(() => { const t = [...document.querySelectorAll('#map .node .title')]"
                ".map(e => e.textContent);"
                " return t.includes('frontend') && t.includes('api') && t.includes('db') ? t : null; })()",
                timeout=30,
            )
            assert {"frontend", "api", "db", "loadgen"} <= set(titles)
            edges = page.evaluate("[...document.querySelectorAll('#map .edge')].map(e => e.dataset.id)")
            assert "shop/frontend->shop/api" in edges and "shop/api->shop/db" in edges
            label = page.evaluate(
                f"[...{LABEL}.querySelectorAll('text')].map(t => t.textContent).join(' | ')"
            )
            assert "established: " in label and "conn/s" in label
            page.screenshot(ARTIFACTS / "views-page-connection.png")

            # switch the stats mode as a user would: the select changes, the graph is redrawn in bytes
            page.evaluate(
                "(() => { const s = document.getElementById('mode'); s.value = 'bytes';"
                " s.dispatchEvent(new Event('change')); })()"
            )
            page.wait_for("document.body.dataset.mode === 'bytes'")
            label = page.wait_for(
                f"(() => {{ const e = {LABEL};"
                " const t = e && [...e.querySelectorAll('text')].map(t => t.textContent).join(' | ');"
                " return t && t.includes('sent: ') ? t : null; })()"
            )
            assert "B/s" in label

            # click an edge: its recent connections are listed
            page.evaluate(
                "document.querySelector('#map .edge[data-id=\"shop/frontend->shop/api\"] path.hit')"
                ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
            )
            rows = page.wait_for(
                "(() => { const t = document.getElementById('edge-connections');"
                " return t && t.rows.length > 1 ? t.rows.length - 1 : null; })()"
            )
            assert rows >= 1
            assert page.evaluate("document.getElementById('detail').className") == "open"
            shot = page.screenshot(ARTIFACTS / "views-page-bytes-edge.png")
            assert shot.stat().st_size > 10_000
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        err.close()
