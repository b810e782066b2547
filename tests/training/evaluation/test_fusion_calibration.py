"""Detector both's calibration (training.evaluation.fusion): two thresholds at one per-detector
share whose union meets the target FPR, and the largest such share."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.fusion import above_k, calibrate_either, calibrate_union


def union(s, h, t_ae, t_h) -> np.ndarray:
    return (np.asarray(s) > t_ae) | (np.asarray(h) < t_h)


@pytest.mark.parametrize("correlation", [0.0, 0.5, 1.0])
def test_the_union_meets_the_target_and_no_larger_share_would(correlation: float) -> None:
    rng = np.random.default_rng(int(10 * correlation))
    z = rng.normal(size=5000)
    s = correlation * z + (1 - correlation) * rng.normal(size=5000)
    h = 2.0 - s if correlation == 1.0 else 2.0 - (correlation * z + rng.normal(size=5000))
    t_ae, t_h, m = calibrate_either(s, h, 0.01)
    flagged = union(s, h, t_ae, t_h)
    assert flagged.sum() <= 50 and m["false_positive"]["k"] == flagged.sum()
    k = round(m["per_detector_fpr"] * 5000)
    assert (s > t_ae).sum() <= k and (h < t_h).sum() <= k
    # one more image each would break the budget (the search stops at the largest share)
    if k < 50:
        assert union(s, h, above_k(s, k + 1), -above_k(-h, k + 1)).sum() > 50
    if correlation == 1.0:
        assert k == 50  # the two detectors flag the same images: each gets the whole budget
    if correlation == 0.0:
        assert 20 <= k <= 30  # nearly disjoint: about half each


def test_thresholds_count_strictly() -> None:
    values = np.array([0.1, 0.2, 0.2, 0.3, 0.9])
    assert above_k(values, 0) == 0.9 and (values > above_k(values, 1)).sum() == 1
    # STRIP's "below" rule as an "above" rule on -entropy: the k-th smallest, exactly
    assert -above_k(-values, 0) == 0.1 and (values < -above_k(-values, 2)).sum() <= 2


def test_bad_inputs_are_refused() -> None:
    s = np.zeros(100)
    with pytest.raises(ValueError, match="cannot measure"):
        calibrate_either(s, s, 0.005)
    with pytest.raises(ValueError, match="non-finite"):
        calibrate_either(np.r_[s[:99], np.nan], s, 0.05)
    with pytest.raises(ValueError, match="one value per image"):
        calibrate_either(s, s[:50], 0.05)
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate_either(s, s, 0.6)


def test_a_floor_raises_a_threshold_and_keeps_the_union_within_budget() -> None:
    """Detector detrigger_or_repaired's case: two "above" rules. Clean scores that are mostly
    exactly 0 (a gated AE returns most clean images unchanged) would set a threshold of 0,
    which float rounding on another runtime could cross; the floor holds it at 0.01."""
    rng = np.random.default_rng(0)
    ae = np.where(rng.random(2000) < 0.995, 0.0, rng.random(2000))
    repaired = rng.random(2000) * 0.3
    (t_ae, t_r), fired, m = calibrate_union({"ae": ae, "r": repaired}, 0.01, floors=(0.01, 0.01))
    assert t_ae == 0.01 and t_r > 0.01
    assert fired.shape == (2000, 2) and fired.any(axis=1).sum() == m["false_positive"]["k"] <= 20
    assert (fired[:, 0] == (ae > t_ae)).all() and (fired[:, 1] == (repaired > t_r)).all()
    assert m["fired"] == {"ae": int(fired[:, 0].sum()), "r": int(fired[:, 1].sum()),
                          "both": int(fired.all(axis=1).sum())}  # fmt: skip
    (t_free, _), _, _ = calibrate_union({"ae": ae, "r": repaired}, 0.01)
    assert t_free < 0.01  # without the floor


def test_either_is_the_union_of_above_rules_on_minus_entropy() -> None:
    rng = np.random.default_rng(3)
    s, h = rng.normal(size=3000), 2.0 + rng.normal(size=3000)
    t_ae, t_h, m = calibrate_either(s, h, 0.01)
    (u_ae, u_minus_h), _, mu = calibrate_union({"detrigger": s, "strip": -h}, 0.01)
    assert (t_ae, t_h) == (u_ae, -u_minus_h)
    assert m["per_detector_fpr"] == mu["per_detector_fpr"] and m["fired"] == mu["fired"]
    assert set(m["fired"]) == {"detrigger", "strip", "both"}
