"""Detector both's calibration (training.evaluation.fusion): two thresholds at one per-detector
share whose union meets the target FPR, and the largest such share."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.fusion import above_k, below_k, calibrate_either


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
        assert union(s, h, above_k(s, k + 1), below_k(h, k + 1)).sum() > 50
    if correlation == 1.0:
        assert k == 50  # the two detectors flag the same images: each gets the whole budget
    if correlation == 0.0:
        assert 20 <= k <= 30  # nearly disjoint: about half each


def test_thresholds_count_strictly() -> None:
    values = np.array([0.1, 0.2, 0.2, 0.3, 0.9])
    assert above_k(values, 0) == 0.9 and (values > above_k(values, 1)).sum() == 1
    assert below_k(values, 0) == 0.1 and (values < below_k(values, 2)).sum() <= 2


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
