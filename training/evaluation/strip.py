"""STRIP (Gao et al., ACSAC 2019) calibrated for a model set: the bank drawn from the held-out
validation split, the entropy threshold for a target FPR, the check on triggered images, and the
manifest entry ``detectors.strip`` (then ``detectors.both`` on the same images,
training/evaluation/fusion.py). Shared by `detrigger-guard calibrate SET --recorded-split
--redraw-bank`, reproduce (which calibrates every shipped set), the audit (its repaired sets) and
detection_report (which draws the same bank and threshold).

From the dataset's held-out validation split (the training images the set's target never trained
on, as its manifest records; a set made elsewhere gets a seeded random subset of the training
data, and the manifest says so) it draws a bank of clean images, computes the STRIP entropy of
every other validation image and sets the threshold for the target FPR at the confidence (0.95:
few enough of them flagged that the FPR on new clean images is <= the target with probability
>= 0.95; 0: the plain quantile). Bank and calibration images are disjoint; the test split is
never read. When the manifest records backdoor triggers (the demo sets), it also reports how many
triggered validation images STRIP flags.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Manifest, read_manifest, read_verified
from contract.strip import Strip, StripConfig, bank_from_npy, flag, run_strip
from training import evidence
from training.data.datasets import Dataset, load_dataset, split_train_val
from training.data.triggers import Trigger, manifest_backdoors
from training.evaluation.detectors import cpu_session
from training.evaluation.fusion import ae_scores, write_both
from training.evaluation.fusion import summary_line as fusion_line
from training.evaluation.metrics import (
    DEFAULT_CONFIDENCE,
    calibration_record,
    confidence_note,
    min_calibration_images,
    threshold_at_fpr,
    too_few_message,
)
from training.nets.manifest_file import sha256, write_manifest


@dataclass
class StripOptions:
    """What one STRIP calibration takes (`detrigger-guard calibrate SET --recorded-split
    --redraw-bank` sets model_set, dataset, data_dir, n, target_fpr, confidence, bank_size, seed,
    batch_size and threads; make reproduce and the audit call it with their own)."""

    model_set: str = "models/mnist"
    dataset: str = "mnist"
    data_dir: str | None = None
    n: int = 16
    target_fpr: float = 0.01
    confidence: float = DEFAULT_CONFIDENCE  # 0: the plain quantile (metrics.threshold_at_fpr)
    bank_size: int = 64
    calibration_images: int = 0
    triggered_images: int = 1000
    input_weight: float = 1.0
    bank_weight: float = 1.0
    val_size: int = 5000
    seed: int = 0
    batch_size: int = 64
    threads: int = 0

    def problems(self) -> list[str]:
        """What is wrong with these options, as the job's flags name it (empty when fine)."""
        out = []
        if not 1 <= self.n <= min(256, self.bank_size):
            out.append(
                f"--n {self.n} must lie in 1..256 and be at most --bank-size ({self.bank_size})"
            )
        if not 0.0 < self.target_fpr < 0.5:
            out.append(f"--target-fpr {self.target_fpr} must lie in (0, 0.5)")
        if not 0.0 <= self.confidence < 1.0:
            out.append(f"--confidence {self.confidence} must lie in [0, 1) (0 or off: quantile)")
        if self.batch_size < 1:
            out.append("--batch-size must be at least 1")
        return out


BANK_FILE = "strip_bank.npy"


def strip_threshold(entropies: np.ndarray, target_fpr: float, confidence: float = 0.0) -> float:
    """Threshold t (flag when entropy < t) calibrated for target_fpr on these clean entropies,
    taken among the entropies themselves (the same rule as the de-trigger scores' calibration,
    metrics.threshold_at_fpr, on the negated entropy): at confidence 0 the target_fpr quantile,
    at most target_fpr of them flagged; at confidence c, few enough flagged that the FPR on new
    clean images is <= target_fpr with probability >= c."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must lie in (0, 1), got {target_fpr}")
    return -threshold_at_fpr(-np.asarray(entropies, np.float64), target_fpr, confidence)


def validation_indices(
    n_train: int, manifest: dict[str, Any], val_size: int, seed: int
) -> tuple[np.ndarray, str]:
    """(sorted indices of held-out training images, a note saying where they come from).

    A set made by this pipeline records ``training.validation_split.n`` and ``training.seed``:
    the same split_train_val call then gives back the images its target never trained on (as
    training.audit does). Otherwise, a seeded random subset of ``val_size`` training images.
    """
    training = manifest.get("training") or {}
    held = (training.get("validation_split") or {}).get("n")
    if held:
        split_seed = int(training.get("seed", 0))
        _, val = split_train_val(n_train, int(held), split_seed)
        return val, (
            f"validation: the {int(held)} training images held out from the target's training "
            f"(split_train_val, seed {split_seed})"
        )
    if not 0 < val_size <= n_train:
        raise ValueError(f"--val-size {val_size} must lie in 1..{n_train}")
    perm = np.random.default_rng(seed).permutation(n_train)
    return np.sort(perm[:val_size]), (
        f"training data: {val_size} images drawn with seed {seed}; the manifest records no "
        "validation split, so the target may have trained on them"
    )


def bank_and_calibration(
    val: np.ndarray, bank_size: int, calibration_images: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (bank, calibration) index arrays drawn from the validation indices."""
    if not 0 < bank_size < len(val):
        raise ValueError(f"--bank-size {bank_size} must lie in 1..{len(val) - 1}")
    perm = np.random.default_rng(seed).permutation(val)
    rest = perm[bank_size:]
    if calibration_images > 0:
        rest = rest[:calibration_images]
    return np.sort(perm[:bank_size]), np.sort(rest)


def onnx_target(
    folder: Path, manifest: Manifest, threads: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The set's target on ONNX Runtime (CPU), built from the bytes checked against the
    manifest's sha256: images (N, C, H, W) float32 -> logits (N, K)."""
    spec = manifest.target
    session = cpu_session(read_verified(folder, spec), threads)

    def run(x: np.ndarray) -> np.ndarray:
        (out,) = session.run([spec.output_name], {spec.input_name: x})
        return np.asarray(out)

    return run


def strip_entropies(
    images: np.ndarray,
    bank: np.ndarray,
    config: StripConfig,
    target: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    transform: Callable[[np.ndarray], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) -> (predicted class (N,), STRIP entropy (N,) in bits), in
    chunks of batch_size inputs (one target call of batch_size * (n + 1) images each).
    ``transform`` maps a float chunk in [0, 1] to another (e.g. stamps a trigger)."""
    predicted, entropy = [], []
    for start in range(0, len(images), batch_size):
        # (B, C, H, W) in [0, 1], the same float32 values as the service's decoder gives
        x = images[start : start + batch_size].astype(np.float32) / np.float32(255.0)
        if transform is not None:
            x = np.asarray(transform(x), dtype=np.float32)
        logits_x, h = run_strip(x, bank, config, target)
        predicted.append(logits_x.argmax(axis=1))
        entropy.append(h)
    return np.concatenate(predicted), np.concatenate(entropy)


def triggered_check(
    attack: dict[str, Any],
    train: Dataset,
    calib_idx: np.ndarray,
    bank: np.ndarray,
    config: StripConfig,
    target: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    opts: StripOptions,
) -> dict[str, Any]:
    """STRIP on validation images of other classes than the attack's target class, with the
    manifest's trigger stamped on: how many it flags, and whether the trigger still works."""
    target_class = int(attack.get("target_class", 0))
    try:
        trigger = Trigger(**attack["trigger"])
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"manifest trigger {attack['trigger']} is not one this pipeline knows ({exc}), so "
            "STRIP's detection of it cannot be measured"
        ) from exc
    others = calib_idx[train.labels[calib_idx] != target_class][: opts.triggered_images]
    predicted, entropy = strip_entropies(
        train.images[others], bank, config, target, opts.batch_size, transform=trigger
    )
    return {
        "target_class": target_class,
        "trigger": attack["trigger"],
        "n": int(len(others)),
        "attack_success_rate": float((predicted == target_class).mean()),
        "detection_rate": float(flag(entropy, threshold).mean()),
        "entropy_bits": quantiles(entropy),
    }


def quantiles(values: np.ndarray) -> dict[str, float]:
    qs = {"min": 0.0, "p01": 0.01, "p05": 0.05, "median": 0.5, "p95": 0.95, "max": 1.0}
    return {name: float(np.quantile(values, q)) for name, q in qs.items()}


def draw_split(
    opts: StripOptions, folder: Path, raw: dict[str, Any], chw: tuple[int, int, int]
) -> tuple[Dataset, str, np.ndarray, np.ndarray]:
    """(training data, where the validation images come from, bank indices, calibration
    indices); stops when the data does not fit the set or too few images are left."""
    train = load_dataset(opts.dataset, "train", opts.data_dir)
    if tuple(train.images.shape[1:]) != chw:
        raise ValueError(
            f"{opts.dataset} images are {train.images.shape[1:]}; model set {folder} takes {chw}"
        )
    val, source = validation_indices(len(train), raw, opts.val_size, opts.seed)
    bank_idx, calib_idx = bank_and_calibration(
        val, opts.bank_size, opts.calibration_images, opts.seed
    )
    if len(calib_idx) < min_calibration_images(opts.target_fpr, opts.confidence):
        raise ValueError(
            "calibration images: "
            + too_few_message(len(calib_idx), opts.target_fpr, opts.confidence)
        )
    return train, source, bank_idx, calib_idx


def strip_entry(
    opts: StripOptions,
    folder: Path,
    bank_idx: np.ndarray,
    source: str,
    threshold: float,
    calibration: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's ``detectors.strip`` (the bank file must be written already)."""
    return {
        "bank": {
            "file": BANK_FILE,
            "sha256": sha256(folder / BANK_FILE),
            "images": int(len(bank_idx)),
            "dtype": "uint8",
            "indices": [int(i) for i in bank_idx],  # into the dataset's training split
            "source": source,
        },
        "n": opts.n,
        "threshold": threshold,
        "seed": opts.seed,
        "blend": {"input_weight": opts.input_weight, "bank_weight": opts.bank_weight},
        "score": "mean Shannon entropy (bits) of the target's softmax over the n copies; "
        "flagged when below threshold",
        "calibration": calibration,
    }


def write_entry(
    folder: Path, raw: dict[str, Any], entry: dict[str, Any], chw: tuple[int, int, int]
) -> None:
    """Put `entry` into the manifest, every other field kept, and check that what was written
    loads in the service: manifest, sha256 and bank shape."""
    detectors = raw.get("detectors") if isinstance(raw.get("detectors"), dict) else {}
    raw["detectors"] = {**detectors, "strip": entry}
    write_manifest(folder, raw)
    written = read_manifest(folder)
    assert written.detectors.strip is not None
    Strip.load(folder, written.detectors.strip, chw)


def summary_line(folder: Path, opts: StripOptions, threshold: float, calibration: dict) -> str:
    line = (
        f"{folder}: STRIP n={opts.n}, threshold {threshold:.6f} bits; clean FPR "
        f"{calibration['false_positive_rate']:.4f} on {calibration['n']} validation images"
        + confidence_note(calibration)
    )
    for t in calibration.get("triggered", []):
        line += (
            f"; detection {t['detection_rate']:.4f} on {t['n']} triggered "
            f"(attack success {t['attack_success_rate']:.4f})"
        )
    return f"{line} ({calibration['wall_seconds']:.0f} s)"


def calibrate_model_set(opts: StripOptions, command: str) -> dict[str, Any]:
    """Calibrate STRIP for the model set opts.model_set: write its bank and manifest entry, check
    that the service loads them, print one line and return the summary. `command` is what the
    manifest records as the command that made the entry."""
    t0 = time.time()
    folder = Path(opts.model_set)
    manifest = read_manifest(folder)  # validated: what the service will read
    raw = json.loads((folder / "manifest.json").read_text())  # written back field for field
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
    train, source, bank_idx, calib_idx = draw_split(opts, folder, raw, chw)

    # The bank as the service will read it: the .npy bytes through the service's own loader.
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(train.images[bank_idx]))  # (M, C, H, W) uint8
    bank = bank_from_npy(buffer.getvalue(), chw)
    config = StripConfig(opts.n, opts.seed, opts.input_weight, opts.bank_weight)
    target = onnx_target(folder, manifest, opts.threads)

    # The threshold: at most target_fpr of the clean calibration images flagged.
    predicted, entropy = strip_entropies(
        train.images[calib_idx], bank, config, target, opts.batch_size
    )
    threshold = strip_threshold(entropy, opts.target_fpr, opts.confidence)
    record = calibration_record(flag(entropy, threshold), opts.target_fpr, opts.confidence)
    calibration: dict[str, Any] = {
        **record,
        "split": "validation" if source.startswith("validation") else "training",
        "source": source,
        "dataset": opts.dataset,
        "false_positive_rate": record["false_positive"]["rate"],
        "clean_accuracy": float((predicted == train.labels[calib_idx]).mean()),
        "entropy_bits": quantiles(entropy),
    }
    attacks = manifest_backdoors(raw)
    if attacks and opts.triggered_images > 0:
        calibration["triggered"] = [
            triggered_check(attack, train, calib_idx, bank, config, target, threshold, opts)
            for attack in attacks
        ]

    # Save: the bank, the manifest entry with its evidence.
    np.save(folder / BANK_FILE, np.ascontiguousarray(train.images[bank_idx]))
    calibration.update(
        {
            "command": command,
            "seed": opts.seed,
            "hardware": evidence.onnx_hardware(opts.threads),
            "versions": evidence.versions(evidence.ONNX_PACKAGES),
            "wall_seconds": round(time.time() - t0, 1),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    write_entry(
        folder, raw, strip_entry(opts, folder, bank_idx, source, threshold, calibration), chw
    )
    print(summary_line(folder, opts, threshold, calibration))

    # Detector both on the same images: the de-trigger score beside each entropy, the two
    # thresholds set together for the same target FPR (training/evaluation/fusion.py).
    scores = ae_scores(folder, manifest, train.images[calib_idx], opts.threads)
    keep = ("split", "source", "dataset", "command", "seed", "hardware", "versions", "created")
    both = write_both(
        folder,
        raw,
        scores,
        entropy,
        opts.target_fpr,
        {k: calibration[k] for k in keep},
        confidence=opts.confidence,
    )
    print(fusion_line(folder, both))
    return {"model_set": str(folder), "threshold": threshold, **calibration, "both": both}
