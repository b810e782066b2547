"""Detection: the paper's class-change rule and the continuous scores of docs/model-contract.md,
computed from the target's logits on x and on AE(x). Pure numpy, so the service's formulas can be
checked against these."""

from __future__ import annotations

import numpy as np

from training.evaluation.metrics import threshold_at_fpr

SCORES = ("prob_drop", "kl")
RULES = ("class_change", "score")
# The lowest threshold a calibration may return. A good de-trigger AE leaves most clean images
# bit-for-bit alone, so the clean scores pile up at ~1e-9; a threshold down there would flag on
# float rounding. ONNX Runtime and torch logits differ by up to 1e-4, which moves prob_drop by at
# most 1e-4 / 2 (a softmax probability changes by at most half its logit's change) and KL by far
# less (it is quadratic in the change), so 1e-3 keeps a twentyfold margin. It was 0.01 until a
# quiet AE (the `stamped` CIFAR-10 one) had its threshold held there, above its clean scores'
# 1% quantile, and lost a tenth of a blend backdoor's detection for it
# (reports/ae-candidates/families).
MIN_THRESHOLD = {"prob_drop": 0.001, "kl": 0.001}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def class_change(logits_x: np.ndarray, logits_ae: np.ndarray) -> np.ndarray:
    """(N,) bool: argmax f(x) != argmax f(AE(x))."""
    return np.argmax(logits_x, 1) != np.argmax(logits_ae, 1)


def prob_drop(logits_x: np.ndarray, logits_ae: np.ndarray) -> np.ndarray:
    """(N,) p(c | x) - p(c | AE(x)) with c = argmax p(. | x); in [-1, 1]."""
    p, q = softmax(logits_x), softmax(logits_ae)
    c = np.argmax(p, 1)
    rows = np.arange(len(c))
    return p[rows, c] - q[rows, c]


def kl(logits_x: np.ndarray, logits_ae: np.ndarray) -> np.ndarray:
    """(N,) KL(p(. | x) || p(. | AE(x))) in nats."""
    lp, lq = log_softmax(logits_x), log_softmax(logits_ae)
    return np.sum(np.exp(lp) * (lp - lq), axis=1)


def score(name: str, logits_x: np.ndarray, logits_ae: np.ndarray) -> np.ndarray:
    if name == "prob_drop":
        return prob_drop(logits_x, logits_ae)
    if name == "kl":
        return kl(logits_x, logits_ae)
    raise ValueError(f"unknown score {name!r}; allowed: {', '.join(SCORES)}")


def calibrate(
    val_scores: np.ndarray, target_fpr: float, floor: float = 0.0, confidence: float = 0.0
) -> float:
    """Threshold t (flag when score > t) calibrated for target_fpr on the clean validation
    images (metrics.threshold_at_fpr: at confidence 0, at most target_fpr of them flagged), and
    at least `floor`. A floor only raises t, so the confidence still holds."""
    return max(threshold_at_fpr(val_scores, target_fpr, confidence), floor)


def decide(
    rule: str,
    logits_x: np.ndarray,
    logits_ae: np.ndarray,
    score_name: str = "prob_drop",
    threshold: float = 0.5,
) -> np.ndarray:
    """(N,) bool flags under `rule`, as the service applies the manifest's decision."""
    if rule == "class_change":
        return class_change(logits_x, logits_ae)
    if rule == "score":
        return score(score_name, logits_x, logits_ae) > threshold
    raise ValueError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")
