from __future__ import annotations

import numpy as np
import pytest

from training.data.triggers import trigger_change
from training.evaluation import detection, metrics
from training.evaluation.evaluate import choose_decision


def test_accuracy_and_attack_success_rate():
    assert metrics.accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0])) == 0.5
    # Labels 0 (the target) are left out: 2 of the 3 others go to the target.
    pred = np.array([0, 0, 0, 5, 0])
    labels = np.array([0, 1, 2, 3, 4])
    assert metrics.attack_success_rate(pred, labels, 0) == 0.75
    assert metrics.flag_rate(np.array([True, False, False, False])) == 0.25


def test_attack_success_by_trigger_change_sets_apart_images_the_trigger_cannot_alter():
    from training.data.triggers import Trigger

    x = np.zeros((4, 1, 6, 6), np.float32)
    x[1, :, :2, :2] = 0.99  # corner already white: the patch changes nothing that counts
    x[2, :, :2, :2] = 0.97
    stamped = Trigger(kind="patch", size=2, position="top-left")(x)
    change = trigger_change(x, stamped)
    np.testing.assert_allclose(change, [1.0, 0.01, 0.03, 1.0], atol=1e-6)
    labels = np.array([1, 2, 3, 0])  # the last is the target class: not a positive
    pred = np.array([0, 2, 0, 0])  # the attack fails only on the unchanged image
    by = metrics.attack_success_by_change(change, pred, labels, 0)
    assert by["0.02"] == {
        "unchanged_share": pytest.approx(1 / 3),
        "attack_success_rate_others": 1.0,
    }
    assert by["0.05"] == {
        "unchanged_share": pytest.approx(2 / 3),
        "attack_success_rate_others": 1.0,
    }
    assert metrics.attack_success_rate(pred, labels, 0) == pytest.approx(2 / 3)


def test_auroc_hand_computed():
    # Pairs (pos, neg): pos 0.9 beats all 3 negatives; pos 0.5 beats 0.1 and 0.4, ties 0.5
    # (counts 1/2); pos 0.2 beats 0.1. (3 + 2.5 + 1) / 9 = 6.5 / 9.
    neg = np.array([0.1, 0.4, 0.5])
    pos = np.array([0.9, 0.5, 0.2])
    assert metrics.auroc(neg, pos) == pytest.approx(6.5 / 9)
    assert metrics.auroc(np.array([0.0, 0.1]), np.array([0.5, 0.6])) == 1.0
    assert metrics.auroc(np.array([0.5, 0.6]), np.array([0.0, 0.1])) == 0.0
    assert metrics.auroc(np.ones(4), np.ones(3)) == 0.5


def test_auroc_matches_pairwise_definition_on_random_scores():
    rng = np.random.default_rng(0)
    neg = rng.integers(0, 20, 200) / 10  # many ties
    pos = rng.integers(5, 30, 150) / 10
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert metrics.auroc(neg, pos) == pytest.approx(pairs)


def test_roc_curve_end_points_and_steps():
    fpr, tpr = metrics.roc_curve(np.array([0.1, 0.4]), np.array([0.35, 0.8]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])


def test_threshold_and_tpr_at_fpr():
    neg = np.arange(100) / 100  # 0.00 .. 0.99
    t = metrics.threshold_at_fpr(neg, 0.05)
    assert (neg > t).mean() == 0.05 and t == pytest.approx(0.94)
    assert (neg > metrics.threshold_at_fpr(neg, 0.0)).sum() == 0
    pos = np.array([0.5, 0.95, 0.97, 2.0])
    assert metrics.tpr_at_fpr(neg, pos, 0.05) == 0.75
    assert metrics.tpr_at_fpr(neg, pos, 0.01) == 0.25  # t = 0.98
    with pytest.raises(ValueError):
        metrics.threshold_at_fpr(neg, 2.0)


def test_scores_hand_computed():
    lx = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]))
    lae = np.log(np.array([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25]]))
    np.testing.assert_allclose(detection.prob_drop(lx, lae), [0.6, 0.0], atol=1e-12)
    want_kl = 0.7 * np.log(7) + 0.2 * np.log(0.25) + 0.0
    np.testing.assert_allclose(detection.kl(lx, lae), [want_kl, 0.0], atol=1e-12)
    np.testing.assert_array_equal(detection.class_change(lx, lae), [True, False])
    np.testing.assert_array_equal(
        detection.decide("score", lx, lae, "prob_drop", 0.5), [True, False]
    )
    with pytest.raises(ValueError, match="prob_drop, kl"):
        detection.score("l2", lx, lae)
    with pytest.raises(ValueError, match="class_change, score"):
        detection.decide("vote", lx, lae)


def test_softmax_is_shift_invariant():
    z = np.array([[1000.0, 1001.0, 1002.0]])
    np.testing.assert_allclose(detection.softmax(z), detection.softmax(z - 1000), rtol=1e-12)


def _rates(det: float, fpr: float) -> dict:
    return {"detection_rate": det, "false_positive_rate": fpr}


def test_choose_decision_prefers_best_valid_rule():
    res = {
        "n_validation": 100,
        "thresholds": {"prob_drop": {"fpr0.01": 0.2}, "kl": {"fpr0.01": 0.9}},
        "validation": {
            "class_change": _rates(0.95, 0.004),
            "prob_drop@fpr0.01": {**_rates(0.99, 0.01), "threshold": 0.2},
            "kl@fpr0.01": {**_rates(0.999, 0.02), "threshold": 0.9},  # FPR too high
        },
    }
    d = choose_decision(res, 0.01)
    assert d["rule"] == "score" and d["score"] == "prob_drop" and d["threshold"] == 0.2
    res["validation"]["class_change"] = _rates(0.99, 0.0)  # tie: the paper's rule wins
    assert choose_decision(res, 0.01)["rule"] == "class_change"


# --- calibration with a confidence (issue 22) ---------------------------------------------------
@pytest.mark.parametrize(
    ("n", "fpr", "confidence"),
    [
        (5000, 0.01, 0.95),
        (5000, 0.005, 0.95),
        (4936, 0.01, 0.95),
        (1000, 0.05, 0.9),
        (300, 0.01, 0.5),
    ],
)
def test_allowed_exceedances_is_the_largest_count_within_the_binomial_bound(
    monkeypatch, n: int, fpr: float, confidence: float
) -> None:
    from scipy.stats import binom

    k = metrics.allowed_exceedances(n, fpr, confidence)
    assert binom.cdf(k, n, fpr) <= 1 - confidence < binom.cdf(k + 1, n, fpr)
    assert k < np.floor(fpr * n)  # fewer than the plain quantile lets through
    # The same count without scipy (the binomial tail of clopper_pearson's fallback).
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)
    assert metrics.allowed_exceedances(n, fpr, confidence) == k


def test_the_shipped_validation_split_allows_38_and_16_exceedances() -> None:
    assert metrics.allowed_exceedances(5000, 0.01, 0.95) == 38
    assert metrics.allowed_exceedances(5000, 0.005, 0.95) == 16
    assert metrics.allowed_exceedances(5000, 0.01, 0.0) == 50  # confidence 0: floor(n * fpr)


def test_too_few_images_are_refused_with_the_count_needed() -> None:
    assert metrics.min_calibration_images(0.01, 0.95) == 299  # 0.99^299 < 0.05 < 0.99^298
    assert metrics.min_calibration_images(0.005, 0.95) == 598
    assert metrics.min_calibration_images(0.01, 0.0) == 100
    assert metrics.allowed_exceedances(298, 0.01, 0.95) == -1
    assert metrics.allowed_exceedances(299, 0.01, 0.95) == 0
    neg = np.arange(298) / 298
    with pytest.raises(ValueError, match="give at least 299"):
        metrics.threshold_at_fpr(neg, 0.01, 0.95)
    assert metrics.threshold_at_fpr(np.arange(299) / 299, 0.01, 0.95) == 298 / 299  # the max


def test_confidence_zero_is_the_plain_quantile() -> None:
    neg = np.random.default_rng(1).normal(size=1234)
    for fpr in (0.01, 0.05, 0.2):
        t = metrics.threshold_at_fpr(neg, fpr, 0.0)
        assert t == metrics.threshold_at_fpr(neg, fpr)
        assert (neg > t).sum() == int(np.floor(fpr * len(neg)))


def test_a_confident_threshold_holds_on_new_images_with_its_confidence() -> None:
    """Uniform clean scores: a threshold t has true FPR 1 - t. Over many calibration draws, the
    plain quantile's true FPR is above the target about half the time; at confidence 0.95, in
    at most about 5% of draws (exactly BinomCDF(k; n, fpr) = 0.029 here)."""
    rng = np.random.default_rng(0)
    n, fpr, trials = 1000, 0.01, 3000
    draws = np.sort(rng.uniform(size=(trials, n)), axis=1)
    over = {}
    for confidence in (0.0, 0.95):
        k = metrics.allowed_exceedances(n, fpr, confidence)
        true_fpr = 1.0 - draws[:, n - k - 1]  # threshold_at_fpr's pick, every draw at once
        over[confidence] = float((true_fpr > fpr).mean())
    assert metrics.threshold_at_fpr(draws[0], fpr, 0.95) == draws[0, n - 5]  # k = 4
    assert over[0.95] < 0.05 < 0.4 < over[0.0]


@pytest.mark.parametrize(
    ("text", "value"), [("0.95", 0.95), ("off", 0.0), ("OFF", 0.0), ("0", 0.0), (0.9, 0.9)]
)
def test_confidence_parses_a_number_or_off(text, value) -> None:
    assert metrics.parse_confidence(text) == value


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "high", ""])
def test_a_bad_confidence_is_refused(text) -> None:
    with pytest.raises(ValueError, match="confidence"):
        metrics.parse_confidence(text)


def test_the_calibration_record_says_what_was_allowed_and_measured() -> None:
    flags = np.zeros(5000, bool)
    flags[:31] = True
    r = metrics.calibration_record(flags, 0.01, 0.95)
    assert {k: r[k] for k in ("target_fpr", "confidence", "n", "allowed_exceedances")} == {
        "target_fpr": 0.01,
        "confidence": 0.95,
        "n": 5000,
        "allowed_exceedances": 38,
    }
    assert r["false_positive"]["k"] == 31 and r["false_positive"]["ci95"][1] < 0.01
