"""The Prometheus names podwire emits, read from src/podwire/telemetry/names.py, and a
PromQL walker that lists the metric and label names an expression uses.

names.py is the contract: each metric constant's comment gives its Prometheus name
(`podwire_tcp_connections_total{outcome}`, `..._seconds_bucket` meaning "the OTel name
with dots as underscores, then this suffix"). Dashboards and alerts may use only those
names, so renaming a metric in names.py without updating them fails the tests.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import promql_parser as pp

ROOT = Path(__file__).resolve().parents[2]
NAMES_PY = ROOT / "src" / "podwire" / "telemetry" / "names.py"

# Series that Prometheus itself makes, allowed besides podwire's own.
PROMETHEUS_BUILTIN_SERIES = frozenset({"up"})
# Labels a scrape or the histogram convention adds.
PROMETHEUS_BUILTIN_LABELS = frozenset({"job", "instance", "le", "__name__"})


@dataclass(frozen=True, slots=True)
class Contract:
    series: frozenset[str]  # every Prometheus series name podwire emits
    labels: frozenset[str]  # every label name on them
    histograms: frozenset[str]  # family names whose _bucket/_sum/_count exist
    # Prometheus family (series name, or histogram family) -> (OTel instrument name, kind)
    # with kind counter | histogram | gauge, as the names.py comments imply.
    instruments: tuple[tuple[str, str, str], ...] = ()


def _constants_with_comments(source: str) -> list[tuple[str, str, str]]:
    """(constant, value, comment) for each `NAME: Final = "value"`; the comment is the one
    on the same line, else a plain comment line right above (not a `# ---` header)."""
    lines = source.splitlines()
    out = []
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            line = lines[node.lineno - 1]
            if "#" in line:
                comment = line.split("#", 1)[1].strip()
            else:
                above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                comment = above[1:].strip() if above.startswith("#") and not above.startswith("# ---") else ""
            out.append((node.target.id, node.value.value, comment))
    return out


def _expand(base: str, token: str) -> str:
    """`..._evictions_total` on base `podwire_agent_tracker_evictions` -> `..._evictions_total`
    joined without repeating the overlap; a token without `...` is a full name."""
    token = token.split("{", 1)[0]
    if not token.startswith("..."):
        return token
    suffix = token[3:]
    for cut in range(len(suffix), 0, -1):
        if base.endswith(suffix[:cut]):
            return base + suffix[cut:]
    return base + suffix


# Constants in names.py whose values are metric labels (OTel attribute names; Prometheus
# turns dots into underscores). Listed by constant so that a renamed *value* is followed.
LABEL_CONSTANTS = (
    "CLIENT_WORKLOAD", "CLIENT_WORKLOAD_KIND", "CLIENT_NAMESPACE", "CLIENT_POD", "CLIENT_PORT",
    "SERVER_WORKLOAD", "SERVER_WORKLOAD_KIND", "SERVER_NAMESPACE", "SERVER_POD", "SERVER_PORT",
    "OUTCOME", "DIRECTION", "REASON", "SENDER", "SIGNAL", "KIND",
    "SG_CLIENT", "SG_SERVER", "SG_CONNECTION_TYPE", "SG_CLIENT_NAMESPACE", "SG_SERVER_NAMESPACE",
    "SM_SERVICE", "SM_SPAN_NAME", "SM_SPAN_KIND", "SM_STATUS_CODE",
    "TLS_ATTR_SERVER_NAME", "TLS_ATTR_VERSION", "TLS_ATTR_CIPHER",
)  # fmt: skip


def _is_metric(const: str, comment: str) -> bool:
    first = comment.split()[0] if comment else ""
    return first.startswith(("podwire_", "traces_", "...")) or (
        const.startswith("SG_REQUEST") and (not comment or comment.startswith("histogram"))
    )


def _is_histogram(const: str, name: str, comment: str) -> bool:
    return (
        name.endswith("_bucket")
        or "histogram" in comment
        or ("DURATION" in const and not name.endswith("_total"))
        or (not comment and name.endswith("_seconds"))
    )


def load_contract(path: Path = NAMES_PY) -> Contract:
    series: set[str] = set()
    histograms: set[str] = set()
    labels: set[str] = set()
    instruments: list[tuple[str, str, str]] = []
    consts = _constants_with_comments(path.read_text())
    values = {const: value for const, value, _ in consts}
    for const in LABEL_CONSTANTS:
        if const in values:  # a removed constant removes its label from the contract
            labels.add(values[const].replace(".", "_"))
    for const, value, comment in consts:
        if not _is_metric(const, comment):
            continue
        base = value.replace(".", "_")
        first = comment.split()[0] if comment else ""
        for group in re.findall(r"\{([^}]*)\}", first):
            labels.update(x.strip() for x in group.split(",") if x.strip())
        name = _expand(base, first) if first.startswith(("podwire_", "traces_", "...")) else base
        name = name.rstrip(":,")
        if _is_histogram(const, name, comment):
            family = name.removesuffix("_bucket")
            histograms.add(family)
            series.update({family + "_bucket", family + "_sum", family + "_count"})
            instruments.append((family, value, "histogram"))
        else:
            series.add(name)
            instruments.append((name, value, "counter" if name.endswith("_total") else "gauge"))
    return Contract(
        frozenset(series),
        frozenset(labels | PROMETHEUS_BUILTIN_LABELS),
        frozenset(histograms),
        tuple(instruments),
    )


# Grafana's template variables are not PromQL: replace them before parsing.
_GRAFANA_RANGE = re.compile(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}")
_GRAFANA_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[(\w+)\]\]")


def substitute_grafana(expr: str) -> str:
    expr = _GRAFANA_RANGE.sub("5m", expr)
    return _GRAFANA_VAR.sub(".*", expr)


@dataclass(frozen=True, slots=True)
class Uses:
    metrics: frozenset[str]
    labels: frozenset[str]
    made_labels: frozenset[str]  # labels the expression creates (label_replace/label_join)


def uses(expr: str) -> Uses:
    """Parse with a real PromQL parser and collect metric names and label names."""
    tree = pp.parse(expr)
    metrics: set[str] = set()
    labels: set[str] = set()
    made: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, pp.VectorSelector):
            if node.name:
                metrics.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    metrics.add(m.value)
                else:
                    labels.add(m.name)
        elif isinstance(node, pp.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, pp.AggregateExpr):
            if node.modifier is not None:
                labels.update(node.modifier.labels)
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(node, pp.Call):
            args = list(node.args)
            if node.func.name == "label_replace":
                made.add(args[1].val)
                labels.add(args[3].val)
            elif node.func.name == "label_join":
                made.add(args[1].val)
                labels.update(a.val for a in args[3:])
            for a in args:
                walk(a)
        elif isinstance(node, pp.BinaryExpr):
            mod = node.modifier
            if mod is not None:
                if mod.matching is not None:
                    labels.update(mod.matching.labels)
                labels.update(mod.group_labels or [])
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
            walk(node.expr)

    walk(tree)
    return Uses(frozenset(metrics), frozenset(labels), frozenset(made))


def problems(expr: str, contract: Contract, where: str) -> list[str]:
    """One line per unknown metric or label in expr."""
    found = uses(expr)
    out = []
    allowed_series = contract.series | PROMETHEUS_BUILTIN_SERIES
    for m in sorted(found.metrics - allowed_series):
        out.append(f"{where}: metric {m!r} is not emitted by podwire (names.py)")
    for label in sorted(found.labels - contract.labels - found.made_labels):
        out.append(f"{where}: label {label!r} is not a podwire label (names.py)")
    return out
