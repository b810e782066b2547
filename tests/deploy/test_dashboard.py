"""The dashboard is generated, covers the issue's panels and the documented metrics, and
every PromQL expression in it and in the alert rules parses with promtool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.promql import (
    REPO,
    check_parses,
    dashboard,
    dashboard_exprs,
    documented_metrics,
    documented_series,
    metric_names,
    rule_exprs,
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], capture_output=True, text=True, timeout=60
    )


def test_dashboard_json_is_what_the_code_generates() -> None:
    result = _run("deploy/grafana/dashboard.py", "--check")
    assert result.returncode == 0, result.stderr


def test_kubernetes_monitoring_objects_are_rendered_from_the_sources() -> None:
    result = _run("deploy/k8s/render_monitoring.py", "--check")
    assert result.returncode == 0, result.stderr


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    exprs = {**dashboard_exprs(), **rule_exprs()}
    assert len(exprs) > 20
    result = check_parses(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_parse_check_rejects_bad_promql(tmp_path: Path) -> None:
    """The check above can fail: an unbalanced expression does not pass."""
    result = check_parses(
        {"bad": "sum by (model) (rate(guard_images_total[$__rate_interval])"}, tmp_path
    )
    assert result.returncode != 0


def test_dashboard_uses_only_documented_metrics_and_uses_them_all() -> None:
    used = set().union(*map(metric_names, dashboard_exprs().values()))
    allowed = documented_series() | {"up"}  # `up` is Prometheus' own
    assert used - allowed == set()
    used_metrics = {m for m in documented_metrics() if any(u.startswith(m) for u in used)}
    assert documented_metrics() - used_metrics == set(), "documented metrics with no panel"


def test_rules_use_only_documented_metrics() -> None:
    used = set().union(*map(metric_names, rule_exprs().values()))
    assert used - (documented_series() | {"up"}) == set()


def _titles() -> list[str]:
    return [p["title"] for p in dashboard()["panels"] if p["type"] != "row"]


@pytest.mark.parametrize(
    "title",
    [
        "Flag rate by model set",
        "Flag rate by predicted class",
        "Flag ratio by model set",
        "Request rate by route",
        "Errors by status class",
        "Latency per request (stage total)",
        "Decode latency (stage decode)",
        "Queue wait (stage queue)",
        "Inference latency (stage inference)",
        "Batch size p50 / p95 / p99",
        "Queue depth",
        "Provider in use",
        "Readiness by model set",
        "Upstream latency p50 / p95 / p99",
        "Upstream errors by kind",
        "Upstream circuit breaker",
        "Upstream readiness",
    ],
)
def test_issue_panels_are_there(title: str) -> None:
    assert title in _titles()


def test_latency_panels_show_p50_p95_p99_of_their_stage() -> None:
    for panel in dashboard()["panels"]:
        if "(stage " not in panel["title"]:
            continue
        stage = panel["title"].split("(stage ")[1].rstrip(")")
        exprs = [t["expr"] for t in panel["targets"]]
        assert [e.split(",")[0] for e in exprs] == [
            "histogram_quantile(0.5",
            "histogram_quantile(0.95",
            "histogram_quantile(0.99",
        ]
        assert all(f'stage="{stage}"' in e for e in exprs)


def test_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'job="detrigger-guard"' in t["expr"], p["title"]


def test_docs_explain_every_panel_and_every_alert() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    rows = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")}
    assert set(_titles()) - rows == set(), "panels docs/deploy.md does not explain"
    assert set(rule_exprs()) - rows == set(), "alerts docs/deploy.md does not explain"
