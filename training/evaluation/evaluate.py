"""Evaluate a (target, de-trigger AE) pair on a full test set, and pick the decision the service
applies.

Positives are the triggered test images whose true class is not the target class (a triggered
image of the target class is not an attack). Negatives are the clean test images. Thresholds are
calibrated on the clean validation split (held out from the training data), never on the test set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.data.triggers import trigger_change
from training.evaluation import detection, metrics
from training.evaluation.metrics import allowed_exceedances
from training.nets.models import predict


@torch.no_grad()
def logits_pair(
    target: nn.Module,
    ae: nn.Module,
    images: torch.Tensor,
    batch_size: int = 500,
    cache: dict | None = None,
    key: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(f(x), f(AE(x))) as float64 arrays (N, classes) for float images (N, C, H, W). f(x) does
    not depend on the AE: with a `cache` dict it is computed once per `key`."""
    if cache is not None and key in cache:
        lx = cache[key]
    else:
        lx = predict(target, images, batch_size).double().numpy()
        if cache is not None:
            cache[key] = lx
    lae = predict(target, images, batch_size, transform=ae.eval())
    return lx, lae.double().numpy()


def rule_results(
    lx_neg: np.ndarray,
    lae_neg: np.ndarray,
    lx_pos: np.ndarray,
    lae_pos: np.ndarray,
    thresholds: dict[str, dict[str, float]],
) -> dict:
    """Detection rate (positives flagged) and FPR (negatives flagged) for the class-change rule
    and for each score at each calibrated threshold."""
    out = {
        "class_change": {
            "detection_rate": metrics.flag_rate(detection.class_change(lx_pos, lae_pos)),
            "false_positive_rate": metrics.flag_rate(detection.class_change(lx_neg, lae_neg)),
        }
    }
    for name, by_fpr in thresholds.items():
        s_neg = detection.score(name, lx_neg, lae_neg)
        s_pos = detection.score(name, lx_pos, lae_pos)
        for fpr_key, t in by_fpr.items():
            out[f"{name}@{fpr_key}"] = {
                "threshold": t,
                "detection_rate": metrics.flag_rate(s_pos > t),
                "false_positive_rate": metrics.flag_rate(s_neg > t),
            }
    return out


def evaluate_pair(
    target: nn.Module,
    ae: nn.Module,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    trigger,
    target_class: int,
    fprs: tuple[float, ...] = (0.01, 0.05),
    cache: dict | None = None,
    confidence: float = 0.0,
) -> tuple[dict, dict]:
    """All issue-7 numbers for one AE. test_x / val_x: float images (N, C, H, W) in [0, 1].
    `cache` (a dict shared between calls for the same target and data) saves recomputing f(x).
    Score thresholds are calibrated on the validation images for each FPR at `confidence`
    (metrics.threshold_at_fpr; 0: the plain quantile). Returns (metrics dict, raw arrays for
    the plots)."""
    test_t = trigger(test_x)  # (N, C, H, W) triggered copies of every test image
    lx_c, lae_c = logits_pair(target, ae, test_x, cache=cache, key="test")
    lx_t, lae_t = logits_pair(target, ae, test_t, cache=cache, key="test_triggered")
    pos = test_y != target_class
    lx_p, lae_p = lx_t[pos], lae_t[pos]

    # Calibration on clean validation images; selection data: the same images, triggered.
    val_t = trigger(val_x)
    lx_v, lae_v = logits_pair(target, ae, val_x, cache=cache, key="val")
    lx_vt, lae_vt = logits_pair(target, ae, val_t, cache=cache, key="val_triggered")
    vpos = val_y != target_class
    thresholds = {
        name: {
            f"fpr{f:g}": detection.calibrate(
                detection.score(name, lx_v, lae_v), f, detection.MIN_THRESHOLD[name], confidence
            )
            for f in fprs
        }
        for name in detection.SCORES
    }

    res: dict = {
        "n_test": int(len(test_y)),
        "n_positive": int(pos.sum()),
        "n_validation": int(len(val_y)),
        "confidence": confidence,
        "clean_accuracy": metrics.accuracy(lx_c.argmax(1), test_y),
        "clean_accuracy_after_ae": metrics.accuracy(lae_c.argmax(1), test_y),
        "attack_success_rate": metrics.attack_success_rate(lx_t.argmax(1), test_y, target_class),
        # Positives the trigger leaves (nearly) as they were, and the ASR on the others.
        "attack_success_by_trigger_change": metrics.attack_success_by_change(
            trigger_change(test_x.numpy(), test_t.numpy()),
            lx_t.argmax(1),
            test_y,
            target_class,
        ),
        "backdoor_accuracy": metrics.accuracy(lx_t.argmax(1), test_y),
        # The paper's own metric (Figs 2-4): accuracy on all backdoor samples after the AE.
        "backdoor_accuracy_after_ae": metrics.accuracy(lae_t.argmax(1), test_y),
        "backdoor_accuracy_after_ae_non_target": metrics.accuracy(lae_p.argmax(1), test_y[pos]),
        "thresholds": thresholds,
        "test": rule_results(lx_c, lae_c, lx_p, lae_p, thresholds),
        "validation": rule_results(lx_v, lae_v, lx_vt[vpos], lae_vt[vpos], thresholds),
        "scores": {},
    }
    raw = {"roc": {}, "logits": (lx_c, lae_c, lx_t, lae_t)}
    for name in detection.SCORES:
        s_neg = detection.score(name, lx_c, lae_c)
        s_pos = detection.score(name, lx_p, lae_p)
        res["scores"][name] = {
            "auroc": metrics.auroc(s_neg, s_pos),
            **{f"tpr_at_fpr{f:g}": metrics.tpr_at_fpr(s_neg, s_pos, f) for f in fprs},
        }
        raw["roc"][name] = metrics.roc_curve(s_neg, s_pos)
    return res, raw


def choose_decision(res: dict, target_fpr: float) -> dict:
    """The service's decision, chosen on VALIDATION data only: among the class-change rule and each
    score thresholded for `target_fpr`, the one with the highest validation detection rate whose
    validation FPR is <= target_fpr (ties go to the paper's class-change rule)."""
    key = f"fpr{target_fpr:g}"
    val = res["validation"]
    candidates = [("class_change", "prob_drop", val["class_change"], None)]
    for name in detection.SCORES:
        r = val[f"{name}@{key}"]
        candidates.append(("score", name, r, r["threshold"]))
    ok = [c for c in candidates if c[2]["false_positive_rate"] <= target_fpr] or candidates[:1]
    best = max(ok, key=lambda c: c[2]["detection_rate"])  # max keeps the first of equals
    rule, score_name, _, threshold = best
    if threshold is None:  # class_change: report prob_drop with its calibrated threshold
        threshold = res["thresholds"]["prob_drop"][key]
    return {
        "rule": rule,
        "score": score_name,
        "threshold": float(threshold),
        "calibration": {
            "target_fpr": target_fpr,
            "split": "validation",
            "n": res["n_validation"],
            "selected_on": "validation detection rate at FPR <= target_fpr",
            **confidence_fields(res, target_fpr),
        },
    }


def confidence_fields(res: dict, target_fpr: float) -> dict:
    """The calibration's confidence and the validation images it let past the threshold, for
    results that record one (made after issue 22; the older ones used the plain quantile)."""
    if "confidence" not in res:
        return {}
    n, c = res["n_validation"], res["confidence"]
    return {"confidence": c, "allowed_exceedances": allowed_exceedances(n, target_fpr, c)}


def evaluate_pairs(
    target: nn.Module,
    ae: nn.Module,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    pairs: list[tuple],
    fprs: tuple[float, ...] = (0.01, 0.05),
    confidence: float = 0.0,
) -> list[tuple[dict, dict]]:
    """evaluate_pair for each (trigger, target class) of a model backdoored with several, f(x) on
    the clean images computed once. Thresholds depend on the clean validation images only, so
    they are the same for every pair."""
    clean: dict = {}
    out = []
    for trigger, target_class in pairs:
        cache = {k: v for k, v in clean.items() if k in ("test", "val")}
        out.append(
            evaluate_pair(
                target,
                ae,
                test_x,
                test_y,
                val_x,
                val_y,
                trigger,
                target_class,
                fprs,
                cache,
                confidence,
            )
        )
        clean.update({k: cache[k] for k in ("test", "val")})
    return out


def choose_decision_pairs(results: list[dict], target_fpr: float) -> dict:
    """choose_decision for several pairs: each rule's validation detection rate is the mean over
    the pairs (its validation FPR is the same for all: same clean images, same threshold)."""
    if len(results) == 1:
        return choose_decision(results[0], target_fpr)
    merged = dict(results[0])
    merged["validation"] = {
        rule: {
            **r,
            "detection_rate": float(
                np.mean([res["validation"][rule]["detection_rate"] for res in results])
            ),
        }
        for rule, r in results[0]["validation"].items()
    }
    return choose_decision(merged, target_fpr)
