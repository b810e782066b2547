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

from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import BothSpec, Manifest, read_verified
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


def below_k(values: np.ndarray, k: int) -> float:
    """The threshold t among these values with at most k of them strictly below t."""
    v = np.sort(np.asarray(values, np.float64))
    if not 0 <= k < len(v):
        raise ValueError(f"k = {k} must lie in 0..{len(v) - 1}")
    return float(v[k])


def calibrate_either(
    ae_scores: np.ndarray, entropies: np.ndarray, target_fpr: float, confidence: float = 0.0
) -> tuple[float, float, dict[str, Any]]:
    """(ae_threshold, strip_threshold, what was measured) for the rule ``either`` on clean
    images: score > ae_threshold or entropy < strip_threshold flags at most K of them, K =
    allowed_exceedances(n, target_fpr, confidence) (floor(target_fpr * n) at confidence 0).

    Each threshold lets k images through on its own; the search goes down from k = K to the
    first k whose union fits. The union only grows with k, and k = 0 flags nothing, so the
    search always ends."""
    s = np.asarray(ae_scores, np.float64)
    h = np.asarray(entropies, np.float64)
    if s.shape != h.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and entropies {h.shape}: one value per image each")
    if not (np.isfinite(s).all() and np.isfinite(h).all()):
        raise ValueError("a clean image has a non-finite score or entropy")
    if not 0.0 < target_fpr < 0.5:
        raise ValueError(f"target_fpr {target_fpr} must lie in (0, 0.5)")
    n = len(s)
    budget = allowed_exceedances(n, target_fpr, confidence)
    if budget < (1 if confidence == 0.0 else 0):
        raise ValueError(too_few_message(n, target_fpr, confidence))
    for k in range(budget, -1, -1):
        t_ae, t_h = above_k(s, k), below_k(h, k)
        ae, strip = s > t_ae, h < t_h
        if int((ae | strip).sum()) <= budget:
            break
    measured = {
        **calibration_record(ae | strip, target_fpr, confidence),
        "per_detector_fpr": k / n,
        "fired": {
            "detrigger": int(ae.sum()),
            "strip": int(strip.sum()),
            "both": int((ae & strip).sum()),
        },
    }
    return t_ae, t_h, measured


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
