"""The calibration records of the manifest (contract.manifest.Calibration): optional evidence
that old manifests load without, and that must make sense when given (issue 22)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
RECORD = {
    "target_fpr": 0.01,
    "confidence": 0.95,
    "n": 5000,
    "allowed_exceedances": 38,
    "false_positive": {"rate": 0.0062, "k": 31, "n": 5000, "ci95": [0.0042, 0.0088]},
    "split": "validation",
}


def manifest(**calibration) -> dict:
    raw = json.loads((REPO / "models" / "mnist" / "manifest.json").read_text())
    raw["decision"]["calibration"] = {**RECORD, **calibration}
    return raw


def test_every_shipped_manifest_loads() -> None:
    for path in sorted((REPO / "models").glob("*/manifest.json")):
        Manifest.model_validate(json.loads(path.read_text()))


def test_a_record_from_before_the_confidence_loads_and_reads_as_none() -> None:
    raw = manifest()
    raw["decision"]["calibration"] = {"target_fpr": 0.01, "split": "validation", "n": 5000}
    m = Manifest.model_validate(raw)
    assert m.decision.calibration is not None and m.decision.calibration.confidence is None
    del raw["decision"]["calibration"]
    assert Manifest.model_validate(raw).decision.calibration is None


def test_a_new_record_is_read_on_every_detector() -> None:
    raw = manifest()
    raw["detectors"]["strip"]["calibration"] = copy.deepcopy(RECORD)
    raw["detectors"]["both"]["calibration"] = {**RECORD, "calibrated_with": {"strip_n": 16}}
    m = Manifest.model_validate(raw)
    assert m.decision.calibration.allowed_exceedances == 38  # type: ignore[union-attr]
    assert m.detectors.strip.calibration.false_positive.k == 31  # type: ignore[union-attr]
    both = m.detectors.both.calibration  # type: ignore[union-attr]
    assert both.model_extra["calibrated_with"] == {"strip_n": 16}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [
        {"confidence": 1.0},
        {"confidence": -0.1},
        {"target_fpr": 0.0},
        {"n": 0},
        {"allowed_exceedances": -1},
        {"allowed_exceedances": 5001},
        {"false_positive": {"rate": 0.01, "k": 51, "n": 50, "ci95": [0.0, 0.1]}},
        {"false_positive": {"rate": 0.01, "k": 1, "n": 100, "ci95": [0.2, 0.1]}},
    ],
)
def test_a_record_that_cannot_be_is_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Manifest.model_validate(manifest(**bad))
