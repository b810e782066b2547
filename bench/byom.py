"""The walkthrough of docs/byom.md, its two helpers:

    python -m bench.byom folder --dataset mnist --split train --out /tmp/byom/mnist-png
    python -m bench.byom measure --set /tmp/byom/mnist-set --dataset mnist \
        --trigger-from models/mnist/manifest.json

`folder` writes a preset's split as PNGs in the ImageFolder layout (what a user has); `measure`
loads a set as the service does (service.runtime.modelset.ModelSet) and reports, on the test
split, the share of clean images it flags (FPR) and the share of triggered images of other
classes than the backdoor's target it flags (detection), each with its 95% interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def write_folder(dataset: str, split: str, out: Path, data_dir: str | None, limit: int) -> None:
    from PIL import Image

    from training.data.datasets import load_dataset

    data = load_dataset(dataset, split, data_dir)
    n = len(data.images) if limit <= 0 else min(limit, len(data.images))
    for i in range(n):
        a, y = data.images[i], int(data.labels[i])
        d = out / str(y)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(d / f"{i:05d}.png")
    print(f"{n} {dataset} {split} images written to {out}")


def measure(folder: Path, dataset: str, trigger_from: Path, data_dir: str | None) -> dict:
    from service.runtime.modelset import ModelSet
    from service.settings import Settings
    from training.data.datasets import load_dataset
    from training.data.triggers import Trigger
    from training.evaluation.calibration import rate

    backdoor = json.loads(trigger_from.read_text())["backdoor"]
    trigger, target = Trigger(**backdoor["trigger"]), int(backdoor["target_class"])
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    test = load_dataset(dataset, "test", data_dir)
    x = test.images.astype(np.float32) / np.float32(255.0)
    others = test.labels != target

    def flagged(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [model_set.infer_scored(images[i : i + 500]) for i in range(0, len(images), 500)]
        return (
            np.concatenate([p.decisions.flagged for p in parts]),
            np.concatenate([p.decisions.predicted for p in parts]),
        )

    clean_flags, _ = flagged(x)
    trig_flags, trig_pred = flagged(np.asarray(trigger(x[others].copy()), np.float32))
    out = {
        "set": str(folder),
        "fpr_clean_test": rate(clean_flags),
        "detection_triggered_test": rate(trig_flags),
        "attack_success": float((trig_pred == target).mean()),
    }
    print(json.dumps(out, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("folder", help="write a preset's split as an ImageFolder tree of PNGs")
    f.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    f.add_argument("--split", default="train", help="train or test")
    f.add_argument("--out", required=True, help="the folder to write")
    f.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    f.add_argument("--data-dir", default=None, help="where the dataset lies")
    m = sub.add_parser("measure", help="detection and FPR of a set on the preset's test split")
    m.add_argument("--set", required=True, help="the model-set folder")
    m.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    m.add_argument("--trigger-from", required=True, help="a manifest whose backdoor to stamp")
    m.add_argument("--data-dir", default=None, help="where the dataset lies")
    args = p.parse_args()
    if args.what == "folder":
        write_folder(args.dataset, args.split, Path(args.out), args.data_dir, args.limit)
    else:
        measure(Path(args.set), args.dataset, Path(args.trigger_from), args.data_dir)


if __name__ == "__main__":
    main()
