"""The audit's full-image family thresholds are the ones reports/audit/families/ measured on the
clean controls, for the search settings the audit uses, and they flag no control."""

from __future__ import annotations

import json
from pathlib import Path

from training.audit.families import threshold_from
from training.inversion.pipeline import FAMILY_THRESHOLDS, AuditConfig

REPORT = Path(__file__).resolve().parents[2] / "reports/audit/families/families.json"


def test_threshold_rule() -> None:
    assert threshold_from([1.2, 0.3, -1.0]) == 2.0  # never below Neural Cleanse's 2
    assert threshold_from([2.3]) == 2.5
    assert threshold_from([2.5]) == 3.0  # strictly above: a control at 2.5 is not flagged


def test_the_audits_thresholds_are_the_reports() -> None:
    report = json.loads(REPORT.read_text())
    assert report["thresholds"] == FAMILY_THRESHOLDS
    assert report["family_synth"] == AuditConfig().family_synth.to_dict()
    assert {c["dataset"] for c in report["controls"]} == {"mnist", "fashion-mnist", "cifar10"}
    for name, threshold in FAMILY_THRESHOLDS.items():
        indices = [i for c in report["controls"] for i in c["families"][name]["anomaly_index"]]
        assert threshold == threshold_from(indices)
        assert max(indices) < threshold  # no clean control is flagged
        assert all(c["families"][name]["flagged"] == [] for c in report["controls"])
