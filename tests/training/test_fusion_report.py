"""What training.fusion_report says its thresholds were calibrated for: read from each set's
records, so that a re-calibration (issue 22) cannot leave its page saying 1% by hand."""

from __future__ import annotations

from pathlib import Path

from contract.manifest import read_manifest
from training.fusion_report import (
    DETECTORS,
    calibrated_for,
    calibration_sentence,
    summary_lines,
    table_lines,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_sentence_follows_the_records() -> None:
    records = calibrated_for(read_manifest(REPO / "models" / "mnist"))
    assert set(records) == {"detrigger", "strip", "both", "repaired", "detrigger_or_repaired"}
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


def _rate(rate: float) -> dict[str, object]:
    return {"rate": rate, "k": 0, "n": 100, "ci95": [rate, rate]}


def _set(name: str, fpr: float, *detections: float) -> dict[str, object]:
    triggers = [
        {"target_class": k, "detection": dict.fromkeys(DETECTORS, _rate(d))}
        for k, d in enumerate(detections)
    ]
    return {
        "model_set": f"/somewhere/{name}/set",
        "name": name,
        "dataset": "mnist",
        "rules": dict.fromkeys(DETECTORS, "r"),
        "false_positive": dict.fromkeys(DETECTORS, _rate(fpr)),
        "triggers": triggers,
    }


def test_a_suite_report_names_each_trigger_and_sums_up_each_dataset() -> None:
    report = {"sets": [_set("mnist-warp", 0.004, 0.2), _set("mnist-two", 0.009, 1.0, 0.9)]}
    labels = [line.split(" | ")[0].lstrip("| ") for line in table_lines(report)[2:]]
    assert (
        labels
        == ["mnist-warp"] * 3 + ["mnist-two (to class 0)"] * 3 + ["mnist-two (to class 1)"] * 3
    )
    summary = summary_lines(report)
    assert summary[2] == "| mnist | detrigger | 3 | 70.00 | 20.00 (mnist-warp) | 0.90 |"


def test_detector_repaired_is_reported_where_a_set_has_it() -> None:
    """A set with a repaired graph gets a row for detector repaired; the per-dataset summary of
    repaired covers the sets that have it."""
    plain = _set("mnist-noise", 0.004, 0.9)
    fixed = _set("mnist-warp", 0.005, 0.02)
    fixed["false_positive"]["repaired"] = _rate(0.007)
    fixed["rules"]["repaired"] = "prob_drop > 0.4 against the repaired graph"
    fixed["triggers"][0]["detection"]["repaired"] = _rate(0.85)
    report = {"sets": [plain, fixed]}
    detectors = [line.split(" | ")[1] for line in table_lines(report)[2:]]
    assert detectors == [*DETECTORS, *DETECTORS, "repaired"]
    summary = summary_lines(report)
    assert summary[-1] == "| mnist | repaired | 1 | 85.00 | 85.00 (mnist-warp) | 0.70 |"
    assert summary[2] == "| mnist | detrigger | 2 | 46.00 | 2.00 (mnist-warp) | 0.50 |"
