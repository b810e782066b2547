"""The detection comparison's pure pieces (training/evaluation/comparison.py): rates, the ROC on
the grid, miss reasons, AE specs and naming a set's attack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.attack_suite import load_suite
from training.evaluation.comparison import (
    AESpec,
    Outcome,
    aes_for,
    attack_name,
    miss_reasons,
    rates,
    roc_on_grid,
)
from training.evaluation.detection_markdown import FPR_GRID, subset_note


def outcome(scores: np.ndarray, threshold: float, predicted: np.ndarray | None = None) -> Outcome:
    predicted = np.zeros(len(scores), int) if predicted is None else predicted
    return Outcome(scores, scores > threshold, predicted, predicted.copy(), scores)


def test_rates_on_known_scores() -> None:
    neg = outcome(np.arange(100) / 100.0, 0.985)  # 0.00 .. 0.99: one (0.99) above 0.985
    pos = outcome(np.array([0.995, 0.999, 0.5, 0.2]), 0.985)  # two above every negative
    fired = np.array([True, False, True, False])  # the backdoor sent the 1st and 3rd to its class
    r = rates(neg, pos, fired)
    assert r["detection_rate"] == 0.5 and r["false_positive_rate"] == 0.01
    assert r["n_positive"] == 4
    assert r["n_fired"] == 2 and r["detection_rate_fired"] == 0.5  # 0.995 flagged, 0.5 not
    assert rates(neg, pos, np.zeros(4, bool))["detection_rate_fired"] is None
    assert r["tpr_at_fpr0.01"] == 0.5  # the 1% threshold is 0.98: only 0.995 and 0.999 pass
    assert r["tpr_at_fpr0.05"] == 0.5  # 0.94: still those two
    # AUROC = P(pos > neg) + P(tie) / 2: 1, 1, 0.505 (50 below, 1 tied), 0.205 (20 below, 1 tied)
    assert r["auroc"] == pytest.approx((1 + 1 + 0.505 + 0.205) / 4)


def test_a_report_on_part_of_the_test_set_says_so() -> None:
    assert subset_note({"test_images": 1000, "test_set_size": 10000}) == (
        ": a seeded random subset of the 10000 test images (--test-images), not all of them"
    )
    assert subset_note({"test_images": 10000, "test_set_size": 10000}) == ""
    assert subset_note({"test_images": 10000}) == ""  # a json written before the field


def test_the_roc_on_the_grid_is_the_best_tpr_at_each_fpr() -> None:
    neg = np.arange(100) / 100.0
    pos = np.array([1.5, 0.995, 0.5, -1.0])
    # Two positives lie above every negative; 0.5 ties the 51st highest negative (FPR 50%);
    # -1 lies below them all.
    for g, tpr in zip(FPR_GRID, roc_on_grid(neg, pos), strict=True):
        assert tpr == (0.5 if g < 0.5 else 0.75 if g < 1.0 else 1.0), g


def test_miss_reasons_split_the_missed_positives() -> None:
    # target 0: two did not fire (f(x) = 3), one stayed in 0 after the AE, one changed class
    # but scored under the threshold, one flagged (not a miss)
    predicted = np.array([3, 3, 0, 0, 0])
    detriggered = np.array([3, 3, 0, 4, 4])
    flagged = np.array([False, False, False, False, True])
    o = Outcome(np.zeros(5), flagged, predicted, detriggered, np.zeros(5))
    assert miss_reasons(o, 0) == {"not_fired": 0.5, "ae_kept_target": 0.25, "under_threshold": 0.25}
    strip = Outcome(np.zeros(5), flagged, predicted, None, np.zeros(5))
    assert miss_reasons(strip, 0) == {"not_fired": 0.5, "under_threshold": 0.5}


def test_ae_specs_parse_and_a_per_attack_ae_wins(tmp_path: Path) -> None:
    f = tmp_path / "ae.onnx"
    f.write_bytes(b"x")
    every, one = AESpec.parse(f"audit={f}"), AESpec.parse(f"audit@blend={f}")
    assert (one.label, one.attack, one.path) == ("audit", "blend", str(f))
    assert aes_for([one, every], "blend")["audit"] is one
    assert aes_for([every, one], "blend")["audit"] is one
    assert aes_for([one], "noise") == {}
    for bad in ("audit", f"Audit={f}", "audit=missing.onnx", f"a@B={f}"):
        with pytest.raises(ValueError):
            AESpec.parse(bad)


def test_a_shipped_sets_backdoor_is_named_by_the_suite() -> None:
    raw = {
        "classes": [str(k) for k in range(10)],
        "backdoor": {
            "target_class": 0,
            "trigger": {"kind": "patch", "size": 4, "position": "top-left", "value": 1.0},
        },
    }
    suite = load_suite()
    assert attack_name(raw, Path("models/x"), suite, (1, 28, 28)) == "badnets-white"
    raw["backdoor"]["target_class"] = 7  # no suite attack has this pair
    assert attack_name(raw, Path("models/x"), suite, (1, 28, 28)) == "x"
    raw["training"] = {"suite": {"attack": "blend"}}  # training.suite's record wins
    assert attack_name(raw, Path("models/x"), suite, (1, 28, 28)) == "blend"
