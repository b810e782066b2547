"""Evaluation metrics as pure numpy functions. Scores are "higher = more suspicious"; labels of the
detection task are 1 for a triggered (positive) and 0 for a clean (negative) image."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

# The confidence new calibrations use (issue 22): the FPR on new clean images is <= the target
# with probability >= 0.95. 0 is the plain empirical quantile, the rule before.
DEFAULT_CONFIDENCE = 0.95


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of pred == labels."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else float("nan")


def attack_success_rate(pred_triggered: np.ndarray, labels: np.ndarray, target_class: int) -> float:
    """Share of triggered images whose true class is not the target that are classified as the
    target."""
    keep = np.asarray(labels) != target_class
    return float((np.asarray(pred_triggered)[keep] == target_class).mean())


def attack_success_by_change(
    change: np.ndarray,
    pred_triggered: np.ndarray,
    labels: np.ndarray,
    target_class: int,
    tols: tuple[float, ...] = (0.02, 0.05),
) -> dict[str, dict[str, float]]:
    """For each tolerance: the share of positives (true class not the target) the trigger moved
    no pixel of by more than it, and the attack success rate over the other positives."""
    keep = np.asarray(labels) != target_class
    change, hit = np.asarray(change)[keep], np.asarray(pred_triggered)[keep] == target_class
    out = {}
    for tol in tols:
        moved = change > tol
        out[f"{tol:g}"] = {
            "unchanged_share": float(1.0 - moved.mean()) if len(moved) else float("nan"),
            "attack_success_rate_others": float(hit[moved].mean()) if moved.any() else float("nan"),
        }
    return out


def flag_rate(flags: np.ndarray) -> float:
    """Share of flagged images: the detection rate on triggered images, the FPR on clean ones."""
    return float(np.asarray(flags, bool).mean()) if len(flags) else float("nan")


def roc_curve(scores_neg: np.ndarray, scores_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the rule `score > t` for every threshold t, from 'flag nothing' (0, 0) to
    'flag everything' (1, 1). Tied scores move both rates in one step."""
    neg = np.asarray(scores_neg, np.float64)
    pos = np.asarray(scores_pos, np.float64)
    scores = np.concatenate([neg, pos])
    is_pos = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    # The last index of each run of equal scores: thresholds sit between distinct values.
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(is_pos)[last]
    fp = np.cumsum(1 - is_pos)[last]
    fpr = np.r_[0.0, fp / max(len(neg), 1)]
    tpr = np.r_[0.0, tp / max(len(pos), 1)]
    return fpr, tpr


def auroc(scores_neg: np.ndarray, scores_pos: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 1/2 P(tie) (trapezoid rule)."""
    fpr, tpr = roc_curve(scores_neg, scores_pos)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def threshold_at_fpr(scores_neg: np.ndarray, fpr: float, confidence: float = 0.0) -> float:
    """The smallest threshold t such that at most `allowed_exceedances(n, fpr, confidence)` of
    the n negatives have score > t. Thresholds are taken among the negative scores themselves.

    confidence 0: the plain quantile, at most floor(fpr * n) negatives above t, so the bound
    holds exactly on these negatives (and about half the time on new ones). confidence c > 0:
    fewer are allowed, so that the FPR on new negatives is <= fpr with probability >= c."""
    neg = np.sort(np.asarray(scores_neg, np.float64))
    allowed = allowed_exceedances(len(neg), fpr, confidence)  # may exceed t
    if allowed < 0:
        raise ValueError(too_few_message(len(neg), fpr, confidence))
    if allowed >= len(neg):
        return float(-np.inf)
    # t = the (n - allowed)-th smallest score: exactly the `allowed` larger ones (or fewer, with
    # ties) lie above it.
    return float(neg[len(neg) - allowed - 1])


def tpr_at_fpr(scores_neg: np.ndarray, scores_pos: np.ndarray, fpr: float) -> float:
    """Share of positives above the threshold calibrated on these negatives for `fpr`."""
    t = threshold_at_fpr(scores_neg, fpr)
    return float((np.asarray(scores_pos) > t).mean())


def _binom_sf_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), from log-pmfs (no scipy)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = np.arange(k, n + 1)
    lg = math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
    return float(np.exp(lg + i * math.log(p) + (n - i) * math.log1p(-p)).sum())


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p) (scipy where installed, else from _binom_sf_ge)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    try:
        from scipy.stats import binom

        return float(binom.cdf(k, n, p))
    except ImportError:
        return 1.0 - _binom_sf_ge(k + 1, n, p)


def allowed_exceedances(n: int, fpr: float, confidence: float = 0.0) -> int:
    """How many of n clean calibration scores may lie above a threshold calibrated for `fpr`.

    confidence 0: floor(fpr * n), the plain empirical quantile. confidence c in (0, 1): the
    largest k with BinomCDF(k; n, fpr) <= 1 - c. The threshold at the (n - k)-th smallest of n
    exchangeable scores has a true FPR above `fpr` exactly when at most k of the n scores lie
    above the true (1 - fpr) quantile, which has probability BinomCDF(k; n, fpr) for continuous
    scores (ties only lower it): so that threshold's FPR on new clean images is <= fpr with
    probability >= c. -1 when no k >= 0 qualifies: n is too small (see min_calibration_images).
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence must lie in [0, 1), got {confidence}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if confidence == 0.0:
        return int(np.floor(fpr * n))
    alpha = 1.0 - confidence
    # BinomCDF(k) grows with k: step up from k = -1 while the next count still qualifies. The
    # answer lies near n * fpr - z * sqrt(n * fpr), so the loop is short.
    k = -1
    while k + 1 <= n and binom_cdf(k + 1, n, fpr) <= alpha:
        k += 1
    return k


def min_calibration_images(fpr: float, confidence: float = 0.0) -> int:
    """The fewest clean images for which a threshold can be calibrated for `fpr` at `confidence`:
    at least one exceedance allowed (confidence 0: n * fpr >= 1), or, for c > 0, the threshold at
    the largest score allowed, (1 - fpr)^n <= 1 - c."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    if confidence == 0.0:
        n = math.ceil(1.0 / fpr)
        return n if np.floor(fpr * n) >= 1 else n + 1
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log1p(-fpr)) - 1)
    while allowed_exceedances(n, fpr, confidence) < 0:  # float rounding: at most a step or two
        n += 1
    return n


def too_few_message(n: int, fpr: float, confidence: float) -> str:
    """Why n clean images cannot calibrate for `fpr` at `confidence`, and how many would."""
    need = min_calibration_images(fpr, confidence)
    if confidence == 0.0:
        return f"{n} clean images cannot measure an FPR of {fpr:g}; give at least {need}"
    return (
        f"{n} clean images cannot bound an FPR of {fpr:g} at confidence {confidence:g}: a "
        f"threshold at the largest of them would flag more than {fpr:g} of new clean images "
        f"with probability {(1 - fpr) ** n:.3f} > {1 - confidence:.3g}; give at least {need} "
        "(or confidence off, the plain quantile)"
    )


def parse_confidence(value: str | float) -> float:
    """A calibration confidence from a command line: a number in [0, 1), or "off" (= 0, the
    plain empirical quantile, the rule before issue 22)."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return 0.0
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"confidence {value!r}: give a number in [0, 1), e.g. 0.95, or off"
        ) from None
    if not 0.0 <= c < 1.0:
        raise ValueError(f"confidence {value!r} must lie in [0, 1) (0 or off: plain quantile)")
    return c


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial share k / n (scipy's beta quantiles where scipy is
    installed, else the same bounds by bisection on the binomial tail)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1.0 - level
    try:
        from scipy.stats import beta

        lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
        hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
        return lo, hi
    except ImportError:
        pass

    def solve(f: Callable[[float], float]) -> float:  # f increasing in p; root in [0, 1]
        a, b = 0.0, 1.0
        for _ in range(60):
            m = (a + b) / 2
            a, b = (m, b) if f(m) < 0 else (a, m)
        return (a + b) / 2

    lo = 0.0 if k == 0 else solve(lambda p: _binom_sf_ge(k, n, p) - alpha / 2)
    hi = 1.0 if k == n else solve(lambda p: (alpha / 2) - (1 - _binom_sf_ge(k + 1, n, p)))
    return lo, hi


def rate(flags: np.ndarray) -> dict[str, Any]:
    """A share with its count and 95% interval."""
    flags = np.asarray(flags, bool)
    k, n = int(flags.sum()), int(flags.size)
    lo, hi = clopper_pearson(k, n)
    return {"rate": k / n, "k": k, "n": n, "ci95": [lo, hi]}


def calibration_record(flags: np.ndarray, fpr: float, confidence: float) -> dict[str, Any]:
    """What a calibration records beside its threshold (docs/model-contract.md): the target FPR,
    the confidence, the n clean images, the k allowed above the threshold and the FPR measured on
    those images with its exact 95% interval (``false_positive``)."""
    flags = np.asarray(flags, bool)
    return {
        "target_fpr": fpr,
        "confidence": confidence,
        "n": int(flags.size),
        "allowed_exceedances": allowed_exceedances(int(flags.size), fpr, confidence),
        "false_positive": rate(flags),
    }


def confidence_note(calibration: dict[str, Any]) -> str:
    """A summary line's ending: ', at most k of n allowed (confidence c)', or ' (plain
    quantile)' for confidence 0 (and records from before issue 22, which have none)."""
    c = calibration.get("confidence") or 0.0
    if not c:
        return " (plain quantile)"
    return (
        f", at most {calibration['allowed_exceedances']} of {calibration['n']} allowed "
        f"(confidence {c:g})"
    )
