"""The calibration of a user's set: exact intervals, the contract's rule at the target FPR."""

from __future__ import annotations

import numpy as np
import pytest

from contract.scoring import decide
from training.evaluation import calibration
from training.evaluation.calibration import calibrate_decision, clopper_pearson


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 100, 0.0, 0.036217), (5, 100, 0.016432, 0.112835), (100, 100, 0.963783, 1.0)],
)
def test_clopper_pearson_gives_the_exact_bounds(monkeypatch, k, n, lo, hi) -> None:
    got = clopper_pearson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)
    # The bisection without scipy gives the same bounds.
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)
    assert calibration.clopper_pearson(k, n) == pytest.approx((lo, hi), abs=1e-5)


def test_the_threshold_flags_at_most_the_target_fpr_by_the_contracts_rule() -> None:
    rng = np.random.default_rng(0)
    lx = rng.normal(size=(1000, 5)) * 3
    lae = lx + rng.normal(size=(1000, 5))
    decision, measured = calibrate_decision(lx, lae, "prob_drop", 0.01)
    flagged = decide(lx, lae, decision).flagged
    assert decision.rule == "score" and 0 < flagged.sum() <= 10
    assert measured["false_positive"]["k"] == int(flagged.sum())
    lo, hi = measured["false_positive"]["ci95"]
    assert lo <= flagged.mean() <= hi
    with pytest.raises(ValueError, match="at least 100"):
        calibrate_decision(lx[:50], lae[:50], "prob_drop", 0.01)
