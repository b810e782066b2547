"""Detector ``both`` calibrated for a model set (contract.fusion): the de-trigger score and
STRIP's entropy on the same clean images, two thresholds chosen together for one target FPR,
and the manifest entry ``detectors.both``. Shared by STRIP's calibration
(training.evaluation.strip: reproduce, the audit's repaired sets, `calibrate --redraw-bank`),
calibrate/fit (training.evaluation.calibration) and recalibrate (`detrigger-guard calibrate SET
--recorded-split`), which sets it again on a set's own validation split.

The rule is an OR of the two detectors' own rules. Both thresholds sit at the same per-detector
clean FPR alpha: each one flags at most k of the n clean images (alpha = k / n), and k is the
largest count for which the union flags at most K of them, K the count a single threshold may
let through (metrics.allowed_exceedances: floor(target_fpr * n) at confidence 0, fewer at a
confidence c, so that the union's FPR on new clean images holds with about that confidence).
Equal alphas treat the two detectors alike: calibration has clean images only, no trigger that
one detector should be favoured for (docs/fusion.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import BothSpec, DetriggerOrRepairedSpec, Manifest, read_verified
from contract.scoring import SCORES
from training.evaluation.detectors import Graph
from training.evaluation.metrics import (
    allowed_exceedances,
    calibration_record,
    confidence_note,
    too_few_message,
)
from training.nets.manifest_file import write_manifest


def above_k(scores: np.ndarray, k: int) -> float:
    """The threshold t among these scores with at most k of them strictly above t."""
    s = np.sort(np.asarray(scores, np.float64))
    if not 0 <= k < len(s):
        raise ValueError(f"k = {k} must lie in 0..{len(s) - 1}")
    return float(s[len(s) - k - 1])


def calibrate_union(
    scores: dict[str, np.ndarray],
    target_fpr: float,
    confidence: float = 0.0,
    floors: Sequence[float] | None = None,
) -> tuple[list[float], np.ndarray, dict[str, Any]]:
    """Thresholds for an OR of rules "score > threshold", one score array (N,) per rule (by its
    detector's name), on clean images: the union flags at most K of them, K =
    allowed_exceedances(n, target_fpr, confidence) (floor(target_fpr * n) at confidence 0).
    Returns the thresholds, which rule flagged which image ((N, rules) bool) and the
    calibration record, with how many images each rule flagged (``fired``; ``both``: two rules
    at once).

    Each threshold lets k images through on its own; the search goes down from k = K to the
    first k whose union fits. The union only grows with k, and k = 0 flags nothing, so the
    search always ends. A threshold below its ``floors`` entry is raised to it, which only
    lowers the FPR (float rounding between runtimes must not flag a clean image)."""
    s = [np.asarray(v, np.float64) for v in scores.values()]
    if any(v.shape != s[0].shape or v.ndim != 1 for v in s):
        raise ValueError(f"scores {[v.shape for v in s]}: one value per image, for each rule")
    if not all(np.isfinite(v).all() for v in s):
        raise ValueError("a clean image has a non-finite score")
    if not 0.0 < target_fpr < 0.5:
        raise ValueError(f"target_fpr {target_fpr} must lie in (0, 0.5)")
    n = len(s[0])
    budget = allowed_exceedances(n, target_fpr, confidence)
    if budget < (1 if confidence == 0.0 else 0):
        raise ValueError(too_few_message(n, target_fpr, confidence))
    for k in range(budget, -1, -1):
        thresholds = [above_k(v, k) for v in s]
        if floors is not None:
            thresholds = [max(t, f) for t, f in zip(thresholds, floors, strict=True)]
        fired = np.stack([v > t for v, t in zip(s, thresholds, strict=True)], axis=1)
        union = np.asarray(fired.any(axis=1))
        if int(union.sum()) <= budget:
            break
    fired_counts = {name: int(f.sum()) for name, f in zip(scores, fired.T, strict=True)}
    measured = {
        **calibration_record(union, target_fpr, confidence),
        "per_detector_fpr": k / n,
        "fired": {**fired_counts, "both": int((fired.sum(axis=1) > 1).sum())},
    }
    return thresholds, fired, measured


def calibrate_either(
    ae_scores: np.ndarray, entropies: np.ndarray, target_fpr: float, confidence: float = 0.0
) -> tuple[float, float, dict[str, Any]]:
    """(ae_threshold, strip_threshold, what was measured) for detector both's rule on clean
    images: score > ae_threshold or entropy < strip_threshold flags at most K of them
    (:func:`calibrate_union`, STRIP's rule as -entropy > -strip_threshold)."""
    if np.shape(ae_scores) != np.shape(entropies):
        raise ValueError(
            f"scores {np.shape(ae_scores)} and entropies {np.shape(entropies)}: one value per "
            "image each"
        )
    h = np.asarray(entropies, np.float64)
    (t_ae, t_minus_h), _, measured = calibrate_union(
        {"detrigger": ae_scores, "strip": -h}, target_fpr, confidence
    )
    return t_ae, -t_minus_h, measured


def both_entry(score: str, ae_threshold: float, strip_threshold: float, calibration: dict) -> dict:
    """The manifest's ``detectors.both``, checked against the contract's schema."""
    entry = {
        "rule": "either",
        "score": score,
        "ae_threshold": ae_threshold,
        "strip_threshold": strip_threshold,
        "description": "flagged when the de-trigger score is above ae_threshold or STRIP's "
        "entropy is below strip_threshold; the thresholds were set together for target_fpr",
        "calibration": calibration,
    }
    BothSpec.model_validate(entry)
    return entry


def put_entry(raw: dict[str, Any], entry: dict[str, Any]) -> None:
    """Put ``entry`` into the raw manifest's detectors, every other field kept."""
    current = raw.get("detectors")
    detectors: dict[str, Any] = current if isinstance(current, dict) else {}
    raw["detectors"] = {**detectors, "both": entry}


def fingerprint(raw: dict[str, Any]) -> dict[str, Any]:
    """What the fused thresholds were calibrated with: a changed graph, bank or copy count makes
    them stale (``detrigger-guard check`` says so)."""
    strip = raw["detectors"]["strip"]
    return {
        "target_sha256": raw["target"]["sha256"],
        "detrigger_sha256": raw["detrigger"]["sha256"],
        "strip_bank_sha256": strip["bank"]["sha256"],
        "strip_n": strip["n"],
        "strip_seed": strip.get("seed", 0),
    }


def entry_for(
    raw: dict[str, Any],
    ae_scores: np.ndarray,
    entropies: np.ndarray,
    target_fpr: float,
    evidence_fields: dict[str, Any],
    *,
    confidence: float,
) -> dict[str, Any]:
    """The ``detectors.both`` entry of a set from clean scores, with its evidence."""
    score = raw["decision"].get("score", "prob_drop")
    t_ae, t_h, measured = calibrate_either(ae_scores, entropies, target_fpr, confidence)
    calibration = {**measured, **evidence_fields, "calibrated_with": fingerprint(raw)}
    return both_entry(score, t_ae, t_h, calibration)


def detrigger_or_repaired_entry(
    raw: dict[str, Any],
    ae_scores: np.ndarray,
    repaired_scores: np.ndarray,
    target_fpr: float,
    evidence_fields: dict[str, Any],
    *,
    confidence: float,
    floors: tuple[float, float],
) -> dict[str, Any]:
    """The ``detectors.detrigger_or_repaired`` entry of a set from clean images' de-trigger
    scores and repaired graph's scores (``raw`` holds the repaired entry), with its evidence:
    the two thresholds at one per-detector FPR, each at least its floor."""
    (t_ae, t_r), _, measured = calibrate_union(
        {"detrigger": ae_scores, "repaired": repaired_scores}, target_fpr, confidence, floors
    )
    detectors = raw["detectors"]
    entry = {
        "rule": "either",
        "score": raw["decision"].get("score", "prob_drop"),
        "ae_threshold": t_ae,
        "repaired_threshold": t_r,
        "description": "flagged when the de-trigger score is above ae_threshold or the "
        "repaired graph's score is above repaired_threshold; the thresholds were set together "
        "for target_fpr",
        "calibration": {
            **measured,
            **evidence_fields,
            "calibrated_with": {
                "target_sha256": raw["target"]["sha256"],
                "detrigger_sha256": raw["detrigger"]["sha256"],
                "repaired_sha256": detectors["repaired"]["sha256"],
                "repaired_score": detectors["repaired"].get("score", "prob_drop"),
            },
        },
    }
    DetriggerOrRepairedSpec.model_validate(entry)
    detectors["detrigger_or_repaired"] = entry
    return entry


def detrigger_or_repaired_line(folder: Path, entry: dict[str, Any]) -> str:
    c = entry["calibration"]
    return (
        f"{folder}: detector detrigger_or_repaired, {entry['score']} > "
        f"{entry['ae_threshold']:.6g} or repaired {c['calibrated_with']['repaired_score']} > "
        f"{entry['repaired_threshold']:.6g}; clean FPR {c['false_positive']['rate']:.4f} (each "
        f"detector {c['per_detector_fpr']:.4f}) on {c['n']} images" + confidence_note(c)
    )


def ae_scores(
    folder: Path, manifest: Manifest, images: np.ndarray, threads: int, batch_size: int = 256
) -> np.ndarray:
    """The manifest's de-trigger score of clean uint8 images (N, C, H, W), run as the service
    runs it: AE(x), then the target once on [x; AE(x)]."""
    ae = Graph.load(read_verified(folder, manifest.detrigger), threads)
    target = Graph.load(read_verified(folder, manifest.target), threads)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].astype(np.float32) / np.float32(255.0)
        logits = target(np.concatenate([x, ae(x)]))
        out.append(SCORES[manifest.decision.score](logits[: len(x)], logits[len(x) :]))
    return np.concatenate(out)


def write_both(
    folder: Path,
    raw: dict[str, Any],
    ae: np.ndarray,
    entropies: np.ndarray,
    target_fpr: float,
    evidence_fields: dict[str, Any],
    *,
    confidence: float,
) -> dict[str, Any]:
    """Calibrate detector both from clean scores, put the entry into ``raw`` (which holds the
    STRIP entry it runs with) and write the manifest; returns the entry."""
    entry = entry_for(raw, ae, entropies, target_fpr, evidence_fields, confidence=confidence)
    put_entry(raw, entry)
    write_manifest(folder, raw)
    return entry


def summary_line(folder: Path, entry: dict[str, Any]) -> str:
    c = entry["calibration"]
    return (
        f"{folder}: detector both, {entry['score']} > {entry['ae_threshold']:.6g} or entropy < "
        f"{entry['strip_threshold']:.6g} bits; clean FPR {c['false_positive']['rate']:.4f} "
        f"(each detector {c['per_detector_fpr']:.4f}) on {c['n']} images" + confidence_note(c)
    )
