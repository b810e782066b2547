"""Calibrate STRIP (Gao et al., ACSAC 2019) for a model set, from one command:

    python -m training.strip_calibrate --model-set models/mnist --dataset mnist

Runs the set's target.onnx with ONNX Runtime (so any model set under the contract works, a
user's own ONNX model included) and the guard's own STRIP code (contract.strip: the same draws,
superimposition and entropy as the service). From the dataset's held-out validation split (the
5000 training images the set's target never trained on, as its manifest records; a set made
elsewhere gets a seeded random subset of the training data, and the manifest says so) it draws
a bank of clean images, then computes the STRIP entropy of every other validation image and sets
the threshold for --target-fpr at --confidence (0.95: few enough of them flagged that the FPR on
new clean images is <= --target-fpr with probability >= 0.95; off: at most --target-fpr of them,
the plain quantile). Bank and calibration images are
disjoint; the test split is never read.

Writes <model-set>/strip_bank.npy and the manifest entry ``detectors.strip`` (docs/model-
contract.md); every other manifest field is kept as it was. When the manifest records backdoor
triggers (the demo sets), it also reports how many triggered validation images STRIP flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training import cli
from training.data.datasets import DATASETS
from training.evaluation.strip import StripOptions, calibrate_model_set


def parse_args(argv: Sequence[str] | None) -> StripOptions:
    p = cli.parser(__doc__, "training.strip_calibrate")
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
    cli.add_confidence(p)
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
    opts = StripOptions(**vars(p.parse_args(argv)))
    for problem in opts.problems():
        p.error(problem)
    return opts


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    cli.require_model_set(Path(opts.model_set))
    command = " ".join(["python -m training.strip_calibrate", *(argv or sys.argv[1:])])
    return calibrate_model_set(opts, command)


if __name__ == "__main__":
    main()
