"""Detection scores and decision rules (docs/model-contract.md), pure numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from contract.manifest import Decision
from contract.modes import Detector


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) logits -> (N, K) log-probabilities, numerically stable. A row with NaN or
    infinite logits gives NaN (the guard refuses to judge such an image), without a warning."""
    with np.errstate(invalid="ignore"):
        z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def prob_drop(logits_x: np.ndarray, logits_ae: np.ndarray) -> np.ndarray:
    """p(c | x) - p(c | AE(x)) with c = argmax p(. | x); (N,) in [-1, 1]."""
    p_x = np.exp(log_softmax(logits_x))
    p_ae = np.exp(log_softmax(logits_ae))
    c = p_x.argmax(axis=1)
    rows = np.arange(len(c))
    return p_x[rows, c] - p_ae[rows, c]


def kl(logits_x: np.ndarray, logits_ae: np.ndarray) -> np.ndarray:
    """KL(p(. | x) || p(. | AE(x))) in nats; (N,) >= 0."""
    lp_x = log_softmax(logits_x)
    lp_ae = log_softmax(logits_ae)
    return np.clip((np.exp(lp_x) * (lp_x - lp_ae)).sum(axis=1), 0.0, None)


SCORES = {"prob_drop": prob_drop, "kl": kl}


@dataclass(frozen=True)
class Decisions:
    """Per-image outcome of one batch; all arrays have shape (N,)."""

    predicted: np.ndarray  # int, argmax f(x)
    detriggered: np.ndarray | None  # int, argmax f(AE(x)); None for STRIP (no AE runs)
    # float, the detector's score (the fused detectors both and detrigger_or_repaired: the
    # de-trigger score)
    score: np.ndarray
    flagged: np.ndarray  # bool
    # Detector both only (contract.fusion): STRIP's entropy beside the de-trigger score.
    entropy: np.ndarray | None = None
    # The fused detectors (contract.fusion): which rule fired, (N, 2) bool: column 0 the
    # de-trigger rule, column 1 the other detector's (both: STRIP; detrigger_or_repaired: the
    # repaired graph's).
    fired: np.ndarray | None = None
    # Detector detrigger_or_repaired only: the repaired graph's score beside the de-trigger one.
    repaired_score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.predicted)

    def finite(self) -> np.ndarray:
        """(N,) bool: every score of the image is finite. A NaN never compares above or below
        a threshold, so an image with a non-finite score must not be answered (fail closed)."""
        ok = np.isfinite(self.score)
        for other in (self.entropy, self.repaired_score):
            if other is not None:
                ok = ok & np.isfinite(other)
        return ok

    def slice(self, start: int, stop: int) -> Decisions:
        def part(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[start:stop]

        return Decisions(
            self.predicted[start:stop],
            part(self.detriggered),
            self.score[start:stop],
            self.flagged[start:stop],
            part(self.entropy),
            part(self.fired),
            part(self.repaired_score),
        )

    @staticmethod
    def concat(parts: Sequence[Decisions]) -> Decisions:
        if len(parts) == 1:
            return parts[0]

        def joined(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
            present = [a for a in arrays if a is not None]
            return np.concatenate(present) if len(present) == len(arrays) else None

        return Decisions(
            np.concatenate([p.predicted for p in parts]),
            joined([p.detriggered for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.flagged for p in parts]),
            joined([p.entropy for p in parts]),
            joined([p.fired for p in parts]),
            joined([p.repaired_score for p in parts]),
        )


@dataclass(frozen=True)
class Rule:
    """How a detector's score was turned into a flag: what each result reports beside it."""

    detector: Detector
    score_name: Literal["prob_drop", "kl", "strip_entropy"]
    threshold: float
    # class_change; score: flagged when score > threshold; score_below: when score < threshold;
    # either: detector both, score > threshold or STRIP's entropy < strip_threshold;
    # detector detrigger_or_repaired, score > threshold or the repaired graph's score >
    # repaired_threshold
    rule: Literal["class_change", "score", "score_below", "either"]
    strip_threshold: float | None = None  # detector both only
    repaired_threshold: float | None = None  # detector detrigger_or_repaired only
    repaired_score_name: Literal["prob_drop", "kl"] | None = None  # the same


def decide(logits_x: np.ndarray, logits_ae: np.ndarray, decision: Decision) -> Decisions:
    """Apply the manifest's rule to the target's logits on x and on AE(x), both (N, K)."""
    predicted = logits_x.argmax(axis=1)
    detriggered = logits_ae.argmax(axis=1)
    score = SCORES[decision.score](logits_x, logits_ae)
    if decision.rule == "class_change":
        flagged = predicted != detriggered
    else:
        flagged = score > decision.threshold
    return Decisions(predicted, detriggered, score, flagged)
