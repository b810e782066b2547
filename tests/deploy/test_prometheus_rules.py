"""The Prometheus config and alert rules pass promtool, and every alert is unit-tested."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.promql import PROMETHEUS_DIR, RULE_FILES, alert_rules, promtool

UNIT_TESTS = PROMETHEUS_DIR / "tests" / "guard-alerts.test.yml"


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_prometheus_config_is_valid() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The config loads the rules (check config follows rule_files).
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(UNIT_TESTS.relative_to(PROMETHEUS_DIR)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_summary_runbook_and_severity() -> None:
    rules = alert_rules()
    assert len(rules) >= 6
    for rule in rules:
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), rule["alert"]
        assert annotations.get("runbook", "").strip(), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"page", "warning"}, rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts with no firing test"
    assert names - quiet == set(), "alerts with no quiet test"


def test_issue_alerts_are_all_there() -> None:
    """Flag-rate spike, flag ratio, errors, p99 latency, not ready, down, upstream down."""
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    assert "offset" in exprs["GuardFlagRateSpike"]  # compared with its own past
    assert "guard_images_total" in exprs["GuardFlagRatioHigh"]
    assert 'status_class="5xx"' in exprs["GuardErrorRateHigh"]
    # Not-ready probes (503 by design) are no errors: left out of both sides of the ratio.
    assert exprs["GuardErrorRateHigh"].count("/readyz|/v2/health/") == 2
    assert "histogram_quantile(0.99" in exprs["GuardLatencyP99High"]
    assert "guard_model_ready" in exprs["GuardModelNotReady"]
    assert "up{" in exprs["GuardDown"]
    assert "guard_upstream_ready" in exprs["GuardUpstreamDown"]
    assert "guard_upstream_breaker_state" in exprs["GuardUpstreamDown"]
