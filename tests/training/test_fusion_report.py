"""What training.fusion_report says its thresholds were calibrated for: read from each set's
records, so that a re-calibration (issue 22) cannot leave its page saying 1% by hand."""

from __future__ import annotations

from pathlib import Path

from contract.manifest import read_manifest
from training.fusion_report import calibrated_for, calibration_sentence

REPO = Path(__file__).resolve().parents[2]


def test_the_sentence_follows_the_records() -> None:
    records = calibrated_for(read_manifest(REPO / "models" / "mnist"))
    assert set(records) == {"detrigger", "strip", "both"}
    one = {"target_fpr": 0.005, "confidence": 0.95}
    report = {"sets": [{"model_set": "models/a", "calibrated_for": dict.fromkeys(records, one)}]}
    assert calibration_sentence(report) == (
        "calibrated on the validation split: a for 0.50% FPR at confidence 0.95"
    )
    mixed = {**dict.fromkeys(records, one), "strip": {"target_fpr": 0.01, "confidence": 0.0}}
    report["sets"].append({"model_set": "models/b", "calibrated_for": mixed})
    assert "b per detector" in calibration_sentence(report)
    # A report written before the records keeps the words it was written with.
    old = {"sets": [{"model_set": "models/a"}]}
    assert calibration_sentence(old) == "calibrated for 1% FPR on the validation split"
