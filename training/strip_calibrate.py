"""Calibrate STRIP (Gao et al., ACSAC 2019) for a model set, from one command:

    python -m training.strip_calibrate --model-set models/mnist --dataset mnist

Runs the set's target.onnx with ONNX Runtime (so any model set under the contract works, a
user's own ONNX model included) and the guard's own STRIP code (service.strip: the same draws,
superimposition and entropy as the service). From the dataset's held-out validation split (the
5000 training images the set's target never trained on, as its manifest records; a set made
elsewhere gets a seeded random subset of the training data, and the manifest says so) it draws
a bank of clean images, then computes the STRIP entropy of every other validation image and sets
the threshold so that at most --target-fpr of them are flagged. Bank and calibration images are
disjoint; the test split is never read.

Writes <model-set>/strip_bank.npy and the manifest entry ``detectors.strip`` (docs/model-
contract.md); every other manifest field is kept as it was. When the manifest records backdoor
triggers (the demo sets), it also reports how many triggered validation images STRIP flags.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from service.manifest import Manifest, read_manifest, read_verified
from service.modelset import Strip
from service.strip import StripConfig, bank_from_npy, flag, run_strip
from training import cli, evidence
from training.data.datasets import DATASETS, Dataset, load_dataset, split_train_val
from training.data.triggers import Trigger, manifest_backdoors
from training.evaluation.detectors import cpu_session
from training.evaluation.metrics import threshold_at_fpr
from training.nets.export import sha256, write_manifest

BANK_FILE = "strip_bank.npy"


def strip_threshold(entropies: np.ndarray, target_fpr: float) -> float:
    """Threshold t (flag when entropy < t) that flags at most target_fpr of these clean
    entropies: the target_fpr quantile, taken among the entropies themselves (the same rule
    as the de-trigger scores' calibration, on the negated entropy)."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must lie in (0, 1), got {target_fpr}")
    return -threshold_at_fpr(-np.asarray(entropies, np.float64), target_fpr)


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
    args: argparse.Namespace,
) -> dict[str, Any]:
    """STRIP on validation images of other classes than the attack's target class, with the
    manifest's trigger stamped on: how many it flags, and whether the trigger still works."""
    target_class = int(attack.get("target_class", 0))
    try:
        trigger = Trigger(**attack["trigger"])
    except (TypeError, ValueError) as exc:
        raise SystemExit(
            f"manifest trigger {attack['trigger']} is not one this pipeline knows ({exc}); "
            "run with --triggered-images 0"
        ) from exc
    others = calib_idx[train.labels[calib_idx] != target_class][: args.triggered_images]
    predicted, entropy = strip_entropies(
        train.images[others], bank, config, target, args.batch_size, transform=trigger
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument(
        "--model-set",
        default="models/mnist",
        help="model set folder with manifest.json and target.onnx (default: models/mnist)",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=DATASETS,
        help="clean labelled data: a preset dataset, or 'folder' with --data-dir holding train/ "
        "(default: mnist)",
    )
    cli.add_data_dir(p)
    p.add_argument("--n", type=int, default=16, help="superimposed copies per input (default: 16)")
    p.add_argument(
        "--target-fpr",
        type=float,
        default=0.01,
        help="share of clean validation images that may be flagged (default: 0.01)",
    )
    p.add_argument(
        "--bank-size",
        type=int,
        default=64,
        help="clean validation images in the bank the copies are drawn from (default: 64)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=0,
        help="validation images the threshold is set on; 0 = every one not in the bank "
        "(default: 0)",
    )
    p.add_argument(
        "--triggered-images",
        type=int,
        default=1000,
        help="triggered validation images to report the detection rate on, when the manifest "
        "records a backdoor trigger; 0 = none (default: 1000)",
    )
    p.add_argument(
        "--input-weight",
        type=float,
        default=1.0,
        help="weight of the input in clip(a * x + b * bank image, 0, 1) (default: 1, the "
        "paper's addition)",
    )
    p.add_argument(
        "--bank-weight",
        type=float,
        default=1.0,
        help="weight of the bank image in the same blend (default: 1)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="held-out images to draw from when the manifest records no validation split "
        "(default: 5000)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the bank choice and of the per-input bank draws (default: 0)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="inputs per target call; each call runs batch-size * (n + 1) images (default: 64)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads; 0 = its default"
    )
    args = p.parse_args(argv)
    if not 1 <= args.n <= min(256, args.bank_size):
        p.error(f"--n {args.n} must lie in 1..256 and be at most --bank-size ({args.bank_size})")
    if not 0.0 < args.target_fpr < 0.5:
        p.error(f"--target-fpr {args.target_fpr} must lie in (0, 0.5)")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.time()
    folder = Path(args.model_set)
    manifest = read_manifest(folder)  # validated: what the service will read
    raw = json.loads((folder / "manifest.json").read_text())  # written back field for field
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)

    train = load_dataset(args.dataset, "train", args.data_dir)
    if tuple(train.images.shape[1:]) != chw:
        raise SystemExit(
            f"{args.dataset} images are {train.images.shape[1:]}; model set {folder} takes {chw}"
        )
    val, source = validation_indices(len(train), raw, args.val_size, args.seed)
    bank_idx, calib_idx = bank_and_calibration(
        val, args.bank_size, args.calibration_images, args.seed
    )
    if len(calib_idx) * args.target_fpr < 1:
        raise SystemExit(
            f"{len(calib_idx)} calibration images cannot measure an FPR of {args.target_fpr}; "
            f"use at least {int(np.ceil(1 / args.target_fpr))}"
        )

    # The bank as the service will read it: the .npy bytes through the service's own loader.
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(train.images[bank_idx]))  # (M, C, H, W) uint8
    bank = bank_from_npy(buffer.getvalue(), chw)
    config = StripConfig(args.n, args.seed, args.input_weight, args.bank_weight)
    target = onnx_target(folder, manifest, args.threads)

    predicted, entropy = strip_entropies(
        train.images[calib_idx], bank, config, target, args.batch_size
    )
    threshold = strip_threshold(entropy, args.target_fpr)
    calibration: dict[str, Any] = {
        "target_fpr": args.target_fpr,
        "split": "validation" if source.startswith("validation") else "training",
        "source": source,
        "dataset": args.dataset,
        "n": int(len(calib_idx)),
        "false_positive_rate": float(flag(entropy, threshold).mean()),
        "clean_accuracy": float((predicted == train.labels[calib_idx]).mean()),
        "entropy_bits": quantiles(entropy),
    }

    attacks = manifest_backdoors(raw)
    if attacks and args.triggered_images > 0:
        calibration["triggered"] = [
            triggered_check(attack, train, calib_idx, bank, config, target, threshold, args)
            for attack in attacks
        ]

    np.save(folder / BANK_FILE, np.ascontiguousarray(train.images[bank_idx]))
    calibration.update(
        {
            "command": " ".join(["python -m training.strip_calibrate", *(argv or sys.argv[1:])]),
            "seed": args.seed,
            "hardware": evidence.onnx_hardware(args.threads),
            "versions": evidence.versions(evidence.ONNX_PACKAGES),
            "wall_seconds": round(time.time() - t0, 1),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    entry = {
        "bank": {
            "file": BANK_FILE,
            "sha256": sha256(folder / BANK_FILE),
            "images": int(len(bank_idx)),
            "dtype": "uint8",
            "indices": [int(i) for i in bank_idx],  # into the dataset's training split
            "source": source,
        },
        "n": args.n,
        "threshold": threshold,
        "seed": args.seed,
        "blend": {"input_weight": args.input_weight, "bank_weight": args.bank_weight},
        "score": "mean Shannon entropy (bits) of the target's softmax over the n copies; "
        "flagged when below threshold",
        "calibration": calibration,
    }
    detectors = raw.get("detectors") if isinstance(raw.get("detectors"), dict) else {}
    raw["detectors"] = {**detectors, "strip": entry}
    write_manifest(folder, raw)
    # What was written must load in the service: manifest, sha256 and bank shape.
    written = read_manifest(folder)
    assert written.detectors.strip is not None
    Strip.load(folder, written.detectors.strip, chw)

    summary = {"model_set": str(folder), "threshold": threshold, **calibration}
    line = (
        f"{folder}: STRIP n={args.n}, threshold {threshold:.6f} bits; clean FPR "
        f"{calibration['false_positive_rate']:.4f} on {len(calib_idx)} validation images"
    )
    for t in calibration.get("triggered", []):
        line += (
            f"; detection {t['detection_rate']:.4f} on {t['n']} triggered "
            f"(attack success {t['attack_success_rate']:.4f})"
        )
    print(f"{line} ({calibration['wall_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
