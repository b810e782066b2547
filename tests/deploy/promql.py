"""What the deployment tests need to know about the PromQL in the dashboard and the rules.

Sources: deploy/grafana/dashboards/*.json and deploy/prometheus/rules/*.yml. Grafana's
template variables are replaced by values Prometheus accepts before anything parses them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "detrigger-guard.json"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
METRICS_DOC = REPO / "docs" / "metrics.md"

# Grafana variables and what stands in for them when Prometheus parses the query.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$model": ".*"}
# PromQL words that look like metric names in a regex scan.
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "increase", "histogram_quantile", "and", "or", "unless",
    "offset", "absent", "on", "ignoring", "group_left", "group_right", "avg", "max", "min",
    "count", "label_values", "le", "bool", "topk", "bottomk",
}  # fmt: skip


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: apt-get install prometheus (.ci/run does)")
    return path


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> dict[str, str]:
    """Panel title (and refId) -> PromQL, for every query of every panel."""
    out = {}
    for panel in dashboard()["panels"]:
        for t in panel.get("targets", []):
            out[f"{panel['title']} [{t['refId']}]"] = t["expr"]
    return out


def alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def rule_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for r in alert_rules()}


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def _strip_strings(expr: str) -> str:
    """Drop label matcher values and quoted strings so their words are not read as names."""
    return re.sub(r'"[^"]*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (names followed by `{`, `[` or a word boundary)."""
    text = _strip_strings(expr)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\{[^}]*\}", " ", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*", n)}


def grouping_labels(expr: str) -> set[str]:
    """Label names in `by (...)` clauses and on the left of matchers."""
    text = _strip_strings(expr)
    labels = set()
    for group in re.findall(r"\bby\s*\(([^)]*)\)", text):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def documented_metrics() -> set[str]:
    """Metric names in the table of docs/metrics.md."""
    return set(
        re.findall(r"^\| `((?:guard|process)_[a-z0-9_]+)` \|", METRICS_DOC.read_text(), re.M)
    )


def series_names(metric: str, kind: str) -> set[str]:
    """The sample names a documented metric exposes: a histogram has _bucket/_sum/_count."""
    if kind == "histogram":
        return {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    return {metric}


def documented_series() -> set[str]:
    out = set()
    for name, kind in re.findall(
        r"^\| `((?:guard|process)_[a-z0-9_]+)` \| ([a-z]+)", METRICS_DOC.read_text(), re.M
    ):
        out |= series_names(name, kind)
    return out


def check_parses(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run promtool check rules on a throwaway file holding each expression as a recording rule."""
    rules = [
        {"record": f"check:expr_{i}", "expr": substitute(expr)}
        for i, expr in enumerate(exprs.values())
    ]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "parse-check", "rules": rules}]}))
    return subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
