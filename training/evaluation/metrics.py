"""Evaluation metrics as pure numpy functions. Scores are "higher = more suspicious"; labels of the
detection task are 1 for a triggered (positive) and 0 for a clean (negative) image."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


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


def threshold_at_fpr(scores_neg: np.ndarray, fpr: float) -> float:
    """The smallest threshold t such that the share of negatives with score > t is <= fpr.
    Thresholds are taken among the negative scores themselves, so the bound holds exactly on
    these negatives."""
    neg = np.sort(np.asarray(scores_neg, np.float64))
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    allowed = int(np.floor(fpr * len(neg)))  # at most this many negatives may exceed t
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
