"""Every PromQL query in dashboards/*.json (panel targets and template variables)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<sel>.+),\s*)?(?P<label>\w+)\)$")
QUERY_RESULT = re.compile(r"^query_result\((?P<expr>.+)\)$")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dash: dict) -> Iterator[dict]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries(dash: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and template-variable query."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield f"{dash['uid']} panel {p['id']} '{p['title']}' {t['refId']}", t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        if m := QUERY_RESULT.match(q):
            yield f"{dash['uid']} variable {var['name']}", m["expr"]
        elif m := LABEL_VALUES.match(q):
            yield f"{dash['uid']} variable {var['name']}", f"count by ({m['label']}) ({m['sel']})"
        else:
            raise AssertionError(f"unsupported variable query {q!r}")


def all_dashboard_queries() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for f in FILES:
        out += list(dashboard_queries(json.loads(f.read_text())))
    return out
