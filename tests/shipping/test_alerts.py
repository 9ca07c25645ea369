"""alerts/: the plain rule file is valid for promtool, every alert has unit tests that
fire and stay quiet, annotations and runbooks are complete, and every expression uses
only metric and label names that podwire emits (names.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.shipping.promql_names import load_contract, problems

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULES = ALERTS / "podwire-rules.yaml"
TESTS = ALERTS / "tests.yaml"
README = ALERTS / "README.md"


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [r for r in _rules() if "alert" in r]


def _github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_promtool_check_rules_accepts_the_rule_file(promtool: Path) -> None:
    proc = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    proc = subprocess.run([promtool, "test", "rules", TESTS], capture_output=True, text=True, cwd=ALERTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_unit_tests_catch_a_changed_threshold(promtool: Path, tmp_path: Path) -> None:
    # The same tests against a rule file whose failure threshold moved from 5% to 50%
    # must fail: the tests pin the behaviour, they are not vacuous.
    shutil.copy(TESTS, tmp_path / "tests.yaml")
    text = RULES.read_text()
    assert ") > 0.05\n" in text
    (tmp_path / "podwire-rules.yaml").write_text(text.replace(") > 0.05\n", ") > 0.5\n"))
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "PodwireEdgeConnectionFailureRatioHigh" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names == {
        "PodwireEdgeConnectionFailureRatioHigh",
        "PodwireEdgeResetSpike",
        "PodwireAgentKernelDrops",
        "PodwireAgentDown",
        "PodwireAgentAbsent",
        "PodwireTlsCertificateExpiringSoon",
        "PodwireTlsDeprecatedVersion",
    }
    assert names - firing == set(), "alerts with no firing test"
    assert names - quiet == set(), "alerts with no not-firing test"


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    anchors = {_github_anchor(m) for m in re.findall(r"^## (.+)$", README.read_text(), re.M)}
    for alert in _alerts():
        ann = alert["annotations"]
        assert ann.get("summary") and ann.get("description"), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        url = ann["runbook_url"]
        assert url.startswith("alerts/README.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: no README section for {url}"


def test_alert_expressions_use_only_podwire_names() -> None:
    contract = load_contract()
    found = []
    for alert in _alerts():
        found += problems(alert["expr"], contract, alert["alert"])
    assert found == []


def test_name_check_flags_a_metric_that_podwire_does_not_emit() -> None:
    # The drift check itself can fail: a renamed metric or label is reported.
    contract = load_contract()
    bad = "sum by (client_workload, pod) (rate(podwire_tcp_connection_total[5m]))"
    assert problems(bad, contract, "x") == [
        "x: metric 'podwire_tcp_connection_total' is not emitted by podwire (names.py)",
        "x: label 'pod' is not a podwire label (names.py)",
    ]
