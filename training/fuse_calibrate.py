"""Calibrate detector ``both`` (contract.fusion) for a model set whose STRIP is calibrated:

    python -m training.fuse_calibrate --model-set models/mnist --dataset mnist

Runs the set's AE and target with ONNX Runtime through the guard's own code (contract.fusion:
AE(x), then one target call on [x; AE(x); STRIP's copies]) on the clean images STRIP was
calibrated on: the validation split the manifest records, less the bank images it lists. Sets
the de-trigger threshold and STRIP's threshold together, so that flagging an image when either
fires meets --target-fpr at --confidence on those images (training/evaluation/fusion.py: at
0.95 the union may flag fewer of them than the plain quantile would), and writes
the manifest entry ``detectors.both``; every other byte of the set stays as it was.
strip_calibrate, reproduce, `detrigger-guard calibrate` and `fit` write the entry themselves.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from contract.fusion import run_both
from contract.manifest import read_manifest, read_verified
from contract.scoring import SCORES
from contract.strip import Strip
from training import cli, evidence
from training.data.datasets import DATASETS, load_dataset
from training.evaluation.detectors import Graph
from training.evaluation.fusion import summary_line, write_both
from training.evaluation.strip import validation_indices


def parse_args(argv: Sequence[str] | None):
    p = cli.parser(__doc__, "training.fuse_calibrate")
    p.add_argument(
        "--model-set",
        default="models/mnist",
        help="model set folder with detectors.strip in its manifest (default: models/mnist)",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=DATASETS,
        help="the dataset the set's validation split and STRIP bank come from (default: mnist)",
    )
    cli.add_data_dir(p)
    p.add_argument(
        "--target-fpr",
        type=float,
        default=None,
        help="share of clean images the fused rule may flag (default: STRIP's own target FPR "
        "from the manifest)",
    )
    cli.add_confidence(p)
    p.add_argument(
        "--batch-size", type=int, default=64, help="inputs per target call (default: 64)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads; 0 = its default"
    )
    args = p.parse_args(argv)
    if args.target_fpr is not None and not 0.0 < args.target_fpr < 0.5:
        p.error(f"--target-fpr {args.target_fpr} must lie in (0, 0.5)")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.time()
    folder = Path(args.model_set)
    cli.require_model_set(folder)
    command = " ".join(["python -m training.fuse_calibrate", *(argv or sys.argv[1:])])

    # The set: its manifest (validated, and raw to write back field for field), graphs, STRIP.
    manifest = read_manifest(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    spec = manifest.detectors.strip
    if spec is None:
        raise SystemExit(f"{folder}: no detectors.strip; run python -m training.strip_calibrate")
    recorded = spec.calibration.target_fpr if spec.calibration else None
    target_fpr = args.target_fpr or recorded or 0.01
    indices = spec.bank.model_extra and spec.bank.model_extra.get("indices")
    if not indices:
        raise SystemExit(
            f"{folder}: the STRIP bank records no indices into the dataset, so its calibration "
            "images cannot be drawn again; run detrigger-guard calibrate (it writes both too)"
        )
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
    strip = Strip.load(folder, spec, chw)
    ae = Graph.load(read_verified(folder, manifest.detrigger), args.threads)
    target = Graph.load(read_verified(folder, manifest.target), args.threads)

    # The data: the validation split, less the bank (STRIP's calibration images).
    train = load_dataset(args.dataset, "train", args.data_dir)
    val, source = validation_indices(len(train), raw, 5000, spec.seed)
    images = train.images[np.setdiff1d(val, np.asarray(indices, np.int64))]

    # Run: the service's batch, chunk by chunk.
    scores, entropies = [], []
    for start in range(0, len(images), args.batch_size):
        x = images[start : start + args.batch_size].astype(np.float32) / np.float32(255.0)
        lx, lae, h = run_both(x, strip, ae, target)
        scores.append(SCORES[manifest.decision.score](lx, lae))
        entropies.append(h)

    # Write: detectors.both with its evidence.
    fields = {
        "split": "validation" if source.startswith("validation") else "training",
        "source": source,
        "dataset": args.dataset,
        "command": command,
        "hardware": evidence.onnx_hardware(args.threads),
        "versions": evidence.versions(evidence.ONNX_PACKAGES),
        "wall_seconds": round(time.time() - t0, 1),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    entry = write_both(
        folder,
        raw,
        np.concatenate(scores),
        np.concatenate(entropies),
        target_fpr,
        fields,
        confidence=args.confidence,
    )
    assert read_manifest(folder).detectors.both is not None
    print(summary_line(folder, entry))
    return entry


if __name__ == "__main__":
    main()
