"""The fused detectors: the de-trigger AE and a second detector on one batch, one decision.

Detector ``detrigger_or_repaired`` fuses the AE with the repaired graph (detector
``repaired``) by the same rule, ``either``: the de-trigger score above ``ae_threshold`` or the
repaired graph's score above ``repaired_threshold``, calibrated the same way. It runs what the
two detectors run (the AE, the target on x and on AE(x), the repaired graph on x) and shares
the target's pass on x. Mode repair answers with the repaired graph's class where its rule
fired, else with the class on AE(x).

Detector ``both``: the de-trigger AE and STRIP on one batch, fused into one decision.

Each detector keeps its own score and rule: the de-trigger score (``prob_drop`` or ``kl``) is
flagged above ``ae_threshold``, STRIP's mean entropy below ``strip_threshold``. The fused rule,
``either``, flags an image when either rule fires (a logical OR). The two thresholds are
calibrated together on clean validation images (training.evaluation.fusion): both at the same
per-detector clean FPR alpha, the largest alpha for which the union still flags at most the
target FPR of those images. A trigger that one detector misses is caught by the other at the
price of a stricter threshold for each; an OR needs no triggered images to fit, which a learned
combiner would, and the only triggers known at calibration time are the ones it must not be
tuned to (docs/fusion.md).

One target call serves both detectors: ``[x; AE(x); n superimposed copies of each x]``, so
detector ``both`` costs the AE once and the target ``n + 2`` times per image, never more than
the two detectors run one after the other (which run the target on x twice).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from contract.manifest import BothSpec, DetriggerOrRepairedSpec, RepairedSpec
from contract.scoring import SCORES, Decisions
from contract.strip import Strip, mean_entropy


def both_batch(x: np.ndarray, x_ae: np.ndarray, strip: Strip) -> np.ndarray:
    """x and AE(x), both (B, C, H, W) in [0, 1] -> what the target runs on:
    ``[x; AE(x); copies]``, (B * (n + 2), C, H, W) float32, copies input-major."""
    if x.shape != x_ae.shape:
        raise ValueError(f"AE(x) of shape {x_ae.shape}; x is {x.shape}")
    parts = [x.astype(np.float32, copy=False), x_ae.astype(np.float32, copy=False)]
    return np.concatenate([*parts, strip.copies(x)])


def both_scores(logits: np.ndarray, b: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target's logits on :func:`both_batch` of B inputs -> (logits on x (B, K), logits on
    AE(x) (B, K), STRIP's mean entropy (B,) in bits)."""
    if logits.ndim != 2 or logits.shape[0] != b * (n + 2):
        raise ValueError(f"logits of shape {logits.shape}; expected ({b * (n + 2)}, classes)")
    return logits[:b], logits[b : 2 * b], mean_entropy(logits[2 * b :], n)


def decide_both(
    logits_x: np.ndarray, logits_ae: np.ndarray, entropy: np.ndarray, spec: BothSpec
) -> Decisions:
    """The fused decisions of a batch: the class on x and on AE(x), the de-trigger score as
    ``score``, STRIP's entropy beside it, which rule fired, and the flag (either fired). A
    non-finite score or entropy fires no rule; the guard refuses such an image
    (:meth:`Decisions.finite`)."""
    score = SCORES[spec.score](logits_x, logits_ae)
    entropy = np.asarray(entropy, np.float64)
    fired = np.stack([score > spec.ae_threshold, entropy < spec.strip_threshold], axis=1)
    return Decisions(
        logits_x.argmax(axis=1),
        logits_ae.argmax(axis=1),
        score,
        np.asarray(fired.any(axis=1), dtype=bool),
        entropy,
        fired,
    )


def run_both(
    x: np.ndarray,
    strip: Strip,
    ae: Callable[[np.ndarray], np.ndarray],
    target: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (B, C, H, W) in [0, 1] -> (logits on x, logits on AE(x), entropy): ``ae`` once, then
    ONE call of ``target`` on B * (n + 2) images, as the service runs it."""
    x = np.ascontiguousarray(x, np.float32)
    x_ae = np.asarray(ae(x), np.float32)
    logits = np.asarray(target(both_batch(x, x_ae, strip)))
    return both_scores(logits, len(x), strip.config.n)


def decide_detrigger_or_repaired(
    logits_x: np.ndarray,
    logits_ae: np.ndarray,
    logits_r: np.ndarray,
    spec: DetriggerOrRepairedSpec,
    repaired: RepairedSpec,
) -> tuple[Decisions, np.ndarray]:
    """The fused decisions of a batch from the target's logits on x and on AE(x) and the
    repaired graph's on x, all (N, K); and the logits of the class that mode repair answers,
    (N, K): the repaired graph's where its rule fired, else the target's on AE(x). The
    de-trigger score is ``score``, the repaired graph's ``repaired_score``; a non-finite one
    fires no rule, and the guard refuses such an image (:meth:`Decisions.finite`)."""
    score = SCORES[spec.score](logits_x, logits_ae)
    repaired_score = SCORES[repaired.score](logits_x, logits_r)
    fired = np.stack([score > spec.ae_threshold, repaired_score > spec.repaired_threshold], axis=1)
    answer = np.where(fired[:, 1:], logits_r, logits_ae)
    decisions = Decisions(
        logits_x.argmax(axis=1),
        answer.argmax(axis=1),
        score,
        np.asarray(fired.any(axis=1), dtype=bool),
        None,
        fired,
        repaired_score,
    )
    return decisions, answer
