"""The dashboard is generated, validates against Grafana's dashboard schema, covers the
issue's panels and the documented metrics, and every PromQL expression in it and in the alert
rules parses with promtool."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus

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


def _lost(original: object, decoded: object, path: str = "") -> list[str]:
    """Where ``decoded`` lacks or changes what ``original`` says (it may add defaults)."""
    if isinstance(original, dict) and isinstance(decoded, dict):
        return [
            p
            for key, value in original.items()
            for p in (
                _lost(value, decoded[key], f"{path}/{key}")
                if key in decoded
                else [f"{path}/{key} (unknown to the schema)"]
            )
        ]
    if isinstance(original, list) and isinstance(decoded, list) and len(original) == len(decoded):
        return [
            p
            for i, (a, b) in enumerate(zip(original, decoded, strict=True))
            for p in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if original == decoded else [f"{path}: {original!r} became {decoded!r}"]


def _enum_problems(obj: object, path: str = "") -> list[str]:
    """Values of fields the SDK's models type as an enum (Literal or Enum) that are none of
    its members: from_json copies them as they are, so check them against the type hints."""
    if isinstance(obj, list):
        return [p for i, x in enumerate(obj) for p in _enum_problems(x, f"{path}[{i}]")]
    if isinstance(obj, dict):
        return [p for k, x in obj.items() for p in _enum_problems(x, f"{path}/{k}")]
    if not type(obj).__module__.startswith("grafana_foundation_sdk.models"):
        return []
    problems = []
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name, None)
        if value is None:
            continue
        options = [hint, *typing.get_args(hint)]
        enums = [h for h in options if isinstance(h, type) and issubclass(h, enum.Enum)]
        literals = [
            v for h in options if typing.get_origin(h) is typing.Literal for v in h.__args__
        ]
        allowed = {m.value for e in enums for m in e} | set(literals)
        plain = [
            h for h in options if isinstance(h, type) and h not in enums and h is not type(None)
        ]
        if (enums or literals) and value not in allowed and not isinstance(value, tuple(plain)):
            problems.append(f"{path}/{name}: {value!r} is not one of {sorted(map(str, allowed))}")
        problems += _enum_problems(value, f"{path}/{name}")
    return problems


def schema_problems(data: dict) -> list[str]:
    """Validate a dashboard against Grafana's dashboard schema as grafana-foundation-sdk types
    it (generated from Grafana's CUE kinds): decode it into the SDK's models, with every
    panel plugin and data source registered, and encode it again. A key the schema does not
    know is dropped, a value that does not fit the model fails to decode or comes back
    different, an enum field holds a member of its enum, a panel type without a plugin keeps
    untyped options, and every query is a Prometheus query on a Prometheus data source."""
    register_default_plugins()
    try:
        model = dm.Dashboard.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"does not decode: {exc!r}"]
    problems = _lost(data, json.loads(json.dumps(model, cls=JSONEncoder)))
    problems += _enum_problems(model)
    for panel in model.panels or []:
        if isinstance(panel, dm.RowPanel):
            continue
        if panel.options is None or isinstance(panel.options, dict):
            problems.append(f"{panel.title}: options of panel type {panel.type_val!r} untyped")
        for target in panel.targets or []:
            # The SDK types a query's datasource as a DataSourceRef.
            source = getattr(target, "datasource", None)
            if (
                isinstance(target, UnknownDataquery)
                or not isinstance(target, prometheus.Dataquery)
                or not isinstance(source, dm.DataSourceRef)
                or source.type_val != "prometheus"
            ):
                problems.append(f"{panel.title}: a query that is not a Prometheus query")
    return problems


def test_dashboard_validates_against_grafanas_schema() -> None:
    assert schema_problems(dashboard()) == []


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: d["panels"][1].update(titel="typo"),  # a key the schema does not have
        lambda d: d.update(graphTooltip=7),  # not a DashboardCursorSync
        lambda d: d["panels"][1].update(type="no-such-panel"),  # no plugin: untyped options
        lambda d: d["panels"][1]["targets"][0]["datasource"].update(type="loki"),
    ],
)
def test_the_schema_check_rejects_a_bad_dashboard(spoil) -> None:
    data = dashboard()
    spoil(data)
    assert schema_problems(data) != []


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
        "Flag rate against the alert's baseline",
        "Flag rate by detector",
        "Flag ratio by detector",
        "Flag rate by predicted class",
        "Images by predicted class",
        "Flagged share by predicted class",
        "Score p50 / p95 / p99 against the threshold",
        "Score distribution by model set",
        "Process memory",
        "Process CPU",
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
        assert all("sum by (le, model)" in e for e in exprs)  # one series per model set


def _panel(title: str) -> dict:
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == title]
    return panel


def test_baseline_panel_draws_what_the_spike_alert_compares() -> None:
    rule = rule_exprs()["GuardFlagRateSpike"]
    exprs = [t["expr"] for t in _panel("Flag rate against the alert's baseline")["targets"]]
    rate, baseline, line = exprs
    assert "[5m]" in rate and "[5m]" in rule
    assert "[1d] offset 5m" in baseline and "[1d] offset 5m" in rule
    assert line.startswith("3 * ") and "> 3 * " in rule and line[4:] == baseline


def test_score_panel_marks_the_threshold() -> None:
    panel = _panel("Score p50 / p95 / p99 against the threshold")
    exprs = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert "guard_threshold" in exprs["T"]
    assert all("by (le, model, detector)" in exprs[r] for r in "ABC")
    (override,) = panel["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byFrameRefID", "options": "T"}


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
