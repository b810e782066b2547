"""Calibration of a model set on a user's clean held-out images, and the estimates that can be
made without a known backdoor.

- `calibrate_decision`: the contract's score (contract.scoring) on (f(x), f(AE(x))), thresholded
  for target_fpr at a confidence (metrics.threshold_at_fpr: at 0.95, the FPR on new clean images
  is <= target_fpr with probability >= 0.95; at 0, at most target_fpr of these images are
  flagged, the plain quantile); the measured FPR is reported with its exact (Clopper-Pearson)
  95% interval.
- `shifted`: the held-out images, each moved by a random offset of a pixel or two, which the
  thresholds are set on (`CalibrationOptions.shift`). A user's held-out images are often images
  the target trained on; it is surer of them than of new ones, so the AE's changes drop its
  probabilities less there, and a threshold set on them as they are flags more than target_fpr
  of new clean images (measured in docs/byom.md, "Calibrated on shifted images"). Moved off the
  pixel grid it learnt, an image scores about as a new one does.
- `estimates`: for each trigger family of the attack suite stamped on the clean images, how often
  the target's class on AE(stamped) equals its class on the clean image (restoration rate), and
  how much the AE changes clean images. These are estimates: the user's model has no known
  backdoor, so no detection rate can be measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Decision, Manifest, read_manifest, read_verified
from contract.scoring import SCORES, decide
from contract.strip import StripConfig, bank_from_npy, flag
from contract.unchanged import largest_change
from training.data.attack_suite import load_suite
from training.data.triggers import Trigger
from training.evaluation.detection import MIN_THRESHOLD
from training.evaluation.detectors import cpu_session, float_batches
from training.evaluation.fusion import detrigger_or_repaired_entry, entry_for, put_entry
from training.evaluation.metrics import (
    DEFAULT_CONFIDENCE,
    calibration_record,
    min_calibration_images,
    rate,
    threshold_at_fpr,
    too_few_message,
)
from training.evaluation.metrics import clopper_pearson as clopper_pearson  # re-exported
from training.evaluation.repaired import calibrated_entry, repaired_logits
from training.evaluation.strip import BANK_FILE, onnx_target, strip_entropies, strip_threshold
from training.nets.manifest_file import sha256, write_manifest

Pair = Callable[
    [np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]  # x -> (f(x), f(AE x), AE x)


def calibrate_decision(
    logits_x: np.ndarray,
    logits_ae: np.ndarray,
    score: str,
    target_fpr: float,
    confidence: float = DEFAULT_CONFIDENCE,
    floor: float = -np.inf,
) -> tuple[Decision, dict[str, Any]]:
    """The manifest's decision for target_fpr at `confidence` on these clean images (a threshold
    at least `floor`, which only lowers the FPR), and what it measured."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")
    if not 0.0 < target_fpr < 0.5:
        raise ValueError(f"--target-fpr {target_fpr} must lie in (0, 0.5)")
    if len(logits_x) < min_calibration_images(target_fpr, confidence):
        raise ValueError(too_few_message(len(logits_x), target_fpr, confidence))
    values = SCORES[score](logits_x, logits_ae)
    quantile = threshold_at_fpr(values, target_fpr, confidence)
    threshold = max(quantile, floor)
    decision = Decision(rule="score", score=score, threshold=threshold)  # type: ignore[arg-type]
    flagged = decide(logits_x, logits_ae, decision).flagged  # the contract's own rule
    measured = {
        **calibration_record(flagged, target_fpr, confidence),
        "score": score,
        "threshold": threshold,
        "score_quantiles": {
            q: float(np.quantile(values, v))
            for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        },
    }
    if threshold > quantile:  # the floor decided
        measured["floor"] = {"threshold": floor, "calibrated": quantile}
    return decision, measured


def suite_triggers() -> list[tuple[str, Trigger]]:
    """One (name, trigger) per trigger of the attack suite (two-targets gives two)."""
    out = []
    for name, attack in load_suite().items():
        for i, (trigger, _) in enumerate(attack.backdoors):
            out.append((name if len(attack.backdoors) == 1 else f"{name}-{i + 1}", trigger))
    return out


def estimates(
    images: np.ndarray, run_pair: Pair, decision: Decision, batch_size: int = 256
) -> dict[str, Any]:
    """Estimates on clean uint8 images (N, C, H, W): what the AE does to them, and per suite
    trigger stamped on them, the restoration rate and the share the decision flags."""
    x = images.astype(np.float32) / np.float32(255.0)
    lx, lae, ax = _batched(run_pair, x, batch_size)
    clean_pred = lx.argmax(1)
    clean_moved = largest_change(x, ax)  # 0 where AE(x) is x bit for bit (NaN is never 0)
    out: dict[str, Any] = {
        "note": "ESTIMATES, not detection rates: the model has no known backdoor. Each suite "
        "trigger is stamped on clean held-out images; 'restoration' is how often the target's "
        "class on AE(stamped) equals its class on the clean image; 'flagged' how often the "
        "set's decision flags the stamped image (a trigger the model never learnt rarely "
        "changes its class, so 'flagged' understates detection of a real backdoor); "
        "'unchanged' how often the AE returns the image bit for bit (a gated AE: the guard "
        "runs the target on it once, and can never flag it).",
        "n": int(len(x)),
        "clean": {
            "mean_abs_pixel_change": float(np.abs(ax - x).mean()),
            "class_agreement": float((lae.argmax(1) == clean_pred).mean()),
            # returned bit for bit (a gated AE, contract/unchanged.py): the target runs once
            "unchanged": float((clean_moved == 0).mean()),
            # the largest pixel change of AE(x), median over the images: what a gate's
            # tolerance must exceed to run most clean images once
            "median_largest_change": float(np.median(clean_moved)),
        },
        "triggers": [],
    }
    c, h, w = x.shape[1:]
    out["skipped"] = []
    for name, trigger in suite_triggers():
        try:
            t = trigger.resolve(h, w)
        except ValueError as exc:  # e.g. a random position on too small an image
            out["skipped"].append({"name": name, "why": str(exc)})
            continue
        if t.kind == "patch" and t.size > min(h, w) // 2:
            out["skipped"].append({"name": name, "why": "the patch covers half the image"})
            continue
        stamped = np.asarray(t(x.copy()), np.float32)
        sx, sae, sax = _batched(run_pair, stamped, batch_size)
        moved = largest_change(stamped, sax)
        flagged = decide(sx, sae, decision).flagged
        out["triggers"].append(
            {
                "name": name,
                "trigger": t.to_dict(),
                "restoration_rate": float((sae.argmax(1) == clean_pred).mean()),
                "class_changed_by_trigger": float((sx.argmax(1) != clean_pred).mean()),
                "flagged": float(flagged.mean()),
                # stamped images the AE returned bit for bit: none of them can be flagged
                "unchanged": float((moved == 0).mean()),
                # the smallest of the AE's largest pixel changes on the stamped images: a gate's
                # tolerance at or above it passes some of them unflagged
                "smallest_largest_change": float(moved.min()),
            }
        )
    return out


def _batched(run_pair: Pair, x: np.ndarray, batch_size: int):
    parts = [run_pair(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


# --- a set folder -------------------------------------------------------------------------------


@dataclass
class CalibrationOptions:
    """How a set is calibrated on clean held-out images (fit's and calibrate's options)."""

    target_fpr: float = 0.01
    confidence: float = DEFAULT_CONFIDENCE  # 0: the plain quantile (metrics.threshold_at_fpr)
    score: str = "prob_drop"
    strip: bool = True
    strip_n: int = 16
    strip_bank: int = 64
    estimate_images: int = 1000  # 0: no estimates
    seed: int = 0
    threads: int = 0
    batch_size: int = 256
    shift: int = 2  # pixels the calibration images are moved by (`shifted`); 0: as they are

    def problems(self) -> list[str]:
        out = []
        if not 0.0 < self.target_fpr < 0.5:
            out.append(f"--target-fpr {self.target_fpr} must lie in (0, 0.5)")
        if not 0.0 <= self.confidence < 1.0:
            out.append(f"--confidence {self.confidence} must lie in [0, 1) (0 or off: quantile)")
        if self.score not in SCORES:
            out.append(f"--score {self.score!r}: allowed: {', '.join(SCORES)}")
        if self.shift < 0:
            out.append(f"--calibration-shift {self.shift} must be >= 0 (0: images as they are)")
        if self.strip and not 1 <= self.strip_n <= min(256, self.strip_bank):
            out.append(f"--strip-n {self.strip_n} must lie in 1..min(256, --strip-bank)")
        return out


def onnx_pair(folder: Path, manifest: Manifest, threads: int) -> Pair:
    """x -> (f(x), f(AE(x)), AE(x)) on ONNX Runtime from the set's verified bytes, the service's
    order: the AE once, then the target once on [x; AE(x)]."""
    target = cpu_session(read_verified(folder, manifest.target), threads)
    ae = cpu_session(read_verified(folder, manifest.detrigger), threads)
    t, d = manifest.target, manifest.detrigger

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        (ax,) = ae.run([d.output_name], {d.input_name: x})
        (logits,) = target.run([t.output_name], {t.input_name: np.concatenate([x, ax])})
        logits = np.asarray(logits, np.float64)
        return logits[: len(x)], logits[len(x) :], np.asarray(ax, np.float32)

    return run


def shifted(images: np.ndarray, pixels: int, seed: int) -> np.ndarray:
    """Images (N, C, H, W), each moved by its own random offset of up to `pixels` in each
    direction, the edge reflected into the gap; `pixels` 0 returns them as they are."""
    if pixels == 0:
        return images
    n, _, h, w = images.shape
    if pixels >= min(h, w):
        raise ValueError(f"--calibration-shift {pixels} must be smaller than the image ({h}x{w})")
    pad = ((0, 0), (0, 0), (pixels, pixels), (pixels, pixels))
    # (N, C, 2p+1, 2p+1, H, W): every H x W window of the padded image, a view
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(images, pad, "reflect"), (h, w), (2, 3)
    )
    dy, dx = np.random.default_rng([seed, 1]).integers(0, 2 * pixels + 1, size=(2, n))
    return np.ascontiguousarray(windows[np.arange(n), :, dy, dx])


def calibrate_folder(
    folder: Path, images: np.ndarray, opts: CalibrationOptions, source: str
) -> dict[str, Any]:
    """Calibrate the set in `folder` on clean uint8 images (N, C, H, W) the AE never trained on:
    write its decision (and STRIP's bank and entry) into the manifest, and return what was
    measured, estimates included. The bank and the calibration images are disjoint; every
    threshold is set on the calibration images `shifted` by up to opts.shift pixels, the
    estimates use them as they are."""
    raw = json.loads((folder / "manifest.json").read_text())
    manifest = read_manifest(folder)
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
    if tuple(images.shape[1:]) != chw:
        raise ValueError(f"images {images.shape[1:]} do not fit the set's input {chw}")
    perm = np.random.default_rng(opts.seed).permutation(len(images))
    n_bank = opts.strip_bank if opts.strip else 0
    # The calibration images stay in the permutation's random order: a folder read class by
    # class would otherwise give the estimates' first images all of one class.
    bank_idx, calib_idx = np.sort(perm[:n_bank]), perm[n_bank:]
    calib = images[calib_idx]
    moved = shifted(calib, opts.shift, opts.seed)  # what every threshold is set on
    as_they_are = source
    if opts.shift:
        source += f", each image shifted by up to {opts.shift} px"
    pair = onnx_pair(folder, manifest, opts.threads)
    x = moved.astype(np.float32) / np.float32(255.0)  # the service decoder's float32 values
    lx, lae, _ = _batched(pair, x, opts.batch_size)
    decision, measured = calibrate_decision(lx, lae, opts.score, opts.target_fpr, opts.confidence)
    measured["source"] = source
    plain = (lx, lae)
    if opts.shift:  # what the threshold flags of the same images as they are
        plain = _batched(pair, calib.astype(np.float32) / np.float32(255.0), opts.batch_size)[:2]
        measured["shift"] = {
            "pixels": opts.shift,
            "false_positive_unshifted": rate(decide(plain[0], plain[1], decision).flagged),
        }
    measured["scores"] = SCORES[opts.score](lx, lae).tolist()  # for the report's plot
    raw["decision"] = {
        **decision.model_dump(),
        "calibration": {k: v for k, v in measured.items() if k != "scores"},
    }
    result: dict[str, Any] = {"decision": measured}
    if manifest.detectors.repaired is not None:
        # The repaired graph against the target on the images as they are: the two are copies
        # of one model, alike in what they memorised of these images, and a shift would measure
        # the target's own sensitivity to it (which a repair fine-tuned on moved images, as
        # training.fit.twin's, does not share) instead of their disagreement.
        spec = manifest.detectors.repaired
        batches = float_batches(calib, opts.batch_size)  # the images' floats, batch by batch
        lr = repaired_logits(folder, manifest, batches, opts.threads)
        # at least the floor, as on the recorded split: a repair that barely moves clean
        # outputs would otherwise get a threshold that float rounding on another runtime crosses
        _, repaired = calibrate_decision(
            plain[0], lr, spec.score, opts.target_fpr, opts.confidence, MIN_THRESHOLD[spec.score]
        )
        entry, record = calibrated_entry(
            raw["detectors"]["repaired"], repaired, {"source": as_they_are}
        )
        raw["detectors"]["repaired"] = entry
        result["repaired"] = record
        # Detector detrigger_or_repaired on the same images (training/evaluation/fusion.py),
        # each part's score as its detector alone is calibrated: the AE's on the moved images.
        fused = detrigger_or_repaired_entry(
            raw,
            SCORES[opts.score](lx, lae),
            SCORES[spec.score](plain[0], lr),
            opts.target_fpr,
            {
                "source": f"{as_they_are}; the AE's score on each image shifted by up to "
                f"{opts.shift} px, the repaired graph's on it as it is"
                if opts.shift
                else source
            },
            confidence=opts.confidence,
            floors=(MIN_THRESHOLD[opts.score], MIN_THRESHOLD[spec.score]),
        )
        result["detrigger_or_repaired"] = fused["calibration"]
    if opts.strip:
        bank = images[bank_idx]
        np.save(folder / BANK_FILE, np.ascontiguousarray(bank))  # (M, C, H, W) uint8
        bank_f = bank_from_npy((folder / BANK_FILE).read_bytes(), chw)
        config = StripConfig(opts.strip_n, opts.seed, 1.0, 1.0)
        target = onnx_target(folder, manifest, opts.threads)
        _, entropy = strip_entropies(moved, bank_f, config, target, 64)
        threshold = strip_threshold(entropy, opts.target_fpr, opts.confidence)
        strip = {
            **calibration_record(flag(entropy, threshold), opts.target_fpr, opts.confidence),
            "threshold": threshold,
            "source": source,
        }
        detectors = raw.get("detectors") if isinstance(raw.get("detectors"), dict) else {}
        raw["detectors"] = {
            **detectors,
            "strip": {
                "bank": {
                    "file": BANK_FILE,
                    "sha256": sha256(folder / BANK_FILE),
                    "images": int(len(bank)),
                    "dtype": "uint8",
                    "source": source,
                },
                "n": opts.strip_n,
                "threshold": threshold,
                "seed": opts.seed,
                "blend": {"input_weight": 1.0, "bank_weight": 1.0},
                "score": "mean Shannon entropy (bits) of the target's softmax over the n "
                "copies; flagged when below threshold",
                "calibration": strip,
            },
        }
        result["strip"] = strip
        # Detector both on the same images (training/evaluation/fusion.py).
        scores = SCORES[opts.score](lx, lae)
        both = entry_for(
            raw, scores, entropy, opts.target_fpr, {"source": source}, confidence=opts.confidence
        )
        put_entry(raw, both)
        result["both"] = both["calibration"]
    else:
        # An older STRIP entry was calibrated on other images, for another threshold: the
        # fused detector goes with it.
        detectors = raw.get("detectors") if isinstance(raw.get("detectors"), dict) else {}
        detectors.pop("both", None)
    Manifest.model_validate(raw)  # what the service will read
    write_manifest(folder, raw)
    if opts.estimate_images:
        chosen = calib[: opts.estimate_images]
        result["estimates"] = estimates(chosen, pair, decision, opts.batch_size)
    return result
